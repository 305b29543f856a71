"""End-to-end tests of `tq bench voice` on the default model (CPU): tiny sizes (2 sessions x 2
turns x 4 tokens), checking the Markdown tables' rows and numbers, that the second turn takes
its earlier conversation from the prefix cache, that --no-prefix-cache takes nothing, and that
bad input is refused before anything runs.

Run: TQ_BIN=build/tq python3 -m pytest -q tests/e2e/test_bench_voice.py
"""
import os
import subprocess
from pathlib import Path

from conftest import REPO, _model_path, _require

SESSIONS, TURNS, TOKENS = 2, 2, 4
TINY = ["--sessions", str(SESSIONS), "--turns", str(TURNS), "--tokens", str(TOKENS),
        "--ramp", "0.2", "-t", "2"]
# SmolLM2-135M: 30 layers x 3 KV heads x head dim 64, K and V in f16.
F16_BYTES_PER_TOKEN = 30 * 3 * 64 * 2 * 2
BLOCK_TOKENS = 32  # the KV page size (kv::KvConfig default); prefixes are shared in whole pages


def run_voice(*args: str) -> subprocess.CompletedProcess:
    binary = Path(os.environ.get("TQ_BIN", REPO / "build" / "tq"))
    _require(binary, "tq binary")
    _require(_model_path(), "default model")
    return subprocess.run([str(binary), "bench", "voice", *args], capture_output=True,
                          text=True, timeout=600)


def table(stdout: str, header_start: str) -> list[dict]:
    """Rows of the Markdown table whose header line starts with `header_start`, as dicts."""
    lines = stdout.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith(header_start))
    names = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.append({n: (c if n == "K/V" else float(c)) for n, c in zip(names, cells)})
    return rows


def test_tables_and_prefix_reuse():
    r = run_voice(*TINY, "--kv", "f16/f16,tq4/tq3")
    assert r.returncode == 0, r.stderr
    runs = table(r.stdout, "| K/V | KV B/token |")
    assert [row["K/V"] for row in runs] == ["f16/f16", "tq4/tq3"]
    for row in runs:
        assert row["requests"] == SESSIONS * TURNS
        assert row["prompt tokens"] == row["cached"] + row["computed"]
        assert row["cached"] > 0, row  # the shared system prompt at least
        assert 0 < row["TTFT p50 ms"] <= row["TTFT p95 ms"]
        assert row["TPOT p50 ms"] > 0
        # Every answer is exactly TOKENS tokens (EOS ignored): tokens/s x wall = all of them, up
        # to the table's rounding (tok/s to 0.05, seconds to 0.005; a slow ASan run prints 1.2).
        rounding = 0.05 * row["wall s"] + 0.005 * row["gen tok/s"] + 0.01
        assert abs(row["gen tok/s"] * row["wall s"] - SESSIONS * TURNS * TOKENS) <= rounding, row
    assert runs[0]["KV B/token"] == F16_BYTES_PER_TOKEN
    assert runs[1]["KV B/token"] < F16_BYTES_PER_TOKEN / 3  # 4 + 3 bits vs 16 + 16
    # Both formats see the same prompts (greedy answers may differ, so only turn 1's sizes).
    turns = table(r.stdout, "| K/V | turn |")
    assert [(t["K/V"], t["turn"]) for t in turns] == [
        ("f16/f16", 1), ("f16/f16", 2), ("tq4/tq3", 1), ("tq4/tq3", 2)]
    assert turns[0]["prompt tokens"] == turns[2]["prompt tokens"]
    for first, second in (turns[0:2], turns[2:4]):
        assert first["requests"] == second["requests"] == SESSIONS
        assert second["prompt tokens"] > first["prompt tokens"]  # the conversation grew
        # Turn 2 reuses all of turn 1's prompt but its last partial page, not just the system.
        assert second["cached"] >= first["prompt tokens"] - BLOCK_TOKENS, (first, second)
        assert second["cached"] > first["cached"]
    assert "Command: `tq bench voice " in r.stdout and "--kv f16/f16,tq4/tq3" in r.stdout


def test_no_prefix_cache_takes_nothing():
    r = run_voice(*TINY, "--kv", "f16/f16", "--no-prefix-cache")
    assert r.returncode == 0, r.stderr
    (row,) = table(r.stdout, "| K/V | KV B/token |")
    assert row["cached"] == 0 and row["computed"] == row["prompt tokens"] > 0


def test_bad_input_is_refused():
    r = run_voice("--sessions", "0")
    assert r.returncode == 2 and "--sessions must be >= 1" in r.stderr
    r = run_voice(*TINY, "--ctx", "128")
    assert r.returncode == 2, r.stderr
    assert "would be about" in r.stderr and "--ctx 128" in r.stderr
    r = run_voice(*TINY, "--no-such-option", "1")
    assert r.returncode == 2 and "unexpected argument '--no-such-option'" in r.stderr
    r = run_voice(*TINY, "--kv", "tq4")
    assert r.returncode == 2 and "K/V" in r.stderr
