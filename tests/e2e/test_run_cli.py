"""End-to-end tests of `tq run`'s sampling seed on the default model (CPU): a seed reproduces a
sampled generation, `--seed -1` draws a seed and prints it (llama.cpp's convention) so that the
run can be repeated, and other negative seeds are refused (as by the commands whose seeds are fixed
64-bit values).

Run: TQ_BIN=build/tq python3 -m pytest -q tests/e2e/test_run_cli.py
"""
import re

from test_quality_cli import tq

ARGS = ["run", "-p", "My favourite animal is", "-n", "12", "--temp", "1.0", "--ignore-eos",
        "-t", "2"]


def test_a_seed_reproduces_a_sampled_generation():
    a, b = tq(*ARGS, "--seed", "1234"), tq(*ARGS, "--seed", "1234")
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    assert a.stdout == b.stdout and a.stdout.strip()


def test_seed_minus_one_draws_one_and_prints_it():
    r = tq(*ARGS, "--seed", "-1")
    assert r.returncode == 0, r.stderr
    m = re.search(r"^seed: (\d+)$", r.stderr, re.M)
    assert m, r.stderr
    again = tq(*ARGS, "--seed", m.group(1))
    assert again.returncode == 0 and again.stdout == r.stdout


def test_other_negative_seeds_are_refused():
    r = tq(*ARGS, "--seed", "-2")
    assert r.returncode != 0, r.stderr
    assert "--seed: a seed is an integer from 0 to 18446744073709551615 or -1 (a random one), " \
        "not '-2'" in r.stderr, r.stderr


def test_seeds_take_the_whole_uint64_range_and_no_more():
    # 2^64 - 1 is a seed of its own (not saturated to another); 2^64 is refused, not wrapped.
    top = tq(*ARGS, "--seed", str(2**64 - 1))
    below = tq(*ARGS, "--seed", str(2**63 - 1))
    assert top.returncode == 0 and below.returncode == 0, (top.stderr, below.stderr)
    assert top.stdout != below.stdout
    for bad in (str(2**64), "99999999999999999999999", "1.5", "+3"):
        r = tq(*ARGS, "--seed", bad)
        assert r.returncode != 0 and f"not '{bad}'" in r.stderr, (bad, r.stderr)


def test_fixed_seeds_refuse_a_sign():
    # CLI11 would read "-1" into a uint64_t as 2^64 - 1; make-model and the benches refuse it.
    for args in (["make-model", "--shape", "smollm2-135m", "--type", "q8_0", "-o", "/dev/null"],
                 ["quant-bench"]):
        r = tq(*args, "--seed", "-1")
        assert r.returncode != 0 and "a seed is an integer from 0 to" in r.stderr, r.stderr
