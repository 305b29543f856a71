"""End-to-end tests of `tq serve` through the official openai client: chat and completions,
streaming and not, stop sequences, usage (against the reference tokenizer's counts in
tests/data/tokenizer_smollm2.json), log-probabilities, errors (400s, 401, 404, 413, context
length), /metrics, /v1/kv-stats and /v1/capacity, cancellation freeing KV pages, concurrent
streams, and a graceful SIGTERM.

Run: TQ_BIN=build/tq python3 -m pytest -q tests/e2e
"""
import json
import math
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, SERVE_ARGS, Server

openai = pytest.importorskip("openai")

CHAT = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
GREEDY = {"temperature": 0}


def post_raw(server, path, body: bytes, headers=None):
    """(status, parsed JSON body) of a POST with an arbitrary body."""
    req = urllib.request.Request(server.base + path, data=body, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_idle(server, timeout=20.0):
    """kv-stats once no sequence holds pages (fails after `timeout`)."""
    deadline = time.time() + timeout
    while True:
        stats = server.get_json("/v1/kv-stats")
        if stats["pages_used"] == 0 and stats["sequences"] == 0:
            return stats
        assert time.time() < deadline, f"KV pages still held: {stats}"
        time.sleep(0.1)


def assert_error_shape(body, code=None):
    assert set(body["error"]) >= {"message", "type", "param", "code"}, body
    if code is not None:
        assert body["error"]["code"] == code, body


# --- chat and completions ----------------------------------------------------------------------

def test_models(client):
    models = client.models.list()
    assert len(models.data) == 1
    assert models.data[0].id == "SmolLM2-135M-Instruct.Q4_1"
    assert client.models.retrieve(models.data[0].id).id == models.data[0].id


def test_chat_non_streaming(client):
    r = client.chat.completions.create(model="tq", messages=CHAT, max_tokens=24, **GREEDY)
    assert r.object == "chat.completion"
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert "Paris" in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_streaming_matches_non_streaming(client):
    whole = client.chat.completions.create(model="tq", messages=CHAT, max_tokens=20, **GREEDY)
    stream = client.chat.completions.create(model="tq", messages=CHAT, max_tokens=20, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY)
    text, finish, usage, roles = "", None, None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
            continue
        delta = chunk.choices[0].delta
        if delta.role:
            roles.append(delta.role)
        text += delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    assert roles == ["assistant"]
    assert text == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens


def test_completion_streaming_matches_non_streaming(client):
    prompt = "The three primary colors are"
    whole = client.completions.create(model="tq", prompt=prompt, max_tokens=16, **GREEDY)
    assert whole.object == "text_completion"
    parts = [c.choices[0].text for c in client.completions.create(
        model="tq", prompt=prompt, max_tokens=16, stream=True, **GREEDY) if c.choices]
    assert "".join(parts) == whole.choices[0].text
    assert whole.choices[0].text


def test_max_tokens_gives_length(client):
    r = client.completions.create(model="tq", prompt="Once upon a time", max_tokens=7,
                                  extra_body={"ignore_eos": True}, **GREEDY)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 7


def test_stop_sequences(client):
    prompt = "List the days of the week: Monday, Tuesday,"
    full = client.completions.create(model="tq", prompt=prompt, max_tokens=24,
                                     extra_body={"ignore_eos": True}, **GREEDY).choices[0].text
    assert len(full) > 8, full
    stop = full[len(full) // 2: len(full) // 2 + 3]
    for stops in (stop, [stop, "\u2603never"]):
        r = client.completions.create(model="tq", prompt=prompt, max_tokens=24, stop=stops,
                                      extra_body={"ignore_eos": True}, **GREEDY)
        assert r.choices[0].text == full[:full.index(stop)]
        assert r.choices[0].finish_reason == "stop"
    # The same through a stream: the held-back text never leaks the stop string.
    parts = [c.choices[0].text for c in client.completions.create(
        model="tq", prompt=prompt, max_tokens=24, stop=[stop], stream=True,
        extra_body={"ignore_eos": True}, **GREEDY) if c.choices]
    assert "".join(parts) == full[:full.index(stop)]


def test_usage_matches_reference_tokenizer(client):
    """prompt_tokens of text prompts equal the HF tokenizer's counts (committed fixture)."""
    cases = json.loads((REPO / "tests/data/tokenizer_smollm2.json").read_text())["cases"]
    checked = 0
    for case in cases:
        if not case.get("parse_special", True) or not case["ids"]:
            continue
        r = client.completions.create(model="tq", prompt=case["text"], max_tokens=1, **GREEDY)
        assert r.usage.prompt_tokens == len(case["ids"]), case["name"]
        checked += 1
        if checked == 6:
            break
    assert checked >= 3


def test_chat_usage_counts_the_template(client, server):
    # SmolLM2's template adds its default system turn when the chat has none.
    text = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\n" + CHAT[0]["content"] +
            "<|im_end|>\n<|im_start|>assistant\n")
    status, tok = post_raw(server, "/tokenize", json.dumps({"content": text}).encode())
    assert status == 200
    r = client.chat.completions.create(model="tq", messages=CHAT, max_tokens=1, **GREEDY)
    assert r.usage.prompt_tokens == len(tok["tokens"])


def test_chat_logprobs(client):
    r = client.chat.completions.create(model="tq", messages=CHAT, max_tokens=8, logprobs=True,
                                       top_logprobs=3, **GREEDY)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token  # greedy takes the most likely
        assert sum(math.exp(t.logprob) for t in entry.top_logprobs) <= 1 + 1e-4
        if all(b < 128 for b in entry.bytes):
            assert bytes(entry.bytes).decode() == entry.token


def test_completion_logprobs(client):
    r = client.completions.create(model="tq", prompt="The capital of France is", max_tokens=5,
                                  logprobs=2, **GREEDY)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset[0] == 0
    for tok, p, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert p <= 0 and len(top) == 2 and max(top.values()) == pytest.approx(p, abs=1e-6)
    # logprobs 0: the sampled token's alone; sampled (not greedy) tokens are always listed.
    r = client.completions.create(model="tq", prompt="The capital of France is", max_tokens=5,
                                  logprobs=0, **GREEDY)
    lp = r.choices[0].logprobs
    assert [list(top) for top in lp.top_logprobs] == [[t] for t in lp.tokens]
    r = client.completions.create(model="tq", prompt="My favourite animal is", max_tokens=8,
                                  logprobs=1, temperature=1.5, seed=7)
    lp = r.choices[0].logprobs
    for tok, p, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert 1 <= len(top) <= 2 and top[tok] == pytest.approx(p, abs=1e-6)


def test_seeded_sampling_is_reproducible(client):
    args = dict(model="tq", prompt="My favourite animal is", max_tokens=12, temperature=1.0,
                seed=1234, extra_body={"ignore_eos": True})
    a = client.completions.create(**args).choices[0].text
    b = client.completions.create(**args).choices[0].text
    assert a == b


# --- errors ------------------------------------------------------------------------------------

def test_bad_parameters_are_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tq", messages=CHAT, n=129)
    assert e.value.status_code == 400
    assert e.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tq", messages=CHAT, temperature=5)
    assert e.value.body["code"] == "invalid_value"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tq", messages=CHAT, extra_body={"frobnicate": 1})
    assert e.value.body["code"] == "unknown_parameter"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tq", messages=[{"role": "wizard", "content": "x"}])
    assert e.value.body["param"] == "messages[0].role"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tq", messages=CHAT, top_logprobs=3)


def test_context_length_exceeded(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tq", prompt="hello " * 2000, max_tokens=4)
    assert e.value.status_code == 400
    assert e.value.body["code"] == "context_length_exceeded"


def test_malformed_json_unknown_route_and_large_body(server):
    status, body = post_raw(server, "/v1/chat/completions", b'{"messages": [')
    assert status == 400
    assert_error_shape(body, "invalid_json")
    status, body = post_raw(server, "/v1/chat/completions", b'{"messages": "x"}')
    assert status == 400
    assert_error_shape(body, "invalid_type")
    status, body = post_raw(server, "/v1/nothing", b"{}")
    assert status == 404
    assert_error_shape(body, "not_found")
    big = json.dumps({"prompt": "a" * (5 << 20)}).encode()
    status, body = post_raw(server, "/v1/completions", big)
    assert status == 413
    assert_error_shape(body, "request_too_large")
    status, body = post_raw(server, "/v1/completions", b"[" * 100000)
    assert status == 400
    assert_error_shape(body, "invalid_json")


def test_hostile_http_bodies_and_headers(server):
    # /tokenize's messages nested 200k deep: refused before any copy recurses through them.
    n = 200000
    status, body = post_raw(server, "/tokenize", b'{"messages":' + b"[" * n + b"]" * n + b"}")
    assert status == 400
    assert_error_shape(body, "invalid_json")
    # A chunked upload would bypass the body limit (httplib checks Content-Length only).
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    payload = json.dumps({"prompt": "Hi", "max_tokens": 1}).encode()
    conn.request("POST", "/v1/completions", body=iter([payload]),
                 headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    r = conn.getresponse()
    assert r.status == 411
    assert_error_shape(json.loads(r.read()), "length_required")
    conn.close()
    # Content-Length headers that disagree: refused (RFC 9112), not read by the first one.
    import socket
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: 2\r\nContent-Length: 13\r\nConnection: close\r\n\r\n"
                     b'{"prompt":"a"}')
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer
    assert_error_shape(json.loads(body), "invalid_content_length")
    # httplib's own refusals (here an unknown method) carry a code like every other error.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("FROB", "/v1/models")
    r = conn.getresponse()
    assert r.status == 400
    assert_error_shape(json.loads(r.read()), "http_400")
    conn.close()
    # A Range header is ignored: the whole JSON answer, not its first bytes.
    status, body = post_raw(server, "/v1/completions",
                            json.dumps({"prompt": "Hi", "max_tokens": 2, **GREEDY}).encode(),
                            headers={"Range": "bytes=0-10"})
    assert status == 200 and body["choices"][0]["text"], body


def test_tiny_temperature_is_near_greedy(client):
    # 1e-38: logit / T overflowed to inf and the draw fell to the vocabulary's last token.
    greedy = client.completions.create(model="tq", prompt="The capital of France is",
                                       max_tokens=6, **GREEDY)
    tiny = client.completions.create(model="tq", prompt="The capital of France is", max_tokens=6,
                                     temperature=1e-38, seed=1)
    assert tiny.choices[0].text == greedy.choices[0].text


def test_api_key():
    s = Server(*SERVE_ARGS, "--api-key", "k-123")
    try:
        bad = openai.OpenAI(base_url=s.base + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            bad.models.list()
        assert e.value.status_code == 401
        assert e.value.body["code"] == "invalid_api_key"
        status, body = post_raw(s, "/v1/completions", b'{"prompt":"x"}')
        assert status == 401
        assert_error_shape(body, "invalid_api_key")
        good = openai.OpenAI(base_url=s.base + "/v1", api_key="k-123", max_retries=0)
        r = good.completions.create(model="tq", prompt="Hi", max_tokens=2)
        assert r.usage.completion_tokens >= 1
        assert s.get_json("/health")["status"] == "ok"  # no key needed
    finally:
        assert s.stop() == 0


# --- observability and resources ---------------------------------------------------------------

def test_metrics_and_kv_stats(client, server):
    client.completions.create(model="tq", prompt="Hello", max_tokens=3, **GREEDY)
    metrics = server.get_text("/metrics")
    for family in ("tq_requests_total", "tq_prompt_tokens_total", "tq_generated_tokens_total",
                   "tq_time_to_first_token_seconds_bucket", "tq_inter_token_latency_seconds_count",
                   "tq_queue_depth", "tq_running_sequences", "tq_kv_pages_used",
                   "tq_kv_compression_ratio"):
        assert f"\n{family}" in metrics, family
    assert 'tq_requests_total{route="/v1/completions",status="200"}' in metrics
    stats = wait_idle(server)
    assert stats["pages_total"] > 0
    assert stats["pages_free"] + stats["pages_cached"] == stats["pages_total"]
    assert stats["formats_compression_ratio"] > 3.5  # tq4 keys + tq3 values vs f16
    assert {f["format"] for f in stats["per_format"]} == {"K tq4", "V tq3"}
    cap = server.get_json("/v1/capacity")
    assert cap["context"] == 1024 and cap["max_sessions"] == 4
    assert cap["sessions_fit_now"] == 4
    # Pages, plus the default 4 sink tokens' f16 rows outside the pool: K and V of SmolLM2's
    # 30 layers x 3 KV heads x 64 dims, 2 bytes each.
    assert cap["exact_bytes_per_session"] == 4 * 2 * 30 * 3 * 64 * 2
    assert cap["bytes_per_session"] == (cap["pages_per_session"] * cap["page_bytes"] +
                                        cap["exact_bytes_per_session"])


def test_cancellation_frees_blocks(client, server):
    before = server.get_text("/metrics")
    stream = client.completions.create(model="tq", prompt="Write a very long story.",
                                       max_tokens=800, stream=True,
                                       extra_body={"ignore_eos": True})
    got = 0
    for chunk in stream:
        got += 1
        if got == 5:
            break
    assert server.get_json("/v1/kv-stats")["pages_used"] > 0
    stream.close()  # the client goes away mid-stream
    wait_idle(server)

    def cancelled(text):
        line = [l for l in text.splitlines() if l.startswith('tq_requests_finished_total{reason="cancelled"}')]
        return int(line[0].split()[-1])
    assert cancelled(server.get_text("/metrics")) == cancelled(before) + 1


def _cancelled_count(server):
    line = [l for l in server.get_text("/metrics").splitlines()
            if l.startswith('tq_requests_finished_total{reason="cancelled"}')]
    return int(line[0].split()[-1])


def test_non_streaming_disconnect_frees_blocks():
    """A non-streaming client that goes away is noticed (the long answer's body starts with
    keep-alive spaces) and its request is cancelled, long before max_tokens would end it."""
    import http.client
    s = Server("-ctk", "tq4", "-ctv", "tq3", "--ctx", "8192", "--max-sessions", "2",
               "--threads", "2", "--shutdown-timeout", "5")
    try:
        before = _cancelled_count(s)
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
        body = json.dumps({"model": "tq", "prompt": "Write a very long story.", "max_tokens": 8000,
                           "ignore_eos": True, "temperature": 0})
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        time.sleep(3.0)  # past the 2 s after which the server answers with keep-alive spaces
        assert s.get_json("/v1/kv-stats")["pages_used"] > 0
        conn.sock.close()  # gone without reading the answer
        wait_idle(s, timeout=20)
        assert _cancelled_count(s) == before + 1
    finally:
        assert s.stop() == 0, s.output()


def test_slow_non_streaming_answer_is_valid_json(client):
    """An answer that takes longer than the keep-alive interval is still one JSON object."""
    r = client.completions.create(model="tq", prompt="Once upon a time", max_tokens=300,
                                  extra_body={"ignore_eos": True}, temperature=0)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 300


def ask_count(client, i: int, stream: bool) -> str:
    messages = [{"role": "user", "content": f"Count from {i} to {i + 5}."}]
    if not stream:
        return client.chat.completions.create(model="tq", messages=messages, max_tokens=24,
                                              **GREEDY).choices[0].message.content
    text = ""
    for c in client.chat.completions.create(model="tq", messages=messages, max_tokens=24,
                                            stream=True, **GREEDY):
        if c.choices:
            text += c.choices[0].delta.content or ""
    return text


def run_concurrently(client, n: int) -> dict:
    results, errors = {}, []

    def run(i):
        try:
            results[i] = ask_count(client, i, stream=True)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert len(results) == n and all(results.values())
    return results


def test_concurrent_streams(client, server):
    # Batched with others, each stream equals the same request alone (greedy) when both compute
    # the same passes. A first request caches the prompt's pages; the batch's request and the
    # one alone after it both reuse them (with the statistics they were written with) and
    # compute the rest of the prompt in one pass. A fresh prompt is one pass over all of its
    # tokens instead: the same in exact arithmetic, not bit for bit, and a greedy answer of this
    # small model can flip on the last bits (docs/kv-cache.md, "What a reused prefix brings");
    # test_concurrent_streams_without_prefix_cache compares fresh requests with fresh ones.
    ask_count(client, 2, stream=False)
    results = run_concurrently(client, 6)
    alone = ask_count(client, 2, stream=False)
    assert results[2] == alone
    wait_idle(server)


def test_concurrent_streams_without_prefix_cache():
    # Without the prefix cache every request's statistics come from its own prompt: the batch
    # after the request alone is then batched decoding from scratch, and equal to it as well.
    s = Server(*SERVE_ARGS, "--no-prefix-cache")
    try:
        c = openai.OpenAI(base_url=s.base + "/v1", api_key="x", max_retries=0, timeout=120)
        alone = {i: ask_count(c, i, stream=False) for i in (1, 4)}
        results = run_concurrently(c, 6)
        assert results[1] == alone[1] and results[4] == alone[4], (alone, results)
        assert s.get_json("/v1/kv-stats")["prefix_hit_tokens"] == 0
    finally:
        assert s.stop() == 0, s.output()


def test_sigterm_is_graceful():
    i = SERVE_ARGS.index("--shutdown-timeout")
    s = Server(*SERVE_ARGS[:i], *SERVE_ARGS[i + 2:], "--shutdown-timeout", "30")
    c = openai.OpenAI(base_url=s.base + "/v1", api_key="x", max_retries=0)
    stream = c.completions.create(model="tq", prompt="Tell me a story.", max_tokens=24,
                                  stream=True, extra_body={"ignore_eos": True}, **GREEDY)
    first = next(iter(stream))
    s.proc.send_signal(signal.SIGTERM)
    text = (first.choices[0].text if first.choices else "") + "".join(
        ch.choices[0].text for ch in stream if ch.choices)
    assert text  # the running stream was allowed to finish
    assert s.proc.wait(60) == 0
    s.stop()


def test_sigterm_exits_despite_a_trickling_client():
    # A client that sends a byte every second keeps an httplib worker past any read timeout:
    # after the requests end, the process exits within the close grace (5 s) anyway.
    import socket
    i = SERVE_ARGS.index("--shutdown-timeout")
    s = Server(*SERVE_ARGS[:i], *SERVE_ARGS[i + 2:], "--shutdown-timeout", "1")
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=5)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n{")
    stop = threading.Event()

    def trickle():
        while not stop.is_set():
            try:
                sock.sendall(b" ")
            except OSError:
                return
            time.sleep(1.0)

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    time.sleep(0.5)
    start = time.time()
    s.proc.send_signal(signal.SIGTERM)
    try:
        assert s.proc.wait(30) == 0
        assert time.time() - start < 20, time.time() - start
    finally:
        stop.set()
        sock.close()
        s.stop()


def test_several_choices_share_the_prompt(client, server):
    # n choices are n sequences of one prompt: the later ones reuse the first one's prompt pages
    # (the prefix cache), each samples with the seed + its index.
    prompt = "Write one sentence about the sea. " * 12  # ~100 tokens: several full pages
    before = server.get_json("/v1/kv-stats")["prefix_hit_tokens"]
    r = client.chat.completions.create(model="tq", messages=[{"role": "user", "content": prompt}],
                                       n=3, max_tokens=8, temperature=0.9, seed=11)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.finish_reason in ("stop", "length") and c.message.content for c in r.choices)
    assert r.usage.prompt_tokens > 64 and 3 <= r.usage.completion_tokens <= 24
    hits = server.get_json("/v1/kv-stats")["prefix_hit_tokens"] - before
    assert hits >= 2 * 64, hits  # choices 1 and 2: at least two pages of 32 tokens each
    # Choice 2 is the draw of the same request with seed 13 alone.
    alone = client.chat.completions.create(
        model="tq", messages=[{"role": "user", "content": prompt}], max_tokens=8,
        temperature=0.9, seed=13)
    assert alone.choices[0].message.content == r.choices[2].message.content
    texts = {0: "", 1: ""}
    finishes = {0: 0, 1: 0}
    for c in client.chat.completions.create(
            model="tq", messages=[{"role": "user", "content": prompt}], n=2, max_tokens=6,
            stream=True, **GREEDY):
        for ch in c.choices:
            texts[ch.index] += ch.delta.content or ""
            finishes[ch.index] += ch.finish_reason is not None
    assert finishes == {0: 1, 1: 1} and texts[0] == texts[1] and texts[0], (texts, finishes)
    wait_idle(server)


def test_several_choices_cancelled_together(client, server):
    # A stream of more choices than sessions (some still queued) that the client closes: every
    # choice is cancelled and frees its pages, running or not.
    stream = client.chat.completions.create(
        model="tq", messages=[{"role": "user", "content": "Tell me a long story."}], n=6,
        max_tokens=400, stream=True, extra_body={"ignore_eos": True})
    for i, _ in enumerate(stream):
        if i >= 20:
            break
    stream.close()
    wait_idle(server)  # fails unless every choice's sequence and pages are gone within 20 s
