"""Channel-group bit splits for KV-cache keys or values vs the engine's diagonal scaling.

Per layer and kv head, the 64 channels of the centered key (or of the value) are split into a
high-rate group of n channels and a low-rate group of 64-n, each group gets the engine's
diagonal scaling within itself (s^2 ~ sigma_x / sigma_other, sigma_other = query RMS for keys,
W_o column norm for values), its own random orthogonal rotation and a Lloyd-Max codebook, with
norm correction.  Norm storage variants: '2norms' (one fp16 norm per group), 'sharednorm' (one
fp16 norm + 8-bit angle), 'onenorm' (one fp16 norm; per-group codebook scale from the group's
mean energy fraction).  'base bB' is the engine's scheme: all 64 channels at B bits + fp16 norm.

Method: channels are ranked by sigma_k*sigma_q / sigma_v*|W_o col| (--rank w) or sigma_k / sigma_v
(--rank k), fitted on chunk 0 (--groups chunk0) or on the measured chunk itself (--groups self);
errors are measured on chunks 1..N-1 (chunk0) or all chunks (self).  Sinks 0-3 are exact.
Metrics (float64): keys: relative score error sum|q.k - q.k_hat|^2 / sum|q.k|^2 and the mean
KL(p || p_hat) of the attention distribution; values: relative error of the attention output
after W_o.  Also reports Gaussian ceilings (bits/element the engine's scheme leaves vs per-channel
reverse water-filling and vs a KLT transform) averaged over layers, heads and chunks.

Usage: python analyze.py {keys,values} [--groups chunk0|self] [--rank w|k] [--configs REGEX]
                         [--layers FIRST END] [--tag T] [--out DIR]
Reads <out>/acts.npz (capture.py), writes <out>/res_<mode>_<groups>_<rank><tag>.json (report.py).
"""
import argparse
import json
import math
import os
import re
import time

import numpy as np

from kvquant import CODEBOOK, SINKS, Acts, add_common_args, f16, rotation, scales, tq_unit

# norm storage per config: 'group' = fp16 norm per coded group, 'angle' = one fp16 norm + 8-bit angle, 'one' = one fp16 norm
NORM_LABEL = {'group': '2norms', 'angle': 'sharednorm', 'one': 'onenorm'}


def encode_one_norm(x, groups):
    """One fp16 norm for the whole vector, no per-group norms: group g's rotated coordinates R_g x_g / ||x||
    are quantized with the b_g-bit Lloyd-Max codebook scaled to their expected std (from the data's own
    mean energy fraction of the group, per-head calibration metadata), then the whole decoded vector gets
    norm correction."""
    nrm = np.linalg.norm(x, axis=1, keepdims=True)
    nrm = np.where(nrm > 0, nrm, 1)
    energy = (x ** 2).sum(1).mean()
    y = np.zeros_like(x)
    for gi, (idx, b) in enumerate(groups):
        if b == 0:
            continue
        R = rotation(len(idx), gi)
        u = (x[:, idx] @ R.T) / nrm
        sd = math.sqrt((x[:, idx] ** 2).sum(1).mean() / energy / len(idx))
        c = CODEBOOK[b] * sd
        y[:, idx] = c[np.searchsorted((c[1:] + c[:-1]) / 2, u)] @ R
    return f16(nrm / np.linalg.norm(y, axis=1, keepdims=True)) * y


def encode(x, groups, norms):
    """x (N, 64) already scaled; groups: list of (channel index array, bits), bits 0 = dropped (decoded 0)."""
    if norms == 'one':
        return encode_one_norm(x, groups)
    out = np.zeros_like(x)
    parts = [(idx, *tq_unit(x[:, idx], b, rotation(len(idx), gi))) for gi, (idx, b) in enumerate(groups) if b > 0]
    if norms == 'group':
        for idx, dirn, nrm in parts:
            out[:, idx] = f16(nrm) * dirn
    else:
        assert len(parts) == 2
        (i1, d1, n1), (i2, d2, n2) = parts
        N = f16(np.sqrt(n1 ** 2 + n2 ** 2))
        th = np.arctan2(n2, n1)
        thq = np.round(th / (np.pi / 2) * 255) / 255 * (np.pi / 2)
        out[:, i1] = N * np.cos(thq) * d1
        out[:, i2] = N * np.sin(thq) * d2
    return out


def bits_per_element(spec, norms):
    coded = [(n, b) for n, b in spec if b > 0]
    side = 16 if norms == 'one' else 24 if norms == 'angle' else 16 * len(coded)
    return (sum(n * b for n, b in coded) + side) / 64


def make_configs(select):
    """(label, [(channels, bits) high group first], norms); 'base' configs are always kept."""
    cfgs = [(f'base b{b}', [(64, b)], 'group') for b in (2, 3, 4, 5)]
    for nh in (8, 16, 24, 32, 48):
        for b1 in range(2, 8):
            for b2 in range(0, b1):
                if b2 == 0 and nh < 32 or b1 - b2 > 4:
                    continue
                spec = [(nh, b1), (64 - nh, b2)]
                if not 2.2 <= bits_per_element(spec, 'one') <= 5.3:
                    continue
                norms = (['group', 'angle'] if b1 - b2 <= 2 and b2 > 0 else []) + (['one'] if b2 > 0 or nh == 48 else [])
                cfgs += [(f'split {nh}@{b1}+{64 - nh}@{b2} {NORM_LABEL[n]}', spec, n) for n in norms]
    if select:
        cfgs = [c for c in cfgs if c[0].startswith('base') or re.search(select, c[0])]
    return cfgs


