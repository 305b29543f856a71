"""End-to-end tests of the quality commands' --ubatch and --decode on the default model (CPU):
appending each chunk in passes of N tokens, or its scored half one token per pass, leaves an f16
cache's perplexity unchanged (the same rows, the same attention; only the passes differ),
changes a compressed cache whose key means and scales come from the first pass or whose window
each decode step sees exact, and a negative --ubatch is refused. The text is the repository's
README.md, so the tests need no data beside the model.

Run: TQ_BIN=build/tq python3 -m pytest -q tests/e2e/test_quality_cli.py
"""
import json
import os
import subprocess
from pathlib import Path

from conftest import REPO, _model_path, _require

TEXT = REPO / "README.md"
BASE = ["-f", str(TEXT), "--ctx", "128", "--chunks", "2", "-t", "2", "--json"]


def tq(*args: str) -> subprocess.CompletedProcess:
    binary = Path(os.environ.get("TQ_BIN", REPO / "build" / "tq"))
    _require(binary, "tq binary")
    _require(_model_path(), "default model")
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=600)


def ppl(*args: str) -> dict:
    r = tq("ppl", *BASE, *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def verify(*args: str) -> dict:
    r = tq("verify", *BASE, *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_ubatch_leaves_f16_perplexity_unchanged():
    whole = ppl("--ubatch", "0")
    passes = ppl("--ubatch", "16")
    assert whole["ubatch"] == 0 and passes["ubatch"] == 16
    assert whole["tokens_scored"] == passes["tokens_scored"] == 2 * (128 - 1 - 64)
    # The same rows through the same kernels in 8 passes: equal to float rounding (the tolerance
    # covers a different summation split; observed equal to the printed digits).
    assert abs(passes["ppl"] / whole["ppl"] - 1) < 1e-4, (whole["ppl"], passes["ppl"])


def test_ubatch_moves_a_cache_fitted_on_the_first_pass():
    flags = ["-ctk", "tq4", "-ctv", "tq3", "--kv-key-scaling", "on", "--kv-value-scaling", "on"]
    whole = ppl(*flags, "--ubatch", "0")
    passes = ppl(*flags, "--ubatch", "8")
    # Key means and scales from 7 keys instead of 127: a different cache, a different PPL.
    assert whole["ppl"] != passes["ppl"], whole["ppl"]
    for r in (whole, passes):
        assert r["k"] == "tq4" and r["v"] == "tq3"
        assert 1.0 < r["ppl"] < 1000.0


def test_verify_reports_ubatch():
    r = tq("verify", *BASE, "--ubatch", "32", "-ctk", "tq4", "-ctv", "tq4")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ubatch"] == 32
    assert 0.0 <= out["kld_mean"] and 0.0 <= out["top1"] <= 1.0


def test_decode_leaves_f16_perplexity_unchanged():
    whole = ppl()
    decode = ppl("--decode")
    assert whole["decode"] is False and decode["decode"] is True
    assert whole["tokens_scored"] == decode["tokens_scored"]
    # 64 context tokens in one pass, then 63 passes of one token: the same rows and causal
    # attention (observed equal to the printed digits; the tolerance covers summation order).
    assert abs(decode["ppl"] / whole["ppl"] - 1) < 1e-4, (whole["ppl"], decode["ppl"])


def test_decode_steps_see_their_window_exact():
    # Window 32 at ctx 128: in one pass every query but the chunk's last 32 sees all of its
    # history compressed; a decode step sees its own 32 most recent tokens exact, so each scored
    # token's distribution is closer to the f16 cache's.
    flags = ["-ctk", "tq4", "-ctv", "tq3", "--kv-window", "32"]
    whole = verify(*flags)
    decode = verify(*flags, "--decode")
    assert whole["decode"] is False and decode["decode"] is True
    assert whole["tokens_scored"] == decode["tokens_scored"]
    assert 0.0 < decode["kld_mean"] < whole["kld_mean"], (whole["kld_mean"], decode["kld_mean"])


def test_negative_ubatch_is_refused():
    for cmd in ("ppl", "verify", "compare"):
        r = tq(cmd, *[a for a in BASE if a != "--json"], "--ubatch", "-3")
        assert r.returncode != 0, cmd
        assert "--ubatch must be 0 (one pass) or positive" in r.stderr, (cmd, r.stderr)


def test_defaults_are_the_recommended_cache_settings():
    # The CLI starts from 4 exact sink tokens, key scaling and value scaling
    # (kv::recommended_kv_config); the three flags give the plain method back.
    default = ppl("-ctk", "tq4", "-ctv", "tq3")
    plain = ppl("-ctk", "tq4", "-ctv", "tq3", "--kv-sinks", "0", "--kv-key-scaling", "off",
                "--kv-value-scaling", "off")
    for part in (" sinks=4 ", " key_scaling=on", " value_scaling=on"):
        assert part in default["kv"], default["kv"]
    assert " sinks=0 " in plain["kv"] and "scaling" not in plain["kv"], plain["kv"]
    # Four f16 tokens and the per-sequence scales, amortized over the chunk.
    assert default["kv_bytes_per_token"] > plain["kv_bytes_per_token"]
    assert default["ppl"] != plain["ppl"]


def test_compare_takes_flags_per_configuration():
    args = [a for a in BASE if a != "--json"]
    r = tq("compare", *args, "--configs", "tq4/tq3 --kv-sinks 0; tq4/tq3 --kv-sinks=16 ;q8_0")
    assert r.returncode == 0, r.stderr
    rows = {}
    for line in r.stdout.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 8 and cells[1] not in ("K/V (+ flags)", "---"):
            rows[cells[1]] = cells
    assert set(rows) == {"f16/f16", "tq4/tq3 --kv-sinks 0", "tq4/tq3 --kv-sinks=16", "q8_0"}, rows
    # 16 f16 sink tokens of 128 cost bytes the sink-less cache does not spend.
    assert float(rows["tq4/tq3 --kv-sinks=16"][2]) > float(rows["tq4/tq3 --kv-sinks 0"][2])
    for bad, message in (("tq4/tq3 --kv-sinks", "--kv-sinks needs a value"),
                         ("tq4/tq3;--kv-window 8", "must start with a K/V format pair"),
                         ("tq4/tq3 --kv-bogus 1", "unknown KV cache option")):
        r = tq("compare", *args, "--configs", bad)
        assert r.returncode != 0, bad
        assert message in r.stderr, (bad, r.stderr)


def test_json_escapes_the_text_name(tmp_path):
    # A file name may hold quotes and backslashes: the --json line stays JSON.
    odd = tmp_path / 'q"uo\\te.md'
    odd.write_bytes(TEXT.read_bytes())
    args = ["-f", str(odd)] + BASE[2:]
    for cmd in ("ppl", "verify"):
        r = tq(cmd, *args)
        assert r.returncode == 0, (cmd, r.stderr)
        assert json.loads(r.stdout)["text"] == odd.name, (cmd, r.stdout)


def test_bad_text_and_chunk_counts_are_refused(tmp_path):
    args = [a for a in BASE if a not in ("--json",)]
    for cmd in ("ppl", "verify"):
        r = tq(cmd, *[a if a != str(TEXT) else str(tmp_path) for a in args])
        assert r.returncode != 0 and "is a directory, not a text file" in r.stderr, (cmd, r.stderr)
        for n in ("0", "-2"):
            bad = [*args[:args.index("--chunks") + 1], n, *args[args.index("--chunks") + 2:]]
            r = tq(cmd, *bad)
            assert r.returncode != 0, (cmd, n)
            assert "--chunks must be -1 (all) or at least 1" in r.stderr, (cmd, n, r.stderr)
        r = tq(cmd, *args, "-t", "100000")
        assert r.returncode != 0 and "not in range 1 to 1024" in r.stderr, (cmd, r.stderr)
