"""Merge fullmat.py's fm_*_*.json and tabulate each transform's gain over the engine's diagonal scaling.

Per 'fit|candidate|bits': layer-averaged relative score error and KL, gain_rel / gain_KL = bits/element
the diagonal baseline of the same fit needs for the same error (log-linear interpolation between
its 2..5-bit points, bits = b + 16/64 for the fp16 norm) minus the config's bits, the worst layer's
error ratio vs diag at the same bits, and the smallest per-layer gain.  Then cond(A), the fp16
rounding error of the transform alone, the closed-form optimum check and the predicted
high-resolution gain of gm over diag.

Usage: python fullmat_report.py [--out DIR]   (reads DIR/fm_*_*.json; the layer ranges must be contiguous)
"""
import argparse
import glob
import json
import os

import numpy as np

from kvquant import add_common_args, equivalent_bits

BASE_BITS = np.array([(64 * b + 16) / 64 for b in (2, 3, 4, 5)])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap)
    args = ap.parse_args()
    parts = sorted((json.load(open(f)) for f in glob.glob(os.path.join(args.out, 'fm_*_*.json'))), key=lambda d: d['L0'])
    assert parts and all(a['L1'] == b['L0'] for a, b in zip(parts, parts[1:])), 'layer ranges must be contiguous'
    n_total = len(next(iter(parts[0]['res'].values()))['num'])
    if (parts[0]['L0'], parts[-1]['L1']) != (0, n_total):
        print(f"note: layers {parts[0]['L0']}..{parts[-1]['L1'] - 1} of {n_total} only")

    def merged(get):
        return np.concatenate([np.array(get(d))[d['L0']:d['L1']] for d in parts])

    res = {}
    for k in parts[0]['res']:
        num, den, kl, cnt = (merged(lambda d: d['res'][k][f]) for f in ('num', 'den', 'kl', 'cnt'))
        res[k] = dict(rel_l=num / den, kl_l=kl / cnt)

    def gain(fit, metric, err, bits, layer=None):
        base = [res[f'{fit}|diag|b{b}'][metric] for b in (2, 3, 4, 5)]
        base = [v.mean() if layer is None else v[layer] for v in base]
        return equivalent_bits(BASE_BITS, np.array(base), err) - (64 * bits + 16) / 64

    print(f"{'fit|cand|b':22s} {'rel':>8s} {'KL':>8s} {'gain_rel':>8s} {'gain_KL':>8s} {'worstL rel ratio':>16s} {'min L gain_rel':>14s}")
    for k, r in res.items():
        fit, n, b = k.split('|')
        b = int(b[1:])
        rel, kl = r['rel_l'].mean(), r['kl_l'].mean()
        ratio = r['rel_l'] / res[f'{fit}|diag|b{b}']['rel_l']
        worst = int(np.argmax(ratio))
        min_gain = min(gain(fit, 'rel_l', r['rel_l'][l], b, l) for l in range(len(ratio)))
        print(f"{k:22s} {rel:8.5f} {kl:8.5f} {gain(fit, 'rel_l', rel, b):8.3f} {gain(fit, 'kl_l', kl, b):8.3f} "
              f"{ratio.max():10.3f} (L{worst + parts[0]['L0']:2d}) {min_gain:10.3f}")
    cond = {n: np.concatenate([d['cond'][n] for d in parts]) for n in parts[0]['cond']}
    print('cond(A) median/max:', {n: (round(float(np.median(v)), 1), round(float(v.max()), 1)) for n, v in cond.items()})
    qe = {n: merged(lambda d: d['qerr'][n]['num']) / merged(lambda d: d['qerr'][n]['den']) for n in parts[0]['qerr']}
    print('fp16 (A^-T q, A k) rounding rel score err, mean/max over layers:', {n: (f'{v.mean():.2e}', f'{v.max():.2e}') for n, v in qe.items()})
    ch = np.array([c[2:] for d in parts for c in d['check']])
    print('formula check: obj(B_gm)/obj(diag opt) mean %.3f max %.3f; |obj-closed form|/obj max %.1e; perturbations worse: %d/%d' %
          ((ch[:, 0] / ch[:, 1]).mean(), (ch[:, 0] / ch[:, 1]).max(), np.abs(ch[:, 0] - ch[:, 2]).max() / ch[:, 0].min(), ch[:, 3].sum(), 20 * len(ch)))
    pr = np.array([p[2] for d in parts for p in d['pred']])
    print('predicted (high-res) gain of gm over diag, bits: mean %.3f min %.3f max %.3f' % (pr.mean(), pr.min(), pr.max()))


if __name__ == '__main__':
    main()
