// The Llama-family forward pass on the CPU (llama, mistral, qwen2, smollm): token embedding,
// per layer RMSNorm -> q/k/v -> RoPE -> GQA attention through a kv::SequenceKv -> output
// projection -> residual, RMSNorm -> SwiGLU FFN -> residual; final RMSNorm and the logits.
// forward_batch runs the tokens of several sequences as the rows of one pass (continuous
// batching): every weight matrix is streamed once per step, whatever the number of sequences.
// A Model owns the mapped GGUF file, its config, its bound weights and its tokenizer, and is
// immutable after load: several sequences may run forward passes on it, each with its own
// KV cache and ForwardScratch.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "tq/backend/cpu/matmul.h"
#include "tq/core/status.h"
#include "tq/core/thread_pool.h"
#include "tq/kv/sequence_kv.h"
#include "tq/model/config.h"
#include "tq/model/gguf.h"
#include "tq/model/tokenizer.h"
#include "tq/model/weights.h"

namespace tq::model {

// Activation buffers of one forward pass, grown on demand and reused, so that decoding a token
// allocates nothing. One per thread running forward passes (a batch shares one: its rows are
// the tokens of all its sequences).
class ForwardScratch {
 public:
  // Makes room for n token rows at once. Only grows.
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
  // [rows][vocab] logits of a batch whose sequences' logits buffers are not one contiguous
  // run; grown only then.
  std::vector<float> logits_;
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
  float* logits = nullptr;  // see LogitsMode; may be null for kNone
};

// One sequence of a batched forward pass: its new tokens, its cache and where its logits go.
struct BatchSequence {
  const int32_t* tokens = nullptr;  // [n], each in [0, vocab)
  int n = 0;                        // tokens, at positions kv->length() .. +n-1
  kv::SequenceKv* kv = nullptr;     // appended and committed by the pass; one item per cache
  LogitsMode logits_mode = LogitsMode::kLast;
  float* logits = nullptr;  // see LogitsMode; may be null for kNone
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
  // What a KV cache with value scaling needs (kv::PagedKvCacheOptions::value_weights):
  // [layer][kv_head][head_dim], the norm of attn_output's columns that read channel j of a KV
  // head, the root of the sum of squares over the query heads of its group. Reads (and
  // dequantizes) every attn_output weight once.
  Expected<std::vector<float>> value_output_weights() const;

  // How the weight matmuls take activations: quantized to 8 bits (the default, fast) or float
  // (quality runs: the 8-bit rounding puts a floor of ~0.0035 KLD under any change of the KV
  // cache's outputs on SmolLM2, docs/quality.md). Set before the model is shared.
  void set_activations(backend::cpu::Activations a) { activations_ = a; }
  backend::cpu::Activations activations() const { return activations_; }

  // Runs args.n tokens through the model: forward_batch with one sequence.
  Status forward(const ForwardArgs& args) const;

  // Runs the tokens of every sequence through the model as the rows of one pass: embedding,
  // norms, projections, FFN and the logits matmul run once over all rows (one weight stream
  // per step); RoPE uses each row's own position and attention runs per sequence, through its
  // own cache. The logits matmul only sees the rows whose logits are wanted. Validates every
  // sequence (token ids, KV capacity, distinct caches) before touching any cache, so a
  // rejected call leaves every cache unchanged. A sequence's logits land in its own buffer; the
  // fastest layout puts them one after another in sequence order (no copy).
  Status forward_batch(std::span<const BatchSequence> seqs, ThreadPool& pool,
                       ForwardScratch& scratch) const;

 private:
  Model() = default;
  // Total rows of the batch, or why it cannot run.
  Expected<int> validate_batch(std::span<const BatchSequence> seqs) const;
  Status run_layer(int layer, std::span<const BatchSequence> seqs, int rows, ThreadPool& pool,
                   ForwardScratch& s) const;
  // cos/sin of rows [row0, row0 + n), at positions pos0 .. pos0 + n - 1.
  void compute_rope_tables(int row0, int pos0, int n, ForwardScratch& s) const;
  Status compute_logits(std::span<const BatchSequence> seqs, ThreadPool& pool,
                        ForwardScratch& s) const;

  std::vector<uint8_t> bytes_;  // the file's bytes when loaded from memory (before file_)
  std::unique_ptr<GgufFile> file_;
  ModelConfig config_;
  ModelWeights weights_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::vector<float> inv_freq_;  // [rope_dims/2] after rope scaling
  backend::cpu::Activations activations_ = backend::cpu::Activations::kQuantized;
};

}  // namespace tq::model
