// Binds a Llama-family model's tensors (llama.cpp names) to typed views into the mapped GGUF
// file, checking every shape and type against the config so the forward pass never reads out
// of bounds. Small vectors (norms, biases, rope factors) are copied out as float32.
#pragma once

#include <vector>

#include "tq/backend/cpu/matmul.h"
#include "tq/core/status.h"
#include "tq/model/config.h"

namespace tq::model {

class GgufFile;

struct LayerWeights {
  std::vector<float> attn_norm;     // [dim]
  backend::cpu::WeightView wq;      // [q_dim rows][dim cols]
  backend::cpu::WeightView wk;      // [kv_dim][dim]
  backend::cpu::WeightView wv;      // [kv_dim][dim]
  backend::cpu::WeightView wo;      // [dim][q_dim]
  std::vector<float> bq, bk, bv;    // [q_dim], [kv_dim], [kv_dim]; empty when absent
  std::vector<float> ffn_norm;      // [dim]
  backend::cpu::WeightView w_gate;  // [ffn_dim][dim]
  backend::cpu::WeightView w_up;    // [ffn_dim][dim]
  backend::cpu::WeightView w_down;  // [dim][ffn_dim]
};

struct ModelWeights {
  backend::cpu::WeightView token_embd;  // [vocab][dim]
  std::vector<float> output_norm;       // [dim]
  backend::cpu::WeightView output;      // [vocab][dim]; token_embd when tied
  bool tied_output = false;             // output.weight absent: logits use token_embd
  std::vector<float> rope_freqs;        // [rope_dims/2] llama3 factors; empty when absent
  std::vector<LayerWeights> layers;
  size_t bytes = 0;  // weight bytes the forward pass reads per token
};

// NotFound names the missing tensor; InvalidArgument gives expected vs actual shape;
// Unsupported names a tensor type tq cannot multiply.
Expected<ModelWeights> bind_weights(const GgufFile& file, const ModelConfig& cfg);

}  // namespace tq::model
