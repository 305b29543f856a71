"""Shared pieces of the KV-cache quantization study (imported by the other scripts).

- Default paths: model ${TQ_MODEL_DIR:-${XDG_CACHE_HOME:-~/.cache}/tq/models}/SmolLM2-135M-Instruct.Q4_1.gguf
  (as scripts/fetch-model.sh), text ../shared/data/text/pride-and-prejudice.txt relative to the
  repo root, work/output dir /tmp/kv_study (outside the repo).
- load_acts: the captured acts.npz as float64 (all metrics are computed in float64).
- Lloyd-Max codebooks for N(0,1) at 1..8 bits, seeded random orthogonal rotations, fp16 rounding.
- tq_unit: the engine's isotropic TurboQuant_mse coder: rotate, quantize each coordinate of the
  unit direction with the Lloyd-Max codebook scaled by 1/sqrt(n), renormalize the decoded
  direction (norm correction) and keep the vector norm (stored as fp16 by the callers).
- scales: the engine's diagonal scaling, s^2 ~ sigma_a / sigma_b with geometric mean 1.
"""
import math
import os

import numpy as np

SINKS = 4  # positions 0..3 are attention sinks, kept exact; only positions >= 4 are quantized

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..'))
MODEL_DIR = os.environ.get('TQ_MODEL_DIR') or os.path.join(
    os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'tq', 'models')
DEFAULT_MODEL = os.path.join(MODEL_DIR, 'SmolLM2-135M-Instruct.Q4_1.gguf')
DEFAULT_TEXT = os.path.normpath(os.path.join(REPO_ROOT, '..', 'shared', 'data', 'text', 'pride-and-prejudice.txt'))
DEFAULT_OUT = '/tmp/kv_study'


def add_common_args(ap, model=False, text=False, layers=False):
    ap.add_argument('--out', default=DEFAULT_OUT, help=f'work/output dir holding acts.npz and results (default {DEFAULT_OUT})')
    if model:
        ap.add_argument('--model', default=DEFAULT_MODEL, help=f'GGUF model (default {DEFAULT_MODEL})')
    if text:
        ap.add_argument('--text', default=DEFAULT_TEXT, help=f'text file (default {DEFAULT_TEXT})')
    if layers:
        ap.add_argument('--layers', type=int, nargs=2, metavar=('FIRST', 'END'),
                        help='analyze layers FIRST..END-1 (default: all)')


class Acts:
    """acts.npz in float64: Q (chunks, layers, T, heads, 64), K and V (chunks, layers, T, kv heads, 64), Wo."""

    def __init__(self, out_dir):
        a = np.load(os.path.join(out_dir, 'acts.npz'))
        self.Q, self.K, self.V, self.Wo = (a[n].astype(np.float64) for n in ('Q', 'K', 'V', 'Wo'))
        self.n_chunks, self.n_layers, self.T, self.n_heads, self.D = self.Q.shape
        self.n_kv = self.K.shape[3]
        self.group = self.n_heads // self.n_kv  # query heads per kv head

    def layer_range(self, layers):
        return range(*layers) if layers else range(self.n_layers)


def _Phi(x):
    return 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def _phi(x):
    return np.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def lloyd_max(bits, iters=3000):
    """Lloyd-Max reconstruction points for N(0,1)."""
    c = np.linspace(-2.5, 2.5, 2 ** bits) * (1 if bits > 1 else 0.4)
    for _ in range(iters):
        e = np.concatenate([[-np.inf], (c[1:] + c[:-1]) / 2, [np.inf]])
        pa, pb = _phi(e[:-1]), _phi(e[1:])
        Pa, Pb = _Phi(e[:-1]), _Phi(e[1:])
        c = (pa - pb) / np.maximum(Pb - Pa, 1e-300)
    return c


CODEBOOK = {b: lloyd_max(b) for b in range(1, 9)}
_ROTATIONS = {}


def rotation(n, tag):
    """Random n x n orthogonal matrix, seeded by (n, tag)."""
    if (n, tag) not in _ROTATIONS:
        rng = np.random.default_rng(1000 * n + tag)
        q, r = np.linalg.qr(rng.standard_normal((n, n)))
        _ROTATIONS[(n, tag)] = q * np.sign(np.diag(r))
    return _ROTATIONS[(n, tag)]


def f16(x):
    return x.astype(np.float16).astype(np.float64)


def tq_unit(x, bits, R):
    """TurboQuant_mse of the rows of x (N, n): decoded unit direction (rotated back, norm 1) and ||x||."""
    n = x.shape[1]
    nrm = np.linalg.norm(x, axis=1, keepdims=True)
    u = (x @ R.T) / np.where(nrm > 0, nrm, 1)
    c = CODEBOOK[bits] / math.sqrt(n)
    ch = c[np.searchsorted((c[1:] + c[:-1]) / 2, u)]
    ch = ch / np.linalg.norm(ch, axis=1, keepdims=True)  # norm correction: decoded vector has the stored norm
    return ch @ R, nrm


def scales(sig_a, sig_b):
    """Engine's normalize_scales: s^2 ~ sig_a / sig_b, geometric mean 1."""
    r = sig_a / sig_b
    return np.sqrt(r / np.exp(np.mean(np.log(r))))


def equivalent_bits(base_bits, base_errs, err):
    """Bits/element the baseline would need for error err: log-linear interpolation between the baseline
    points (base_bits increasing, base_errs decreasing), extrapolated from the end segments."""
    y, x = np.log(base_errs), np.log(err)
    for i in range(len(base_bits) - 1):
        if y[i] >= x >= y[i + 1] or i == len(base_bits) - 2 or (i == 0 and x > y[0]):
            return base_bits[i] + (y[i] - x) / (y[i] - y[i + 1]) * (base_bits[i + 1] - base_bits[i])
