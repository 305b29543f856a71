// A CPU stand-in for backend::DeviceModel, so the device path of the scheduler
// (runtime::DeviceStepModel) runs in tests on machines without a GPU: a model::Model with one
// PagedKv per slot (own pages, no prefix sharing), honouring the header's contract: forward()
// any n tokens of one slot in passes of at most max_batch, forward_batch() one token of each
// of B distinct slots as ONE Model::forward_batch, everything validated before any cache is
// touched, reset() empties a slot. It counts its calls so tests can see how steps were split.
// copy_sequence() and truncate() recompute: every slot keeps the token passes its cache was
// built from and replays them (cut at the kept length) into a fresh PagedKv, so a kept prefix
// holds what it held (a cut inside the first pass recomputes the key means from the kept part,
// where a GPU keeps the first pass's; with a window the kept window rows are recomputed exact,
// where a GPU reads positions before the cut compressed until `window` tokens have come, and
// refuses them in forward_batch until then: so does this, refill_until()).
#pragma once

#include <algorithm>
#include <atomic>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "tq/backend/cpu/tq_kernels.h"
#include "tq/backend/device_model.h"
#include "tq/core/thread_pool.h"
#include "tq/kv/kv_bytes.h"
#include "tq/kv/paged_kv.h"
#include "tq/kv/paged_kv_cache.h"
#include "tq/model/llama.h"
#include "tq/runtime/logprobs.h"
#include "tq/runtime/sampler.h"

namespace tq::test {

class CpuDeviceModel final : public backend::DeviceModel {
 public:
  static Expected<std::unique_ptr<CpuDeviceModel>> create(const model::Model& m,
                                                          const backend::DeviceModelOptions& o) {
    TQ_RETURN_IF_ERROR(o.validate());
    std::unique_ptr<CpuDeviceModel> d(new CpuDeviceModel(m, o));
    kv::PagedKvCacheOptions co;
    co.shape = m.attention_shape();
    co.config = o.kv;
    co.prefix_caching = false;  // the GPU's slots share nothing
    co.kernels = &backend::cpu::cpu_kernel_table();
    TQ_ASSIGN_OR_RETURN(const std::vector<size_t> blocks, kv::kv_block_bytes(o.kv, co.shape));
    size_t page = 0;
    for (size_t b : blocks) page += b;
    const size_t pages =
        static_cast<size_t>((o.max_context + o.kv.block_tokens - 1) / o.kv.block_tokens);
    co.pool_bytes = page * pages * static_cast<size_t>(o.max_sequences);
    TQ_ASSIGN_OR_RETURN(d->cache_, kv::PagedKvCache::create(co));
    d->slots_.resize(static_cast<size_t>(o.max_sequences));
    d->passes_.resize(static_cast<size_t>(o.max_sequences));
    d->refill_.resize(static_cast<size_t>(o.max_sequences), 0);
    for (int s = 0; s < o.max_sequences; ++s) TQ_RETURN_IF_ERROR(d->reset(s));
    return d;
  }

  Status forward(const backend::DeviceForwardArgs& a) override {
    TQ_RETURN_IF_ERROR(check_slot(a.seq, "forward: "));
    if (a.n < 1 || a.tokens == nullptr) return invalid_argument("forward: no tokens");
    TQ_RETURN_IF_ERROR(check_item(a, "forward: "));
    kv::PagedKv& kv = slot(a.seq);
    if (a.n > o_.max_context - kv.length())
      return resource_exhausted("forward: the tokens exceed the slot's context");
    ++forward_calls;
    if (a.logits != nullptr) ++logits_rows;
    if (a.n == 1 && kv.length() > 0) ++single_token_forwards;  // a decode that missed the batch
    const int vocab = m_.config().vocab_size;
    float* last_row = nullptr;  // the logits the greedy token is taken from
    for (int done = 0; done < a.n;) {
      const int n = std::min(o_.max_batch, a.n - done);
      model::ForwardArgs f;
      f.tokens = a.tokens + done;
      f.n = n;
      f.kv = &kv;
      f.pool = &pool_;
      f.scratch = &scratch_;
      f.logits_mode = mode(a.logits_mode);
      f.logits = a.logits;
      if (a.logits_mode == backend::DeviceLogits::kAll) {
        f.logits = a.logits + static_cast<size_t>(done) * vocab;
        last_row = f.logits + static_cast<size_t>(n - 1) * vocab;
      } else if (done + n < a.n) {
        f.logits_mode = model::LogitsMode::kNone;  // only the last pass's last token
      } else if (a.logits_mode == backend::DeviceLogits::kLast) {
        if (f.logits == nullptr) {  // greedy or top candidates: the logits stay "on the device"
          own_rows_.resize(static_cast<size_t>(vocab));
          f.logits = own_rows_.data();
        }
        last_row = f.logits;
      }
      TQ_RETURN_IF_ERROR(m_.forward(f));
      passes_[static_cast<size_t>(a.seq)].emplace_back(f.tokens, f.tokens + n);
      done += n;
    }
    if (a.greedy != nullptr) {
      *a.greedy = runtime::greedy_token(last_row, vocab);
      ++greedy_rows;
    }
    if (a.top_k > 0) {
      runtime::top_logits(last_row, vocab, a.top_k, a.top_ids, a.top_logits);
      ++top_rows;
    }
    if (a.log_z != nullptr) *a.log_z = runtime::log_partition(last_row, vocab);
    return ok_status();
  }

