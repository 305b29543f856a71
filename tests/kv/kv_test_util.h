// Shared by the KV cache tests: realistic random K/V/Q (keys with outlier channels, as real
// models have after RoPE), float64 exact attention, and a driver that runs chunked
// append/attend/commit over all layers of a SequenceKv.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "tq/core/rng.h"
#include "tq/kv/paged_kv.h"
#include "tq/kv/sequence_kv.h"

namespace tq::kv::test {

// Per layer, T tokens of K and V ([T][n_kv][d]) and Q ([T][n_heads][d]).
struct KvData {
  AttentionShape shape;
  int tokens = 0;
  std::vector<std::vector<float>> k, v, q;  // [layer][...]
};

// Keys: N(0, 1) plus a fixed per-channel offset, and 4 outlier channels with 4-10x the scale
// (as post-RoPE keys of real LLMs show). Values N(0, 1). Queries N(0, 1), halved on the outlier
// channels: scaled scores have a standard deviation near 2, so the softmax is neither flat nor
// one-hot.
inline KvData make_kv_data(const AttentionShape& shape, int tokens, uint64_t seed) {
  KvData d;
  d.shape = shape;
  d.tokens = tokens;
  const int hd = shape.head_dim;
  Rng rng(seed);
  std::vector<float> offset(static_cast<size_t>(hd)), gain(static_cast<size_t>(hd), 1.0f);
  for (auto& o : offset) o = static_cast<float>(rng.normal() * 0.5);
  for (int j = 0; j < 4; ++j)
    gain[static_cast<size_t>((j * 17 + 5) % hd)] = 4.0f + 2.0f * static_cast<float>(j);
  for (int l = 0; l < shape.n_layers; ++l) {
    std::vector<float> k(static_cast<size_t>(tokens) * shape.n_kv_heads * hd);
    std::vector<float> v(k.size());
    std::vector<float> q(static_cast<size_t>(tokens) * shape.n_heads * hd);
    for (size_t i = 0; i < k.size(); ++i) {
      const size_t e = i % static_cast<size_t>(hd);
      k[i] = (static_cast<float>(rng.normal()) + offset[e]) * gain[e];
      v[i] = static_cast<float>(rng.normal());
    }
    for (size_t i = 0; i < q.size(); ++i) {
      const size_t e = i % static_cast<size_t>(hd);
      q[i] = static_cast<float>(rng.normal()) * (gain[e] > 1.0f ? 0.5f : 1.0f);
    }
    d.k.push_back(std::move(k));
    d.v.push_back(std::move(v));
    d.q.push_back(std::move(q));
  }
  return d;
}

// Causal attention in float64 for queries at positions [p0, p0 + n) over K/V
// [0, p0 + n) given by accessors key(p, kv_head) / value(p, kv_head) -> const float* (head_dim).
inline void exact_attention(const AttentionShape& s, int p0, int n, const float* q,
                            const std::function<const float*(int, int)>& key,
                            const std::function<const float*(int, int)>& value, double* out) {
  const int group = s.n_heads / s.n_kv_heads;
  const int hd = s.head_dim;
  std::vector<double> sc;
  for (int i = 0; i < n; ++i) {
    const int t = p0 + i;
    for (int h = 0; h < s.n_heads; ++h) {
      const float* qh = q + (static_cast<size_t>(i) * s.n_heads + h) * hd;
      const int kvh = h / group;
      sc.assign(static_cast<size_t>(t) + 1, 0.0);
      double mx = -1e300;
      for (int p = 0; p <= t; ++p) {
        const float* kp = key(p, kvh);
        double dot = 0;
        for (int e = 0; e < hd; ++e) dot += static_cast<double>(qh[e]) * kp[e];
        sc[static_cast<size_t>(p)] = dot * s.scale;
        mx = std::max(mx, sc[static_cast<size_t>(p)]);
      }
      double sum = 0;
      for (auto& x : sc) sum += (x = std::exp(x - mx));
      double* o = out + (static_cast<size_t>(i) * s.n_heads + h) * hd;
      for (int e = 0; e < hd; ++e) o[e] = 0;
      for (int p = 0; p <= t; ++p) {
        const float* vp = value(p, kvh);
        const double w = sc[static_cast<size_t>(p)] / sum;
        for (int e = 0; e < hd; ++e) o[e] += w * vp[e];
      }
    }
  }
}

// Exact attention over the original K/V of `d` for layer l.
inline void exact_attention_original(const KvData& d, int layer, int p0, int n, double* out) {
  const AttentionShape& s = d.shape;
  const size_t hd = static_cast<size_t>(s.head_dim);
  const auto& k = d.k[static_cast<size_t>(layer)];
  const auto& v = d.v[static_cast<size_t>(layer)];
  exact_attention(
      s, p0, n, d.q[static_cast<size_t>(layer)].data() + static_cast<size_t>(p0) * s.n_heads * hd,
      [&](int p, int h) { return k.data() + (static_cast<size_t>(p) * s.n_kv_heads + h) * hd; },
      [&](int p, int h) { return v.data() + (static_cast<size_t>(p) * s.n_kv_heads + h) * hd; },
      out);
}

// Exact attention over what `kv` stores now (decoded), for the n newest queries of `layer`.
inline void exact_attention_stored(const PagedKv& kv, const AttentionShape& s, int layer, int total,
                                   int n, const float* q, double* out) {
  const size_t hd = static_cast<size_t>(s.head_dim);
  const size_t row = static_cast<size_t>(s.n_kv_heads) * hd;
  std::vector<float> ks(static_cast<size_t>(total) * row), vs(ks.size());
  for (int p = 0; p < total; ++p) {
    EXPECT_TRUE(kv.read_stored(layer, p, false, ks.data() + static_cast<size_t>(p) * row).ok());
    EXPECT_TRUE(kv.read_stored(layer, p, true, vs.data() + static_cast<size_t>(p) * row).ok());
  }
  exact_attention(
      s, total - n, n, q, [&](int p, int h) { return ks.data() + p * row + h * hd; },
      [&](int p, int h) { return vs.data() + p * row + h * hd; }, out);
}

// Relative L2 error ||a - b|| / ||b|| over n values.
inline double rel_l2(const float* a, const double* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / den);
}

