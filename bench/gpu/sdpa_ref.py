#!/usr/bin/env python3
"""PyTorch fp16 scaled_dot_product_attention on tq_gpu_bench's decode shapes (Llama-3-8B:
32 query heads, 8 KV heads, head_dim 128, one query token per sequence), timed like the bench:
CUDA events, warm-up, L2 flushed before every rep, median. Two ways to ask PyTorch for GQA decode
are timed and the faster is reported: enable_gqa=True, and the 4 query heads of each KV head
passed as 4 query rows (no K/V expansion either way).

    python3 sdpa_ref.py --out sdpa.csv [--contexts 1024,4096] [--batches 1,8] [--reps 20]
                        [--flush write|read]

--flush as tq_gpu_bench's (read by default since session 38): read reads a 256 MB buffer before
each rep (the L2 left holding clean lines, as a decode step leaves it), write zeroes it (dirty
lines, written back while the timed call reads).
"""
import argparse
import csv
import sys

import torch
import torch.nn.functional as F

HEADS, KV_HEADS, DIM = 32, 8, 128


def median_ms(fn, reps, flush, flush_read):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        if flush_read:
            flush.max()
        else:
            flush.zero_()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--contexts", default="1024,4096,16384,32768,131072")
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--flush", choices=["write", "read"], default="read")
    args = ap.parse_args()
    dev = torch.device("cuda")
    flush = torch.full((256 << 20,), 0x5A, dtype=torch.uint8, device=dev)
    rows = []
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, L2 flush: {args.flush}", flush=True)
    for ctx in map(int, args.contexts.split(",")):
        for batch in map(int, args.batches.split(",")):
            kv_bytes = 2 * batch * KV_HEADS * ctx * DIM * 2
            free, _ = torch.cuda.mem_get_info()
            if kv_bytes + (2 << 30) > free:
                print(f"ctx {ctx} batch {batch}: skipped ({kv_bytes / 1e9:.1f} GB)", flush=True)
                continue
            torch.manual_seed(ctx + batch)
            k = torch.randn(batch, KV_HEADS, ctx, DIM, dtype=torch.float16, device=dev)
            v = torch.randn(batch, KV_HEADS, ctx, DIM, dtype=torch.float16, device=dev)
            q = torch.randn(batch, HEADS, 1, DIM, dtype=torch.float16, device=dev)
            qg = q.view(batch, KV_HEADS, HEADS // KV_HEADS, DIM)
            variants = {
                "enable_gqa": lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
                "grouped_rows": lambda: F.scaled_dot_product_attention(qg, k, v),
            }
            best = None
            for name, fn in variants.items():
                try:
                    ms = median_ms(fn, args.reps, flush, args.flush == "read")
                except RuntimeError as e:  # e.g. out of memory in a fallback path
                    print(f"ctx {ctx} batch {batch} {name}: failed: {str(e).splitlines()[0]}", flush=True)
                    torch.cuda.empty_cache()
                    continue
                print(f"ctx {ctx} batch {batch} {name}: {ms * 1e3:.1f} us", flush=True)
                if best is None or ms < best[1]:
                    best = (name, ms)
            if best:
                gbps = kv_bytes / (best[1] * 1e-3) / 1e9
                rows.append([ctx, batch, best[0], f"{best[1] * 1e3:.2f}", kv_bytes, f"{gbps:.1f}", args.flush])
            del k, v, q, qg
            torch.cuda.empty_cache()
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["context", "batch", "variant", "time_us", "bytes", "gbps", "flush"])
        w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
