// CpuStepModel (see cpu_step_model.h).
#include "tq/runtime/cpu_step_model.h"

#include <utility>

#include "tq/runtime/logprobs.h"
#include "tq/runtime/sampler.h"

namespace tq::runtime {
namespace {

// A PagedKv as the scheduler sees it.
class CpuSequence final : public StepSequence {
 public:
  explicit CpuSequence(std::unique_ptr<kv::PagedKv> kv) : kv_(std::move(kv)) {}

  int length() const override { return kv_->length(); }
  int capacity() const override { return kv_->capacity(); }
  int pages_held() const override { return static_cast<int>(kv_->pages().size()); }
  Expected<int> reuse_prefix(std::span<const int32_t> prompt) override {
    return kv_->reuse_prefix(prompt);
  }
  int compressed_tokens() const override { return kv_->compressed_tokens(0); }
  kv::PagedKv& kv() { return *kv_; }

 private:
  std::unique_ptr<kv::PagedKv> kv_;
};

}  // namespace

Expected<std::unique_ptr<StepSequence>> CpuStepModel::new_sequence(int context) {
  TQ_ASSIGN_OR_RETURN(auto kv, cache_.new_sequence(context));
  return std::unique_ptr<StepSequence>(std::make_unique<CpuSequence>(std::move(kv)));
}

Status CpuStepModel::forward(std::span<const StepRow> rows) {
  // Token ids first: commit() indexes every page they complete in the prefix cache. The rows'
  // sequences came from new_sequence() above, so they are CpuSequences.
  batch_.clear();
  const size_t vocab = static_cast<size_t>(model_.config().vocab_size);
  size_t scratch_rows = 0;
  for (const StepRow& r : rows)
    scratch_rows += (r.greedy != nullptr || r.top_count > 0 || r.log_z) && r.logits == nullptr;
  greedy_logits_.resize(scratch_rows * vocab);
  scratch_rows = 0;
  for (const StepRow& r : rows) {
    kv::PagedKv& kv = static_cast<CpuSequence*>(r.seq)->kv();
    TQ_RETURN_IF_ERROR(kv.add_tokens(std::span<const int32_t>(r.tokens, r.n)));
    // A greedy or top-candidates row without a logits buffer of its own gets one here: the
    // CPU has the logits in memory anyway.
    float* logits = r.logits;
    if (logits == nullptr && (r.greedy != nullptr || r.top_count > 0 || r.log_z))
      logits = &greedy_logits_[scratch_rows++ * vocab];
    batch_.push_back(model::BatchSequence{
        r.tokens, r.n, &kv, logits ? model::LogitsMode::kLast : model::LogitsMode::kNone, logits});
  }
  // One pass for the whole step: the weights are streamed once, not once per sequence.
  TQ_RETURN_IF_ERROR(model_.forward_batch(batch_, pool_, scratch_));
  for (size_t i = 0; i < rows.size(); ++i) {
    const StepRow& r = rows[i];
    if (r.greedy != nullptr) *r.greedy = greedy_token(batch_[i].logits, static_cast<int>(vocab));
    if (r.top_count > 0)
      top_logits(batch_[i].logits, static_cast<int>(vocab), r.top_count, r.top_ids, r.top_logits);
    if (r.log_z) *r.log_z = log_partition(batch_[i].logits, static_cast<int>(vocab));
  }
  return ok_status();
}

}  // namespace tq::runtime
