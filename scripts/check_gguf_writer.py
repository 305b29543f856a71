#!/usr/bin/env python3
"""Proves the Python gguf package reads what tq's GgufWriter writes.

Runs the GgufWriter.WritesSampleForPythonCheck test of tq_tests with TQ_GGUF_SAMPLE_OUT set
(alignment 64, every metadata value type, q4_1 / q8_0 / f16 / f32 tensors), then reads the
file with gguf.GGUFReader and checks every value and tensor.

Usage: python3 scripts/check_gguf_writer.py [path/to/tq_tests]   (default build/tq_tests)
Exit status 0 and "OK" when everything matches.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize


def field_value(reader, key):
    f = reader.fields[key]
    vt = gguf.GGUFValueType(f.types[0])
    if vt == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    if vt == gguf.GGUFValueType.ARRAY:
        et = gguf.GGUFValueType(f.types[1])
        if et == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i][0].item() for i in f.data]
    return f.parts[f.data[0]][0].item()


def main():
    tests = sys.argv[1] if len(sys.argv) > 1 else "build/tq_tests"
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "sample.gguf")
        env = dict(os.environ, TQ_GGUF_SAMPLE_OUT=path)
        subprocess.run([tests, "--gtest_filter=GgufWriter.WritesSampleForPythonCheck"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        r = gguf.GGUFReader(path)
        expected = {
            "general.alignment": 64,
            "general.architecture": "llama",
            "t.u8": 200, "t.i8": -100, "t.u16": 60000, "t.i16": -30000, "t.u32": 7,
            "t.i32": -2000000000, "t.u64": 18000000000000000000, "t.i64": -9000000000000000000,
            "t.f32": 0.25, "t.f64": -1.0 / 3.0, "t.bool": True,
            "t.strs": ["a", "", "hello world", "\u2581x"],
            "t.i32s": [1, -2, 3], "t.f32s": [0.5, -1.5],
        }
        for key, want in expected.items():
            got = field_value(r, key)
            assert got == want, f"{key}: python reads {got!r}, expected {want!r}"
        types = {t.name: t for t in r.tensors}
        assert list(types) == ["w.q4_1", "w.q8_0", "w.f16", "norm"], list(types)
        want_types = {"w.q4_1": Q.Q4_1, "w.q8_0": Q.Q8_0, "w.f16": Q.F16, "norm": Q.F32}
        want_shapes = {"w.q4_1": [64, 3], "w.q8_0": [64, 3], "w.f16": [5, 3], "norm": [7]}
        for name, t in types.items():
            assert t.tensor_type == want_types[name], (name, t.tensor_type)
            assert list(map(int, t.shape)) == want_shapes[name], (name, t.shape)
            assert t.data_offset % 64 == 0, (name, t.data_offset)
        # All four tensors hold quantizations of the same values (Rng(42) normals).
        q8 = dequantize(np.asarray(types["w.q8_0"].data).reshape(-1), Q.Q8_0).reshape(-1)
        q4 = dequantize(np.asarray(types["w.q4_1"].data).reshape(-1), Q.Q4_1).reshape(-1)
        f16 = np.asarray(types["w.f16"].data, dtype=np.float32).reshape(-1)
        f32 = np.asarray(types["norm"].data, dtype=np.float32).reshape(-1)
        assert np.allclose(f16[:7], f32, rtol=1e-3, atol=1e-3), (f16[:7], f32)
        assert np.allclose(q8[:15], f16, atol=0.05), (q8[:15], f16)
        assert np.max(np.abs(q4 - q8)) < 0.5, np.max(np.abs(q4 - q8))
    print("OK: gguf.GGUFReader reads tq's GgufWriter output (metadata, 4 tensors, alignment 64)")


if __name__ == "__main__":
    main()
