#!/usr/bin/env python3
"""End-to-end check of `tq serve` (issue #7: the server on the GPU with the same options).

Starts `tq serve -m MODEL --device DEV --port P [KV flags]`, waits for /health, then
  1. sends each of N prompts alone (greedy, temperature 0, max_tokens 32, ignore_eos): the
     reference texts;
  2. sends the same N prompts at once from N threads (continuous batching);
  3. sends one streaming chat request and reads its SSE chunks up to [DONE];
  4. sends a greedy and a sampled chat request with logprobs (top 3);
  5. reads /metrics and /v1/kv-stats;
  6. sends a sampled completion with n = 3 choices and a streamed one with n = 2 (one sequence
     per choice, the later ones reusing the first one's prompt pages), then each choice's seed
     (seed + i) alone,
checks every answer is well formed, counts how many batched greedy texts equal their solo ones
(batching may change the GEMM summation order, and with a compressed K cache the prefill
chunking, so a near tie can flip a token: a mismatch is reported with its first differing
character, and only fewer than --min-match exact matches fails), prints a Markdown summary and
exits non-zero on any failure. Python standard library only.

  python3 bench/gpu/serve_check.py --tq build/tq -m model.gguf --device cuda -ctk tq4 -ctv tq3
"""
import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "def fibonacci(n):",
    "A key-value cache stores",
    "The three laws of thermodynamics are as follows. First,",
    "Q: What is the boiling point of water at sea level?\nA:",
    "List of prime numbers: 2, 3, 5, 7, 11,",
    "In 1969, the first humans landed on the Moon. The mission was called Apollo 11 and its crew",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, args, log_path):
        self.port = args.port or free_port()
        self.base = "http://127.0.0.1:%d" % self.port
        cmd = [args.tq, "serve", "-m", args.model, "--device", args.device, "--port",
               str(self.port), "--ctx", str(args.ctx), "--max-sessions", str(args.sessions)]
        if args.ctk:
            cmd += ["-ctk", args.ctk]
        if args.ctv:
            cmd += ["-ctv", args.ctv]
        cmd += args.extra
        self.cmd = cmd
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def log_tail(self, n=20):
        self.log.flush()
        with open(self.log_path) as f:
            return "".join(f.readlines()[-n:])

    def wait_healthy(self, timeout):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.5)
        return False

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # graceful: drains, exits 0
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def post(base, path, body, timeout):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def get(base, path, timeout=10):
    with urllib.request.urlopen(base + path, timeout=timeout) as r:
        return r.read().decode()


