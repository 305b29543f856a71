"""Table of an analyze.py result: each variant's bits/element, errors and gain over the engine's scheme.

gain_rel / gain_KL = bits/element the baseline ('base bB': all channels at B bits + fp16 norm) needs
for the same layer-averaged error (log-linear interpolation between its points) minus the variant's
bits/element; positive = the variant saves bits.  Sorted by gain_rel.  Also prints the Gaussian
ceilings.  gain_KL is nan for values (no KL measured).

Usage: python report.py <out>/res_keys_chunk0_w.json [--top 40]
"""
import argparse
import json

import numpy as np

from kvquant import equivalent_bits


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('results', help='res_*.json written by analyze.py')
    ap.add_argument('--top', type=int, default=200, help='rows to print (default 200)')
    args = ap.parse_args()
    s = json.load(open(args.results))
    base = sorted([r for r in s['results'] if r['label'].startswith('base')], key=lambda r: r['bits'])
    base_bits = np.array([r['bits'] for r in base])

    def gain(r, key):
        return equivalent_bits(base_bits, np.array([b[key] for b in base]), r[key]) - r['bits']

    print(s['mode'], s['groupsrc'], s['rank'], 'chunks', s['meas_chunks'])
    print('ceiling (bits/elt saved vs engine):', s['ceiling'])
    rows = [(r['label'], r['bits'], r['rel'], r['kl'], gain(r, 'rel'), gain(r, 'kl') if s['mode'] == 'keys' else float('nan'))
            for r in s['results']]
    rows.sort(key=lambda x: -x[4])
    print(f"{'variant':40s} {'bits':>6s} {'relerr':>9s} {'KL':>9s} {'gain_rel':>8s} {'gain_KL':>8s}")
    for x in rows[:args.top]:
        print(f"{x[0]:40s} {x[1]:6.3f} {x[2]:9.5f} {x[3]:9.5f} {x[4]:8.3f} {x[5]:8.3f}")


if __name__ == '__main__':
    main()
