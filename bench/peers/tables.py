#!/usr/bin/env python3
"""Prints the Markdown tables of one bench/peers/run.sh run from its raw outputs:

  tables.py RUN_DIR        (RUN_DIR holds meta.txt, speed/, quality/, gpu/)

Speed: tokens/s, best (= min time) and median over the repetitions, for tq and llama.cpp side
by side, with the tq / llama.cpp ratio of the medians. Quality: PPL, PPL change, mean KLD and
top-1 agreement, each tool against its own f16 cache, with bits per element. GPU (run.sh --gpu,
raw outputs in gpu/): decode tokens/s of one session at depth 0, 8k and 32k (llama-bench jsonl,
`tq bench decode` Markdown), aggregate tokens/s of 16 and 32 sessions of 8k (llama-batched-bench
jsonl, `tq bench concurrent` Markdown), KV bytes per token and sessions of 8k in 60 GiB; each
with the tq / llama.cpp ratio, and issue 9's goals reported beside them.
"""
import glob
import json
import math
import os
import re
import statistics
import sys

# Bits per element of llama.cpp's cache types (ggml block sizes: q8_0 34 B / 32, q4_0 18 B / 32).
LLAMA_BITS = {"f16": 16.0, "q8_0": 8.5, "q4_0": 4.5, "q4_1": 5.0, "q5_0": 5.5, "q5_1": 6.0}
# llama.cpp numbers the project lead measured on the default model (2 threads, ctx 512, 16
# chunks), to check this run's llama.cpp half against.
LEAD_REFERENCE = {"q8_0": {"kld": 0.0039, "top1": 96.1},
                  "q4_0": {"ppl_pct": 6.0, "kld": 0.057, "top1": 85.5}}
NOROT = " (llama.cpp rotation off)"  # LLAMA_ATTN_ROT_DISABLE=1 rows
NEAREST_LLAMA = "q4_0"  # what tq-only formats are compared with (closest bit count)


def read(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def meta(run):
    m = {}
    p = os.path.join(run, "meta.txt")
    if os.path.exists(p):
        for line in read(p).splitlines():
            k, _, v = line.partition(": ")
            m[k] = v
    return m


def fmt_num(x, digits=1):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}f}"


def best_median(samples):
    s = [x for x in samples if x is not None and not math.isnan(x) and x > 0]
    if not s:
        return None, None, 0
    return max(s), statistics.median(s), len(s)


# ----------------------------------------------------------------------------------------------
# Speed
TESTS = [("pp512", 0), ("tg128", 0), ("pp512", "D"), ("tg128", "D")]
TQ_RUN = re.compile(r"tq run: (prompt|generation)\s+(\d+) tokens in\s+([\d.]+) s")


def tq_run_numbers(path):
    """{'prompt': (tokens, seconds), 'generation': (tokens, seconds)} of one tq run."""
    out = {}
    if os.path.exists(path):
        for kind, n, s in TQ_RUN.findall(read(path)):
            out[kind] = (int(n), float(s))
    return out


def rate(pair):
    return pair[0] / pair[1] if pair and pair[1] > 0 else None


def speed_samples(run):
    """{(tool, kv, test, depth): [tokens/s, ...]} and the depth used."""
    d = os.path.join(run, "speed")
    samples, depth = {}, None
    for p in sorted(glob.glob(os.path.join(d, "llama_*_r*.jsonl"))):
        for line in read(p).splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            kv = f"{r['type_k']}/{r['type_v']}"
            test = f"pp{r['n_prompt']}" if r["n_prompt"] > 0 else f"tg{r['n_gen']}"
            dep = r.get("n_depth", 0)
            if dep:
                depth = dep
            for ts in r.get("samples_ts") or [r["avg_ts"]]:
                samples.setdefault(("llama.cpp", kv, test, "D" if dep else 0), []).append(ts)
    for p in sorted(glob.glob(os.path.join(d, "tq_*_pp0_r*.txt"))):
        m = re.match(r"tq_(.+)-(.+)_pp0_r(\d+)\.txt$", os.path.basename(p))
        kv, rep = f"{m.group(1)}/{m.group(2)}", m.group(3)
        stem = os.path.join(d, f"tq_{m.group(1)}-{m.group(2)}")
        pp0 = tq_run_numbers(p).get("prompt")
        tg0 = tq_run_numbers(f"{stem}_tg0_r{rep}.txt").get("generation")
        tgd_run = tq_run_numbers(f"{stem}_tgD_r{rep}.txt")
        ppd_run = tq_run_numbers(f"{stem}_ppD_r{rep}.txt")
        # pp512 at depth D: prompt time of D+512 tokens minus that of the D-token prompt.
        ppd = None
        if "prompt" in tgd_run and "prompt" in ppd_run:
            n = ppd_run["prompt"][0] - tgd_run["prompt"][0]
            t = ppd_run["prompt"][1] - tgd_run["prompt"][1]
            ppd = n / t if t > 0 else float("nan")
            depth = depth or tgd_run["prompt"][0]
        for key, val in ((("pp512", 0), rate(pp0)), (("tg128", 0), rate(tg0)),
                         (("pp512", "D"), ppd), (("tg128", "D"), rate(tgd_run.get("generation")))):
            samples.setdefault(("tq", kv, *key), []).append(val)
    return samples, depth or 4096


