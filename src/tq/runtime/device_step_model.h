// The scheduler's steps on a device (the GPU) through backend::DeviceModel: a sequence is one
// of the device's fixed slots (max_context tokens with pages of its own), emptied when the
// sequence ends. Each step runs every decode row (one token on a non-empty slot) as ONE
// DeviceModel::forward_batch (the weights streamed once for all of them) and each prefill
// chunk with DeviceModel::forward. The device shares no prefixes: reuse_prefix takes nothing.
// Pages are counted from the slots' lengths (pages_per_slot per slot), so the scheduler's
// admission math holds: with a slot free, a full-context sequence always fits.
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
                                                           const model::Model& model);

  const model::Tokenizer& tokenizer() const override { return model_.tokenizer(); }
  int vocab() const override { return model_.config().vocab_size; }
  // InvalidArgument when `context` exceeds the slots' max_context; ResourceExhausted when
  // every slot is taken.
  Expected<std::unique_ptr<StepSequence>> new_sequence(int context) override;
  Status forward(std::span<const StepRow> rows) override;

  kv::KvPoolStats kv_stats() const override;
  const kv::KvConfig& kv_config() const override { return dm_.options().kv; }
  const kv::AttentionShape& shape() const override { return shape_; }
  bool prefix_caching() const override { return false; }
  bool remote_logits() const override { return true; }
  StepLimits limits() const override {
    return {dm_.options().max_sequences, dm_.options().max_context};
  }

 private:
  class Sequence;
  DeviceStepModel(backend::DeviceModel& dm, const model::Model& model);
  int slot_length(int slot) const;
  void release(int slot);  // empties the slot and frees it (a Sequence's destructor)
  int pages_for(int tokens) const;

  backend::DeviceModel& dm_;
  const model::Model& model_;
  const kv::AttentionShape shape_;
  std::vector<size_t> block_bytes_;  // [2 * layer + (V ? 1 : 0)]: one page's slab bytes
  size_t page_bytes_ = 0;

  // Read by kv_stats() from any thread; written by the engine thread.
  mutable std::mutex mu_;
  std::vector<uint8_t> held_;  // [slot]: a Sequence owns it
  std::vector<int> lengths_;   // [slot]: dm_.length() after the last step

  // One step's device calls (engine thread; reused).
  std::vector<backend::DeviceForwardArgs> decode_;
  std::vector<backend::DeviceForwardArgs> prefill_;
};

}  // namespace tq::runtime
