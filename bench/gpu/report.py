#!/usr/bin/env python3
"""Joins tq_gpu_bench's CSVs with sdpa_ref.py's into one markdown report (per context length:
batch x format, time, GB/s, fraction of copy bandwidth, speedup over tq f16 and over PyTorch SDPA).

    python3 report.py OUT_DIR > results.md
"""
import csv
import os
import sys


def read(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def goals(bench, sdpa, write, write_f32):
    """Issue #6's "must show" numbers beside their goals, measured in this run: tq4/tq4 decode
    attention at 32k, batch >= 8, >= 0.8 of copy and >= 3x PyTorch fp16 SDPA; tq3/tq3 and tq2/tq2
    faster than tq4/tq4 in proportion to their bytes (time ratio <= bytes ratio); quantize-on-write
    >= 0.5 of copy, from fp16 rows and from fp32 rows (the model's prefill writes fp32). Rows only
    for what the run measured."""
    rows = []
    cell = {(int(r["context"]), int(r["batch"]), r["format"]): r for r in bench}
    for (ctx, batch, fmt), r in sorted(cell.items()):
        if ctx != 32768 or batch < 8 or fmt != "tq4/tq4":
            continue
        frac = float(r["frac_copy"])
        rows.append((f"tq4/tq4, 32k, batch {batch}: of copy", f"{frac:.2f}", ">= 0.80", frac >= 0.8))
        s = sdpa.get((ctx, batch))
        if s:
            x = float(s["time_us"]) / float(r["time_us"])
            rows.append((f"tq4/tq4, 32k, batch {batch}: vs SDPA fp16", f"{x:.2f}x", ">= 3x", x >= 3.0))
        for lower in ("tq3/tq3", "tq2/tq2"):
            o = cell.get((ctx, batch, lower))
            if not o:
                continue
            t = float(o["time_us"]) / float(r["time_us"])
            b = float(o["bytes"]) / float(r["bytes"])
            rows.append((f"{lower} / tq4/tq4, 32k, batch {batch}: time (bytes {b:.2f})", f"{t:.2f}",
                         f"<= {b:.2f}", t <= b))
    for rows_in, label in ((write, "fp16"), (write_f32, "fp32")):
        for w in rows_in:
            if w["format"].startswith("tq"):
                frac = float(w["frac_copy"])
                rows.append((f"quantize-on-write {w['format']} from {label} rows: of copy", f"{frac:.2f}",
                             ">= 0.50", frac >= 0.5))
    if not rows:
        return
    print("## issue #6's goals in this run\n")
    print("| what | measured | goal | |")
    print("|---|---|---|---|")
    for what, got, goal, ok in rows:
        print(f"| {what} | {got} | {goal} | {'met' if ok else 'not met'} |")
    print()


def main():
    out = sys.argv[1]
    bench = read(os.path.join(out, "gpu_bench.csv"))
    sdpa_rows = read(os.path.join(out, "sdpa.csv"))
    # (CSVs before session 38 have no flush column: both flushed by a write)
    flushes = {r["flush"] for r in bench + sdpa_rows if r.get("flush")}
    if len(flushes) > 1:
        print(f"report.py: tq_gpu_bench and sdpa_ref.py flushed the L2 differently ({', '.join(sorted(flushes))}):"
              " rerun one with the other's --flush", file=sys.stderr)
        return 1
    sdpa = {(int(r["context"]), int(r["batch"])): r for r in sdpa_rows}
    write = read(os.path.join(out, "write_bench.csv"))
    write_f32 = read(os.path.join(out, "write_f32", "write_bench.csv"))
    device = bench[0]["device"] if bench else "?"
    print(f"# tq GPU decode attention, {device}\n")
    print("Llama-3-8B attention shape (32 query heads, 8 KV heads, head_dim 128), one layer, one query")
    print("token per sequence. Bytes = stored K/V bytes + query + split-K partials. `of copy` = GB/s over")
    print("the measured device-to-device copy bandwidth (read + write). SDPA = PyTorch fp16")
    print("scaled_dot_product_attention on the same shape (faster of enable_gqa / grouped rows).")
    if flushes:
        print(f"L2 flushed before every rep by a {flushes.pop()} of 256 MB.")
    print()
    contexts = sorted({int(r["context"]) for r in bench})
    for ctx in contexts:
        print(f"## context {ctx}\n")
        print("| batch | K/V | time (us) | GB/s | of copy | vs tq f16 | SDPA fp16 (us) | vs SDPA |")
        print("|---|---|---|---|---|---|---|---|")
        for r in (r for r in bench if int(r["context"]) == ctx):
            s = sdpa.get((ctx, int(r["batch"])))
            t = float(r["time_us"])
            s_t = float(s["time_us"]) if s else None
            vs = f"{s_t / t:.2f}x" if s_t else "-"
            print(f"| {r['batch']} | {r['format']} | {t:.1f} | {float(r['gbps']):.0f} | {float(r['frac_copy']):.2f} "
                  f"| {float(r['speedup_vs_f16']):.2f}x | {s_t if s_t else '-'} | {vs} |")
        print()
    goals(bench, sdpa, write, write_f32)
    for rows_in, label in ((write, "fp16"), (write_f32, "fp32")):
        if not rows_in:
            continue
        print(f"## quantize-on-write (65536 tokens x 8 KV heads x 128, {label} input)\n")
        print("| format | time (us) | GB/s | of copy |")
        print("|---|---|---|---|")
        for r in rows_in:
            print(f"| {r['format']} | {float(r['time_us']):.1f} | {float(r['gbps']):.0f} | {float(r['frac_copy']):.2f} |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
