"""Full-matrix key transform x = A (k - mu) + isotropic TurboQuant vs the engine's diagonal scaling.

For each layer and kv head, A is fitted from the key covariance Sk and query second moment Sq
(positions >= 4) and x is coded with the engine's isotropic quantizer (one random orthogonal
64x64 rotation, Lloyd-Max codebook, norm correction, fp16 norm); the decoded key is A^-1 x_hat.
Candidates: 'diag' (the engine's diagonal scaling, s^2 ~ sigma_k / sigma_q), 'gm' (A = B^1/2 with
B the matrix geometric mean of Sq and Sk^-1, minimizing tr(Sq B^-1) tr(Sk B); 'gm_sX' with
diagonal shrinkage X of both statistics), 'pca' (diagonal scaling in the key PCA basis).
A is fitted on chunk 0 ('chunk0') or on the measured chunk ('same'); errors are measured on
chunks 1..N-1, sinks 0-3 exact, float64: relative score error and mean attention KL as in
analyze.py.  Also records cond(A), the score error from fp16 rounding of A^-T q and of A k
without quantization, a check of the closed-form optimum (objective vs the diagonal optimum and
20 random perturbations), and the predicted high-resolution gain of gm over diag.

Usage: python fullmat.py [--layers FIRST END] [--out DIR]
Reads <out>/acts.npz, writes <out>/fm_FIRST_END.json (per-layer accumulators).  Layer ranges can
run in parallel; fullmat_report.py merges all fm_*_*.json in <out>.
"""
import argparse
import json
import math
import os
import time

import numpy as np

from kvquant import SINKS, Acts, add_common_args, f16, rotation, scales, tq_unit


def psd_pow(M, p):
    ev, U = np.linalg.eigh(M)
    ev = np.maximum(ev, 1e-12 * ev.max())
    return (U * ev ** p) @ U.T


def shrink(M, a):
    return (1 - a) * M + a * np.diag(np.diag(M))


def stats(K, Qg):
    """Key covariance and query second moment (over the query heads sharing the kv head), positions >= 4."""
    kc = K[SINKS:] - K[SINKS:].mean(0)
    q = Qg[SINKS:].reshape(-1, 64)
    return kc.T @ kc / len(kc), q.T @ q / len(q)


def A_diag(Sk, Sq):
    return np.diag(1 / scales(np.sqrt(np.diag(Sk)) + 1e-6, np.sqrt(np.diag(Sq)) + 1e-6))


def B_gm(Sk, Sq):
    Qh = psd_pow(Sq, 0.5)
    return Qh @ psd_pow(Qh @ Sk @ Qh, -0.5) @ Qh


def A_gm(Sk, Sq, a=0.0):
    A = psd_pow(B_gm(shrink(Sk, a), shrink(Sq, a)), 0.5)
    return A / np.exp(np.mean(np.log(np.linalg.eigvalsh(A))))


def A_pca(Sk, Sq):
    ev, U = np.linalg.eigh(Sk)
    sk = np.sqrt(np.maximum(ev, 1e-12 * ev.max()))
    sq = np.sqrt(np.diag(U.T @ Sq @ U))
    return np.diag(1 / scales(sk + 1e-6, sq + 1e-6)) @ U.T


def objective(B, Sk, Sq):
    return np.trace(Sq @ np.linalg.inv(B)) * np.trace(Sk @ B)


CANDIDATES = {'diag': A_diag, 'gm': A_gm, 'gm_s0.1': lambda a, b: A_gm(a, b, 0.1),
              'gm_s0.3': lambda a, b: A_gm(a, b, 0.3), 'pca': A_pca}
CONFIGS = ([('chunk0', 'diag', b) for b in (2, 3, 4, 5)] + [('chunk0', n, b) for n in ('gm', 'gm_s0.1', 'gm_s0.3', 'pca') for b in (3, 4)]
           + [('same', 'diag', b) for b in (2, 3, 4, 5)] + [('same', n, b) for n in ('gm', 'gm_s0.1', 'pca') for b in (3, 4)])