def speed_table(run):
    samples, depth = speed_samples(run)
    if not samples:
        return None
    tests = TESTS
    skipped = ""
    if meta(run).get("depth") == "0":
        tests = [t for t in TESTS if t[1] == 0]
        skipped = (" Depth 4096 was not measured in this run (`--depth 0`): on the shared, "
                   "loaded machine the depth tests (~17k prefill tokens per format and "
                   "repetition) did not fit; `run.sh --cpu-speed` measures them.")
    tq_kvs = sorted({k[1] for k in samples if k[0] == "tq"}, key=kv_order)
    llama_kvs = {k[1] for k in samples if k[0] == "llama.cpp"}
    lines = [
        f"| test | depth | K/V cache | tq best | tq median | llama.cpp cache | llama.cpp best | "
        f"llama.cpp median | tq / llama.cpp (median) | runs tq / llama.cpp |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    kvs = tq_kvs + sorted(llama_kvs - set(tq_kvs), key=kv_order)
    for test, dep in tests:
        for kv in kvs:
            tb, tm, tn = best_median(samples.get(("tq", kv, test, dep), []))
            peer = kv if kv in llama_kvs else f"{NEAREST_LLAMA}/{NEAREST_LLAMA}"
            peer_label = kv if kv in llama_kvs else f"{peer} †"
            lb, lm, ln = best_median(samples.get(("llama.cpp", peer, test, dep), []))
            ratio = f"{tm / lm:.2f}" if tm and lm else "—"
            dlabel = depth if dep == "D" else 0
            lines.append(f"| {test} | {dlabel} | {kv} | {fmt_num(tb)} | {fmt_num(tm)} | "
                         f"{peer_label if lm else '—'} | {fmt_num(lb)} | {fmt_num(lm)} | {ratio} | "
                         f"{tn} / {ln} |")
    note = (f"tokens/s; best = fastest repetition (min time), median over the interleaved "
            f"repetitions (how many: last column). † tq-only format, compared with llama.cpp's {NEAREST_LLAMA} (nearest "
            f"in bits). tq: `tq run` (paged cache with -ctk/-ctv); pp512 at depth {depth} = "
            f"512 / (prompt time of {depth}+512 tokens − prompt time of {depth} tokens), tg128 "
            f"at depth 0 after a 1-token prompt. llama.cpp: `llama-bench -fa 1 -ctk X -ctv X -p "
            f"512 -n 128 -d 0,{depth} -r 1`, one call per repetition." + skipped)
    return "\n".join(lines) + "\n\n" + note


def kv_order(kv):
    order = ["f16/f16", "q8_0/q8_0", "q8_0/q8_0" + NOROT, "q4_0/q4_0", "q4_0/q4_0" + NOROT,
             "tq8/tq8", "tq4/tq4", "tq4/tq3", "tq3/tq3"]
    return (order.index(kv) if kv in order else len(order), kv)


# ----------------------------------------------------------------------------------------------
# Quality
def grab(pattern, text, cast=float):
    m = re.search(pattern, text)
    return cast(m.group(1)) if m else None


def llama_quality(run):
    q = os.path.join(run, "quality")
    res = {}
    for p in glob.glob(os.path.join(q, "llama_*.txt")):
        f = os.path.basename(p)[len("llama_"):-len(".txt")]
        base = f[:-len("-norot")] if f.endswith("-norot") else f
        t = read(p)
        r = {"k_bits": LLAMA_BITS.get(base), "v_bits": LLAMA_BITS.get(base)}
        r["ppl"] = grab(r"Mean PPL\(Q\)\s*:\s*([\d.]+)", t) or grab(r"PPL = ([\d.]+)", t)
        r["ppl_err"] = (grab(r"Mean PPL\(Q\)\s*:\s*[\d.]+\s*±\s*([\d.]+)", t) or
                        grab(r"PPL = [\d.]+ \+/- ([\d.]+)", t))
        r["ppl_ratio"] = grab(r"Mean PPL\(Q\)/PPL\(base\)\s*:\s*([\d.]+)", t)
        r["kld"] = grab(r"Mean\s+KLD:\s*([\d.eE+-]+)", t)
        r["top1"] = grab(r"Same top p:\s*([\d.]+)", t)
        if f == "f16":
            r.update(ppl_ratio=1.0, kld=0.0, top1=100.0)
        if r["ppl"] is not None:
            res[f"{base}/{base}" + (NOROT if base != f else "")] = r
    return res


def tq_compare(path):
    """Rows of `tq compare`'s Markdown table: | K/V | B/token | vs f16 | K b/elt | V b/elt |
    PPL +/- err | dPPL % | KLD mean | KLD p99 | top-1 |."""
    res = {}
    for line in read(path).splitlines():
        c = [x.strip() for x in line.strip().strip("|").split("|")]
        if len(c) != 10 or "/" not in c[0] or c[0] == "K/V":
            continue
        m = re.match(r"([\d.]+) \+/- ([\d.]+)", c[5])
        if not m:
            continue
        res[c[0]] = {"k_bits": float(c[3]), "v_bits": float(c[4]), "ppl": float(m.group(1)),
                     "ppl_err": float(m.group(2)), "ppl_ratio": 1 + float(c[6]) / 100,
                     "kld": float(c[7]), "kld_p99": float(c[8]), "top1": float(c[9]) * 100}
    return res


def tq_quality(run):
    q = os.path.join(run, "quality")
    res = {}
    if os.path.exists(os.path.join(q, "tq_compare.md")):
        res.update(tq_compare(os.path.join(q, "tq_compare.md")))
    for p in glob.glob(os.path.join(q, "tq_*.*")):
        name = os.path.basename(p)
        m = re.match(r"tq_(.+)-(.+)\.(json|txt)$", name)
        if not m:
            continue
        kv = f"{m.group(1)}/{m.group(2)}"
        t = read(p)
        r = {}
        if m.group(3) == "json":
            j = json.loads(t.strip().splitlines()[-1]) if t.strip() else {}
            pick = lambda *ks: next((j[k] for k in ks if k in j), None)
            r["ppl"] = pick("ppl_test", "ppl")
            r["ppl_err"] = pick("ppl_test_err", "ppl_err")
            r["ppl_ratio"] = pick("ppl_ratio")
            r["kld"] = pick("kld_mean", "kld")
            top1 = pick("top1", "top1_agreement", "same_top_p")
            r["top1"] = top1 * 100 if top1 is not None and top1 <= 1 else top1
            r["k_bits"] = pick("k_bits_per_element")
            r["v_bits"] = pick("v_bits_per_element")
            r["bytes_per_token"] = pick("kv_bytes_per_token")
        else:
            r["ppl"] = grab(r"PPL test = ([\d.]+)", t)
            r["ppl_err"] = grab(r"PPL test = [\d.]+ \+/- ([\d.]+)", t)
            r["ppl_ratio"] = grab(r"PPL ratio = ([\d.]+)", t)
            r["kld"] = grab(r"KLD mean = ([\d.eE+-]+)", t)
            top1 = grab(r"top-1 agreement = ([\d.]+)", t)
            r["top1"] = top1 * 100 if top1 is not None else None
            r["k_bits"] = grab(r"K ([\d.]+) b/elt", t)
            r["v_bits"] = grab(r"V ([\d.]+) b/elt", t)
        if kv == "f16/f16":
            r.update(ppl_ratio=1.0, kld=0.0, top1=100.0)
        if r.get("ppl") is not None and kv not in res:
            res[kv] = r
    return res


def bits(r):
    if not r or r.get("k_bits") is None:
        return "—"
    k, v = r["k_bits"], r["v_bits"]
    return f"{k:.3g}" if abs(k - v) < 1e-9 else f"{k:.3g} / {v:.3g}"


def pct(ratio):
    return "—" if ratio is None else f"{(ratio - 1) * 100:+.2f}%"


def quality_table(run):
    tq, ll = tq_quality(run), llama_quality(run)
    if not tq and not ll:
        return None
    kvs = sorted(set(tq) | set(ll), key=kv_order)
    lines = ["| K/V cache | bits/elt K / V | PPL tq | PPL llama.cpp | ΔPPL tq | ΔPPL llama.cpp | "
             "KLD tq | KLD llama.cpp | KLD tq / llama.cpp | top-1 tq | top-1 llama.cpp |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for kv in kvs:
        t, l = tq.get(kv), ll.get(kv)
        peer = l or ll.get(f"{NEAREST_LLAMA}/{NEAREST_LLAMA}")
        mark = "" if l else " †"
        if kv.endswith(NOROT):  # llama.cpp unrotated: ratio of tq's (plain) format against it
            t_same = tq.get(kv[:-len(NOROT)])
            kratio = (f"{t_same['kld'] / l['kld']:.2f} ‡" if t_same and t_same.get("kld")
                      and l.get("kld") else "—")
            g = lambda r, k, d: fmt_num(r.get(k), d) if r else "—"
            lines.append(f"| {kv} | {bits(l)} | — | {l['ppl']:.4f} ± {l['ppl_err']:.4f} | — | "
                         f"{pct(l.get('ppl_ratio'))} | — | {g(l, 'kld', 5)} | {kratio} | — | "
                         f"{g(l, 'top1', 2)} |")
            continue
        if t and peer and t.get("kld") and peer.get("kld"):
            kratio = f"{t['kld'] / peer['kld']:.2f}{mark}"
        elif kv == "f16/f16" and t and l:
            kratio = f"(PPL {t['ppl'] / l['ppl']:.4f})"
        else:
            kratio = "—"
        g = lambda r, k, d: fmt_num(r.get(k), d) if r else "—"
        ppl = lambda r: f"{r['ppl']:.4f} ± {r['ppl_err']:.4f}" if r and r.get("ppl_err") else g(r, "ppl", 4)
        lines.append(
            f"| {kv} | {bits(t or l)} | {ppl(t)} | {ppl(l)} | "
            f"{pct(t.get('ppl_ratio')) if t else '—'} | {pct(l.get('ppl_ratio')) if l else '—'} | "
            f"{g(t, 'kld', 5)} | {g(l, 'kld', 5)} | {kratio} | "
            f"{g(t, 'top1', 2)} | {g(l, 'top1', 2)} |")
    m = meta(run)
    note = (f"Text {os.path.basename(m.get('text', '?'))}, ctx {m.get('ctx', '?')}, first "
            f"{m.get('chunks', '?')} chunks, second half of each chunk scored (llama-perplexity's "
            f"method); ΔPPL, KLD (mean, natural log) and top-1 agreement (%, llama.cpp's \"Same "
            f"top p\") against the same tool's f16 cache. bits/elt: stored bits per K/V element "
            f"(scales and norms included). † tq-only format: ratio against llama.cpp's "
            f"{NEAREST_LLAMA}. tq: `tq compare --configs ...` (or `tq verify` per format); llama.cpp: `llama-perplexity "
            f"--kl-divergence-base` (f16) then `--kl-divergence -ctk X -ctv X`, both with -fa on. "
            f"This llama.cpp applies a Walsh-Hadamard rotation to Q, K and V whenever the cache "
            f"type is quantized (src/llama-kv-cache.cpp, attn_rot_k/attn_rot_v); the rows marked "
            f"\"rotation off\" are the same runs with LLAMA_ATTN_ROT_DISABLE=1, i.e. plain ggml "
            f"blocks as tq's q8_0/q4_0 store them. ‡ tq's format of the same name against that "
            f"unrotated run.")
    checks = []
    for f, ref in LEAD_REFERENCE.items():
        l = ll.get(f"{f}/{f}")
        if not l:
            continue
        got = []
        if "ppl_pct" in ref and l.get("ppl_ratio"):
            got.append(f"PPL {pct(l['ppl_ratio'])} (ref +{ref['ppl_pct']:.1f}%)")
        if l.get("kld") is not None:
            got.append(f"KLD {l['kld']:.4f} (ref {ref['kld']})")
        if l.get("top1") is not None:
            got.append(f"top-1 {l['top1']:.1f}% (ref {ref['top1']}%)")
        checks.append(f"{f}: " + ", ".join(got))
    if checks:
        note += "\n\nllama.cpp against the lead's reference numbers: " + "; ".join(checks) + "."
    return "\n".join(lines) + "\n\n" + note


# ----------------------------------------------------------------------------------------------
# GPU: both tools on one random Llama-3-8B-shaped Q4_0 model (run.sh --gpu); raw outputs in gpu/.
GPU_BUDGET_GIB = 60
GPU_CTX = 8192
# Bytes per K or V element of llama.cpp's cache types (ggml blocks: q8_0 34 B and q4_0 18 B per
# 32 elements).
LLAMA_BYTES_PER_ELT = {f: b / 8 for f, b in LLAMA_BITS.items()}
LLAMA3_8B_KV = (32, 8, 128)  # layers, KV heads, head dim: used if tq's output does not say
# Issue 9's GPU goals, reported beside the numbers (not asserted).
GOAL_DECODE_32K = 1.5  # one session at 32k: tq >= 1.5x llama.cpp f16 KV tokens/s
GOAL_AGG_32 = 2.0      # 32 sessions of 8k: tq >= 2x llama.cpp f16 KV aggregate tokens/s


def md_tables(text):
    """Every Markdown table in text: [(header cells, [row cells, ...]), ...]."""
    tables, cur = [], None
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            cur = None
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cur is None:
            cur = (cells, [])
            tables.append(cur)
        elif not all(re.fullmatch(r":?-+:?", c) for c in cells):
            cur[1].append(cells)
    return tables


def lead_num(cell):
    m = re.match(r"\s*([\d.]+)", cell)
    return float(m.group(1)) if m else None


def jsonl_records(path, first_key):
    """JSON objects of the lines of path that start with {"first_key" (llama.cpp's jsonl goes
    to stdout; batched-bench logs it, so the .log is searched too)."""
    out = []
    if os.path.exists(path):
        for line in read(path).splitlines():
            line = line.strip()
            if line.startswith('{"' + first_key + '"'):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return out


def gpu_llama(d):
    """llama-bench decode samples {(cache, depth): [tok/s]}, llama-batched-bench decode
    {(cache, prompt, sessions): tok/s} plus its records, and the model's size in bytes."""
    decode, batched, records, size = {}, {}, {}, None
    for p in sorted(glob.glob(os.path.join(d, "llama_bench_*.jsonl"))):
        for r in jsonl_records(p, "build_commit"):
            size = r.get("model_size", size)
            if r["type_k"] != r["type_v"] or r.get("n_prompt", 0) != 0 or r.get("n_gen", 0) <= 0:
                continue
            decode.setdefault((r["type_k"], r.get("n_depth", 0)), []).extend(
                r.get("samples_ts") or [r["avg_ts"]])
    for p in sorted(glob.glob(os.path.join(d, "llama_batched_*.jsonl"))):
        f = os.path.basename(p)[len("llama_batched_"):-len(".jsonl")]
        for r in jsonl_records(p, "n_kv_max") + jsonl_records(p[:-len(".jsonl")] + ".log",
                                                                "n_kv_max"):
            batched[(f, r["pp"], r["pl"])] = r["speed_tg"]
            records[(f, r["pp"], r["pl"])] = r
    return decode, batched, records, size


KV_BYTES_LINE = re.compile(r"- (\S+): ([\d.]+) B/token at ctx (\d+) \(([\d.]+)x vs f16; "
                           r"K ([\d.]+) b/elt, V ([\d.]+) b/elt\)")


def gpu_tq(d):
    """tq bench decode {(K/V, depth): tok/s}, bits {K/V: (k, v)}, the setup line; tq bench
    concurrent {(K/V, C, sessions): tok/s}, capacity {(K/V, C): (bytes/token, sessions)},
    the KV shape (layers, KV heads, head dim)."""
    decode, bits_, agg, cap, where, shape = {}, {}, {}, {}, None, None
    for p in sorted(glob.glob(os.path.join(d, "tq_decode_*.md"))):
        t = read(p)
        m = re.search(r"Decode, batch 1, .*? \((.*)\)\s*$", t, re.M)
        where = where or (m.group(1) if m else None)
        for header, rows in md_tables(t):
            if header[0] != "depth" or not header[1].endswith("(ms/tok)"):
                continue
            kvs = [h.split()[0] for h in header[1:]]
            for row in rows:
                for kv, cell in zip(kvs, row[1:]):
                    decode[(kv, int(row[0]))] = lead_num(cell)
        for kv, _, _, _, kb, vb in KV_BYTES_LINE.findall(t):
            bits_[kv] = (float(kb), float(vb))
    for p in sorted(glob.glob(os.path.join(d, "tq_concurrent_*.md"))):
        t = read(p)
        m = re.search(r"(\d+) layers, (\d+) KV heads, head dim (\d+)\)", t)
        if m:
            shape = tuple(int(x) for x in m.groups())
        for header, rows in md_tables(t):
            if header[:3] == ["K/V", "C", "bytes/token"]:
                for row in rows:
                    cap[(row[0], int(row[1]))] = (float(row[2]), float(row[3]))
            elif header[:2] == ["C", "batch"]:
                for row in rows:
                    for kv, cell in zip(header[2:], row[2:]):
                        agg[(kv, int(row[0]), int(row[1]))] = lead_num(cell)
    return decode, bits_, agg, cap, where, shape or LLAMA3_8B_KV


def peer_of(kv, llama_caches):
    """llama.cpp's cache to set beside a tq K/V pair: the same format, else the nearest in bits
    (tq-only formats, marked †)."""
    k, _, v = kv.partition("/")
    if k == v and k in llama_caches:
        return k, ""
    return NEAREST_LLAMA, " †"


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "—"


def gpu_tables(run):
    d = os.path.join(run, "gpu")
    if not os.path.isdir(d):
        return None
    ll_dec, ll_agg_all, ll_rec, ll_size = gpu_llama(d)
    tq_dec, tq_bits, tq_agg_all, tq_cap_all, where, shape = gpu_tq(d)
    if not (ll_dec or ll_agg_all or tq_dec or tq_agg_all or tq_cap_all):
        return None
    # The sizes come from the outputs (run.sh's defaults: depths 0, 8k, 32k; sessions of 8k).
    depths = sorted({k[1] for k in ll_dec} | {0 if k[1] == 1 else k[1] for k in tq_dec})
    ctxs = sorted({k[1] for k in tq_cap_all} | {k[1] for k in ll_agg_all})
    ctx = GPU_CTX if GPU_CTX in ctxs or not ctxs else ctxs[-1]
    tq_agg = {(kv, n): v for (kv, c, n), v in tq_agg_all.items() if c == ctx}
    tq_cap = {kv: v for (kv, c), v in tq_cap_all.items() if c == ctx}
    ll_agg = {(f, n): v for (f, c, n), v in ll_agg_all.items() if c == ctx}
    ll_caches = sorted({k[0] for k in ll_dec} | {k[0] for k in ll_agg_all},
                       key=lambda f: kv_order(f"{f}/{f}"))
    known = set(ll_caches) | {"f16", "q8_0", "q4_0"}  # llama.cpp's formats, run or not
    tq_kvs = sorted({k[0] for k in tq_dec} | {k[0] for k in tq_agg_all} |
                    {k[0] for k in tq_cap_all}, key=kv_order)
    for f in ll_caches:  # a llama.cpp format tq did not run still gets its row
        if f"{f}/{f}" not in tq_kvs:
            tq_kvs.append(f"{f}/{f}")
    tq_kvs.sort(key=kv_order)
    med = lambda xs: statistics.median(xs) if xs else None
    out = []

    # Decode, one session.
    lines = ["| depth | K/V cache | bits/elt K / V | tq tok/s | llama.cpp cache | llama.cpp tok/s "
             "(median, best) | tq / llama.cpp same cache | tq / llama.cpp f16 |",
             "|---|---|---|---|---|---|---|---|"]
    goal_dec = []
    for dep in depths:
        f16 = med(ll_dec.get(("f16", dep)))
        for kv in tq_kvs:
            t = tq_dec.get((kv, dep if dep else 1))
            peer, mark = peer_of(kv, known)
            s = ll_dec.get((peer, dep))
            b = tq_bits.get(kv)
            lines.append(
                f"| {dep} | {kv} | {f'{b[0]:.3g} / {b[1]:.3g}' if b else '—'} | {fmt_num(t)} | "
                f"{peer}{mark} | {fmt_num(med(s))}, {fmt_num(max(s) if s else None)} | "
                f"{ratio(t, med(s))}{mark if t and s else ''} | {ratio(t, f16)} |")
            if dep == 32768 and t and f16:  # the goal's depth
                goal_dec.append((t / f16, kv))
    reps = sorted({len(v) for v in ll_dec.values()})
    out.append("**Decode, one session** (tokens/s)\n\n" + "\n".join(lines) + "\n\n" +
               f"tq: `tq bench decode --device cuda --depths 1,8192,32768 --steps 128 --warmup 4` "
        f"(depth 0 is one token of context for tq; one K/V pair per process; "
        f"{where or 'setup line missing'}). llama.cpp: `llama-bench -ngl 99 -fa 1 -ctk X -ctv X "
        f"-p 512 -n 128 -d 0,8192,32768 -r N`, tg128 (128 tokens after the depth), median and "
        f"best of {'/'.join(map(str, reps)) or '?'} repetitions. † tq-only format, beside "
        f"llama.cpp's {NEAREST_LLAMA} (nearest in bits). Model: random Llama-3-8B shape, Q4_0"
        f"{f' ({ll_size / 1e9:.2f} GB)' if ll_size else ''}, written by `tq make-model`; "
        "llama.cpp computes with the Q4_0 weights; " +
        ("tq multiplies the Q4_0 blocks as stored (`--gpu-weights quant`). "
         if where and "weights quantized" in where else
         "tq's GPU path uploads them as f16. ") +
        "llama.cpp's q8_0/q4_0 caches run with its default Hadamard rotation of Q/K/V.")

    # Aggregate decode of many sessions of GPU_CTX tokens.
    lines = ["| sessions | K/V cache | tq tok/s | llama.cpp cache | llama.cpp tok/s | "
             "tq / llama.cpp same cache | tq / llama.cpp f16 |", "|---|---|---|---|---|---|---|"]
    goal_agg = []
    sessions = sorted({k[1] for k in tq_agg} | {k[1] for k in ll_agg}) or [16, 32]
    for n in sessions:
        f16 = ll_agg.get(("f16", n))
        for kv in tq_kvs:
            t = tq_agg.get((kv, n))
            peer, mark = peer_of(kv, known)
            s = ll_agg.get((peer, n))
            lines.append(f"| {n} | {kv} | {fmt_num(t)} | {peer}{mark} | {fmt_num(s)} | "
                         f"{ratio(t, s)}{mark if t and s else ''} | {ratio(t, f16)} |")
            if n == 32 and t and f16:
                goal_agg.append((t / f16, kv))
    rec = next(iter(ll_rec.values()), {})
    out.append(f"**Aggregate decode, sessions of {ctx} tokens** (tokens/s, all "
               "sessions together)\n\n" + "\n".join(lines) + "\n\n" +
               f"tq: `tq bench concurrent --device cuda --sessions 32 --contexts {ctx} "
               f"--batches 16,32 --steps 32 --warmup 2` (f16 weights unless TQ_GPU_CONC_FLAGS "
               f"says otherwise; slot 0 prefilled, its pages copied to "
               f"the other slots; each step one token of every session). llama.cpp: "
               f"`llama-batched-bench -ngl 99 -fa on -ctk X -ctv X -c "
               f"{rec.get('n_kv_max', '?')} -npp {ctx} -ntg 128 -npl 16,32 -pps` (one "
               f"{ctx}-token prompt copied into each session's own KV stream, the cache not "
               f"unified), S_TG: 128 steps of all sessions.")

    # KV bytes per token and sessions that fit.
    layers, kv_heads, head_dim = shape
    elts = 2 * layers * kv_heads * head_dim  # K and V elements per token
    budget = GPU_BUDGET_GIB * 1024 ** 3
    ll_bytes = {f: elts * LLAMA_BYTES_PER_ELT[f] for f in LLAMA_BYTES_PER_ELT}
    ll_fit = {f: math.floor(budget / (ctx * b)) for f, b in ll_bytes.items()}
    lines = [f"| K/V cache | tq bytes/token | tq sessions | llama.cpp cache | llama.cpp "
             f"bytes/token | llama.cpp sessions | tq / llama.cpp same cache | "
             f"tq / llama.cpp f16 |", "|---|---|---|---|---|---|---|---|"]
    for kv in tq_kvs:
        c = tq_cap.get(kv)
        peer, mark = peer_of(kv, set(ll_bytes))
        fit = c[1] if c else None
        lines.append(f"| {kv} | {fmt_num(c[0], 0) if c else '—'} | {fmt_num(fit, 0)} | "
                     f"{peer}{mark} | {ll_bytes[peer]:.0f} | {ll_fit[peer]} | "
                     f"{ratio(fit, ll_fit[peer])}{mark if fit else ''} | "
                     f"{ratio(fit, ll_fit['f16'])} |")
    out.append(f"**KV bytes per token and sessions of {ctx} tokens in {GPU_BUDGET_GIB} GiB** "
               f"({layers} layers, {kv_heads} KV heads, head dim {head_dim})\n\n" +
               "\n".join(lines) + "\n\n" +
               "tq: `tq bench concurrent`'s capacity table (whole 32-token pages per session "
               "plus its key means, the bytes its pools allocate). llama.cpp: "
               f"{elts} K/V elements per token at f16 2 B, q8_0 34/32 B, q4_0 18/32 B each "
               f"(ggml blocks), sessions = floor({GPU_BUDGET_GIB} GiB / ({ctx} x bytes/token)).")

    # Goals of issue 9, reported.
    def goal(items, target, what):
        if not items:
            return f"- {what}: not measured."
        items.sort(reverse=True)
        best = items[0]
        return (f"- {what}: best tq format {best[1]} {best[0]:.2f}x — "
                f"{'met' if best[0] >= target else 'not met'}; all: " +
                ", ".join(f"{kv} {r:.2f}x" for r, kv in sorted(items, key=lambda x: kv_order(x[1]))) + ".")
    out.append("**Issue 9's GPU goals** (reported, not asserted)\n\n" + "\n".join([
        goal(goal_dec, GOAL_DECODE_32K,
             f"one session at 32k >= {GOAL_DECODE_32K}x llama.cpp's f16-KV tokens/s"),
        goal(goal_agg, GOAL_AGG_32,
             f"32 sessions of 8k >= {GOAL_AGG_32}x llama.cpp's f16-KV aggregate tokens/s")]))
    stages = os.path.join(d, "stages.txt")
    if os.path.exists(stages):
        st = [l.split() for l in read(stages).splitlines() if l.strip()]
        bad = [f"{s[0]} ({'skipped' if s[1] == 'skipped' else 'rc ' + s[2]})" for s in st
               if len(s) >= 3 and (s[1] == "skipped" or s[2] != "0")]
        secs = sum(int(s[1]) for s in st if len(s) >= 3 and s[1].isdigit())
        out.append(f"Stages: {len(st)}, {secs} s in all" +
                   (f"; failed or skipped: {', '.join(bad)}." if bad else ", all rc 0."))
    return "\n\n".join(out)


def gpu_meta(run):
    """Header lines of the GPU parts (gpu/meta-llama.txt, gpu/meta-tq.txt)."""
    lines = []
    for p in sorted(glob.glob(os.path.join(run, "gpu", "meta-*.txt"))):
        m = {}
        for line in read(p).splitlines():
            k, _, v = line.partition(": ")
            m[k] = v
        part = os.path.basename(p)[len("meta-"):-len(".txt")]
        lines.append(f"GPU part '{part}' of {m.get('date', '?')}: `{m.get('command', '?')}` on "
                     f"{m.get('gpu', '?')} (host {m.get('cpu', '?')}). Model "
                     f"{m.get('gpu_model', '?')}. Versions: {m.get('tq', '?')}; "
                     f"{m.get('llama.cpp', '?')}.  ")
    return lines


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    run = os.path.realpath(sys.argv[1])
    m = meta(run)
    out = []
    if m:
        cmds = [l.partition(": ")[2] for l in read(os.path.join(run, "meta.txt")).splitlines()
                if l.startswith("command: ")]
        out.append(f"Run of {m.get('date', '?')}: " + ", then ".join(f"`{c}`" for c in cmds) + "  ")
        out.append(f"Machine: {m.get('cpu', '?')} ({m.get('flags', '').strip()}), "
                   f"{m.get('threads', '?')} threads; load average {m.get('load_before', '?')} "
                   f"before, {m.get('load_after', '?')} after.  ")
        out.append(f"Model: {os.path.basename(m.get('model', '?'))} (sha256 "
                   f"{m.get('model_sha256', '?')}...). Versions: {m.get('tq', '?')}; "
                   f"{m.get('llama.cpp', '?')}.\n")
    gm = gpu_meta(run)
    if gm:
        out.extend(gm[:-1] + [gm[-1] + "\n"])
    for title, table in (("CPU speed", speed_table(run)), ("KV-cache quality", quality_table(run)),
                         ("GPU speed and capacity", gpu_tables(run))):
        if table:
            out.append(f"### {title}\n\n{table}\n")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
