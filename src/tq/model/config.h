// Hyperparameters of a Llama-family model (llama, mistral, qwen2, smollm) read from GGUF
// metadata, validated once so the forward pass can trust every field.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tq/core/status.h"

namespace tq::model {

class GgufFile;

enum class Arch {
  kLlama,  // llama, mistral, smollm: "normal" RoPE on GGUF-permuted q/k weights
  kQwen2,  // qwen2: NEOX RoPE, q/k/v biases
};

// How RoPE pairs the dimensions of a head (llama.cpp's LLAMA_ROPE_TYPE_NORM / _NEOX).
enum class RopeStyle {
  kNormal,  // pairs (2i, 2i+1): the convert script permuted q/k rows so this matches HF
  kNeox,    // pairs (i, i + n_rot/2): HF's rotate_half applied to unpermuted weights
};

enum class RopeScaling {
  kNone,
  kLinear,  // positions divided by factor
  kLlama3,  // per-frequency factors (rope_freqs tensor, or computed from the llama3 keys)
};

struct ModelConfig {
  Arch arch = Arch::kLlama;
  std::string arch_name;  // the GGUF general.architecture string, e.g. "llama"
  int n_layers = 0;
  int dim = 0;      // embedding_length
  int ffn_dim = 0;  // feed_forward_length
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;  // attention.key_length, else dim / n_heads
  int vocab_size = 0;
  int context_length = 0;  // the trained context
  float rms_eps = 1e-5f;

  RopeStyle rope_style = RopeStyle::kNormal;
  int rope_dims = 0;  // rope.dimension_count: leading dims of each head that rotate
  float rope_freq_base = 10000.0f;
  RopeScaling rope_scaling = RopeScaling::kNone;
  float rope_scale_factor = 1.0f;      // linear / llama3 factor
  float rope_low_freq_factor = 1.0f;   // llama3
  float rope_high_freq_factor = 4.0f;  // llama3
  int rope_original_context = 8192;    // llama3: original_context_length

  bool qkv_bias = false;  // qwen2: attn_q/k/v carry a bias

  int n_groups() const { return n_heads / n_kv_heads; }
  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }

  // Checks every field is in range and consistent (head counts divide, rope dims even, ...).
  Status validate() const;
  // "llama: 30 layers, dim 576, ffn 1536, heads 9/3 x 64, vocab 49152, ctx 8192, rope normal ..."
  std::string to_string() const;
};

// Reads general.architecture and the {arch}.* keys, then validates. The vocab size comes from
// {arch}.vocab_size, else the tokenizer's token list, else the rows of token_embd.
Expected<ModelConfig> read_model_config(const GgufFile& file);

// The inverse frequency of RoPE pair i (0 <= i < rope_dims/2) after scaling: theta_i =
// base^(-2i/rope_dims) / factor_i. `freq_factors` (rope_freqs tensor, may be empty) overrides
// the llama3 computation, as in llama.cpp.
std::vector<float> rope_inv_freqs(const ModelConfig& cfg, const std::vector<float>& freq_factors);

}  // namespace tq::model
