# Simulates the new tq_qjl_team_kernel's fragment mapping (one warp) against sign(S r).
import numpy as np
rng = np.random.default_rng(1)

def sim(D):
    L = D // 32; KT = D // 16; NT = D // 8; R = 2 if L == 4 else 1; ROW = D + 8
    pos = rng.permutation(32)                      # Layout::position, any permutation
    def k_coord(k):
        kk, p = k // 16, k % 16; t = (p & 7) >> 1; q = (p & 1) + 2 * (p >> 3)
        j = t % L; e = 4 * KT * (t // L) + 4 * kk + q
        return 32 * j + pos[e]
    def sketch_row(n):
        nt, t, b = n // 8, (n % 8) >> 1, n & 1
        return 2 * NT * t + 2 * nt + b
    assert sorted(k_coord(k) for k in range(D)) == list(range(D))
    assert sorted(sketch_row(n) for n in range(D)) == list(range(D))
    S = rng.standard_normal((D, D)).astype(np.float32)
    s_s = np.zeros((D, ROW), np.float32)
    for n in range(D):
        for k in range(D):
            s_s[n, k] = S[sketch_row(n), k_coord(k)]
    teams = 32 // L
    # vectors[r][team] residual (rotated coordinates)
    vec = rng.standard_normal((R, teams, D)).astype(np.float32)
    # lane registers: packed[r][lane] = list of 16 pairs (lo, hi)
    def packed(r, wl):
        team, j = wl // L, wl % L
        res = [vec[r, team, 32 * j + pos[e]] for e in range(32)]
        return [(res[2 * m], res[2 * m + 1]) for m in range(16)]
    # A fragments per lane
    lo = {}; hi = {}
    for wl in range(32):
        t = wl & 3
        if R == 2:
            lo[wl] = packed(0, wl); hi[wl] = packed(1, wl)
        else:
            p0 = packed(0, wl); upper = t >= 2
            partner = wl ^ 2
            pp = packed(0, partner)
            got = [pp[i] if (partner & 3) >= 2 else pp[2 * KT + i] for i in range(2 * KT)]
            # partner sends: upper(partner) ? p0[i] : p0[2KT+i]
            got = [(pp[i] if ((partner & 3) >= 2) else pp[2 * KT + i]) for i in range(2 * KT)]
            lo[wl] = [got[i] if upper else p0[i] for i in range(2 * KT)]
            hi[wl] = [p0[2 * KT + i] if upper else got[i] for i in range(2 * KT)]
    # mma semantics: reconstruct A (16 x 16) per k-tile from fragments, B from ldmatrix model
    neg = {wl: [0, 0] for wl in range(32)}
    for np_ in range(NT // 2 - 1, -1, -1):
        acc = {wl: np.zeros((2, 4), np.float32) for wl in range(32)}
        for kk in range(KT):
            A = np.zeros((16, 16), np.float32)
            for wl in range(32):
                g, t = wl >> 2, wl & 3
                a0, a1, a2, a3 = lo[wl][2 * kk], hi[wl][2 * kk], lo[wl][2 * kk + 1], hi[wl][2 * kk + 1]
                A[g, 2 * t], A[g, 2 * t + 1] = a0
                A[g + 8, 2 * t], A[g + 8, 2 * t + 1] = a1
                A[g, 2 * t + 8], A[g, 2 * t + 9] = a2
                A[g + 8, 2 * t + 8], A[g + 8, 2 * t + 9] = a3
            # ldmatrix x4: lane wl gives the row address of matrix wl>>3, row wl&7
            addr = {}
            for wl in range(32):
                n = 8 * (wl >> 4) + (wl & 7) + 16 * np_; kof = 8 * ((wl >> 3) & 1) + 16 * kk
                addr[wl] = (n, kof)
            mats = []
            for mi in range(4):
                M = np.array([s_s[addr[8 * mi + r][0], addr[8 * mi + r][1]:addr[8 * mi + r][1] + 8] for r in range(8)])
                mats.append(M)
            for j in range(2):
                Bm = np.zeros((16, 8), np.float32)  # B[k][n]
                # reg b0 of lane (g,t) = mats[2j][g][2t..2t+1] = B[2t..][g]; b1 = mats[2j+1]
                for g in range(8):
                    for t in range(4):
                        Bm[2 * t, g], Bm[2 * t + 1, g] = mats[2 * j][g, 2 * t], mats[2 * j][g, 2 * t + 1]
                        Bm[2 * t + 8, g], Bm[2 * t + 9, g] = mats[2 * j + 1][g, 2 * t], mats[2 * j + 1][g, 2 * t + 1]
                C = A @ Bm
                for wl in range(32):
                    g, t = wl >> 2, wl & 3
                    acc[wl][j] += np.array([C[g, 2 * t], C[g, 2 * t + 1], C[g + 8, 2 * t], C[g + 8, 2 * t + 1]])
        for wl in range(32):
            for j in (1, 0):
                for c in (1, 0):
                    neg[wl][0] = ((neg[wl][0] << 1) | int(acc[wl][j][c] < 0)) & 0xffffffff
                    neg[wl][1] = ((neg[wl][1] << 1) | int(acc[wl][j][2 + c] < 0)) & 0xffffffff
    # stores
    words = {}
    for wl in range(32):
        team, lane, t = wl // L, wl % L, wl & 3
        if R == 2:
            words[(0, team, lane)] = ~neg[wl][0] & 0xffffffff
            words[(1, team, lane)] = ~neg[wl][1] & 0xffffffff
        else:
            mine = lambda x: ~(neg[x][0] | (neg[x][1] << 16)) & 0xffffffff
            src = (wl & ~3) + 2 * (t & 1)
            x0, x1 = mine(src), mine(src + 1)
            if t >= 2: w = (x0 >> 16) | ((x1 >> 16) << 16)
            else: w = (x0 & 0xffff) | ((x1 & 0xffff) << 16)
            words[(0, team, lane)] = w
    bad = 0
    for r in range(R):
        for team in range(teams):
            ref = (S.astype(np.float64) @ vec[r, team].astype(np.float64)) >= 0
            bits = 0
            for j in range(D // 32):
                bits |= words[(r, team, j)] << (32 * j)
            got = np.array([(bits >> i) & 1 for i in range(D)], bool)
            bad += int((got != ref).sum())
    print(f"d {D}: {bad} of {R * teams * D} signs differ")

sim(128); sim(64)