def quant_scaled(xc, other_rms, spec, norms, order_w):
    """xc (N, 64) data at positions >= 4; other_rms: per-channel query RMS or W_o column norm.
    Channels are split by order_w, each group scaled within itself (s^2 ~ sigma_x / other_rms),
    quantized and unscaled.  Returns the decoded xc."""
    sig = np.sqrt(np.mean(xc ** 2, 0)) + 1e-6
    if len(spec) == 1:
        idxs = [np.arange(64)]
    else:
        order = np.argsort(-order_w)
        idxs = [np.sort(order[:spec[0][0]]), np.sort(order[spec[0][0]:])]
    s = np.ones(64)
    for idx in idxs:
        s[idx] = scales(sig[idx], other_rms[idx] + 1e-6)
    return encode(xc / s, [(idx, b) for idx, (n, b) in zip(idxs, spec)], norms) * s


def waterfill_distortion(lam, rate):
    """Gaussian reverse water-filling distortion for variances lam at total rate bits."""
    lo, hi = 1e-30, lam.max()
    for _ in range(200):
        th = math.sqrt(lo * hi)
        if np.sum(0.5 * np.log2(np.maximum(lam / th, 1))) > rate:
            lo = th
        else:
            hi = th
    return np.sum(np.minimum(th, lam))


def ceiling(sx, wq, cov_x, Mq, rate):
    """Bits/element saved vs the engine (scaled + isotropic) by water-filling and by KLT + water-filling,
    and the high-resolution AM/GM estimate."""
    n = 64
    w = sx * wq
    D_eng = (w.sum() ** 2 / n) * 2 ** (-2 * rate)  # (sum sig^2/s^2)(sum wq^2 s^2) D/n at s^2 ~ sig/wq
    D_wf = waterfill_distortion(w ** 2, n * rate)
    ev, U = np.linalg.eigh(Mq)
    Mh = U @ np.diag(np.sqrt(np.maximum(ev, 0))) @ U.T
    D_klt = waterfill_distortion(np.maximum(np.linalg.eigvalsh(Mh @ cov_x @ Mh), 1e-30), n * rate)
    return 0.5 * math.log2(D_eng / D_wf), 0.5 * math.log2(D_eng / D_klt), math.log2(w.mean() / np.exp(np.mean(np.log(w))))


def channel_weight(a, mode, rank, c, l, h):
    """Per-channel ranking weight of kv head h in chunk c."""
    G, D = a.group, a.D
    K = a.K[c, l, :, h]
    if mode == 'keys':
        sk = np.sqrt(((K[SINKS:] - K[SINKS:].mean(0)) ** 2).mean(0))
        sq = np.sqrt((a.Q[c, l, SINKS:, h * G:(h + 1) * G] ** 2).mean((0, 1)))
        return sk * sq if rank == 'w' else sk
    sv = np.sqrt((a.V[c, l, SINKS:, h] ** 2).mean(0))
    wc = np.sqrt(sum((a.Wo[l][:, (h * G + g) * D:(h * G + g + 1) * D] ** 2).sum(0) for g in range(G)))
    return sv * wc if rank == 'w' else sv


def log_softmax_causal(S, causal):
    lg = np.where(causal, S / 8, -np.inf)  # 1/sqrt(64)
    lg -= lg.max(-1, keepdims=True)
    return lg - np.log(np.exp(lg).sum(-1, keepdims=True))


def measure_keys(a, cfgs, c, l, h, order_w, causal, sc_mask, acc, ceil):
    G = a.group
    K = a.K[c, l, :, h]
    Qg = a.Q[c, l, :, h * G:(h + 1) * G]
    kc = K - K[SINKS:].mean(0)
    sq = np.sqrt((Qg[SINKS:] ** 2).mean((0, 1)))
    for rate in (3, 4):
        Mq = np.einsum('tgi,tgj->ij', Qg[SINKS:], Qg[SINKS:]) / (Qg[SINKS:].shape[0] * G)
        ceil[rate].append(ceiling(np.sqrt((kc[SINKS:] ** 2).mean(0)), sq, np.cov(kc[SINKS:].T, bias=True), Mq, rate))
    Qm = Qg[SINKS:].transpose(1, 0, 2)  # (G, T-4, 64)
    Sx = Qm @ kc.T  # (G, T-4, T)
    lp = log_softmax_causal(Sx, causal)
    p = np.exp(lp)
    den = (Sx[:, sc_mask] ** 2).sum()
    for label, spec, norms in cfgs:
        kh = kc.copy()
        kh[SINKS:] = quant_scaled(kc[SINKS:], sq, spec, norms, order_w)
        Sh = Qm @ kh.T
        lh = log_softmax_causal(Sh, causal)
        acc[label] += [((Sx - Sh)[:, sc_mask] ** 2).sum(), den, np.where(causal, p * (lp - lh), 0).sum(-1).mean(), 1]


