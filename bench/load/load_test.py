#!/usr/bin/env python3
"""Load test of `tq serve`: N concurrent streaming chat clients share one long system prompt
(about 500 tokens) and hold multi-turn conversations, once per KV cache configuration.

For each configuration it starts the server on a free loopback port, runs the clients (bounded
by --turns and --time-limit), and reports failed requests (must be 0), whether /v1/kv-stats is
back at its baseline afterwards (no leaked pages), p50/p95 time to first token, aggregate
generated tokens/s, prefix-cache reuse and the peak KV pages in use.

  python3 bench/load/load_test.py --bin build/tq --configs f16,tq4-tq3 --clients 32 --turns 3

Loopback only; uses the official openai client (AsyncOpenAI).
"""
import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from openai import AsyncOpenAI

REPO = Path(__file__).resolve().parents[2]

# -ctk/-ctv per configuration name.
CONFIGS = {
    "f16": ("f16", "f16"),
    "q8_0": ("q8_0", "q8_0"),
    "tq4": ("tq4", "tq4"),
    "tq4-tq3": ("tq4", "tq3"),
    "tq3": ("tq3", "tq3"),
}

SYSTEM_SENTENCES = [
    "You are Lumen, the support assistant of the Northwind Library in the town of Brackenford.",
    "The library opens at nine in the morning and closes at eight in the evening on weekdays.",
    "On Saturdays it opens at ten and closes at four, and it is closed on Sundays and holidays.",
    "Members may borrow up to twelve books, four films and two board games at the same time.",
    "Books are lent for three weeks, films for one week and board games for two weeks.",
    "A loan can be renewed twice online or at the front desk unless another member reserved it.",
    "Late returns cost twenty cents per day for books and fifty cents per day for films.",
    "Children under twelve never pay late fees, and fees above ten euros block new loans.",
    "The reading room on the second floor is silent; group study rooms can be booked for two hours.",
    "Printing costs ten cents per black and white page and forty cents per colour page.",
    "The makerspace has two 3D printers, a laser cutter and sewing machines, after a safety course.",
    "Safety courses run every Tuesday at six in the evening and last ninety minutes.",
    "Wireless internet is free; the network is NorthwindGuest and it needs no password.",
    "Lost cards are replaced at the front desk for three euros with an identity document.",
    "Answer briefly and politely, in at most two sentences, and never invent opening hours.",
    "If a question is not about the library, say that you can only help with library matters.",
]

QUESTIONS = [
    "Can I borrow five films at once?",
    "What happens if I return a book four days late?",
    "Is the library open on Sunday?",
    "How do I book a study room?",
    "How much does colour printing cost?",
    "Can my nine year old pay late fees?",
    "When is the next 3D printer safety course?",
    "How long can I keep a board game?",
    "I lost my card, what should I do?",
    "What is the wifi password?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url, body=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def http_text(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def system_prompt(base, target_tokens):
    """Sentences repeated until the prompt has about target_tokens tokens: (text, tokens)."""
    text, n_text, i = "", 0, 0
    while True:
        candidate = (text + " " if text else "") + SYSTEM_SENTENCES[i % len(SYSTEM_SENTENCES)]
        n = len(http_json(base + "/tokenize", {"content": candidate})["tokens"])
        if n > target_tokens:
            return text, n_text
        text, n_text, i = candidate, n, i + 1


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


async def client_task(cid, client, system, args, deadline, results):
    messages = [{"role": "system", "content": system}]
    for turn in range(args.turns):
        if time.monotonic() > deadline:
            return
        messages.append({"role": "user", "content": QUESTIONS[(cid + turn) % len(QUESTIONS)]})
        t0 = time.monotonic()
        ttft, text, usage = None, "", None
        try:
            stream = await client.chat.completions.create(
                model="tq", messages=messages, max_tokens=args.max_tokens, stream=True,
                stream_options={"include_usage": True}, temperature=0.7, seed=cid * 100 + turn,
                extra_body={"ignore_eos": True})
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                if chunk.choices and chunk.choices[0].delta.content:
                    if ttft is None:
                        ttft = time.monotonic() - t0
                    text += chunk.choices[0].delta.content
            ok = usage is not None and usage.completion_tokens == args.max_tokens
            results.append({"ok": ok, "ttft": ttft, "seconds": time.monotonic() - t0,
                            "completion_tokens": usage.completion_tokens if usage else 0,
                            "prompt_tokens": usage.prompt_tokens if usage else 0,
                            "cached_tokens": (usage.prompt_tokens_details.cached_tokens
                                              if usage and usage.prompt_tokens_details else 0),
                            "error": None if ok else f"usage {usage}"})
        except Exception as e:  # noqa: BLE001 - every failure is counted and printed
            results.append({"ok": False, "ttft": ttft, "seconds": time.monotonic() - t0,
                            "completion_tokens": 0, "prompt_tokens": 0, "cached_tokens": 0,
                            "error": repr(e)})
            return
        messages.append({"role": "assistant", "content": text})


async def sample_peak(base, stop, peak):
    while not stop.is_set():
        try:
            s = await asyncio.to_thread(http_json, base + "/v1/kv-stats")
            peak["pages_used"] = max(peak.get("pages_used", 0), s["pages_used"])
            peak["used_bytes"] = max(peak.get("used_bytes", 0), s["used_bytes"])
            m = await asyncio.to_thread(http_text, base + "/metrics")
            peak["running"] = max(peak.get("running", 0), metric(m, "tq_running_sequences"))
            peak["queued"] = max(peak.get("queued", 0), metric(m, "tq_queue_depth"))
        except OSError:
            pass
        await asyncio.sleep(0.5)


async def run_clients(base, system, args):
    client = AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0,
                         timeout=args.time_limit + 60)
    deadline = time.monotonic() + args.time_limit
    results, peak, stop = [], {}, asyncio.Event()
    sampler = asyncio.create_task(sample_peak(base, stop, peak))
    t0 = time.monotonic()
    await asyncio.gather(*(client_task(i, client, system, args, deadline, results)
                           for i in range(args.clients)))
    wall = time.monotonic() - t0
    stop.set()
    await sampler
    await client.close()
    return results, wall, peak


