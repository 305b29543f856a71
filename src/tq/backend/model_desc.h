// A Llama-family model as a backend sees it: the shape numbers and views of the host weights
// (GGUF bytes, float vectors), with no model-layer types, so a device backend (backend/cuda)
// can upload a model that the model layer loaded (model/model_desc.h builds one from a Model).
// Every pointer is borrowed: it must stay valid while the backend reads it (the upload).
#pragma once

#include <cstdint>
#include <vector>

#include "tq/backend/cpu/matmul.h"

namespace tq::backend {

struct LlamaLayerDesc {
  const float* attn_norm = nullptr;        // [dim]
  cpu::WeightView wq{}, wk{}, wv{}, wo{};  // [q_dim][dim], [kv_dim][dim] x2, [dim][q_dim]
  const float* bq = nullptr;               // [q_dim]; null when absent (llama); qwen2 has all three
  const float* bk = nullptr;               // [kv_dim]
  const float* bv = nullptr;               // [kv_dim]
  const float* ffn_norm = nullptr;         // [dim]
  cpu::WeightView w_gate{}, w_up{}, w_down{};  // [ffn_dim][dim] x2, [dim][ffn_dim]
};

struct LlamaDesc {
  int n_layers = 0;
  int dim = 0;
  int ffn_dim = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int vocab_size = 0;
  int rope_dims = 0;       // leading dims of each head that rotate
  bool rope_neox = false;  // pairs (i, i + rope_dims/2); else (2i, 2i+1), as cpu::rope
  float rms_eps = 1e-5f;
  std::vector<float> rope_inv_freq;    // [rope_dims/2] after scaling (model::rope_inv_freqs)
  cpu::WeightView token_embd{};        // [vocab][dim]
  cpu::WeightView output{};            // [vocab][dim] (token_embd when tied)
  const float* output_norm = nullptr;  // [dim]
  std::vector<LlamaLayerDesc> layers;

  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }
};

// Which rows of logits a forward pass returns (model::LogitsMode, restated below the model
// layer).
enum class DeviceLogits {
  kNone,  // only fill the KV cache
  kLast,  // [vocab] of the last token
  kAll,   // [n][vocab]
};

}  // namespace tq::backend