// Runs data through kv in the given chunk sizes (cycled until all tokens are in), every layer
// showing its queries (as the model's forward pass does, unless observe is false), appending
// then attending, then commit. Calls check(layer, p0, n, out) after each attend.
inline void run_chunks(SequenceKv& kv, const KvData& d, const std::vector<int>& chunks,
                       ThreadPool& pool,
                       const std::function<void(int, int, int, const float*)>& check,
                       bool observe = true) {
  const AttentionShape& s = d.shape;
  const size_t hd = static_cast<size_t>(s.head_dim);
  int p0 = kv.length();
  size_t ci = 0;
  std::vector<float> out;
  while (p0 < d.tokens) {
    const int n = std::min(chunks[ci++ % chunks.size()], d.tokens - p0);
    out.assign(static_cast<size_t>(n) * s.n_heads * hd, 0.0f);
    for (int l = 0; l < s.n_layers; ++l) {
      const size_t kv_off = static_cast<size_t>(p0) * s.n_kv_heads * hd;
      const size_t q_off = static_cast<size_t>(p0) * s.n_heads * hd;
      if (observe) kv.observe_queries(l, n, d.q[static_cast<size_t>(l)].data() + q_off);
      ASSERT_TRUE(kv.append(l, n, d.k[static_cast<size_t>(l)].data() + kv_off,
                            d.v[static_cast<size_t>(l)].data() + kv_off)
                      .ok());
      ASSERT_TRUE(
          kv.attend(l, n, d.q[static_cast<size_t>(l)].data() + q_off, out.data(), pool).ok());
      check(l, p0, n, out.data());
    }
    ASSERT_TRUE(kv.commit(n).ok());
    p0 += n;
  }
}

}  // namespace tq::kv::test
