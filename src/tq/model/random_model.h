// Random-weight Llama-family GGUF models of any shape (tq make-model, tests): Gaussian
// weights scaled so activations stay O(1) through every layer, unit norms, a small byte-level
// BPE vocabulary our tokenizer (and llama.cpp's) can run, and complete llama.cpp metadata.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "tq/core/status.h"
#include "tq/model/config.h"
#include "tq/model/gguf_writer.h"
#include "tq/quant/ggml_types.h"

namespace tq::model {

struct RandomModelSpec {
  Arch arch = Arch::kLlama;
  int n_layers = 2;
  int dim = 64;
  int ffn_dim = 128;
  int n_heads = 4;
  int n_kv_heads = 2;
  int vocab_size = 512;  // >= 259: 256 byte tokens + 3 special tokens, the rest BPE merges
  int context_length = 2048;
  float rope_freq_base = 10000.0f;
  float rms_eps = 1e-5f;
  bool tied_output = true;                        // no output.weight: logits use token_embd
  quant::GgmlType type = quant::GgmlType::kQ8_0;  // matrices and token_embd
  uint64_t seed = 1;
  std::string name = "tq-random";

  // Shapes valid for the forward pass and the type: dim % 32 for block types, dims divisible
  // by heads, vocab >= kMinVocab, ...
  Status validate() const;
  std::string to_string() const;
};

inline constexpr int kRandomModelMinVocab = 259;

// "llama3-8b", "qwen2.5-7b", "smollm2-135m" (real models' shapes); NotFound otherwise.
Expected<RandomModelSpec> random_model_preset(std::string_view shape);

// Fills a writer with the whole model (metadata, tokenizer, tensors). Memory: the quantized
// tensors plus one row of floats.
Status build_random_model(const RandomModelSpec& spec, GgufWriter& out);

}  // namespace tq::model