def measure_values(a, cfgs, c, l, order_ws, causal, acc, ceil):
    G, D = a.group, a.D
    P = []  # exact attention probabilities per query head
    for hq in range(a.n_heads):
        Sx = a.Q[c, l, SINKS:, hq] @ a.K[c, l, :, hq // G].T
        lg = np.where(causal, Sx / 8, -np.inf)
        lg -= lg.max(-1, keepdims=True)
        e = np.exp(lg)
        P.append(e / e.sum(-1, keepdims=True))
    Wl = a.Wo[l]
    O = np.concatenate([P[hq] @ a.V[c, l, :, hq // G] for hq in range(a.n_heads)], 1)
    den = ((O @ Wl.T) ** 2).sum()
    Wh = [[Wl[:, (h * G + g) * D:(h * G + g + 1) * D] for g in range(G)] for h in range(a.n_kv)]
    wcs = [np.sqrt(sum((W ** 2).sum(0) for W in Wh[h])) for h in range(a.n_kv)]
    for h in range(a.n_kv):
        V = a.V[c, l, SINKS:, h]
        Mw = sum(W.T @ W for W in Wh[h]) / G
        for rate in (3, 4):
            ceil[rate].append(ceiling(np.sqrt((V ** 2).mean(0)), wcs[h], V.T @ V / len(V), Mw, rate))
    for label, spec, norms in cfgs:
        E = []
        for h in range(a.n_kv):
            V = a.V[c, l, :, h]
            vh = V.copy()
            vh[SINKS:] = quant_scaled(V[SINKS:], wcs[h], spec, norms, order_ws[h])
            E.append(V - vh)
        Eo = np.concatenate([P[hq] @ E[hq // G] for hq in range(a.n_heads)], 1)
        acc[label] += [((Eo @ Wl.T) ** 2).sum(), den, 0, 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('mode', choices=('keys', 'values'))
    ap.add_argument('--groups', choices=('chunk0', 'self'), default='chunk0', help='chunk the channel groups are fitted on')
    ap.add_argument('--rank', choices=('w', 'k'), default='w', help='w: sigma_x * other side, k: sigma_x only')
    ap.add_argument('--configs', metavar='REGEX', help='only split configs whose label matches (base configs always run)')
    ap.add_argument('--tag', default='', help='suffix of the output file name')
    add_common_args(ap, layers=True)
    args = ap.parse_args()

    a = Acts(args.out)
    layers = a.layer_range(args.layers)
    cfgs = make_configs(args.configs)
    meas = list(range(1, a.n_chunks)) if args.groups == 'chunk0' else list(range(a.n_chunks))
    print(len(cfgs), 'configs', args.mode, args.groups, args.rank, flush=True)

    acc = {label: np.zeros((len(layers), 4)) for label, _, _ in cfgs}  # per layer: num, den, kl, count
    ceil = {3: [], 4: []}
    T = a.T
    causal = np.arange(T)[None, :] <= np.arange(SINKS, T)[:, None]  # (T-4, T) keys 0..i
    sc_mask = causal & (np.arange(T)[None, :] >= SINKS)  # keys 4..i
    t0 = time.time()
    with np.errstate(invalid='ignore'):  # lp - lh = -inf - -inf off the causal mask, discarded
        for i, l in enumerate(layers):
            layer_acc = {label: acc[label][i] for label in acc}
            for c in meas:
                src = 0 if args.groups == 'chunk0' else c
                order_ws = [channel_weight(a, args.mode, args.rank, src, l, h) for h in range(a.n_kv)]
                if args.mode == 'keys':
                    for h in range(a.n_kv):
                        measure_keys(a, cfgs, c, l, h, order_ws[h], causal, sc_mask, layer_acc, ceil)
                else:
                    measure_values(a, cfgs, c, l, order_ws, causal, layer_acc, ceil)
            print('layer', l, round(time.time() - t0), 's', flush=True)

    results = []
    for label, spec, norms in cfgs:
        num, den, kl, cnt = acc[label].T
        rel, kl = num / den, kl / cnt
        results.append(dict(label=label, bits=bits_per_element(spec, norms), rel=float(rel.mean()), kl=float(kl.mean()),
                            rel_l=rel.tolist(), kl_l=kl.tolist()))
    ce = {rate: np.array(v) for rate, v in ceil.items()}
    summary = dict(mode=args.mode, groupsrc=args.groups, rank=args.rank, meas_chunks=meas, layers=list(layers), results=results,
                   ceiling={rate: dict(wf_bits=float(v[:, 0].mean()), klt_bits=float(v[:, 1].mean()),
                                       hr_amgm_bits=float(v[:, 2].mean())) for rate, v in ce.items()})
    path = os.path.join(args.out, f'res_{args.mode}_{args.groups}_{args.rank}{args.tag}.json')
    json.dump(summary, open(path, 'w'))
    print(path, json.dumps(summary['ceiling']))


if __name__ == '__main__':
    main()