  Status forward_batch(std::span<const backend::DeviceForwardArgs> items) override {
    const int B = static_cast<int>(items.size());
    if (B < 1 || B > o_.max_batch) return invalid_argument("forward_batch: bad item count");
    std::vector<uint8_t> seen(slots_.size(), 0);
    for (const auto& a : items) {
      TQ_RETURN_IF_ERROR(check_slot(a.seq, "forward_batch: "));
      if (seen[static_cast<size_t>(a.seq)]++)
        return invalid_argument("forward_batch: a slot appears twice");
      if (a.n != 1 || a.tokens == nullptr)
        return invalid_argument("forward_batch: needs exactly one token per item");
      TQ_RETURN_IF_ERROR(check_item(a, "forward_batch: "));
      if (slot(a.seq).length() >= o_.max_context)
        return resource_exhausted("forward_batch: a slot is full");
      if (refill_until(a.seq) != 0)
        return invalid_argument("forward_batch: a truncated slot's window is not refilled yet");
    }
    ++forward_batch_calls;
    for (const auto& a : items) logits_rows += a.logits != nullptr;
    forward_batch_rows += B;
    for (int cur = max_batch_rows.load();
         B > cur && !max_batch_rows.compare_exchange_weak(cur, B);) {
    }
    batch_.clear();
    const size_t vocab = static_cast<size_t>(m_.config().vocab_size);
    own_rows_.resize(items.size() * vocab);
    for (size_t i = 0; i < items.size(); ++i) {
      const auto& a = items[i];
      float* logits = a.logits == nullptr && (a.greedy != nullptr || a.top_k > 0 || a.log_z)
                          ? &own_rows_[i * vocab]
                          : a.logits;
      batch_.push_back(
          model::BatchSequence{a.tokens, 1, &slot(a.seq), mode(a.logits_mode), logits});
    }
    TQ_RETURN_IF_ERROR(m_.forward_batch(batch_, pool_, scratch_));
    for (const auto& a : items)
      passes_[static_cast<size_t>(a.seq)].emplace_back(a.tokens, a.tokens + 1);
    for (size_t i = 0; i < items.size(); ++i) {
      const backend::DeviceForwardArgs& a = items[i];
      if (a.greedy != nullptr) {
        *a.greedy = runtime::greedy_token(batch_[i].logits, static_cast<int>(vocab));
        ++greedy_rows;
      }
      if (a.top_k > 0) {
        runtime::top_logits(batch_[i].logits, static_cast<int>(vocab), a.top_k, a.top_ids,
                            a.top_logits);
        ++top_rows;
      }
      if (a.log_z != nullptr)
        *a.log_z = runtime::log_partition(batch_[i].logits, static_cast<int>(vocab));
    }
    return ok_status();
  }

  Status copy_sequence(int src, int dst) override {
    TQ_RETURN_IF_ERROR(check_slot(src, "copy_sequence: "));
    TQ_RETURN_IF_ERROR(check_slot(dst, "copy_sequence: "));
    if (src == dst) return ok_status();
    ++copies;
    TQ_RETURN_IF_ERROR(replay(dst, passes_[static_cast<size_t>(src)], length(src)));
    refill_[static_cast<size_t>(dst)] = refill_[static_cast<size_t>(src)];
    return ok_status();
  }
  Status truncate(int seq, int length) override {
    TQ_RETURN_IF_ERROR(check_slot(seq, "truncate: "));
    const int current = this->length(seq);
    TQ_RETURN_IF_ERROR(o_.check_truncate(seq, current, length));
    ++truncations;
    if (length == current) return ok_status();
    TQ_RETURN_IF_ERROR(replay(seq, passes_[static_cast<size_t>(seq)], length));
    // The device's contract (its ring of window rows is stale until refilled), kept here so
    // that tests see a caller that breaks it.
    if (o_.kv.window > 0 && length > o_.kv.sinks)
      refill_[static_cast<size_t>(seq)] = length + o_.kv.window;
    return ok_status();
  }
  int refill_until(int seq) const override {
    const int r = refill_[static_cast<size_t>(seq)];
    return length(seq) < r ? r : 0;
  }
  int length(int seq) const override { return slots_[static_cast<size_t>(seq)]->length(); }
  Status reset(int seq) override {
    TQ_RETURN_IF_ERROR(check_slot(seq, "reset: "));
    slots_[static_cast<size_t>(seq)].reset();  // its pages back first
    TQ_ASSIGN_OR_RETURN(slots_[static_cast<size_t>(seq)], cache_->new_sequence(o_.max_context));
    passes_[static_cast<size_t>(seq)].clear();
    refill_[static_cast<size_t>(seq)] = 0;
    return ok_status();
  }
  const backend::DeviceModelOptions& options() const override { return o_; }
  std::string describe() const override { return "cpu stand-in: " + o_.to_string(); }

