// The scheduler's steps on the CPU: a model::Model over the shared paged KV cache (prefix
// sharing included) and a thread pool. A step is one Model::forward_batch over every row, so
// the weights are streamed once per step whatever the number of sequences.
#pragma once

#include <memory>
#include <span>
#include <vector>

#include "tq/core/thread_pool.h"
#include "tq/kv/paged_kv.h"
#include "tq/kv/paged_kv_cache.h"
#include "tq/model/llama.h"
#include "tq/runtime/step_model.h"

namespace tq::runtime {

class CpuStepModel final : public StepModel {
 public:
  // The model, cache and pool must outlive this; forward() is the only user of `pool` and of
  // the sequences' caches while it runs (one engine thread).
  CpuStepModel(const model::Model& model, kv::PagedKvCache& cache, ThreadPool& pool)
      : model_(model), cache_(cache), pool_(pool) {}

  const model::Tokenizer& tokenizer() const override { return model_.tokenizer(); }
  int vocab() const override { return model_.config().vocab_size; }
  Expected<std::unique_ptr<StepSequence>> new_sequence(int context) override;
  Status forward(std::span<const StepRow> rows) override;

  kv::KvPoolStats kv_stats() const override { return cache_.stats(); }
  const kv::KvConfig& kv_config() const override { return cache_.config(); }
  const kv::AttentionShape& shape() const override { return cache_.shape(); }
  bool prefix_caching() const override { return cache_.prefix_caching(); }
  StepLimits limits() const override { return {}; }  // only the pool's pages

 private:
  const model::Model& model_;
  kv::PagedKvCache& cache_;
  ThreadPool& pool_;
  model::ForwardScratch scratch_;
  std::vector<model::BatchSequence> batch_;  // one step's sequences (reused)
  std::vector<float> greedy_logits_;         // logits rows of greedy rows that bring none
};

}  // namespace tq::runtime
