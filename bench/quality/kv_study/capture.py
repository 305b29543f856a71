"""Capture post-RoPE queries/keys, values and W_o from SmolLM2-135M-Instruct.

Runs the GGUF model (dequantized to float32 by transformers, CPU, one thread)
over consecutive 512-token chunks of a text and records, for every layer:
  Q  (chunks, layers, 512, query heads, 64)  queries after RoPE
  K  (chunks, layers, 512, kv heads, 64)     keys after RoPE
  V  (chunks, layers, 512, kv heads, 64)     v_proj outputs
  Wo (layers, hidden, query heads * 64)      o_proj weights
into <out>/acts.npz, the input of analyze.py and fullmat.py.  The analyses fit
on chunk 0 and measure on chunks 1..N-1, so use at least 2 chunks.

Usage: python capture.py [--chunks 6] [--model M.gguf] [--text T.txt] [--out DIR]
Needs: numpy torch transformers accelerate gguf.
"""
import argparse
import os

import numpy as np
import torch
import transformers.models.llama.modeling_llama as llama
from transformers import AutoModelForCausalLM, AutoTokenizer

from kvquant import add_common_args

CHUNK = 512


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, model=True, text=True)
    ap.add_argument('--chunks', type=int, default=6, help='number of 512-token chunks (default 6)')
    args = ap.parse_args()
    torch.set_num_threads(1)

    model_dir, model_file = os.path.split(os.path.abspath(args.model))
    tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=model_file)
    model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=model_file, torch_dtype=torch.float32)
    model.eval()
    ids = tok(open(args.text).read(), add_special_tokens=False)['input_ids']
    print('tokens in text:', len(ids))

    qk_rec, v_rec = [], []
    orig_rope = llama.apply_rotary_pos_emb

    def recording_rope(q, k, cos, sin, *a, **kw):
        qo, ko = orig_rope(q, k, cos, sin, *a, **kw)
        qk_rec.append((qo[0].transpose(0, 1).numpy().copy(), ko[0].transpose(0, 1).numpy().copy()))
        return qo, ko

    llama.apply_rotary_pos_emb = recording_rope
    for layer in model.model.layers:
        layer.self_attn.v_proj.register_forward_hook(lambda m, i, o: v_rec.append(o[0].numpy().copy()))

    n_layers = len(model.model.layers)
    Q, K, V = [], [], []
    with torch.no_grad():
        for c in range(args.chunks):
            qk_rec.clear()
            v_rec.clear()
            model(torch.tensor([ids[c * CHUNK:(c + 1) * CHUNK]]))
            assert len(qk_rec) == n_layers and len(v_rec) == n_layers
            Q.append(np.stack([q for q, _ in qk_rec]))
            K.append(np.stack([k for _, k in qk_rec]))
            V.append(np.stack([v.reshape(CHUNK, -1, 64) for v in v_rec]))
            print('chunk', c, flush=True)
    Wo = np.stack([layer.self_attn.o_proj.weight.detach().numpy() for layer in model.model.layers])

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, 'acts.npz')
    np.savez(path, Q=np.stack(Q).astype(np.float32), K=np.stack(K).astype(np.float32),
             V=np.stack(V).astype(np.float32), Wo=Wo)
    print(path, np.stack(Q).shape, np.stack(K).shape, np.stack(V).shape, Wo.shape)


if __name__ == '__main__':
    main()