  const kv::PagedKvCache& cache() const { return *cache_; }

  std::atomic<int64_t> forward_calls{0};
  std::atomic<int64_t> greedy_rows{0};  // rows whose greedy token was asked for
  std::atomic<int64_t> top_rows{0};     // rows whose top candidates were asked for
  std::atomic<int64_t> logits_rows{0};  // calls and batch items that took logits rows back
  std::atomic<int64_t> single_token_forwards{0};
  std::atomic<int64_t> forward_batch_calls{0};
  std::atomic<int64_t> forward_batch_rows{0};
  std::atomic<int> max_batch_rows{0};
  std::atomic<int64_t> copies{0};
  std::atomic<int64_t> truncations{0};

 private:
  CpuDeviceModel(const model::Model& m, const backend::DeviceModelOptions& o)
      : m_(m), o_(o), pool_(2) {}

  static model::LogitsMode mode(backend::DeviceLogits l) {
    switch (l) {
      case backend::DeviceLogits::kNone:
        return model::LogitsMode::kNone;
      case backend::DeviceLogits::kLast:
        return model::LogitsMode::kLast;
      case backend::DeviceLogits::kAll:
        return model::LogitsMode::kAll;
    }
    return model::LogitsMode::kNone;
  }
  Status check_slot(int seq, const std::string& at) const {
    if (seq < 0 || seq >= o_.max_sequences)
      return invalid_argument(at + "slot " + std::to_string(seq) + " out of range");
    return ok_status();
  }
  Status check_item(const backend::DeviceForwardArgs& a, const std::string& at) const {
    if (a.logits_mode != backend::DeviceLogits::kNone && a.logits == nullptr &&
        a.greedy == nullptr && a.top_k == 0 && a.log_z == nullptr)
      return invalid_argument(at + "logits buffer is null");
    if (a.log_z != nullptr && a.logits_mode == backend::DeviceLogits::kNone)
      return invalid_argument(at + "log_z needs a logits mode");
    if (a.top_k < 0 || a.top_k > backend::DeviceForwardArgs::kMaxTopK ||
        a.top_k > m_.config().vocab_size || (a.top_k > 0 && (!a.top_ids || !a.top_logits)))
      return invalid_argument(at + "bad top candidates request");
    if (a.greedy != nullptr && a.logits_mode == backend::DeviceLogits::kNone)
      return invalid_argument(at + "a greedy token needs a logits mode");
    for (int t = 0; t < a.n; ++t)
      if (a.tokens[t] < 0 || a.tokens[t] >= m_.config().vocab_size)
        return invalid_argument(at + "token id outside the vocab");
    return ok_status();
  }
  kv::PagedKv& slot(int seq) { return *slots_[static_cast<size_t>(seq)]; }
  // Slot `seq` rebuilt from `passes` (a copy: they may be another slot's), cut at `length`.
  Status replay(int seq, std::vector<std::vector<int32_t>> passes, int length) {
    TQ_RETURN_IF_ERROR(reset(seq));
    auto& kept = passes_[static_cast<size_t>(seq)];
    for (std::vector<int32_t>& p : passes) {
      const int n = std::min(static_cast<int>(p.size()), length - slot(seq).length());
      if (n <= 0) break;
      model::ForwardArgs f;
      f.tokens = p.data();
      f.n = n;
      f.kv = &slot(seq);
      f.pool = &pool_;
      f.scratch = &scratch_;
      f.logits_mode = model::LogitsMode::kNone;
      TQ_RETURN_IF_ERROR(m_.forward(f));
      p.resize(static_cast<size_t>(n));
      kept.push_back(std::move(p));
    }
    return ok_status();
  }

  const model::Model& m_;
  const backend::DeviceModelOptions o_;
  ThreadPool pool_;
  model::ForwardScratch scratch_;
  std::unique_ptr<kv::PagedKvCache> cache_;
  std::vector<std::unique_ptr<kv::PagedKv>> slots_;        // [slot]
  std::vector<std::vector<std::vector<int32_t>>> passes_;  // [slot]: token passes, in order
  std::vector<int> refill_;  // [slot]: refill_until's length after a cut with a window
  std::vector<model::BatchSequence> batch_;
  std::vector<float> own_rows_;  // logits of greedy rows that bring no buffer
};

}  // namespace tq::test
