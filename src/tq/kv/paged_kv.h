// One sequence of the paged, compressed KV cache (SequenceKv). Per layer, position p is held
//   - exact in f16 if p < sinks (the sink rows),
//   - compressed in pool pages if sinks <= p < sinks + compressed(layer): token c = p - sinks
//     sits in page table[c / block_tokens], slot c % block_tokens,
//   - exact in f16 in the window otherwise: the most recent `window` tokens. Tokens that fall
//     out of the window are compressed (KIVI), so the last `window` tokens are always exact.
// In a layer that centers keys (KvConfig::centers_keys) every key row, exact or compressed, is
// stored as k - mu, mu the sequence's mean key of that layer and KV head, fixed by the layer's
// first append (the mean of its keys, sinks and position 0 left out). Attention
// needs no change: q.mu is the same for all keys of a query and softmax ignores it. With key
// scaling the rows are (k - mu) / s and attend() multiplies each query by s (q.k = (q s).(k / s)).
// With value scaling (layers with compressed values) every value row is stored as v / t, t per
// KV head and channel fixed by the same first append (t^2 ~ sigma_v / w, w the output
// projection's weight on the channel), and attend() multiplies the output by t: the weighted
// sum is linear, so sum_i p_i v_i = t * sum_i p_i (v_i / t), with no per-token cost.
// With window 0 every token is compressed when appended, before attention runs: every query
// sees compressed K/V, its own chunk's included, as llama.cpp's quantized cache does.
// attend() computes attention straight from the packed pages (paged_attention.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "tq/kv/paged_kv_cache.h"
#include "tq/kv/sequence_kv.h"

namespace tq::kv {

class PagedKv final : public SequenceKv {
 public:
  ~PagedKv() override;
  PagedKv(const PagedKv&) = delete;
  PagedKv& operator=(const PagedKv&) = delete;

  int length() const override { return length_; }
  int capacity() const override { return capacity_; }
  Status append(int layer, int n, const float* k, const float* v) override;
  void observe_queries(int layer, int n, const float* q) override;
  Status attend(int layer, int n, const float* q, float* out, ThreadPool& pool) override;
  Status commit(int n) override;
  // Pages held (whole pages, shared ones included) plus the f16 sink and window rows.
  size_t bytes_used() const override;

  // Token ids of the next positions (tokens().size() onwards). With them, commit() indexes
  // every full page in the prefix cache so later sequences can share it. Optional.
  Status add_tokens(std::span<const int32_t> ids);
  const std::vector<int32_t>& tokens() const { return tokens_; }

  // On an empty sequence: takes the longest run of cached pages that `prompt` starts with,
  // leaving at least max(window, 1) prompt tokens to be computed (so the window holds exactly
  // what it would without sharing, and the caller gets logits). Returns the tokens now in the
  // cache (committed; their ids recorded); the caller runs the forward pass from there.
  Expected<int> reuse_prefix(std::span<const int32_t> prompt);

  // What is stored for position `pos` of `layer`, decoded: [n_kv_heads][head_dim] (tq verify's
  // per-layer K/V cosine, tests).
  Status read_stored(int layer, int pos, bool value, float* out) const;

  int compressed_tokens(int layer) const { return compressed_[static_cast<size_t>(layer)]; }
  int window_tokens(int layer) const { return window_[static_cast<size_t>(layer)].count; }
  int sink_tokens(int layer) const { return sink_count_[static_cast<size_t>(layer)]; }
  std::span<const int> pages() const { return pages_; }
  // Bytes of the f16 sink and window rows (all layers) and of the key means and scales.
  size_t exact_bytes() const;
  // The key mean of `layer` ([n_kv_heads][head_dim]; zeros where keys are not centered).
  const float* key_mean(int layer) const {
    return key_mean_.data() + static_cast<size_t>(layer) * shape_.n_kv_heads * row_elems_;
  }
  // The key scale of `layer` (same layout; ones where keys are not scaled).
  const float* key_scale(int layer) const {
    return key_scale_.data() + static_cast<size_t>(layer) * shape_.n_kv_heads * row_elems_;
  }
  // The value scale of `layer` (same layout; ones where values are not scaled).
  const float* value_scale(int layer) const {
    return value_scale_.data() + static_cast<size_t>(layer) * shape_.n_kv_heads * row_elems_;
  }

