// The Llama-family forward pass on the CPU (llama, mistral, qwen2, smollm): token embedding,
// per layer RMSNorm -> q/k/v -> RoPE -> GQA attention through a kv::SequenceKv -> output
// projection -> residual, RMSNorm -> SwiGLU FFN -> residual; final RMSNorm and the logits.
// A Model owns the mapped GGUF file, its config, its bound weights and its tokenizer, and is
// immutable after load: several sequences may run forward passes on it, each with its own
// KV cache and ForwardScratch.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tq/core/status.h"
#include "tq/core/thread_pool.h"
#include "tq/kv/sequence_kv.h"
#include "tq/model/config.h"
#include "tq/model/gguf.h"
#include "tq/model/tokenizer.h"
#include "tq/model/weights.h"

namespace tq::model {

// Activation buffers of one forward pass, grown on demand and reused, so that decoding a token
// allocates nothing. One per sequence (or per thread running forward passes).
class ForwardScratch {
 public:
  // Makes room for n tokens at once. Only grows.
  void reserve(const ModelConfig& cfg, int n_tokens);

 private:
  friend class Model;
  int n_tokens_ = 0;
  std::vector<float> x_;     // [n][dim] residual stream
  std::vector<float> xn_;    // [n][dim] normalized
  std::vector<float> q_;     // [n][q_dim]
  std::vector<float> k_;     // [n][kv_dim]
  std::vector<float> v_;     // [n][kv_dim]
  std::vector<float> att_;   // [n][q_dim] attention output
  std::vector<float> proj_;  // [n][dim] output of attn_output / ffn_down
  std::vector<float> gate_;  // [n][ffn_dim]
  std::vector<float> up_;    // [n][ffn_dim]
  std::vector<float> cos_;   // [n][rope_dims/2]
  std::vector<float> sin_;   // [n][rope_dims/2]
};

enum class LogitsMode {
  kNone,  // only fill the KV cache (e.g. all but the last prefill chunk)
  kLast,  // logits of the last token: [vocab]
  kAll,   // logits of every token: [n][vocab] (perplexity, tests)
};

struct ForwardArgs {
  const int32_t* tokens = nullptr;  // [n], each in [0, vocab)
  int n = 0;                        // tokens, at positions kv->length() .. +n-1
  kv::SequenceKv* kv = nullptr;     // appended and committed by the pass
  ThreadPool* pool = nullptr;
  ForwardScratch* scratch = nullptr;
  LogitsMode logits_mode = LogitsMode::kLast;
  float* logits = nullptr;          // see LogitsMode; may be null for kNone
};

class Model {
 public:
  // Maps and parses the GGUF file, reads the config, binds the weights, loads the tokenizer.
  // Every failure names the file.
  static Expected<std::unique_ptr<Model>> load(const std::string& path);
  // As load, over an already parsed file (tests, in-memory models).
  static Expected<std::unique_ptr<Model>> from_gguf(std::unique_ptr<GgufFile> file);
  // As load, over a whole GGUF file in memory, which the model keeps (tests, make-model).
  static Expected<std::unique_ptr<Model>> from_bytes(std::vector<uint8_t> bytes);

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  const GgufFile& gguf() const { return *file_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  // The attention geometry a KV cache for this model needs.
  kv::AttentionShape attention_shape() const;

  // Runs args.n tokens through the model. Validates the arguments (token ids, KV capacity)
  // before touching the cache, so a rejected call leaves the cache unchanged.
  Status forward(const ForwardArgs& args) const;

 private:
  Model() = default;
  Status run_layer(int layer, const ForwardArgs& args) const;
  void compute_rope_tables(int pos0, int n, ForwardScratch& s) const;

  std::vector<uint8_t> bytes_;  // the file's bytes when loaded from memory (before file_)
  std::unique_ptr<GgufFile> file_;
  ModelConfig config_;
  ModelWeights weights_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::vector<float> inv_freq_;  // [rope_dims/2] after rope scaling
};

}  // namespace tq::model
