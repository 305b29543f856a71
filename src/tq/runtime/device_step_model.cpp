// DeviceStepModel (see device_step_model.h).
#include "tq/runtime/device_step_model.h"

#include <algorithm>

#include "tq/core/log.h"
#include "tq/kv/kv_bytes.h"

namespace tq::runtime {

// A slot held for one scheduler sequence.
class DeviceStepModel::Sequence final : public StepSequence {
 public:
  Sequence(DeviceStepModel* owner, int slot, int capacity)
      : owner_(owner), slot_(slot), capacity_(capacity) {}
  ~Sequence() override { owner_->release(slot_); }

  int length() const override { return owner_->slot_length(slot_); }
  int capacity() const override { return capacity_; }
  int pages_held() const override { return owner_->pages_for(length()); }
  Expected<int> reuse_prefix(std::span<const int32_t> prompt) override {
    return owner_->reuse_prefix(*this, prompt);
  }
  // What a request sharing this prompt could take once this prefill gets there: every
  // computed token (a slot can be cut anywhere).
  int compressed_tokens() const override { return length(); }

  const DeviceStepModel* owner() const { return owner_; }
  int slot() const { return slot_; }
  void move_to(int slot) { slot_ = slot; }

 private:
  DeviceStepModel* owner_;
  int slot_;
  int capacity_;
};

Expected<std::unique_ptr<DeviceStepModel>> DeviceStepModel::create(backend::DeviceModel& dm,
                                                                   const model::Model& model,
                                                                   bool prefix_caching) {
  const backend::DeviceModelOptions& o = dm.options();
  if (o.max_batch < o.max_sequences)
    return invalid_argument("device step model: max_batch " + std::to_string(o.max_batch) +
                            " is below the " + std::to_string(o.max_sequences) +
                            " slots (every slot decodes in one pass)");
  for (int s = 0; s < o.max_sequences; ++s)
    if (dm.length(s) != 0)
      return invalid_argument("device step model: slot " + std::to_string(s) + " is not empty");
  std::unique_ptr<DeviceStepModel> m(new DeviceStepModel(dm, model, prefix_caching));
  TQ_ASSIGN_OR_RETURN(m->block_bytes_, kv::kv_block_bytes(o.kv, m->shape_));
  for (size_t b : m->block_bytes_) m->page_bytes_ += b;
  return m;
}

DeviceStepModel::DeviceStepModel(backend::DeviceModel& dm, const model::Model& model,
                                 bool prefix_caching)
    : dm_(dm),
      model_(model),
      prefix_caching_(prefix_caching),
      shape_(model.attention_shape()),
      held_(static_cast<size_t>(dm.options().max_sequences), 0),
      lengths_(static_cast<size_t>(dm.options().max_sequences), 0),
      contents_(static_cast<size_t>(dm.options().max_sequences)),
      freed_at_(static_cast<size_t>(dm.options().max_sequences), 0) {}

int DeviceStepModel::pages_for(int tokens) const {
  const int bt = dm_.options().kv.block_tokens;
  return (tokens + bt - 1) / bt;
}

int DeviceStepModel::slot_length(int slot) const {
  std::lock_guard<std::mutex> lock(mu_);
  return lengths_[static_cast<size_t>(slot)];
}

Expected<std::unique_ptr<StepSequence>> DeviceStepModel::new_sequence(int context) {
  const backend::DeviceModelOptions& o = dm_.options();
  if (context < 1 || context > o.max_context)
    return invalid_argument("device: a sequence of " + std::to_string(context) +
                            " tokens does not fit a slot of " + std::to_string(o.max_context));
  int slot = -1;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Empty slots first (freed_at_ 0), then the one freed longest ago.
    for (size_t i = 0; i < held_.size(); ++i)
      if (!held_[i] && (slot < 0 || freed_at_[i] < freed_at_[static_cast<size_t>(slot)]))
        slot = static_cast<int>(i);
    if (slot < 0)
      return resource_exhausted("device: all " + std::to_string(o.max_sequences) +
                                " sequence slots are in use");
    held_[static_cast<size_t>(slot)] = 1;
  }
  // A slot still holding an ended sequence's tokens keeps them until this sequence settles on
  // it (reuse_prefix may take another slot and leave this one as it was; forward empties it).
  return std::unique_ptr<StepSequence>(std::make_unique<Sequence>(this, slot, context));
}

