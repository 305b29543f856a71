#!/usr/bin/env python3
"""Resident memory of a long-context `tq run` per KV-cache format, against the byte formula.

Runs `tq run` on a long prompt (the start of the shared novel) once per K/V format, reads each
child's peak resident set (os.wait4), and compares RSS differences with the KV bytes the cache
formula predicts (`tq capacity`'s B/token column): the pool is reserved for ctx tokens but its
pages become resident only when written, so RSS(f16) - RSS(x) should equal
T * (B/token(f16) - B/token(x)) for the T tokens the run stored.

    python3 bench/memory/kv_rss.py [--tq build/tq] [--ctx 8192] [--chars 30000]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXT = os.path.join(ROOT, "..", "shared", "data", "text", "pride-and-prejudice.txt")


def peak_rss_bytes(cmd):
    """Runs cmd; returns (exit code, peak RSS in bytes, stderr text)."""
    with tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(p.pid, 0)
        err.seek(0)
        return os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024, err.read().decode()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tq", default=os.path.join(ROOT, "build", "tq"))
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--chars", type=int, default=30000, help="prompt: first N characters of the novel")
    ap.add_argument("--configs", default="f16/f16,q8_0/q8_0,tq4/tq4,tq4/tq3,tq3/tq3")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    if not os.path.exists(TEXT):
        sys.exit(f"kv_rss: {TEXT} is missing (../shared/data/text from the repository root)")
    with open(TEXT, encoding="utf-8") as f:
        prompt = f.read()[: a.chars]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(prompt)
        prompt_file = f.name
    rows = []
    for cfg in a.configs.split(","):
        k, v = cfg.split("/")
        cmd = [a.tq, "run", "-f", prompt_file, "-n", "1", "--ctx", str(a.ctx), "-t", str(a.threads),
               "-ctk", k, "-ctv", v]
        code, rss, err = peak_rss_bytes(cmd)
        if code != 0:
            sys.exit(f"kv_rss: {' '.join(cmd)} failed ({code}):\n{err}")
        cap = subprocess.run([a.tq, "capacity", "--ctx", str(a.ctx), "--mem", "1GiB",
                              "--configs", cfg], capture_output=True, text=True, check=True)
        row = [r for r in cap.stdout.splitlines() if r.startswith(f"| {cfg} |")][0]
        info = {"bytes_per_token": float(row.split("|")[3])}
        prompt_tokens = next((int(line.split()[3]) for line in err.splitlines()
                              if "prompt" in line and "tokens in" in line), 0)
        rows.append((cfg, rss, info, prompt_tokens))
        print(f"{cfg}: peak RSS {rss / 2**20:.1f} MiB, prompt {prompt_tokens} tokens", file=sys.stderr)
    os.unlink(prompt_file)
    base_cfg, base_rss, base_info, _ = rows[0]
    print(f"| K/V | peak RSS MiB | RSS saved vs {base_cfg} MiB | KV bytes/token | predicted saving MiB | measured / predicted |")
    print("|---|---|---|---|---|---|")
    base_bpt = base_info.get("bytes_per_token", 0)
    for cfg, rss, info, tokens in rows:
        bpt = info.get("bytes_per_token", 0)
        saved = (base_rss - rss) / 2**20
        predicted = tokens * (base_bpt - bpt) / 2**20  # the prompt (the one sampled token is not stored)
        ratio = f"{saved / predicted:.3f}" if predicted > 0 else "-"
        print(f"| {cfg} | {rss / 2**20:.1f} | {saved:.1f} | {bpt:.0f} | {predicted:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