def completion(base, prompt, max_tokens, timeout):
    """One greedy completion -> (text, usage) or raises with what was wrong."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    r = post(base, "/v1/completions", body, timeout)
    ch = r.get("choices")
    if r.get("object") != "text_completion" or not isinstance(ch, list) or len(ch) != 1:
        raise ValueError("malformed completion: %s" % json.dumps(r)[:300])
    text, finish = ch[0].get("text"), ch[0].get("finish_reason")
    usage = r.get("usage") or {}
    if not isinstance(text, str) or finish not in ("length", "stop"):
        raise ValueError("malformed choice: %s" % json.dumps(ch[0])[:300])
    if usage.get("completion_tokens", 0) < 1 or usage.get("prompt_tokens", 0) < 1:
        raise ValueError("bad usage: %s" % json.dumps(usage))
    return text, usage


def sse_chunks(base, path, body, timeout):
    """POSTs a streaming request and yields each SSE data chunk as parsed JSON, then None for
    [DONE]; raises on a response that is not an event stream or on a line that is not data."""
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        if "text/event-stream" not in r.headers.get("Content-Type", ""):
            raise ValueError("not an event stream: %s" % r.headers.get("Content-Type"))
        for raw in r:
            line = raw.decode().strip()
            if not line:
                continue
            if not line.startswith("data: "):
                raise ValueError("bad SSE line: %r" % line[:200])
            data = line[len("data: "):]
            if data == "[DONE]":
                yield None
                return
            yield json.loads(data)


def stream_chat(base, max_tokens, timeout):
    """One streaming chat request -> (content, chunks); raises on a malformed stream."""
    body = {"messages": [{"role": "user", "content": "Name three colours."}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True}
    content, chunks, done, finish = "", 0, False, None
    for c in sse_chunks(base, "/v1/chat/completions", body, timeout):
        if c is None:
            done = True
            break
        if c.get("object") != "chat.completion.chunk":
            raise ValueError("bad chunk: %s" % json.dumps(c)[:300])
        for choice in c.get("choices", []):
            content += choice.get("delta", {}).get("content") or ""
            finish = choice.get("finish_reason") or finish
        chunks += 1
    if not done or finish not in ("length", "stop"):
        raise ValueError("stream ended without [DONE] or finish_reason (%s)" % finish)
    return content, chunks


def logprobs_check(base, max_tokens, timeout, sampled):
    """A chat completion with logprobs and top_logprobs 3 (greedy, or sampled with a seed) ->
    tokens checked; raises unless every token has an entry, logprob <= 0, top 3 sorted, and a
    greedy token is the first of its top 3 (the GPU path takes them from its top candidates and
    log partition, not the logits row)."""
    body = {"messages": [{"role": "user", "content": "Count to five."}], "max_tokens": max_tokens,
            "ignore_eos": True, "logprobs": True, "top_logprobs": 3}
    body.update({"temperature": 0.8, "top_k": 40, "seed": 7} if sampled else {"temperature": 0})
    r = post(base, "/v1/chat/completions", body, timeout)
    content = ((r.get("choices") or [{}])[0].get("logprobs") or {}).get("content")
    n = (r.get("usage") or {}).get("completion_tokens")
    if not isinstance(content, list) or len(content) != n:
        raise ValueError("logprobs.content of %s entries for %s tokens" %
                         (len(content) if isinstance(content, list) else None, n))
    for i, e in enumerate(content):
        top = e.get("top_logprobs") or []
        lps = [t.get("logprob") for t in top]
        lp = e.get("logprob")
        if (len(top) != 3 or not isinstance(lp, (int, float)) or lp > 0 or
                lps != sorted(lps, reverse=True) or any(x > 0 for x in lps)):
            raise ValueError("token %d: malformed logprobs %s" % (i, json.dumps(e)[:300]))
        if not sampled and (top[0].get("token") != e.get("token") or abs(lps[0] - lp) > 1e-6):
            raise ValueError("token %d: greedy token is not its top logprob: %s" %
                             (i, json.dumps(e)[:300]))
    return len(content)


def choices_check(base, max_tokens, timeout):
    """n = 3 sampled choices of one prompt, then each choice's seed alone; n = 2 streamed ->
    (equal, described). Raises unless every response is well formed: n choices with indices
    0..n-1, usage counting the prompt once (as the solo requests count it). Equality of a
    choice and its seed alone is reported, not required (the choices decode as a batch)."""
    prompt = "Write a short sentence about the sea:"
    base_body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "top_k": 40,
                 "ignore_eos": True}
    r = post(base, "/v1/completions", dict(base_body, n=3, seed=11), timeout)
    ch = r.get("choices") or []
    if sorted(c.get("index") for c in ch) != [0, 1, 2]:
        raise ValueError("n=3: choices %s" % json.dumps(ch)[:300])
    texts = {c["index"]: c.get("text") for c in ch}
    if any(not isinstance(t, str) or not t for t in texts.values()):
        raise ValueError("n=3: empty or malformed text: %s" % json.dumps(ch)[:300])
    usage = r.get("usage") or {}
    if usage.get("completion_tokens") != 3 * max_tokens:
        raise ValueError("n=3: usage %s" % json.dumps(usage))
    equal = 0
    for i in range(3):
        s = post(base, "/v1/completions", dict(base_body, seed=11 + i), timeout)
        if (s.get("usage") or {}).get("prompt_tokens") != usage.get("prompt_tokens"):
            raise ValueError("n=3 counts %s prompt tokens, a solo request %s" %
                             (usage.get("prompt_tokens"), (s.get("usage") or {}).get("prompt_tokens")))
        equal += s["choices"][0]["text"] == texts[i]
    streamed, finished, done = {0: "", 1: ""}, set(), False
    for chunk in sse_chunks(base, "/v1/completions", dict(base_body, n=2, seed=5, stream=True),
                            timeout):
        if chunk is None:
            done = True
            break
        for c in chunk.get("choices", []):
            if c.get("index") not in streamed:
                raise ValueError("n=2 stream: choice index %s" % c.get("index"))
            streamed[c["index"]] += c.get("text") or ""
            if c.get("finish_reason"):
                finished.add(c["index"])
    if not done or finished != {0, 1} or not all(streamed.values()):
        raise ValueError("n=2 stream: done %s, finished %s" % (done, sorted(finished)))
    return equal, "n=3: %d prompt + %d tokens, %d/3 equal to their seed alone; n=2 streamed: " \
        "%d + %d chars" % (usage.get("prompt_tokens"), usage.get("completion_tokens"), equal,
                           len(streamed[0]), len(streamed[1]))


def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def metric(text, name):
    total = 0.0
    found = False
    for line in text.splitlines():
        m = re.match(r"^%s(\{[^}]*\})? ([0-9.eE+-]+)$" % re.escape(name), line)
        if m:
            total += float(m.group(2))
            found = True
    return total if found else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tq", required=True, help="the tq binary")
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    ap.add_argument("--port", type=int, default=0, help="0: a free port")
    ap.add_argument("-ctk", dest="ctk", default="")
    ap.add_argument("-ctv", dest="ctv", default="")
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    # Batched decode runs one GEMM over the rows, solo decode a GEMV: equal up to summation order.
    # With f16 KV that rarely flips a greedy token; a compressed cache re-quantizes the slightly
    # different K/V, a code flips at a cell boundary, and real models' near-ties then diverge
    # (SmolLM2 tq4/tq3 on an H200: 2/8 equal over 32 tokens, first differences after 5-59
    # characters). So equality is required with f16 KV only (default) and reported otherwise.
    ap.add_argument("--min-match", type=int, default=-1,
                    help="solo == batched answers required (default: 6 with f16 KV, else 0)")
    ap.add_argument("--startup-timeout", type=float, default=300)
    ap.add_argument("--request-timeout", type=float, default=300)
    ap.add_argument("--log", default="", help="server log file (default: serve_check.log here)")
    ap.add_argument("--md", default="", help="also write the summary here")
    ap.add_argument("extra", nargs="*", help="more tq serve flags (after --)")
    args = ap.parse_args()

    kv = "%s/%s" % (args.ctk or "f16", args.ctv or "f16")
    if args.min_match < 0:
        args.min_match = 6 if kv == "f16/f16" else 0
    title = "tq serve --device %s, kv %s" % (args.device, kv)
    server = Server(args, args.log or "serve_check.log")
    errors = []
    lines = ["## %s" % title, "", "`%s`" % " ".join(server.cmd), ""]
    try:
        if not server.wait_healthy(args.startup_timeout):
            errors.append("the server did not become healthy:\n" + server.log_tail())
            raise RuntimeError
        n = len(PROMPTS)
        solo = [None] * n
        for i, p in enumerate(PROMPTS):
            try:
                solo[i] = completion(server.base, p, args.max_tokens, args.request_timeout)
            except Exception as e:  # noqa: BLE001 - every failure is reported, none escapes
                errors.append("solo request %d: %s" % (i, e))

        batched = [None] * n

        def worker(i):
            try:
                batched[i] = completion(server.base, PROMPTS[i], args.max_tokens,
                                        args.request_timeout)
            except Exception as e:  # noqa: BLE001
                errors.append("batched request %d: %s" % (i, e))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        t0 = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.time() - t0

        try:
            content, chunks = stream_chat(server.base, 16, args.request_timeout)
            stream_ok = "%d chunks, %d chars" % (chunks, len(content))
        except Exception as e:  # noqa: BLE001
            errors.append("streaming chat: %s" % e)
            stream_ok = "FAILED"

        matches, generated, prompt_tokens = 0, 0, 0
        lines += ["| # | prompt tokens | tokens | solo == batched | first difference |",
                  "|---|---|---|---|---|"]
        for i in range(n):
            if solo[i] is None or batched[i] is None:
                lines.append("| %d | | | error | |" % i)
                continue
            (st, _), (bt, bu) = solo[i], batched[i]
            generated += bu["completion_tokens"]
            prompt_tokens += bu["prompt_tokens"]
            same = st == bt
            matches += same
            lines.append("| %d | %d | %d | %s | %s |" % (
                i, bu["prompt_tokens"], bu["completion_tokens"], "yes" if same else "no",
                "" if same else "char %d: %r vs %r" % (first_diff(st, bt), st[:60], bt[:60])))

        logprob_ok = []
        for sampled in (False, True):
            try:
                logprob_ok.append("%s %d tokens" % ("sampled" if sampled else "greedy",
                                                   logprobs_check(server.base, 12,
                                                                  args.request_timeout, sampled)))
            except Exception as e:  # noqa: BLE001
                errors.append("logprobs (%s): %s" % ("sampled" if sampled else "greedy", e))
                logprob_ok.append("FAILED")

        metrics = get(server.base, "/metrics")
        kvs = json.loads(get(server.base, "/v1/kv-stats"))
        steps = metric(metrics, "tq_scheduler_steps_total")
        gen_total = metric(metrics, "tq_generated_tokens_total")
        finished = metric(metrics, "tq_requests_finished_total")
        if steps is None or gen_total is None or finished is None:
            errors.append("/metrics lacks the scheduler counters")
        elif finished < 2 * n + 3:
            errors.append("/metrics counts %d finished requests, expected %d" % (finished, 2 * n + 3))
        lines += ["",
                  "- batched: %d requests, %d prompt + %d generated tokens in %.2f s = "
                  "**%.1f generated tokens/s** aggregate" % (n, prompt_tokens, generated, wall,
                                                             generated / wall if wall else 0),
                  "- greedy solo == batched: **%d/%d** (need %d)" % (matches, n, args.min_match),
                  "- streaming chat: %s" % stream_ok,
                  "- logprobs (top 3): %s" % ", ".join(logprob_ok),
                  "- /metrics: %s steps, %s generated tokens, %s finished requests" % (
                      steps, gen_total, finished),
                  "- /v1/kv-stats: device `%s`, prefix_caching %s, pages %s/%s" % (
                      kvs.get("device"), kvs.get("prefix_caching"), kvs.get("pages_used"),
                      kvs.get("pages_total"))]
        try:
            lines.append("- choices: %s" % choices_check(server.base, 16, args.request_timeout)[1])
        except Exception as e:  # noqa: BLE001
            errors.append("n choices: %s" % e)
            lines.append("- choices: FAILED")
        if matches < args.min_match:
            errors.append("only %d/%d batched greedy texts equal their solo runs" % (matches, n))
    except RuntimeError:
        pass
    finally:
        rc = server.stop()
        if rc not in (0, None) and not errors:
            errors.append("the server exited with %s:\n%s" % (rc, server.log_tail()))
    lines += [""] + ["**FAIL**: %s" % e for e in errors] + ([] if errors else ["**PASS**"])
    out = "\n".join(lines) + "\n"
    sys.stdout.write(out)
    if args.md:
        with open(args.md, "a") as f:
            f.write(out + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