void DeviceStepModel::empty_slot(int slot) {
  if (Status st = dm_.reset(slot); !st.ok())
    TQ_LOG(kError, "device: emptying slot %d failed: %s", slot, st.to_string().c_str());
  contents_[static_cast<size_t>(slot)].clear();
  freed_at_[static_cast<size_t>(slot)] = 0;
}

void DeviceStepModel::release(int slot) {
  // Without prefix reuse the slot is emptied now rather than when reused; with it, it keeps
  // its K/V for a later prompt that starts with them. Either way its pages count as free.
  if (!prefix_caching_ || contents_[static_cast<size_t>(slot)].empty()) {
    empty_slot(slot);
  } else {
    freed_at_[static_cast<size_t>(slot)] = ++clock_;
  }
  std::lock_guard<std::mutex> lock(mu_);
  held_[static_cast<size_t>(slot)] = 0;
  lengths_[static_cast<size_t>(slot)] = 0;
}

int DeviceStepModel::reusable(int s, std::span<const int32_t> prompt) const {
  const std::vector<int32_t>& held = contents_[static_cast<size_t>(s)];
  const int size = static_cast<int>(held.size()), asked = static_cast<int>(prompt.size());
  const int limit = std::min(asked - 1, size);
  int n = 0;
  while (n < limit && held[static_cast<size_t>(n)] == prompt[static_cast<size_t>(n)]) ++n;
  // A cut leaves at least a window of prompt tokens to compute, as the CPU's prefix cache
  // does: the window is whole again when the prompt is done (decode batches again).
  const int window = dm_.options().kv.window;
  if (n < size && window > 0) n = std::min(n, asked - window);
  if (n <= 0 || !dm_.options().check_truncate(s, size, n).ok()) return 0;
  return n;
}

Expected<int> DeviceStepModel::reuse_prefix(Sequence& seq, std::span<const int32_t> prompt) {
  const int mine = seq.slot();
  const bool unsettled = freed_at_[static_cast<size_t>(mine)] != 0;  // holds an ended sequence's
  if (seq.length() != 0) return 0;
  if (!prefix_caching_) {
    if (unsettled) empty_slot(mine);
    return 0;
  }
  // The best source: the most tokens; an ended sequence's slot (this one, or a free one: taken
  // as it is, no copy) before a slot in use (copied, so worth at least a page).
  int best = 0, from = -1;
  bool from_free = false;
  decltype(held_) held_now;
  {
    std::lock_guard<std::mutex> lock(mu_);
    held_now = held_;
    prefix_lookup_tokens_ += static_cast<int64_t>(prompt.size());
  }
  for (int s = 0; s < static_cast<int>(contents_.size()); ++s) {
    const bool ended = freed_at_[static_cast<size_t>(s)] != 0;
    const bool held = held_now[static_cast<size_t>(s)] != 0;
    if (s == mine ? !ended : held && ended) continue;  // nothing of its own / another's pick
    const bool free = ended;
    const int n = reusable(s, prompt);
    if (!free && n < dm_.options().kv.block_tokens) continue;
    if (n > best || (n == best && n > 0 && free && !from_free)) {
      best = n;
      from = s;
      from_free = free;
    }
  }
  if (best == 0) {  // this slot it is, emptied
    if (unsettled) empty_slot(mine);
    return 0;
  }
  if (!from_free && unsettled) {  // the copy overwrites what this slot held
    contents_[static_cast<size_t>(mine)].clear();
    freed_at_[static_cast<size_t>(mine)] = 0;
  }
  const int slot = from_free ? from : mine;
  Status st = from_free ? ok_status() : dm_.copy_sequence(from, mine);
  if (st.ok()) st = dm_.truncate(slot, best);
  if (!st.ok()) {  // nothing reused; the request computes its whole prompt
    TQ_LOG(kWarn, "device: reusing %d tokens of slot %d failed: %s", best, from,
           st.to_string().c_str());
    empty_slot(slot);
    return 0;
  }
  std::vector<int32_t>& kept = contents_[static_cast<size_t>(slot)];
  if (from_free) {
    kept.resize(static_cast<size_t>(best));
    freed_at_[static_cast<size_t>(slot)] = 0;
    seq.move_to(slot);
  } else {
    const std::vector<int32_t>& src = contents_[static_cast<size_t>(from)];
    kept.assign(src.begin(), src.begin() + best);
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (slot != mine) {
    held_[static_cast<size_t>(slot)] = 1;
    held_[static_cast<size_t>(mine)] = 0;  // back as it was (its tokens, its place in line)
  }
  lengths_[static_cast<size_t>(slot)] = best;
  prefix_hit_tokens_ += best;
  return best;
}

Status DeviceStepModel::forward(std::span<const StepRow> rows) {
  decode_.clear();
  prefill_.clear();
  for (const StepRow& r : rows) {
    const auto* s = dynamic_cast<const Sequence*>(r.seq);
    if (s == nullptr || s->owner() != this)
      return invalid_argument("device: a step row names a sequence of another model");
    // A sequence that never asked reuse_prefix settles on its slot here.
    if (freed_at_[static_cast<size_t>(s->slot())] != 0) empty_slot(s->slot());
    backend::DeviceForwardArgs a;
    a.seq = s->slot();
    a.tokens = r.tokens;
    a.n = r.n;
    a.logits_mode = r.logits || r.greedy || r.top_count > 0 || r.log_z
                        ? backend::DeviceLogits::kLast
                        : backend::DeviceLogits::kNone;
    a.logits = r.logits;
    a.greedy = r.greedy;
    a.top_k = r.top_count;
    a.top_ids = r.top_ids;
    a.top_logits = r.top_logits;
    a.log_z = r.log_z;
    // An empty slot's first token goes through forward() as a prompt would (it sets up the
    // slot, e.g. its key means), so a one-token prompt runs as it does alone.
    // A slot whose window is refilled after a cut takes its single tokens through forward().
    (r.n == 1 && s->length() > 0 && dm_.refill_until(a.seq) == 0 ? decode_ : prefill_).push_back(a);
  }
  Status st = decode_.empty() ? ok_status() : dm_.forward_batch(decode_);
  for (size_t i = 0; st.ok() && i < prefill_.size(); ++i) st = dm_.forward(prefill_[i]);
  // Lengths and token ids as the device has them now, also after a failure part way through
  // the step.
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto* calls : {&decode_, &prefill_})
    for (const backend::DeviceForwardArgs& a : *calls) {
      const int length = dm_.length(a.seq);
      std::vector<int32_t>& c = contents_[static_cast<size_t>(a.seq)];
      c.insert(c.end(), a.tokens, a.tokens + a.n);
      c.resize(std::min(c.size(), static_cast<size_t>(length)));
      lengths_[static_cast<size_t>(a.seq)] = length;
    }
  return st;
}

