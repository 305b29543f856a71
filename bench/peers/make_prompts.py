#!/usr/bin/env python3
"""Writes prompt_N.txt files holding the first N tokens of a text, as the model's tokenizer
splits it, so that `tq run -f prompt_N.txt` processes N prompt tokens (what llama-bench's
-p N and -d N mean). The tokenizer is read from the GGUF file by transformers' GGUF loader;
tq's own tokenizer implements the same BPE, and tq run prints the count it used, which the
tables take as the truth.

  make_prompts.py --model M.gguf --text book.txt --out DIR 1 512 4096 4608
"""
import argparse
import os
import sys


class _GgufBpe:
    """The GGUF's byte-level BPE (tokens and merges) through the `tokenizers` package, for
    machines where transformers' GGUF loader is missing its torch dependency. Pre-tokenizer:
    digits one by one, then GPT-2's byte-level split (SmolLM2's `smollm` pre-tokenizer)."""

    def __init__(self, path):
        from gguf import GGUFReader
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        r = GGUFReader(path)

        def strings(key):
            f = r.fields[key]
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

        vocab = {t: i for i, t in enumerate(strings("tokenizer.ggml.tokens"))}
        merges = [tuple(m.split(" ", 1)) for m in strings("tokenizer.ggml.merges")]
        self.tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        self.tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True),
             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
        self.tok.decoder = decoders.ByteLevel()

    def encode(self, text, add_special_tokens=False):
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids):
        return self.tok.decode(ids)


def load_tokenizer(model):
    try:
        from transformers import AutoTokenizer  # slow import: only when prompts are missing

        return AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(model)),
                                             gguf_file=os.path.basename(model))
    except (ImportError, ModuleNotFoundError, OSError) as e:
        print(f"make_prompts: transformers' GGUF tokenizer unavailable ({type(e).__name__}); "
              "using the GGUF's BPE through `tokenizers`", file=sys.stderr)
        return _GgufBpe(model)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("counts", nargs="+", type=int)
    a = ap.parse_args()

    tok = load_tokenizer(a.model)
    need = max(a.counts)
    with open(a.text, encoding="utf-8") as f:
        text = f.read(need * 8)  # ~4 characters per token in English prose: ample
    ids = tok.encode(text, add_special_tokens=False)
    if len(ids) < need:
        print(f"make_prompts: the text has only {len(ids)} tokens, need {need}", file=sys.stderr)
        return 1
    os.makedirs(a.out, exist_ok=True)
    for n in a.counts:
        piece = tok.decode(ids[:n])
        got = len(tok.encode(piece, add_special_tokens=False))
        with open(os.path.join(a.out, f"prompt_{n}.txt"), "w", encoding="utf-8") as f:
            f.write(piece)
        print(f"prompt_{n}.txt: {got} tokens", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