 private:
  friend class PagedKvCache;
  PagedKv(PagedKvCache* cache, int capacity);

  // f16 rows of positions [pos0, pos0 + count) of one layer: [K, V][kv_head][cap][head_dim],
  // valid rows [start, start + count). Dropping from the front only moves `start`; the rows
  // are compacted when the buffer's end is reached (amortized O(1) per token).
  struct Window {
    int start = 0;
    int count = 0;
    int cap = 0;
    std::vector<uint16_t> data;
  };

  Status check_layer(int layer, int n) const;
  void window_reserve(Window& w, int extra);
  size_t window_offset(const Window& w, int kv, int head, int row) const;
  uint16_t* sink_row(int layer, int kv, int head, int row);
  const uint16_t* sink_row(int layer, int kv, int head, int row) const;
  // Encodes one token (all KV heads, K or V) into compressed slot c of the layer.
  void encode_token(int layer, bool value, int c, const float* x);
  void register_full_pages();
  // Sets the layer's key mean from the first append's keys (see the header comment).
  void set_key_mean(int layer, int n, const float* k);
  // Sets the layer's value scales from the first append's values (see set_key_mean).
  void set_value_scale(int layer, int n, const float* v);
  void add_exact_bytes(int64_t rows);

  PagedKvCache* cache_;
  AttentionShape shape_;
  int capacity_ = 0;
  int length_ = 0;
  int sinks_ = 0;                    // config.sinks
  int window_cap_ = 0;               // config.window
  int bt_ = 0;                       // block tokens
  size_t row_elems_ = 0;             // head_dim
  std::vector<int> pending_;         // [layer] appended, not committed
  std::vector<int> compressed_;      // [layer] tokens in pages
  std::vector<int> sink_count_;      // [layer] sink rows stored
  std::vector<uint16_t> sink_data_;  // [layer][K, V][kv_head][sinks][head_dim]
  std::vector<Window> window_;       // [layer]
  std::vector<int> pages_;           // the block table, shared by all layers
  std::vector<int32_t> tokens_;      // ids of positions 0 .. tokens_.size()-1 (may be empty)
  int registered_ = 0;               // leading pages already offered to the prefix cache
  uint64_t chain_ = 0;               // chain hash of page registered_-1 (or the root)
  std::vector<uint8_t> centered_;    // [layer] stores k - mu
  std::vector<uint8_t> mean_ready_;  // [layer] mu and the scales fixed
  std::vector<float> key_mean_;      // [layer][kv_head][head_dim]
  std::vector<uint8_t> scaled_;      // [layer] stores (k - mu) / s
  std::vector<float> key_scale_;     // [layer][kv_head][head_dim], 1 where not scaled
  std::vector<float> scaled_q_;      // [n][n_heads][head_dim] queries of one attend, times s
  std::vector<uint8_t> vscaled_;     // [layer] stores v / t
  std::vector<float> value_scale_;   // [layer][kv_head][head_dim], 1 where not scaled
  std::vector<float> scaled_v_;      // [n][kv_head][head_dim] values of one append, over t
  // The queries of the append about to fix a layer's scales (observe_queries), else null.
  const float* hint_q_ = nullptr;
  int hint_layer_ = -1;
  int hint_n_ = 0;
  size_t key_mean_bytes_ = 0;      // of the centered layers (counted in exact_bytes)
  std::vector<float> centered_k_;  // [n][kv_head][head_dim] keys of one append, centered
  std::vector<float> scratch_;     // [head_dim] f16 row decoded for re-encoding
};

}  // namespace tq::kv
