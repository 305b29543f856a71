#!/usr/bin/env python3
"""Tables of an ab.sh run: the median over rounds of every measurement per set, and its ratio
to the first set (time ratios as first / this, so > 1 means this set is faster).

usage: ab_report.py OUT [--sets A,B,C]   (set order; default: the order of attn_*/decode_* names)
"""
import csv
import glob
import os
import re
import statistics
import sys


def sets_in(out):
    names = []
    for p in sorted(glob.glob(os.path.join(out, "attn_*_*")) + glob.glob(os.path.join(out, "decode_*_*.md"))):
        m = re.match(r"(?:attn|decode)_(.+)_(\d+)(?:\.md)?$", os.path.basename(p))
        if m and m.group(1) not in names:
            names.append(m.group(1))
    return names


def csv_rows(out, name, file):
    rows = []
    for d in sorted(glob.glob(os.path.join(out, f"attn_{name}_*"))):
        p = os.path.join(d, file)
        if os.path.exists(p):
            with open(p) as f:
                rows.extend(csv.DictReader(f))
    return rows


def decode_cells(out, name):
    """{(kv pair index, depth): [tok/s per round]} from `tq bench decode` logs."""
    cells = {}
    for p in sorted(glob.glob(os.path.join(out, f"decode_{name}_*.md"))):
        kv = -1
        with open(p) as f:
            for line in f:
                if "tq bench decode: kv " in line:
                    kv += 1
                m = re.search(r"depth\s+(\d+): prefill .* decode\s+([\d.]+) tok/s", line)
                if m and kv >= 0:
                    cells.setdefault((kv, int(m.group(1))), []).append(float(m.group(2)))
    return cells


def timed_table(out, names, file, key_cols, title):
    """One row per key (in the first set's order): median time_us (frac_copy) per set."""
    rows = {n: csv_rows(out, n, file) for n in names}
    keys = []
    for r in rows[names[0]]:
        k = tuple(r[c] for c in key_cols)
        if k not in keys:
            keys.append(k)
    if not keys:
        return
    print("## " + title + "\n")
    print("| " + " | ".join(key_cols) + " | " + " | ".join(names) + " |")
    print("|" + "---|" * (len(key_cols) + len(names)))
    for k in keys:
        cells = []
        base = None
        for n in names:
            rs = [r for r in rows[n] if tuple(r[c] for c in key_cols) == k]
            if not rs:
                cells.append("-")
                continue
            t = statistics.median(float(r["time_us"]) for r in rs)
            fc = statistics.median(float(r["frac_copy"]) for r in rs)
            base = t if n == names[0] else base
            cells.append(f"{t:.1f} ({fc:.2f})" + ("" if n == names[0] or not base else f" {base / t:.2f}x"))
        print("| " + " | ".join(k) + " | " + " | ".join(cells) + " |")
    print()


def main():
    out = sys.argv[1]
    names = sets_in(out)
    if "--sets" in sys.argv:
        names = sys.argv[sys.argv.index("--sets") + 1].split(",")
    if not names:
        sys.exit("no ab.sh results in " + out)
    first = names[0]

    timed_table(out, names, "gpu_bench.csv", ("context", "batch", "format"),
                "Decode attention: median time per call (us), of copy, speedup over " + first)
    timed_table(out, names, "write_bench.csv", ("format",),
                "Bulk quantize-on-write: median time (us), of copy, speedup over " + first)

    dec = {n: decode_cells(out, n) for n in names}
    dkeys = sorted(set(k for n in names for k in dec[n]))
    if dkeys:
        print("## Decode tokens/s (median over rounds; each round's values in brackets), ratio to " + first + "\n")
        print("| kv pair # | depth | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
        for k in dkeys:
            cells = []
            base = None
            for n in names:
                v = dec[n].get(k)
                if not v:
                    cells.append("-")
                    continue
                m = statistics.median(v)
                base = m if n == first else base
                rounds = ", ".join(f"{x:.1f}" for x in v)
                cells.append(f"{m:.1f} [{rounds}]" + ("" if n == first or not base else f" {m / base:.3f}x"))
            print(f"| {k[0]} | {k[1]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
