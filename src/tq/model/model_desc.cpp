// Model -> backend::LlamaDesc (see model_desc.h).
#include "tq/model/model_desc.h"

namespace tq::model {
namespace {

const float* or_null(const std::vector<float>& v) { return v.empty() ? nullptr : v.data(); }

}  // namespace

backend::LlamaDesc describe_for_backend(const Model& model) {
  const ModelConfig& c = model.config();
  const ModelWeights& w = model.weights();
  backend::LlamaDesc d;
  d.n_layers = c.n_layers;
  d.dim = c.dim;
  d.ffn_dim = c.ffn_dim;
  d.n_heads = c.n_heads;
  d.n_kv_heads = c.n_kv_heads;
  d.head_dim = c.head_dim;
  d.vocab_size = c.vocab_size;
  d.rope_dims = c.rope_dims;
  d.rope_neox = c.rope_style == RopeStyle::kNeox;
  d.rms_eps = c.rms_eps;
  // The same table the CPU forward computes its angles from (llama3 / linear scaling included).
  d.rope_inv_freq = rope_inv_freqs(c, w.rope_freqs);
  d.token_embd = w.token_embd;
  d.output = w.output;
  d.output_norm = w.output_norm.data();
  d.layers.reserve(w.layers.size());
  for (const LayerWeights& L : w.layers) {
    backend::LlamaLayerDesc l;
    l.attn_norm = L.attn_norm.data();
    l.wq = L.wq;
    l.wk = L.wk;
    l.wv = L.wv;
    l.wo = L.wo;
    l.bq = or_null(L.bq);
    l.bk = or_null(L.bk);
    l.bv = or_null(L.bv);
    l.ffn_norm = L.ffn_norm.data();
    l.w_gate = L.w_gate;
    l.w_up = L.w_up;
    l.w_down = L.w_down;
    d.layers.push_back(l);
  }
  return d;
}

}  // namespace tq::model
