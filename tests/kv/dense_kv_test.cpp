// The dense KV cache's attention against a float64 causal softmax attention, with GQA, several
// appends, contexts longer than one score block, and its error paths.
#include <gtest/gtest.h>

#include <cmath>
#include <utility>
#include <vector>

#include "tq/backend/cpu/ops.h"
#include "tq/core/rng.h"
#include "tq/kv/dense_kv.h"

namespace tq::kv {
namespace {

constexpr uint64_t kSeed = 77;
// float32 online softmax vs float64, on O(1) outputs.
constexpr double kAttnTol = 2e-5;

std::vector<float> normals(size_t n, Rng& rng, double sigma) {
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(rng.normal() * sigma);
  return v;
}

// out[i][h] = softmax_j(scale q_ih . k_j) v_j over j <= pos0 + i, all in double.
std::vector<double> attention_ref(const AttentionShape& s, const std::vector<float>& k_all,
                                  const std::vector<float>& v_all, const float* q, int n,
                                  int pos0) {
  const int kv_dim = s.n_kv_heads * s.head_dim;
  std::vector<double> out(static_cast<size_t>(n) * s.n_heads * s.head_dim, 0.0);
  for (int i = 0; i < n; ++i)
    for (int h = 0; h < s.n_heads; ++h) {
      const int kvh = h / (s.n_heads / s.n_kv_heads);
      const float* qi = q + (static_cast<size_t>(i) * s.n_heads + h) * s.head_dim;
      const int n_ctx = pos0 + i + 1;
      std::vector<double> w(n_ctx);
      double mx = -1e300;
      for (int j = 0; j < n_ctx; ++j) {
        double d = 0.0;
        for (int e = 0; e < s.head_dim; ++e)
          d += static_cast<double>(qi[e]) *
               k_all[static_cast<size_t>(j) * kv_dim + kvh * s.head_dim + e];
        w[j] = d * s.scale;
        mx = std::max(mx, w[j]);
      }
      double sum = 0.0;
      for (auto& x : w) sum += (x = std::exp(x - mx));
      double* o = &out[(static_cast<size_t>(i) * s.n_heads + h) * s.head_dim];
      for (int j = 0; j < n_ctx; ++j)
        for (int e = 0; e < s.head_dim; ++e)
          o[e] += w[j] / sum * v_all[static_cast<size_t>(j) * kv_dim + kvh * s.head_dim + e];
    }
  return out;
}

TEST(DenseKvTest, AttentionMatchesFloat64AcrossAppends) {
  // GQA groups of 3, one KV head for 20 query heads (runs of 8, 8 and 4 heads a task), and MHA.
  const AttentionShape shapes[] = {{2, 6, 2, 40, 1.0f / std::sqrt(40.0f)},
                                   {2, 20, 1, 40, 1.0f / std::sqrt(40.0f)},
                                   {2, 4, 4, 40, 1.0f / std::sqrt(40.0f)}};
  for (const AttentionShape& s : shapes)
    for (bool simd : {false, true}) {
      DenseKernels kernels = simd ? backend::cpu::dense_kv_kernels() : DenseKernels{};
      auto kv = DenseKv::create(s, 400, kernels);
      ASSERT_TRUE(kv.ok()) << kv.status().to_string();
      ThreadPool pool(2);
      Rng rng(kSeed);
      const int kv_dim = s.n_kv_heads * s.head_dim, q_dim = s.n_heads * s.head_dim;
      std::vector<float> k_all[2], v_all[2];
      // Chunks straddle the 128-position score block; 3 sigma keys make peaked softmaxes.
      for (int n : {1, 150, 3, 1, 97}) {
        const int pos0 = (*kv)->length();
        for (int layer = 0; layer < 2; ++layer) {
          const auto k = normals(static_cast<size_t>(n) * kv_dim, rng, 3.0);
          const auto v = normals(static_cast<size_t>(n) * kv_dim, rng, 1.0);
          const auto q = normals(static_cast<size_t>(n) * q_dim, rng, 1.0);
          k_all[layer].insert(k_all[layer].end(), k.begin(), k.end());
          v_all[layer].insert(v_all[layer].end(), v.begin(), v.end());
          ASSERT_TRUE((*kv)->append(layer, n, k.data(), v.data()).ok());
          std::vector<float> out(static_cast<size_t>(n) * q_dim);
          ASSERT_TRUE((*kv)->attend(layer, n, q.data(), out.data(), pool).ok());
          const auto ref = attention_ref(s, k_all[layer], v_all[layer], q.data(), n, pos0);
          double max_err = 0.0;
          for (size_t i = 0; i < out.size(); ++i)
            max_err = std::max(max_err, std::fabs(out[i] - ref[i]));
          EXPECT_LT(max_err, kAttnTol)
              << "heads " << s.n_heads << "/" << s.n_kv_heads << " simd=" << simd << " n=" << n
              << " layer=" << layer << " seed=" << kSeed;
        }
        ASSERT_TRUE((*kv)->commit(n).ok());
      }
      EXPECT_EQ((*kv)->length(), 252);
      EXPECT_EQ((*kv)->bytes_used(), 252u * kv_dim * 2 * 4 * 2);
    }
}

// Decode steps at long contexts cut the positions into ranges and merge their softmax states:
// still the float64 attention, and the same bits on 1 and 2 threads.
TEST(DenseKvTest, DecodeRangesMatchFloat64AndIgnoreThreads) {
  const AttentionShape s{1, 6, 2, 40, 1.0f / std::sqrt(40.0f)};
  const DenseKernels kernels = backend::cpu::dense_kv_kernels();
  auto kv = DenseKv::create(s, 3000, kernels);
  ASSERT_TRUE(kv.ok()) << kv.status().to_string();
  ThreadPool pool1(1), pool2(2);
  Rng rng(kSeed + 1);
  const int kv_dim = s.n_kv_heads * s.head_dim, q_dim = s.n_heads * s.head_dim;
  std::vector<float> k_all, v_all;
  auto append = [&](int n) {
    const auto k = normals(static_cast<size_t>(n) * kv_dim, rng, 3.0);
    const auto v = normals(static_cast<size_t>(n) * kv_dim, rng, 1.0);
    k_all.insert(k_all.end(), k.begin(), k.end());
    v_all.insert(v_all.end(), v.begin(), v.end());
    return std::pair{k, v};
  };
  {  // a prompt of 1999 positions (one query: enough for the attend/commit protocol)
    auto [k, v] = append(1999);
    ASSERT_TRUE((*kv)->append(0, 1999, k.data(), v.data()).ok());
    const auto q = normals(static_cast<size_t>(1999) * q_dim, rng, 1.0);
    std::vector<float> out(static_cast<size_t>(1999) * q_dim);
    ASSERT_TRUE((*kv)->attend(0, 1999, q.data(), out.data(), pool2).ok());
    ASSERT_TRUE((*kv)->commit(1999).ok());
  }
  for (int step = 0; step < 3; ++step) {  // contexts 2000..2002: 3 ranges of 512+ positions
    const int pos0 = (*kv)->length();
    auto [k, v] = append(1);
    ASSERT_TRUE((*kv)->append(0, 1, k.data(), v.data()).ok());
    const auto q = normals(static_cast<size_t>(q_dim), rng, 1.0);
    std::vector<float> out1(static_cast<size_t>(q_dim)), out2(static_cast<size_t>(q_dim));
    ASSERT_TRUE((*kv)->attend(0, 1, q.data(), out1.data(), pool1).ok());
    ASSERT_TRUE((*kv)->attend(0, 1, q.data(), out2.data(), pool2).ok());
    const auto ref = attention_ref(s, k_all, v_all, q.data(), 1, pos0);
    double max_err = 0.0;
    for (size_t i = 0; i < out1.size(); ++i) {
      max_err = std::max(max_err, std::fabs(out1[i] - ref[i]));
      EXPECT_EQ(out1[i], out2[i]) << "element " << i << " differs between 1 and 2 threads";
    }
    EXPECT_LT(max_err, kAttnTol) << "context " << pos0 + 1 << " seed=" << kSeed + 1;
    ASSERT_TRUE((*kv)->commit(1).ok());
  }
}

TEST(DenseKvTest, RejectsBadUse) {
  AttentionShape s{2, 4, 2, 8, 0.25f};
  EXPECT_FALSE(DenseKv::create({2, 4, 3, 8, 0.25f}, 10).ok());  // 4 % 3 != 0
  EXPECT_FALSE(DenseKv::create({2, 4, 2, 1024, 0.25f}, 10).ok());
  EXPECT_FALSE(DenseKv::create(s, 0).ok());
  auto kv = DenseKv::create(s, 4);
  ASSERT_TRUE(kv.ok());
  ThreadPool pool(1);
  std::vector<float> k(5 * 16, 0.5f), q(5 * 32, 0.5f), out(5 * 32);
  EXPECT_EQ((*kv)->append(0, 5, k.data(), k.data()).code(), StatusCode::kResourceExhausted);
  EXPECT_FALSE((*kv)->append(2, 1, k.data(), k.data()).ok());  // no layer 2
  ASSERT_TRUE((*kv)->append(0, 2, k.data(), k.data()).ok());
  EXPECT_FALSE((*kv)->append(0, 2, k.data(), k.data()).ok());          // twice before commit
  EXPECT_FALSE((*kv)->attend(0, 1, q.data(), out.data(), pool).ok());  // 2 appended
  EXPECT_FALSE((*kv)->commit(2).ok());                                 // layer 1 has nothing
  ASSERT_TRUE((*kv)->append(1, 2, k.data(), k.data()).ok());
  ASSERT_TRUE((*kv)->commit(2).ok());
  EXPECT_EQ((*kv)->length(), 2);
  // Uniform keys: attention averages the values exactly.
  ASSERT_TRUE((*kv)->append(0, 1, k.data(), k.data()).ok());
  ASSERT_TRUE((*kv)->attend(0, 1, q.data(), out.data(), pool).ok());
  for (int i = 0; i < 32; ++i) EXPECT_FLOAT_EQ(out[i], 0.5f);
}

}  // namespace
}  // namespace tq::kv
