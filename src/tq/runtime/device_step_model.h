// The scheduler's steps on a device (the GPU) through backend::DeviceModel: a sequence is one
// of the device's fixed slots (max_context tokens with pages of its own), emptied when the
// sequence ends. Each step runs every decode row (one token on a non-empty slot) as ONE
// DeviceModel::forward_batch (the weights streamed once for all of them) and each prefill
// chunk with DeviceModel::forward. Pages are counted from the slots' lengths (pages_per_slot
// per slot), so the scheduler's admission math holds: with a slot free, a full-context sequence
// always fits.
//
// Prefix reuse (prefix_caching): a slot keeps its K/V after its sequence ends, and the step
// model remembers the token ids every slot holds. A new sequence's reuse_prefix takes the
// longest prefix of its prompt that some slot holds: from a free slot by taking that slot over
// as it is (no copy: the next turn of a conversation finds its history where it left it), from
// a slot in use by DeviceModel::copy_sequence (a shared system prompt), then
// DeviceModel::truncate to the common length. The kept positions carry the key means and
// scales of the slot's first pass, as the CPU's shared pages carry their first sequence's. With
// an f16 window a cut leaves at least a window of prompt tokens to compute (the CPU's rule): the
// positions before the cut are read compressed until then, and the slot's single tokens go
// through forward() until its window is whole (DeviceModel::refill_until). Free slots are handed
// out empty ones first, then the least recently freed; a slot handed out keeps what it holds until
// its sequence settles (reuse_prefix takes it, another slot, or empties it; a sequence that
// never asks is emptied by its first forward), so a conversation's slot survives another
// request's passing pick.
#pragma once

#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "tq/backend/device_model.h"
#include "tq/model/llama.h"
#include "tq/runtime/step_model.h"

namespace tq::runtime {

class DeviceStepModel final : public StepModel {
 public:
  // `dm` (its slots all empty) and `model` (tokenizer, config) must outlive this. The device
  // must batch all its slots in one pass (options().max_batch >= max_sequences).
  static Expected<std::unique_ptr<DeviceStepModel>> create(backend::DeviceModel& dm,
                                                           const model::Model& model,
                                                           bool prefix_caching = true);

  const model::Tokenizer& tokenizer() const override { return model_.tokenizer(); }
  int vocab() const override { return model_.config().vocab_size; }
  // InvalidArgument when `context` exceeds the slots' max_context; ResourceExhausted when
  // every slot is taken.
  Expected<std::unique_ptr<StepSequence>> new_sequence(int context) override;
  Status forward(std::span<const StepRow> rows) override;

  kv::KvPoolStats kv_stats() const override;
  const kv::KvConfig& kv_config() const override { return dm_.options().kv; }
  const kv::AttentionShape& shape() const override { return shape_; }
  bool prefix_caching() const override { return prefix_caching_; }
  bool remote_logits() const override { return true; }
  StepLimits limits() const override {
    return {dm_.options().max_sequences, dm_.options().max_context};
  }

 private:
  class Sequence;
  DeviceStepModel(backend::DeviceModel& dm, const model::Model& model, bool prefix_caching);
  int slot_length(int slot) const;
  void release(int slot);  // frees the slot (a Sequence's destructor); empties it without reuse
  int pages_for(int tokens) const;
  // Sequence::reuse_prefix: may move `seq` to another slot.
  Expected<int> reuse_prefix(Sequence& seq, std::span<const int32_t> prompt);
  // Tokens of `prompt` that slot `s` (holding contents_[s]) could give: the common prefix,
  // leaving one prompt token to compute, where DeviceModel::truncate allows the cut; else 0.
  int reusable(int s, std::span<const int32_t> prompt) const;
  void empty_slot(int slot);  // dm_.reset and forget its contents

  backend::DeviceModel& dm_;
  const model::Model& model_;
  const bool prefix_caching_;
  const kv::AttentionShape shape_;
  std::vector<size_t> block_bytes_;  // [2 * layer + (V ? 1 : 0)]: one page's slab bytes
  size_t page_bytes_ = 0;

  // Read by kv_stats() from any thread; written by the engine thread.
  mutable std::mutex mu_;
  std::vector<uint8_t> held_;  // [slot]: a Sequence owns it
  std::vector<int> lengths_;   // [slot]: dm_.length() after the last step
  int64_t prefix_hit_tokens_ = 0;
  int64_t prefix_lookup_tokens_ = 0;

  // Engine thread only.
  std::vector<std::vector<int32_t>> contents_;  // [slot]: the token ids of its K/V, in order
  std::vector<uint64_t> freed_at_;  // [slot]: when its last sequence ended; 0: empty or held
  uint64_t clock_ = 0;

  // One step's device calls (engine thread; reused).
  std::vector<backend::DeviceForwardArgs> decode_;
  std::vector<backend::DeviceForwardArgs> prefill_;
};

}  // namespace tq::runtime
