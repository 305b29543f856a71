#!/usr/bin/env python3
"""Prints the Markdown tables of one bench/peers/run.sh run from its raw outputs:

  tables.py RUN_DIR        (RUN_DIR holds meta.txt, speed/, quality/, gpu/)

Speed: tokens/s, best (= min time) and median over the repetitions, for tq and llama.cpp side
by side, with the tq / llama.cpp ratio of the medians. Quality: PPL, PPL change, mean KLD and
top-1 agreement, each tool against its own f16 cache, with bits per element.
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
def gpu_table(run):
    d = os.path.join(run, "gpu")
    if not os.path.isdir(d):
        return None
    samples = {}
    for p in glob.glob(os.path.join(d, "llama_*_r*.jsonl")):
        for line in read(p).splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                test = f"pp{r['n_prompt']}" if r["n_prompt"] > 0 else f"tg{r['n_gen']}"
                samples.setdefault((f"{r['type_k']}/{r['type_v']}", test, r.get("n_depth", 0)),
                                   []).extend(r.get("samples_ts") or [r["avg_ts"]])
    lines = ["| test | depth | K/V cache | llama.cpp best | llama.cpp median | tq |",
             "|---|---|---|---|---|---|"]
    for (kv, test, dep), s in sorted(samples.items(), key=lambda x: (x[0][1], x[0][2], kv_order(x[0][0]))):
        b, m, _ = best_median(s)
        lines.append(f"| {test} | {dep} | {kv} | {fmt_num(b)} | {fmt_num(m)} | not yet (issue 7) |")
    return "\n".join(lines)


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
    for title, table in (("CPU speed", speed_table(run)), ("KV-cache quality", quality_table(run)),
                         ("GPU speed", gpu_table(run))):
        if table:
            out.append(f"### {title}\n\n{table}\n")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
