#!/usr/bin/env python3
"""Per-kernel time of one decode step from ncu CSVs (bench/gpu/run.sh, TQ_GPU_PROFILE_DECODE=1).

Each CSV is `ncu --metrics gpu__time_duration.sum --csv tq bench decode ... --steps S`: the
prefill's launches, then S decode steps. The decode steps are the launches after the last cuBLAS
GEMM of the prefill (the steps multiply through tq's GEMV with --gpu-weights quant). Prints, per
kernel name, launches and microseconds per step for each CSV, and the difference to the first.

    python3 ncu_decode.py STEPS NAME=FILE.csv [NAME=FILE.csv ...]
"""
import csv
import re
import sys
from collections import OrderedDict


def short(name):
    name = re.sub(r"\(.*", "", name)          # drop the argument list
    name = re.sub(r"^void ", "", name)
    name = re.sub(r"tq::backend::cuda::", "", name)
    return name[:70]


def rows(path):
    out = []
    with open(path) as f:
        lines = [l for l in f if l.startswith('"')]
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        v = float(r["Metric Value"].replace(",", ""))
        unit = r.get("Metric Unit", "nsecond")
        scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}.get(unit, 1e-3)
        out.append((r["Kernel Name"], v * scale))
    return out


def decode_part(launches):
    last = -1
    for i, (name, _) in enumerate(launches):
        if re.search(r"gemm|cutlass|xmma|cublas|nvjet|dequant_kernel", name, re.I):
            last = i
    return launches[last + 1:]


def main():
    steps = int(sys.argv[1])
    tables = OrderedDict()
    for arg in sys.argv[2:]:
        label, path = arg.split("=", 1)
        per = OrderedDict()
        for name, us in decode_part(rows(path)):
            k = short(name)
            n, t = per.get(k, (0, 0.0))
            per[k] = (n + 1, t + us)
        tables[label] = per
    labels = list(tables)
    names = list(OrderedDict.fromkeys(k for t in tables.values() for k in t))
    names.sort(key=lambda k: -max(t.get(k, (0, 0.0))[1] for t in tables.values()))
    head = "| kernel | " + " | ".join(f"{l}: launches, us" for l in labels)
    if len(labels) > 1:
        head += " | " + " | ".join(f"{l} - {labels[0]} (us)" for l in labels[1:])
    print(head + " |")
    print("|---" * (1 + len(labels) + max(0, len(labels) - 1)) + "|")
    for k in names:
        cells = []
        for l in labels:
            n, t = tables[l].get(k, (0, 0.0))
            cells.append(f"{n / steps:g}, {t / steps:.1f}")
        base = tables[labels[0]].get(k, (0, 0.0))[1] / steps
        diffs = [f"{tables[l].get(k, (0, 0.0))[1] / steps - base:+.1f}" for l in labels[1:]]
        print(f"| {k} | " + " | ".join(cells + diffs) + " |")
    totals = [sum(t for _, t in tables[l].values()) / steps for l in labels]
    counts = [sum(n for n, _ in tables[l].values()) / steps for l in labels]
    cells = [f"{c:g}, {t:.1f}" for c, t in zip(counts, totals)]
    diffs = [f"{t - totals[0]:+.1f}" for t in totals[1:]]
    print("| **sum of kernel times per step** | " + " | ".join(cells + diffs) + " |")


if __name__ == "__main__":
    main()