def config_key(fit, name, bits):
    return f'{fit}|{name}|b{bits}'


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, layers=True)
    args = ap.parse_args()
    a = Acts(args.out)
    layers = a.layer_range(args.layers)
    L, T, G = a.n_layers, a.T, a.group
    R64 = rotation(64, 0)

    res = {config_key(*c): {'num': [0.0] * L, 'den': [0.0] * L, 'kl': [0.0] * L, 'cnt': [0] * L} for c in CONFIGS}
    qerr = {n: {'num': [0.0] * L, 'den': [0.0] * L} for n in CANDIDATES}  # fp16 rounding of A^-T q and A k, no quantization
    cond = {n: [] for n in CANDIDATES}
    check, pred = [], []
    causal = np.arange(T)[None, :] <= np.arange(SINKS, T)[:, None]
    sc_mask = causal & (np.arange(T)[None, :] >= SINKS)
    rng = np.random.default_rng(7)
    t0 = time.time()
    with np.errstate(all='ignore'):
        for l in layers:
            for h in range(a.n_kv):
                Sk0, Sq0 = stats(a.K[0, l, :, h], a.Q[0, l, :, h * G:(h + 1) * G])
                A0 = {n: f(Sk0, Sq0) for n, f in CANDIDATES.items()}
                for n, A in A0.items():
                    cond[n].append(float(np.linalg.cond(A)))
                # formula check: objective at B_gm vs the diagonal optimum and random perturbations
                B = B_gm(Sk0, Sq0)
                Bd = A0['diag'].T @ A0['diag']
                o = objective(B, Sk0, Sq0)
                worse = 0
                for _ in range(20):
                    P = rng.standard_normal((64, 64)) * 0.02
                    P = (P + P.T) / 2
                    Bh = psd_pow(B, 0.5)
                    Bp = Bh @ (np.eye(64) + P) @ Bh
                    if np.linalg.eigvalsh(Bp).min() > 0:
                        worse += objective(Bp, Sk0, Sq0) >= o
                Mev = np.linalg.eigvalsh(psd_pow(Sq0, .5) @ Sk0 @ psd_pow(Sq0, .5))
                check.append((l, h, float(o), float(objective(Bd, Sk0, Sq0)), float(np.sum(np.sqrt(np.maximum(Mev, 0))) ** 2), int(worse)))
                pred.append((l, h, float(0.5 * math.log2(objective(Bd, Sk0, Sq0) / o))))
                for c in range(1, a.n_chunks):
                    K = a.K[c, l, :, h]
                    Qg = a.Q[c, l, :, h * G:(h + 1) * G]
                    kc = K - K[SINKS:].mean(0)
                    Skc, Sqc = stats(K, Qg)
                    A_same = {}
                    Qm = Qg[SINKS:].transpose(1, 0, 2)
                    Sx = Qm @ kc.T
                    lg = np.where(causal, Sx / 8, -np.inf)
                    lg -= lg.max(-1, keepdims=True)
                    lp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
                    p = np.exp(lp)
                    den = (Sx[:, sc_mask] ** 2).sum()
                    for n, A in A0.items():
                        Sh = f16(Qm @ np.linalg.inv(A)) @ f16(kc[SINKS:] @ A.T).T
                        qerr[n]['num'][l] += ((Sx[:, :, SINKS:] - Sh)[:, sc_mask[:, SINKS:]] ** 2).sum()
                        qerr[n]['den'][l] += den
                    for fit, n, b in CONFIGS:
                        if fit == 'chunk0':
                            A = A0[n]
                        else:
                            if n not in A_same:
                                A_same[n] = CANDIDATES[n](Skc, Sqc)
                            A = A_same[n]
                        dirn, nrm = tq_unit(kc[SINKS:] @ A.T, b, R64)
                        kh = kc.copy()
                        kh[SINKS:] = (f16(nrm) * dirn) @ np.linalg.inv(A).T
                        Sh = Qm @ kh.T
                        num = ((Sx - Sh)[:, sc_mask] ** 2).sum()
                        lh = np.where(causal, Sh / 8, -np.inf)
                        lh -= lh.max(-1, keepdims=True)
                        lh = lh - np.log(np.exp(lh).sum(-1, keepdims=True))
                        kl = np.where(causal, p * (lp - np.where(causal, lh, 0)), 0).sum(-1).mean()
                        r = res[config_key(fit, n, b)]
                        r['num'][l] += float(num)
                        r['den'][l] += float(den)
                        r['kl'][l] += float(kl)
                        r['cnt'][l] += 1
            print('layer', l, round(time.time() - t0), 's', flush=True)
    path = os.path.join(args.out, f'fm_{layers.start}_{layers.stop}.json')
    json.dump(dict(L0=layers.start, L1=layers.stop, res=res, qerr={n: {k: [float(x) for x in v] for k, v in d.items()} for n, d in qerr.items()},
                   cond=cond, check=check, pred=pred), open(path, 'w'))
    print(path)


if __name__ == '__main__':
    main()
