#!/usr/bin/env python3
"""Writes tests/data/ggml_types.gguf: the Python gguf package's view of the ggml weight types,
for tests/quant/ggml_dequant_test.cpp (and a reader check on a file tq did not write).

For each type T:
  "<t>.raw"   random blocks of type T (scale fields set to finite fp16 values)
  "<t>.deq"   gguf.quants.dequantize(raw, T) as F32
For each type tq can quantize:
  "src"       F32 values (varied block scales, a zero block and a constant block)
  "<t>.quant" gguf.quants.quantize(src, T)

Usage: python3 scripts/gen_ggml_fixtures.py [out_path]   (seed 1234, deterministic)
"""
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

SEED = 1234
N = 512  # elements per tensor: 16 blocks of 32, 2 super-blocks of 256

DEQUANT_TYPES = [T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]
QUANT_TYPES = [T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]

# Byte offsets of fp16 scale fields inside one block.
HALF_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}


def random_blocks(rng, qtype):
    if qtype == T.F16:
        return rng.normal(0, 1, N).astype(np.float16).view(np.uint8)
    if qtype == T.BF16:
        f = rng.normal(0, 1, N).astype(np.float32)
        return (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = N // block_elems
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for off in HALF_FIELDS[qtype]:
        scale = (rng.uniform(0.001, 0.1, n_blocks) * rng.choice([-1.0, 1.0], n_blocks))
        raw[:, off:off + 2] = scale.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1)


def source_values(rng):
    x = rng.normal(0, 1, N).astype(np.float32)
    scales = rng.uniform(0.01, 4.0, N // 32).astype(np.float32)
    x *= np.repeat(scales, 32)
    x[64:96] = 0.0          # a zero block: d = 0
    x[96:128] = 0.75        # a constant block
    x[5] = 40.0             # an outlier
    return x


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/data/ggml_types.gguf"
    rng = np.random.default_rng(SEED)
    w = gguf.GGUFWriter(out, arch="tq-fixture")
    w.add_uint32("tq.fixture.seed", SEED)
    w.add_uint32("tq.fixture.n", N)
    for qt in DEQUANT_TYPES:
        name = qt.name.lower()
        raw = random_blocks(rng, qt)
        deq = dequantize(raw, qt).astype(np.float32).reshape(-1)
        assert deq.shape == (N,) and np.all(np.isfinite(deq)), name
        w.add_tensor(f"{name}.raw", raw, raw_shape=raw.shape, raw_dtype=qt)
        w.add_tensor(f"{name}.deq", deq)
    src = source_values(rng)
    w.add_tensor("src", src)
    for qt in QUANT_TYPES:
        q = quantize(src, qt)
        q = q.view(np.uint8).reshape(-1)
        w.add_tensor(f"{qt.name.lower()}.quant", q, raw_shape=q.shape, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
