#!/usr/bin/env python3
"""Models one warp step of 2026-12-06-half-column-scores.diff (kHalf) in numpy, lane by lane, with
PTX's m16n8k16 fragment layouts, and checks it against a float64 softmax(q K^T) V.

Layouts (PTX ISA, mma.m16n8k16 .f16): lane = 4 g + t. A (16 x 16): a0,a1 = (row g, k 2t..2t+1),
a2,a3 = (row g + 8, same k), a4..a7 = the same rows at k + 8. B (16 x 8): b0,b1 = (k 2t..2t+1,
col g), b2,b3 = (k 2t + 8.., col g). C (16 x 8): c0,c1 = (row g, cols 2t, 2t + 1), c2,c3 = (row
g + 8, same cols). In the kernel, k-slots 2t, 2t + 1, 2t + 8, 2t + 9 of k-tile kk are dims 4 kk ..
4 kk + 3 of lane t's K chunk (the same mapping for keys and queries, so the model may take any
bijection: dim = t * D / 4 + 4 kk + e).

kHalf: column n of S^T's B is head n // 2's query on the k-tiles of half n % 2 (zero elsewhere);
lane (g, t) adds its columns 2t and 2t + 1 into head t's scores of tokens g and g + 8, runs head
t's softmax, packs (p(g), p(g + 8)) and builds P^T's B fragment of column g from lanes (2t, g)
and (2t + 1, g) by two shuffles and two byte permutes; the rescale takes heads 2t and 2t + 1's
factors from lanes (g, 2t) and (g, 2t + 1). Run: python3 2026-12-06-half-column-scores-sim.py
"""
import numpy as np

D, TOK = 128, 16
KT = D // 16
rng = np.random.default_rng(6)


def lane_gt(lane):
    return lane >> 2, lane & 3


def dim_of(t, kk, e):  # lane t's chunk, k-tile kk, element e (0..3) of its k-slots
    return t * (D // 4) + 4 * kk + e


def kslot_dims(kk):  # k-slot s of tile kk -> dim
    out = {}
    for t in range(4):
        out[2 * t] = dim_of(t, kk, 0)
        out[2 * t + 1] = dim_of(t, kk, 1)
        out[2 * t + 8] = dim_of(t, kk, 2)
        out[2 * t + 9] = dim_of(t, kk, 3)
    return out


def run(group):
    K = rng.standard_normal((TOK, D)).astype(np.float32)
    V = rng.standard_normal((TOK, D)).astype(np.float32)
    Q = rng.standard_normal((group, D)).astype(np.float32) * 0.2
    kn = rng.uniform(0.5, 2.0, TOK).astype(np.float32)  # key norms (scale S after the mma)
    vn = rng.uniform(0.5, 2.0, TOK).astype(np.float32)  # value norms (fold into P)

    # S^T = K Q^T over the 8 k-tiles, column n = head n // 2 on half n % 2.
    C = np.zeros((TOK, 8), np.float32)
    for kk in range(KT):
        sd = kslot_dims(kk)
        A = np.array([[K[r, sd[s]] for s in range(16)] for r in range(TOK)], np.float32)
        B = np.zeros((16, 8), np.float32)
        for n in range(8):
            h = n // 2
            if h < group and (kk < KT // 2) == (n % 2 == 0):
                B[:, n] = [Q[h, sd[s]] for s in range(16)]
        C += A @ B
    # per lane: head t's scores of tokens g, g + 8; softmax in the 8 lanes of column t
    s0 = np.zeros(32, np.float32)
    s1 = np.zeros(32, np.float32)
    for lane in range(32):
        g, t = lane_gt(lane)
        s0[lane] = (C[g, 2 * t] + C[g, 2 * t + 1]) * kn[g]
        s1[lane] = (C[g + 8, 2 * t] + C[g + 8, 2 * t + 1]) * kn[g + 8]
    m = np.zeros(32, np.float32)
    for lane in range(32):
        g, t = lane_gt(lane)
        col = [l for l in range(32) if lane_gt(l)[1] == t]  # xor 4, 8, 16 reach exactly these
        m[lane] = max(max(s0[l], s1[l]) for l in col)
    e0, e1 = np.exp2(s0 - m), np.exp2(s1 - m)  # the softmax sum takes these (psum)
    p0 = e0 * vn[np.arange(32) >> 2]  # V norms fold into P
    p1 = e1 * vn[(np.arange(32) >> 2) + 8]
    x = np.stack([p0, p1], 1).astype(np.float16)  # pack_h2(p0, p1): lo = p0, hi = p1
    # P^T's B fragment of lane (g, t): shuffles from 8t + (g & 3) and 8t + 4 + (g & 3)
    frag = np.zeros((32, 4), np.float16)  # b0, b1, b2, b3
    for lane in range(32):
        g, t = lane_gt(lane)
        xa, xb = x[8 * t + (g & 3)], x[8 * t + 4 + (g & 3)]
        frag[lane] = [xa[0], xb[0], xa[1], xb[1]]  # prmt 0x5410, 0x7632
    # what the PV mma's B must hold: B[k = token][n = head] = P[token][head]
    P = np.zeros((TOK, 8), np.float32)
    for lane in range(32):
        g, t = lane_gt(lane)
        P[g, t], P[g + 8, t] = x[lane].astype(np.float32)
    for lane in range(32):
        g, t = lane_gt(lane)
        if g >= group:
            continue  # columns past the group: any value (their outputs are never read)
        want = [P[2 * t, g], P[2 * t + 1, g], P[2 * t + 8, g], P[2 * t + 9, g]]
        assert np.array_equal(frag[lane].astype(np.float32), np.float32(want)), (lane, frag[lane], want)
    # the rescale's factors: lane (g, t) needs heads 2t and 2t + 1 (columns of O^T it holds)
    for lane in range(32):
        g, t = lane_gt(lane)
        src0, src1 = (lane & ~3) | ((2 * t) & 3), (lane & ~3) | ((2 * t + 1) & 3)
        if 2 * t < group:
            assert lane_gt(src0)[1] == 2 * t
        if 2 * t + 1 < group:
            assert lane_gt(src1)[1] == 2 * t + 1
    # O^T = V^T P^T from the fragments, normalised, against float64
    Bp = np.zeros((TOK, 8), np.float32)
    for lane in range(32):
        g, t = lane_gt(lane)
        Bp[2 * t, g], Bp[2 * t + 1, g], Bp[2 * t + 8, g], Bp[2 * t + 9, g] = frag[lane]
    O = V.T.astype(np.float32) @ Bp  # [D][8]
    lsum = np.zeros(4)
    for lane in range(32):
        lsum[lane & 3] += float(e0[lane]) + float(e1[lane])
    worst = 0.0
    for h in range(group):
        sc = (K.astype(np.float64) @ Q[h].astype(np.float64)) * kn
        w = np.exp2(sc - sc.max())
        ref = (w[:, None] * vn[:, None] * V).sum(0) / w.sum()
        got = O[:, h] / lsum[h]
        worst = max(worst, np.abs(got - ref).max() / np.abs(ref).max())
    return worst


if __name__ == "__main__":
    for group in (1, 2, 3, 4):
        err = run(group)
        assert err < 2e-3, err  # fp16 P (2^-11 relative) and fp32 sums
        print(f"group {group}: fragments as the mma wants them, max rel err {err:.2e}")
