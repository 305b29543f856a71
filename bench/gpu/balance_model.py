#!/usr/bin/env python3
"""A model, not a measurement: how much of the split-K imbalance a balancing scheme could recover.

One wave of decode-attention CTAs on n_sm SMs, three CTAs an SM at most, dealt in random order
(the H100 does not deal them round the SMs in launch order: docs/benchmarks.md, session 35).
An SM's throughput is shared equally by the CTAs it holds (the session-17/35 timelines: two CTAs
an SM end their loops in two thirds of three's time). Prints the makespan, in units of one CTA's
loop alone on a full SM share, of
  static   today's plan: every pair cut into `splits` equal CTAs;
  dynamic  the same CTAs taking a pair's chunks as they go (a pair ends when its work is done);
  ideal    the work spread evenly over every SM.

    python3 bench/gpu/balance_model.py [--pairs 64] [--splits 6] [--sms 132] [--seeds 20]
"""
import argparse
import random


def makespan(seed, dynamic, n_sm, pairs, splits):
    rng = random.Random(seed)
    ctas = [p for p in range(pairs) for _ in range(splits)]
    rng.shuffle(ctas)
    order = list(range(n_sm))
    rng.shuffle(order)
    sm_of = [order[i % n_sm] for i in range(len(ctas))]  # up to three a SM, in a random SM order
    rem = [1.0] * len(ctas)
    pool = [float(splits)] * pairs
    active, t = set(range(len(ctas))), 0.0
    while active:
        held = {}
        for c in active:
            held[sm_of[c]] = held.get(sm_of[c], 0) + 1
        rate = {c: 1.0 / held[sm_of[c]] for c in active}
        if dynamic:
            prate = {}
            for c in active:
                prate[ctas[c]] = prate.get(ctas[c], 0.0) + rate[c]
            dt = min(pool[p] / r for p, r in prate.items())
            for p, r in prate.items():
                pool[p] -= r * dt
            done = [c for c in active if pool[ctas[c]] <= 1e-9]
        else:
            dt = min(rem[c] / rate[c] for c in active)
            for c in active:
                rem[c] -= rate[c] * dt
            done = [c for c in active if rem[c] <= 1e-9]
        t += dt
        active.difference_update(done)
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=64)  # 8 sequences x 8 KV heads
    ap.add_argument("--splits", type=int, default=6)  # the plan at 32k, batch 8
    ap.add_argument("--sms", type=int, default=132)
    ap.add_argument("--seeds", type=int, default=20)
    a = ap.parse_args()
    if a.pairs * a.splits > 3 * a.sms:
        ap.error("one wave of at most three CTAs an SM only")
    for name, dyn in (("static", False), ("dynamic", True)):
        ts = [makespan(s, dyn, a.sms, a.pairs, a.splits) for s in range(a.seeds)]
        print(f"{name:8s} mean {sum(ts) / len(ts):.3f} max {max(ts):.3f}")
    print(f"ideal    {a.pairs * a.splits / a.sms:.3f}")


if __name__ == "__main__":
    main()
