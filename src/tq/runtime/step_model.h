// What the continuous-batching scheduler runs its steps on: a model with a KV cache of many
// sequences, one forward call per step. Two implementations: cpu_step_model.h (Model +
// PagedKvCache: one Model::forward_batch per step, prefix sharing) and device_step_model.h
// (backend::DeviceModel: fixed sequence slots on the GPU, no prefix sharing). The scheduler,
// /metrics and the /v1 status views read only what is here, so they serve either one.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "tq/core/status.h"
#include "tq/kv/kv_config.h"
#include "tq/kv/paged_kv_cache.h"
#include "tq/kv/sequence_kv.h"
#include "tq/model/tokenizer.h"

namespace tq::runtime {

// One sequence's cache, owned by the scheduler; destroying it gives its pages or slot back.
class StepSequence {
 public:
  virtual ~StepSequence() = default;
  virtual int length() const = 0;    // tokens in the cache
  virtual int capacity() const = 0;  // tokens it may hold
  // KV pages it holds now (shared prefix pages included): the admission math subtracts them
  // from the pages it will need.
  virtual int pages_held() const = 0;
  // Takes the longest cached prefix of `prompt` into the sequence (as if computed) and returns
  // its token count; 0 where the cache shares no prefixes.
  virtual Expected<int> reuse_prefix(std::span<const int32_t> prompt) = 0;
  // Prompt tokens stored in full pages of layer 0 so far: what a request sharing this prompt
  // could take from the prefix cache once this sequence's prefill gets there.
  virtual int compressed_tokens() const = 0;
};

// The tokens one sequence runs in a step.
struct StepRow {
  StepSequence* seq = nullptr;      // a sequence of the model the step runs on; once per step
  const int32_t* tokens = nullptr;  // [n] at positions seq->length() .. +n-1
  int n = 0;
  float* logits = nullptr;  // [vocab] of the last token, or null: fill the cache only
  // With or instead of logits: the last token's greedy token (runtime::greedy_token), picked
  // where the logits are, so a GPU sends one id instead of the vocabulary's logits.
  int32_t* greedy = nullptr;
  // With or instead of logits: the last token's top_count largest logits as runtime::top_logits
  // ranks them (ids and values, [top_count] each, at most SamplerConfig::kMaxTopCandidates),
  // what Sampler::sample_top draws from: a GPU sends them instead of the vocabulary's logits.
  int top_count = 0;
  int32_t* top_ids = nullptr;
  float* top_logits = nullptr;
  // With top candidates: log_partition of the last token's logits, so that logprobs come from
  // the candidates too (runtime::token_logprob_top) and the row stays where it is.
  double* log_z = nullptr;
};

// Hard limits of a model's cache beyond its page pool; 0 = none.
struct StepLimits {
  int sequences = 0;  // sequences that may exist at once (the GPU's slots)
  int context = 0;    // tokens per sequence (a GPU slot's length)
};

class StepModel {
 public:
  virtual ~StepModel() = default;
  virtual const model::Tokenizer& tokenizer() const = 0;
  virtual int vocab() const = 0;
  // A new empty sequence of at most `context` tokens; an error when no pages or slot are free.
  virtual Expected<std::unique_ptr<StepSequence>> new_sequence(int context) = 0;
  // Runs every row's tokens through the model as one step, appending them to the rows'
  // caches, and writes the logits asked for. Rows name distinct sequences.
  virtual Status forward(std::span<const StepRow> rows) = 0;

  // Pool usage (pages total/used, page bytes, tokens, ratios) for admission and the views;
  // safe to call from any thread while forward runs.
  virtual kv::KvPoolStats kv_stats() const = 0;
  virtual const kv::KvConfig& kv_config() const = 0;
  virtual const kv::AttentionShape& shape() const = 0;
  virtual bool prefix_caching() const = 0;
  virtual StepLimits limits() const = 0;
  // Whether the logits live on another device (a GPU): fetching a row is a transfer, so the
  // scheduler asks for the greedy token or the top candidates where it can.
  virtual bool remote_logits() const { return false; }
};

}  // namespace tq::runtime
