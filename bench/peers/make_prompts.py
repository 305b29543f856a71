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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("counts", nargs="+", type=int)
    a = ap.parse_args()

    from transformers import AutoTokenizer  # slow import: only when prompts are missing

    tok = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(a.model)),
                                        gguf_file=os.path.basename(a.model))
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
