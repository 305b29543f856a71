#!/usr/bin/env python3
"""Long-context retrieval through a compressed KV cache: the pass-key test.

A random 5-digit key is hidden at a given depth of filler text of a given length; the model is
asked for it and answers greedily (`tq run --temp 0`). A cell of the table is the number of
prompts (one per depth) whose answer contains the key. Every K/V configuration sees the same
prompts, so a lost key is the cache's doing: the f16 row says what the model itself retrieves.

Usage: bench/quality/passkey.py [--tq build/tq] [--model M] [--lengths 1024,2048,4096]
           [--depths 0.1,0.3,0.5,0.7,0.9] [--configs "f16/f16;tq4/tq3;..."] [--flags "..."]
A config is "K/V" or "K/V extra tq flags" (e.g. "tq4/tq3 --kv-window 128"). Prints a markdown
table (and each answer with --verbose). CPU, 2 cores: ~10 s a prompt at 2k tokens, ~35 s at 4k.
"""
import argparse
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
HEAD = ("There is an important pass key hidden inside a lot of irrelevant text. Find it and "
        "memorize it. I will quiz you about the pass key.\n")
TAIL = "\nWhat is the pass key? The pass key is"
TOKENS_PER_FILLER = 24.4  # SmolLM2's tokenizer; only sets the filler count, the run reports the truth


def make_prompt(length: int, depth: float, key: int) -> str:
    n = max(1, round((length - 60) / TOKENS_PER_FILLER))
    before = round(n * depth)
    needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
    return HEAD + FILLER * before + needle + FILLER * (n - before) + TAIL


def run(tq: str, model: str, prompt: str, length: int, kv: list[str], threads: int):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(prompt)
        path = f.name
    cmd = [tq, "run", "-m", model, "-f", path, "-n", "12", "--temp", "0", "-t", str(threads),
           "--ctx", str(length + 256), *kv]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    Path(path).unlink()
    if r.returncode != 0:
        sys.exit(f"passkey: {' '.join(cmd)} failed:\n{r.stderr}")
    m = re.search(r"prompt\s+(\d+) tokens", r.stderr)
    return r.stdout, int(m.group(1)) if m else -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tq", default=str(REPO / "build" / "tq"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--lengths", default="1024,2048,4096")
    ap.add_argument("--depths", default="0.1,0.3,0.5,0.7,0.9")
    ap.add_argument("--configs", default="f16/f16;q8_0/q8_0;q4_0/q4_0;tq4/tq4;tq4/tq3;tq3/tq3;tq4/tq2")
    ap.add_argument("--flags", default="", help="tq flags for every config")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    model = a.model or subprocess.run([str(REPO / "scripts" / "fetch-model.sh")], check=True,
                                      capture_output=True, text=True).stdout.strip()
    lengths = [int(x) for x in a.lengths.split(",")]
    depths = [float(x) for x in a.depths.split(",")]
    # Each (length, depth) draws its own key, so a prompt is the same whatever else is asked.
    keys = {(n, d): random.Random(f"{a.seed}/{n}/{d}").randrange(10000, 100000)
            for n in lengths for d in depths}
    configs = [c.strip() for c in a.configs.split(";") if c.strip()]
    print(f"model {Path(model).name}; flags for all: '{a.flags}'; {len(depths)} depths "
          f"{a.depths}; greedy, 12 tokens")
    print("\n| K/V | " + " | ".join(f"{n} tok" for n in lengths) + " |")
    print("|---|" + "---|" * len(lengths))
    for c in configs:
        kv_pair, *extra = c.split(" ", 1)
        k, v = kv_pair.split("/")
        kv = ["-ctk", k, "-ctv", v, *(extra[0].split() if extra else []), *a.flags.split()]
        cells = []
        for n in lengths:
            hits = 0
            for d in depths:
                key = keys[(n, d)]
                out, size = run(a.tq, model, make_prompt(n, d, key), n, kv, a.threads)
                hit = str(key) in out
                hits += hit
                if a.verbose:
                    print(f"  {c} len {size} depth {d} key {key}: {'ok' if hit else 'MISS'} {out.strip()!r}",
                          file=sys.stderr)
            cells.append(f"{hits}/{len(depths)}")
        print(f"| {c} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