kv::KvPoolStats DeviceStepModel::kv_stats() const {
  const backend::DeviceModelOptions& o = dm_.options();
  const kv::KvConfig& c = o.kv;
  kv::KvPoolStats s;
  s.block_tokens = c.block_tokens;
  s.page_bytes = page_bytes_;
  s.pages_total = o.max_sequences * pages_for(o.max_context);
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < held_.size(); ++i) {
      if (!held_[i]) continue;
      ++s.sequences;
      s.tokens += lengths_[i];
      s.pages_used += pages_for(lengths_[i]);
    }
  }
  s.pages_free = s.pages_total - s.pages_used;
  {
    std::lock_guard<std::mutex> lock(mu_);
    s.prefix_hit_tokens = prefix_hit_tokens_;
    s.prefix_lookup_tokens = prefix_lookup_tokens_;
  }
  s.arena_bytes = static_cast<size_t>(s.pages_total) * page_bytes_;
  s.used_bytes = static_cast<size_t>(s.pages_used) * page_bytes_;
  const int layers = shape_.n_layers;
  for (int l = 0; l < layers; ++l) {
    const kv::LayerFormats f = c.formats_for(l, layers);
    for (const bool value : {false, true}) {
      const std::string what = (value ? "V " : "K ") + (value ? f.v : f.k).name();
      const size_t bytes = block_bytes_[static_cast<size_t>(2 * l + (value ? 1 : 0))] *
                           static_cast<size_t>(s.pages_used);
      auto it = std::find_if(s.per_format.begin(), s.per_format.end(),
                             [&](const kv::KvFormatBytes& b) { return b.what == what; });
      if (it == s.per_format.end()) {
        s.per_format.push_back({what, bytes});
      } else {
        it->bytes += bytes;
      }
    }
  }
  const double f16_token = static_cast<double>(kv::kv_f16_token_bytes(shape_));
  s.formats_ratio_vs_f16 =
      page_bytes_ > 0 ? f16_token * c.block_tokens / static_cast<double>(page_bytes_) : 0.0;
  s.effective_ratio_vs_f16 =
      s.used_bytes > 0 ? f16_token * static_cast<double>(s.tokens) / s.used_bytes : 0.0;
  return s;
}

}  // namespace tq::runtime
