#include "tq/kv/paged_kv.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <string>

#include "tq/core/fp16.h"
#include "tq/kv/kv_bytes.h"
#include "tq/kv/paged_attention.h"

namespace tq::kv {
namespace {

// s[0..n) hold one head's per-channel ratios r (rounded to float) whose logs, summed in double,
// are log_sum: makes them sqrt(r / geomean(r)), scales whose squares follow r (the
// Cauchy-Schwarz optimum of key and value scaling) with a geometric mean of 1.
void normalize_scales(float* s, size_t n, double log_sum) {
  const double geomean = std::exp(log_sum / static_cast<double>(n));
  for (size_t e = 0; e < n; ++e) s[e] = static_cast<float>(std::sqrt(s[e] / geomean));
}

}  // namespace

PagedKv::PagedKv(PagedKvCache* cache, int capacity)
    : cache_(cache), shape_(cache->shape()), capacity_(capacity) {
  const KvConfig& c = cache->config();
  sinks_ = c.sinks;
  window_cap_ = c.window;
  bt_ = c.block_tokens;
  row_elems_ = static_cast<size_t>(shape_.head_dim);
  const size_t nl = static_cast<size_t>(shape_.n_layers);
  pending_.assign(nl, 0);
  compressed_.assign(nl, 0);
  sink_count_.assign(nl, 0);
  sink_data_.assign(
      nl * 2 * static_cast<size_t>(shape_.n_kv_heads) * static_cast<size_t>(sinks_) * row_elems_,
      0);
  window_.resize(nl);
  scratch_.resize(row_elems_);
  centered_.assign(nl, 0);
  mean_ready_.assign(nl, 0);
  key_mean_.assign(nl * static_cast<size_t>(shape_.n_kv_heads) * row_elems_, 0.0f);
  scaled_.assign(nl, 0);
  key_scale_.assign(key_mean_.size(), 1.0f);
  vscaled_.assign(nl, 0);
  value_scale_.assign(key_mean_.size(), 1.0f);
  for (int l = 0; l < shape_.n_layers; ++l) {
    centered_[static_cast<size_t>(l)] = c.centers_keys(l, shape_.n_layers) ? 1 : 0;
    scaled_[static_cast<size_t>(l)] = c.scales_keys(l, shape_.n_layers) ? 1 : 0;
    vscaled_[static_cast<size_t>(l)] = c.scales_values(l, shape_.n_layers) ? 1 : 0;
  }
  key_mean_bytes_ = kv_key_mean_bytes(c, shape_);
  cache_->exact_bytes_.fetch_add(static_cast<int64_t>(key_mean_bytes_));
  cache_->sequences_.fetch_add(1);
}

PagedKv::~PagedKv() {
  cache_->release_pages(pages_);
  cache_->live_tokens_.fetch_sub(length_);
  cache_->exact_bytes_.fetch_sub(static_cast<int64_t>(exact_bytes()));
  cache_->sequences_.fetch_sub(1);
}

size_t PagedKv::exact_bytes() const {
  size_t rows = 0;
  for (size_t l = 0; l < window_.size(); ++l)
    rows += static_cast<size_t>(sink_count_[l] + window_[l].count);
  return rows * 2 * static_cast<size_t>(shape_.n_kv_heads) * row_elems_ * sizeof(uint16_t) +
         key_mean_bytes_;
}

size_t PagedKv::bytes_used() const { return pages_.size() * cache_->page_bytes() + exact_bytes(); }

void PagedKv::add_exact_bytes(int64_t rows) {
  cache_->exact_bytes_.fetch_add(rows * 2 * shape_.n_kv_heads *
                                 static_cast<int64_t>(row_elems_ * sizeof(uint16_t)));
}

Status PagedKv::check_layer(int layer, int n) const {
  if (layer < 0 || layer >= shape_.n_layers)
    return invalid_argument("layer " + std::to_string(layer) + " out of range [0, " +
                            std::to_string(shape_.n_layers) + ")");
  if (n < 0) return invalid_argument("negative token count");
  return ok_status();
}

uint16_t* PagedKv::sink_row(int layer, int kv, int head, int row) {
  const size_t idx = ((static_cast<size_t>(layer) * 2 + static_cast<size_t>(kv)) *
                          static_cast<size_t>(shape_.n_kv_heads) +
                      static_cast<size_t>(head)) *
                         static_cast<size_t>(sinks_) +
                     static_cast<size_t>(row);
  return sink_data_.data() + idx * row_elems_;
}
const uint16_t* PagedKv::sink_row(int layer, int kv, int head, int row) const {
  return const_cast<PagedKv*>(this)->sink_row(layer, kv, head, row);
}

size_t PagedKv::window_offset(const Window& w, int kv, int head, int row) const {
  const size_t plane =
      static_cast<size_t>(kv) * static_cast<size_t>(shape_.n_kv_heads) + static_cast<size_t>(head);
  return (plane * static_cast<size_t>(w.cap) + static_cast<size_t>(row)) * row_elems_;
}

void PagedKv::window_reserve(Window& w, int extra) {
  if (w.start + w.count + extra <= w.cap) return;
  const int planes = 2 * shape_.n_kv_heads;
  const int new_cap = w.count + extra <= w.cap ? w.cap : std::max({2 * w.cap, w.count + extra, 16});
  std::vector<uint16_t> fresh(static_cast<size_t>(planes) * static_cast<size_t>(new_cap) *
                              row_elems_);
  for (int p = 0; p < planes; ++p) {
    const uint16_t* src = w.data.data() + (static_cast<size_t>(p) * static_cast<size_t>(w.cap) +
                                           static_cast<size_t>(w.start)) *
                                              row_elems_;
    uint16_t* dst =
        fresh.data() + static_cast<size_t>(p) * static_cast<size_t>(new_cap) * row_elems_;
    if (w.count > 0)
      std::memcpy(dst, src, static_cast<size_t>(w.count) * row_elems_ * sizeof(uint16_t));
  }
  w.data = std::move(fresh);
  w.cap = new_cap;
  w.start = 0;
}

void PagedKv::encode_token(int layer, bool value, int c, const float* x) {
  const int slab = 2 * layer + (value ? 1 : 0);
  const quant::VectorCodec& codec = cache_->codec(layer, value);
  const size_t head_bytes = codec.block_bytes(bt_);
  uint8_t* block = cache_->block(pages_[static_cast<size_t>(c / bt_)], slab);
  for (int h = 0; h < shape_.n_kv_heads; ++h)
    codec.encode(x + static_cast<size_t>(h) * row_elems_,
                 block + static_cast<size_t>(h) * head_bytes, bt_, c % bt_);
}

void PagedKv::set_key_mean(int layer, int n, const float* k) {
  const size_t token_elems = static_cast<size_t>(shape_.n_kv_heads) * row_elems_;
  float* mu = key_mean_.data() + static_cast<size_t>(layer) * token_elems;
  // Every token of the first append but the sinks and position 0 (attention-sink keys are far
  // from the rest); failing those, whatever came after position 0; a lone token: no centering.
  // More tokens give a better mean (SmolLM2, 4 chunks, tq4/tq4: KLD 0.046 from the first 31
  // keys, 0.036 from 511); the prefix cache hands it on with the first page, so it may depend
  // on tokens beyond that page.
  int from = std::max(1, sinks_);
  const int to = n;
  if (from >= to) from = 1;
  std::fill(mu, mu + token_elems, 0.0f);
  if (from < to) {
    for (int j = from; j < to; ++j)
      for (size_t e = 0; e < token_elems; ++e) mu[e] += k[static_cast<size_t>(j) * token_elems + e];
    const float inv = 1.0f / static_cast<float>(to - from);
    for (size_t e = 0; e < token_elems; ++e) mu[e] *= inv;
  }
  // Scales per head and channel e: s_e^2 = r_e / geomean(r), r_e = rms_k,e / rms_q,e over the
  // same tokens (the queries of the append, from observe_queries; rms_q = 1 without them). The
  // score error of an isotropic quantizer of (k - mu) / s, seen by q s, has the expectation
  // (sum sigma_k^2 / s^2)(sum sigma_q^2 s^2) (D / d), which Cauchy-Schwarz minimizes at
  // s^2 ~ sigma_k / sigma_q. SmolLM2, 16 chunks, sinks 4 + window 128: KLD tq4/tq4 0.0177 ->
  // 0.0150, tq4/tq3 0.0259 -> 0.0236, tq3/tq3 0.0544 -> 0.0452 with the queries. Fewer than
  // two keys: s = 1.
  if (scaled_[static_cast<size_t>(layer)] && to - from >= 2) {
    float* s = key_scale_.data() + static_cast<size_t>(layer) * token_elems;
    const float* q_hint = hint_layer_ == layer && hint_n_ == n ? hint_q_ : nullptr;
    const int group = shape_.n_heads / shape_.n_kv_heads;
    auto sq = [](double x) { return x * x; };
    for (int h = 0; h < shape_.n_kv_heads; ++h) {
      const size_t o = static_cast<size_t>(h) * row_elems_;
      double log_sum = 0.0;
      for (size_t e = 0; e < row_elems_; ++e) {
        double ss = 0.0;
        for (int j = from; j < to; ++j) {
          const double x = k[static_cast<size_t>(j) * token_elems + o + e] - mu[o + e];
          ss += x * x;
        }
        double ratio = std::sqrt(ss / (to - from)) + 1e-6;
        if (q_hint) {
          // The queries of the same tokens, all heads of this KV head's group.
          double qq = 0.0;
          for (int j = from; j < to; ++j)
            for (int g = 0; g < group; ++g)
              qq +=
                  sq(q_hint[(static_cast<size_t>(j) * shape_.n_heads + h * group + g) * row_elems_ +
                            e]);
          ratio /= std::sqrt(qq / ((to - from) * group)) + 1e-6;
        }
        s[o + e] = static_cast<float>(ratio);
        log_sum += std::log(ratio);
      }
      normalize_scales(s + o, row_elems_, log_sum);
    }
  }
}

void PagedKv::set_value_scale(int layer, int n, const float* v) {
  // The same tokens as the key mean. Values are stored as v / t and the attention output of
  // channel j is multiplied by t_j, so the quantizer's error on channel j reaches the output
  // times t_j and then W_o, whose columns reading channel j have the norm w_j. For an isotropic
  // quantizer (error variance ~ ||v / t||^2 per coordinate after the rotation) the expected
  // squared output error is ~ (sum_k sigma_k^2 / t_k^2)(sum_j w_j^2 t_j^2), sigma_k the RMS of
  // channel k; Cauchy-Schwarz puts its least at t_j^2 ~ sigma_j / w_j. Normalized to a
  // geometric mean of 1 per head; fewer than two values: t = 1.
  const size_t token_elems = static_cast<size_t>(shape_.n_kv_heads) * row_elems_;
  int from = std::max(1, sinks_);
  const int to = n;
  if (from >= to) from = 1;
  if (to - from < 2) return;
  float* t = value_scale_.data() + static_cast<size_t>(layer) * token_elems;
  const float* w = cache_->value_weights(layer);
  for (int h = 0; h < shape_.n_kv_heads; ++h) {
    const size_t o = static_cast<size_t>(h) * row_elems_;
    double log_sum = 0.0;
    for (size_t e = 0; e < row_elems_; ++e) {
      double ss = 0.0;
      for (int j = from; j < to; ++j) {
        const double x = v[static_cast<size_t>(j) * token_elems + o + e];
        ss += x * x;
      }
      double ratio = std::sqrt(ss / (to - from)) + 1e-6;
      if (w) ratio /= static_cast<double>(w[o + e]) + 1e-6;
      t[o + e] = static_cast<float>(ratio);
      log_sum += std::log(ratio);
    }
    normalize_scales(t + o, row_elems_, log_sum);
  }
}

void PagedKv::observe_queries(int layer, int n, const float* q) {
  const size_t l = static_cast<size_t>(layer);
  if (layer < 0 || l >= scaled_.size() || !scaled_[l] || mean_ready_[l]) return;
  hint_q_ = q;
  hint_layer_ = layer;
  hint_n_ = n;
}

Status PagedKv::append(int layer, int n, const float* k, const float* v) {
  TQ_RETURN_IF_ERROR(check_layer(layer, n));
  if (n == 0) return ok_status();
  if (!k || !v) return invalid_argument("append: null K or V");
  const size_t l = static_cast<size_t>(layer);
  const int total0 = length_ + pending_[l];
  const int total1 = total0 + n;
  if (total1 > capacity_)
    return resource_exhausted("KV sequence full: " + std::to_string(total0) + " + " +
                              std::to_string(n) + " tokens > capacity " +
                              std::to_string(capacity_));
  // Positions >= keep_from stay exact; everything between the sinks and there is compressed.
  const int keep_from = std::max(sinks_, total1 - window_cap_);
  const int c_old = compressed_[l];
  const int c_new = std::max(c_old, std::min(total1, keep_from) - sinks_);
  const int pages_needed = (c_new + bt_ - 1) / bt_ - static_cast<int>(pages_.size());
  if (pages_needed > 0) TQ_RETURN_IF_ERROR(cache_->allocate_pages(pages_needed, pages_));

  const int hkv = shape_.n_kv_heads;
  const size_t token_elems = static_cast<size_t>(hkv) * row_elems_;
  if (!mean_ready_[l] && (centered_[l] || vscaled_[l])) {
    if (centered_[l]) set_key_mean(layer, n, k);
    if (vscaled_[l]) set_value_scale(layer, n, v);
    mean_ready_[l] = 1;
    hint_q_ = nullptr;  // valid for this append only
    hint_layer_ = -1;
  }
  if (centered_[l]) {
    const float* mu = key_mean(layer);
    const float* s = key_scale(layer);
    centered_k_.resize(static_cast<size_t>(n) * token_elems);
    for (int j = 0; j < n; ++j) {
      const float* src = k + static_cast<size_t>(j) * token_elems;
      float* dst = centered_k_.data() + static_cast<size_t>(j) * token_elems;
      for (size_t e = 0; e < token_elems; ++e) dst[e] = (src[e] - mu[e]) / s[e];
    }
    k = centered_k_.data();
  }
  if (vscaled_[l]) {
    const float* t = value_scale(layer);
    scaled_v_.resize(static_cast<size_t>(n) * token_elems);
    for (int j = 0; j < n; ++j) {
      const float* src = v + static_cast<size_t>(j) * token_elems;
      float* dst = scaled_v_.data() + static_cast<size_t>(j) * token_elems;
      for (size_t e = 0; e < token_elems; ++e) dst[e] = src[e] / t[e];
    }
    v = scaled_v_.data();
  }
  Window& w = window_[l];
  const int exact_before = sink_count_[l] + w.count;

  // Window rows that fall out of the window: decode the f16 rows and compress them.
  const int from_window = std::min(w.count, c_new - c_old);
  std::vector<float> tok(token_elems);
  for (int j = 0; j < from_window; ++j) {
    for (int kv = 0; kv < 2; ++kv) {
      for (int h = 0; h < hkv; ++h) {
        const uint16_t* row = w.data.data() + window_offset(w, kv, h, w.start + j);
        float* dst = tok.data() + static_cast<size_t>(h) * row_elems_;
        for (size_t e = 0; e < row_elems_; ++e) dst[e] = f16_to_f32(row[e]);
      }
      encode_token(layer, kv == 1, c_old + j, tok.data());
    }
  }
  w.start += from_window;
  w.count -= from_window;
  if (w.count == 0) w.start = 0;

  // The new tokens: sink rows, compressed directly from float, or into the window.
  const int first_window_pos = sinks_ + c_new;
  const int n_window_new = std::max(0, total1 - std::max(first_window_pos, total0));
  window_reserve(w, n_window_new);
  for (int j = 0; j < n; ++j) {
    const int p = total0 + j;
    const float* kj = k + static_cast<size_t>(j) * token_elems;
    const float* vj = v + static_cast<size_t>(j) * token_elems;
    if (p < sinks_) {
      for (int kv = 0; kv < 2; ++kv)
        for (int h = 0; h < hkv; ++h) {
          const float* src = (kv ? vj : kj) + static_cast<size_t>(h) * row_elems_;
          uint16_t* dst = sink_row(layer, kv, h, p);
          for (size_t e = 0; e < row_elems_; ++e) dst[e] = f32_to_f16(src[e]);
        }
      sink_count_[l] = p + 1;
    } else if (p < first_window_pos) {
      encode_token(layer, false, p - sinks_, kj);
      encode_token(layer, true, p - sinks_, vj);
    } else {
      const int row = w.start + w.count;
      for (int kv = 0; kv < 2; ++kv)
        for (int h = 0; h < hkv; ++h) {
          const float* src = (kv ? vj : kj) + static_cast<size_t>(h) * row_elems_;
          uint16_t* dst = w.data.data() + window_offset(w, kv, h, row);
          for (size_t e = 0; e < row_elems_; ++e) dst[e] = f32_to_f16(src[e]);
        }
      ++w.count;
    }
  }
  compressed_[l] = c_new;
  pending_[l] += n;
  add_exact_bytes(sink_count_[l] + w.count - exact_before);
  return ok_status();
}

Status PagedKv::attend(int layer, int n, const float* q, float* out, ThreadPool& pool) {
  TQ_RETURN_IF_ERROR(check_layer(layer, n));
  const size_t l = static_cast<size_t>(layer);
  const int total = length_ + pending_[l];
  if (n > total)
    return invalid_argument("attend: " + std::to_string(n) + " queries but layer " +
                            std::to_string(layer) + " holds " + std::to_string(total) + " tokens");
  if (n == 0) return ok_status();
  const int n_blocks = (compressed_[l] + bt_ - 1) / bt_;
  std::vector<const uint8_t*> kb(static_cast<size_t>(n_blocks)), vb(static_cast<size_t>(n_blocks));
  for (int b = 0; b < n_blocks; ++b) {
    kb[static_cast<size_t>(b)] = cache_->block(pages_[static_cast<size_t>(b)], 2 * layer);
    vb[static_cast<size_t>(b)] = cache_->block(pages_[static_cast<size_t>(b)], 2 * layer + 1);
  }
  PagedAttentionArgs a;
  a.shape = shape_;
  a.k_codec = &cache_->codec(layer, false);
  a.v_codec = &cache_->codec(layer, true);
  a.f16_codec = &cache_->f16_codec();
  a.k_blocks = kb;
  a.v_blocks = vb;
  a.block_tokens = bt_;
  a.compressed = compressed_[l];
  a.compressed_pos0 = sinks_;
  if (sink_count_[l] > 0) {
    a.exact[0].k = sink_row(layer, 0, 0, 0);
    a.exact[0].v = sink_row(layer, 1, 0, 0);
    a.exact[0].head_stride = static_cast<size_t>(sinks_) * row_elems_;
    a.exact[0].pos0 = 0;
    a.exact[0].count = sink_count_[l];
  }
  const Window& w = window_[l];
  if (w.count > 0) {
    a.exact[1].k = w.data.data() + window_offset(w, 0, 0, w.start);
    a.exact[1].v = w.data.data() + window_offset(w, 1, 0, w.start);
    a.exact[1].head_stride = static_cast<size_t>(w.cap) * row_elems_;
    a.exact[1].pos0 = sinks_ + compressed_[l];
    a.exact[1].count = w.count;
  }
  if (scaled_[l]) {
    const size_t hd = row_elems_;
    const int group = shape_.n_heads / shape_.n_kv_heads;
    const float* s = key_scale(layer);
    scaled_q_.assign(q, q + static_cast<size_t>(n) * shape_.n_heads * hd);
    for (int i = 0; i < n; ++i)
      for (int h = 0; h < shape_.n_heads; ++h) {
        float* qh = scaled_q_.data() + (static_cast<size_t>(i) * shape_.n_heads + h) * hd;
        const float* sh = s + static_cast<size_t>(h / group) * hd;
        for (size_t e = 0; e < hd; ++e) qh[e] *= sh[e];
      }
    q = scaled_q_.data();
  }
  a.q = q;
  a.out = out;
  a.n = n;
  a.q_pos0 = total - n;
  TQ_RETURN_IF_ERROR(paged_attention(a, pool));
  if (vscaled_[l]) {
    // The rows hold v / t: the weighted sum of every kernel comes out divided by t.
    const size_t hd = row_elems_;
    const int group = shape_.n_heads / shape_.n_kv_heads;
    const float* t = value_scale(layer);
    for (int i = 0; i < n; ++i)
      for (int h = 0; h < shape_.n_heads; ++h) {
        float* oh = out + (static_cast<size_t>(i) * shape_.n_heads + h) * hd;
        const float* th = t + static_cast<size_t>(h / group) * hd;
        for (size_t e = 0; e < hd; ++e) oh[e] *= th[e];
      }
  }
  return ok_status();
}

Status PagedKv::commit(int n) {
  if (n < 0) return invalid_argument("commit: negative token count");
  for (int l = 0; l < shape_.n_layers; ++l)
    if (pending_[static_cast<size_t>(l)] != n)
      return invalid_argument("commit(" + std::to_string(n) + "): layer " + std::to_string(l) +
                              " has " + std::to_string(pending_[static_cast<size_t>(l)]) +
                              " uncommitted tokens");
  std::fill(pending_.begin(), pending_.end(), 0);
  length_ += n;
  cache_->live_tokens_.fetch_add(n);
  register_full_pages();
  return ok_status();
}

Status PagedKv::add_tokens(std::span<const int32_t> ids) {
  if (tokens_.size() + ids.size() > static_cast<size_t>(capacity_))
    return invalid_argument("add_tokens: more token ids than the sequence's capacity");
  tokens_.insert(tokens_.end(), ids.begin(), ids.end());
  register_full_pages();
  return ok_status();
}

void PagedKv::register_full_pages() {
  if (!cache_->prefix_caching()) return;
  // After commit every layer holds the same tokens; pages being filled mid-pass are skipped.
  int compressed = compressed_[0];
  for (size_t l = 0; l < compressed_.size(); ++l) {
    compressed = std::min(compressed, compressed_[l]);
    if (pending_[l] != 0) return;
  }
  const int full = compressed / bt_;
  const auto tok = std::span<const int32_t>(tokens_);
  while (registered_ < full &&
         tokens_.size() >= static_cast<size_t>(sinks_ + (registered_ + 1) * bt_)) {
    std::shared_ptr<const SinkSnapshot> snapshot;
    std::shared_ptr<const KeyMeans> means;
    if (registered_ == 0) {
      chain_ = prefix_root_hash(cache_->fingerprint(), tok.first(static_cast<size_t>(sinks_)));
      if (sinks_ > 0) snapshot = std::make_shared<const SinkSnapshot>(sink_data_);
      if (key_mean_bytes_ > 0) {
        // [key means | key scales | value scales], each [layer][kv_head][head_dim].
        KeyMeans m = key_mean_;
        m.insert(m.end(), key_scale_.begin(), key_scale_.end());
        m.insert(m.end(), value_scale_.begin(), value_scale_.end());
        means = std::make_shared<const KeyMeans>(std::move(m));
      }
    }
    const auto slice =
        tok.subspan(static_cast<size_t>(sinks_ + registered_ * bt_), static_cast<size_t>(bt_));
    const uint64_t h = prefix_block_hash(chain_, slice);
    cache_->index_page(h, chain_, registered_ == 0, slice, pages_[static_cast<size_t>(registered_)],
                       std::move(snapshot), std::move(means));
    chain_ = h;
    ++registered_;
  }
}

Expected<int> PagedKv::reuse_prefix(std::span<const int32_t> prompt) {
  if (length_ != 0 || !pages_.empty() || !tokens_.empty() ||
      std::any_of(pending_.begin(), pending_.end(), [](int p) { return p != 0; }))
    return invalid_argument("reuse_prefix needs an empty sequence");
  if (static_cast<int64_t>(prompt.size()) > capacity_)
    return invalid_argument("reuse_prefix: prompt longer than the sequence's capacity");
  cache_->prefix_lookup_tokens_.fetch_add(static_cast<int64_t>(prompt.size()));
  if (!cache_->prefix_caching()) return 0;
  const int limit = static_cast<int>(prompt.size()) - std::max(window_cap_, 1);
  const int max_pages = limit >= sinks_ ? (limit - sinks_) / bt_ : 0;
  if (max_pages <= 0) return 0;
  const uint64_t root =
      prefix_root_hash(cache_->fingerprint(), prompt.first(static_cast<size_t>(sinks_)));
  std::shared_ptr<const SinkSnapshot> sinks;
  std::shared_ptr<const KeyMeans> means;
  const uint64_t last = cache_->acquire_prefix(root, prompt.subspan(static_cast<size_t>(sinks_)),
                                               max_pages, pages_, sinks, means);
  const int found = static_cast<int>(pages_.size());
  if (found == 0) return 0;
  if (means) {
    // The layout register_full_pages writes (the fingerprint keeps other configs' apart).
    const auto part = static_cast<std::ptrdiff_t>(key_mean_.size());
    if (means->size() != 3 * key_mean_.size()) {
      // Give the pages back: the sequence stays empty and usable (a full prefill follows).
      cache_->release_pages(pages_);
      pages_.clear();
      return internal_error("reuse_prefix: cached key means of the wrong size");
    }
    key_mean_.assign(means->begin(), means->begin() + part);
    key_scale_.assign(means->begin() + part, means->begin() + 2 * part);
    value_scale_.assign(means->begin() + 2 * part, means->end());
    std::fill(mean_ready_.begin(), mean_ready_.end(), 1);
  }
  if (sinks_ > 0) {
    sink_data_ = *sinks;
    std::fill(sink_count_.begin(), sink_count_.end(), sinks_);
    add_exact_bytes(static_cast<int64_t>(sinks_) * shape_.n_layers);
  }
  std::fill(compressed_.begin(), compressed_.end(), found * bt_);
  length_ = sinks_ + found * bt_;
  tokens_.assign(prompt.begin(), prompt.begin() + length_);
  registered_ = found;
  chain_ = last;
  cache_->live_tokens_.fetch_add(length_);
  cache_->prefix_hit_tokens_.fetch_add(length_);
  return length_;
}

Status PagedKv::read_stored(int layer, int pos, bool value, float* out) const {
  TQ_RETURN_IF_ERROR(check_layer(layer, 0));
  const size_t l = static_cast<size_t>(layer);
  const int total = length_ + pending_[l];
  if (pos < 0 || pos >= total)
    return out_of_range("read_stored: position " + std::to_string(pos) + " not stored");
  const int kv = value ? 1 : 0;
  for (int h = 0; h < shape_.n_kv_heads; ++h) {
    float* dst = out + static_cast<size_t>(h) * row_elems_;
    if (pos >= sink_count_[l] && pos < sinks_ + compressed_[l]) {
      const int c = pos - sinks_;
      const quant::VectorCodec& codec = cache_->codec(layer, value);
      const uint8_t* block = cache_->block(pages_[static_cast<size_t>(c / bt_)], 2 * layer + kv);
      codec.decode(block + static_cast<size_t>(h) * codec.block_bytes(bt_), bt_, c % bt_, dst);
    } else {
      const Window& w = window_[l];
      const uint16_t* row =
          pos < sink_count_[l]
              ? sink_row(layer, kv, h, pos)
              : w.data.data() + window_offset(w, kv, h, w.start + pos - sinks_ - compressed_[l]);
      for (size_t e = 0; e < row_elems_; ++e) dst[e] = f16_to_f32(row[e]);
    }
    if (!value && centered_[l]) {
      const size_t o = static_cast<size_t>(h) * row_elems_;
      const float* mu = key_mean(layer) + o;
      const float* s = key_scale(layer) + o;
      for (size_t e = 0; e < row_elems_; ++e) dst[e] = dst[e] * s[e] + mu[e];
    }
    if (value && vscaled_[l]) {
      const float* t = value_scale(layer) + static_cast<size_t>(h) * row_elems_;
      for (size_t e = 0; e < row_elems_; ++e) dst[e] *= t[e];
    }
  }
  return ok_status();
}

}  // namespace tq::kv