def wait_idle(base, timeout=30):
    deadline = time.time() + timeout
    while True:
        s = http_json(base + "/v1/kv-stats")
        if (s["pages_used"] == 0 and s["sequences"] == 0) or time.time() > deadline:
            return s
        time.sleep(0.2)


def run_config(name, args):
    k, v = CONFIGS[name]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [args.bin, "serve", "--port", str(port), "-ctk", k, "-ctv", v, "--ctx", str(args.ctx),
           "--max-sessions", str(args.clients), "--queue", str(2 * args.clients),
           "--threads", str(args.threads), "--kv-memory", args.kv_memory]
    log = open(f"/tmp/tq-load-{name}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                if http_json(base + "/health")["status"] == "ok":
                    break
            except OSError:
                time.sleep(0.2)
        system, system_tokens = system_prompt(base, args.system_tokens)
        baseline = http_json(base + "/v1/kv-stats")
        results, wall, peak = asyncio.run(run_clients(base, system, args))
        after = wait_idle(base)
        metrics = http_text(base + "/metrics")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
        log.close()
    ttfts = [r["ttft"] for r in results if r["ok"] and r["ttft"] is not None]
    gen = sum(r["completion_tokens"] for r in results)
    prompt = sum(r["prompt_tokens"] for r in results)
    cached = sum(r["cached_tokens"] for r in results)
    errors = [r["error"] for r in results if not r["ok"]]
    return {
        "config": name, "ctk": k, "ctv": v, "clients": args.clients, "turns": args.turns,
        "requests": len(results), "failed": len(errors), "errors": errors[:5],
        "wall_s": round(wall, 1), "generated_tokens": gen,
        "gen_tokens_per_s": round(gen / wall, 2) if wall > 0 else 0,
        "ttft_p50_s": round(percentile(ttfts, 50), 3), "ttft_p95_s": round(percentile(ttfts, 95), 3),
        "prompt_tokens": prompt, "cached_prompt_tokens": cached,
        "system_prompt_tokens": system_tokens,
        "pages_total": baseline["pages_total"], "page_bytes": baseline["page_bytes"],
        "peak_pages_used": peak.get("pages_used", 0), "peak_used_bytes": peak.get("used_bytes", 0),
        "peak_running": int(peak.get("running", 0)), "peak_queued": int(peak.get("queued", 0)),
        "baseline_pages_used": baseline["pages_used"], "after_pages_used": after["pages_used"],
        "after_sequences": after["sequences"],
        "no_leak": after["pages_used"] == baseline["pages_used"] and after["sequences"] == 0,
        "formats_ratio_vs_f16": round(baseline["formats_compression_ratio"], 3),
        "steps": int(metric(metrics, "tq_scheduler_steps_total")),
        "exit_code": rc,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bin", default=str(REPO / "build" / "tq"))
    ap.add_argument("--configs", default="f16,tq4-tq3,tq3", help=",".join(CONFIGS))
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--system-tokens", type=int, default=500)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--kv-memory", default="0", help="per server (0: clients x full context)")
    ap.add_argument("--time-limit", type=float, default=240, help="seconds per configuration")
    ap.add_argument("--json", help="append one JSON line per configuration to this file")
    args = ap.parse_args()
    rows = []
    for name in args.configs.split(","):
        print(f"== {name}: {args.clients} clients x {args.turns} turns", file=sys.stderr, flush=True)
        row = run_config(name, args)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
    print("\n| cache K/V | requests | failed | no leak | TTFT p50 s | TTFT p95 s | gen tok/s |"
          " cached prompt tok | peak pages (of) | peak running |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['ctk']}/{r['ctv']} | {r['requests']} | {r['failed']} | {r['no_leak']} | "
              f"{r['ttft_p50_s']} | {r['ttft_p95_s']} | {r['gen_tokens_per_s']} | "
              f"{r['cached_prompt_tokens']}/{r['prompt_tokens']} | "
              f"{r['peak_pages_used']} ({r['pages_total']}) | {r['peak_running']} |")
    bad = [r for r in rows if r["failed"] or not r["no_leak"] or r["exit_code"] != 0]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
