// The forward pass's element-wise ops against float64 formulas, and the AVX2 dot/axpy against
// their scalar references on odd lengths.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "tq/backend/cpu/ops.h"
#include "tq/backend/cpu/ops_avx2.h"
#include "tq/core/cpu_features.h"
#include "tq/core/rng.h"

namespace tq::backend::cpu {
namespace {

constexpr uint64_t kSeed = 20261123;
// float32 op vs float64 formula, relative to the values' scale.
constexpr double kFloatTol = 2e-6;

std::vector<float> normals(int n, uint64_t seed, double sigma = 1.0) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(rng.normal() * sigma);
  return v;
}

TEST(OpsTest, DotAndAxpyMatchFloat64OnOddLengths) {
  const bool simd = detect_cpu_features().avx2 && detect_cpu_features().fma;
  for (int n : {1, 7, 8, 15, 16, 17, 31, 64, 100, 257}) {
    SCOPED_TRACE("n=" + std::to_string(n) + " seed=" + std::to_string(kSeed));
    const auto a = normals(n, kSeed + n), b = normals(n, kSeed + 1000 + n);
    double ref = 0.0, abs_sum = 0.0;
    for (int i = 0; i < n; ++i) {
      ref += static_cast<double>(a[i]) * b[i];
      abs_sum += std::fabs(static_cast<double>(a[i]) * b[i]);
    }
    EXPECT_NEAR(dot_ref(a.data(), b.data(), n), ref, kFloatTol * abs_sum * 4);
    EXPECT_NEAR(dot(a.data(), b.data(), n), ref, kFloatTol * abs_sum * 4);
    if (simd) {
      EXPECT_NEAR(dot_avx2(a.data(), b.data(), n), ref, kFloatTol * abs_sum * 4);
    }

    std::vector<float> y_ref = b, y = b, y_simd = b;
    axpy_ref(0.37f, a.data(), y_ref.data(), n);
    axpy(0.37f, a.data(), y.data(), n);
    if (simd) axpy_avx2(0.37f, a.data(), y_simd.data(), n);
    for (int i = 0; i < n; ++i) {
      const double want = b[i] + 0.37 * static_cast<double>(a[i]);
      EXPECT_NEAR(y_ref[i], want, 1e-6);
      EXPECT_NEAR(y[i], want, 1e-6);
      if (simd) {
        EXPECT_NEAR(y_simd[i], want, 1e-6);
      }
    }
  }
}

TEST(OpsTest, RmsNormMatchesFloat64) {
  for (int n : {1, 5, 64, 577}) {
    const auto x = normals(n, kSeed + n, 3.0), w = normals(n, kSeed + 7 * n);
    std::vector<float> y(n);
    rmsnorm(x.data(), w.data(), y.data(), n, 1e-5f);
    double ss = 0.0;
    for (float v : x) ss += static_cast<double>(v) * v;
    const double scale = 1.0 / std::sqrt(ss / n + 1e-5);
    for (int i = 0; i < n; ++i)
      EXPECT_NEAR(y[i], x[i] * scale * w[i], kFloatTol * (1 + std::fabs(x[i] * scale * w[i])))
          << "n=" << n << " i=" << i;
    rmsnorm(x.data(), w.data(), const_cast<float*>(x.data()), n, 1e-5f);  // in place
    for (int i = 0; i < n; ++i) EXPECT_EQ(x[i], y[i]);
  }
}

TEST(OpsTest, RopePairsAdjacentOrHalves) {
  const int n_heads = 3, head_dim = 16, rope_dims = 12, half = rope_dims / 2;
  const auto x = normals(n_heads * head_dim, kSeed);
  std::vector<float> c(half), s(half);
  for (int i = 0; i < half; ++i) {
    const double a = 5.0 * std::pow(10000.0, -2.0 * i / rope_dims);  // position 5
    c[i] = static_cast<float>(std::cos(a));
    s[i] = static_cast<float>(std::sin(a));
  }
  for (bool neox : {false, true}) {
    std::vector<float> y = x;
    rope(y.data(), n_heads, head_dim, rope_dims, c.data(), s.data(), neox);
    for (int h = 0; h < n_heads; ++h) {
      const float* in = &x[h * head_dim];
      const float* out = &y[h * head_dim];
      for (int i = 0; i < half; ++i) {
        const int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
        EXPECT_NEAR(out[i0], in[i0] * c[i] - in[i1] * s[i], 1e-6) << "neox=" << neox;
        EXPECT_NEAR(out[i1], in[i0] * s[i] + in[i1] * c[i], 1e-6) << "neox=" << neox;
      }
      for (int d = rope_dims; d < head_dim; ++d) EXPECT_EQ(out[d], in[d]);  // not rotated
    }
  }
}

TEST(OpsTest, SiluMulSoftmaxArgmax) {
  const int n = 37;
  auto g = normals(n, kSeed, 4.0);
  const auto u = normals(n, kSeed + 1);
  const auto g0 = g;
  silu_mul(g.data(), u.data(), n);
  for (int i = 0; i < n; ++i) {
    const double want = g0[i] / (1.0 + std::exp(-static_cast<double>(g0[i]))) * u[i];
    EXPECT_NEAR(g[i], want, kFloatTol * (1 + std::fabs(want)));
  }

  // The dispatched (AVX2) and the scalar SiLU against float64 over gates far into both tails
  // (for g < -88 the AVX2 e^-g stops at e^88 and the result, like the true one, is within
  // 1e-35 of 0).
  for (auto* f : {&silu_mul, &silu_mul_ref}) {
    const int m = 203;
    std::vector<float> gate(m), up(m, 1.5f);
    for (int i = 0; i < m; ++i) gate[static_cast<size_t>(i)] = -101.0f + 1.0f * i + 0.37f;
    const auto in = gate;
    f(gate.data(), up.data(), m);
    for (int i = 0; i < m; ++i) {
      const double gi = in[static_cast<size_t>(i)];
      const double want = gi / (1.0 + std::exp(-gi)) * 1.5;
      EXPECT_NEAR(gate[static_cast<size_t>(i)], want, 4e-7 * std::fabs(want) + 1e-35) << gi;
    }
  }

  std::vector<float> x = {1000.0f, 999.0f, -5.0f, 1000.0f};  // huge values: needs the max shift
  const float mx = softmax(x.data(), 4);
  EXPECT_EQ(mx, 1000.0f);
  const double e1 = std::exp(-1.0), denom = 2.0 + e1 + std::exp(-1005.0);
  EXPECT_NEAR(x[0], 1.0 / denom, 1e-7);
  EXPECT_NEAR(x[1], e1 / denom, 1e-7);
  EXPECT_NEAR(x[3], 1.0 / denom, 1e-7);

  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> y = {nan, 2.0f, 3.0f, 3.0f, -1.0f};
  EXPECT_EQ(argmax(y.data(), 5), 2);  // first of the tied maxima, NaN skipped
  EXPECT_EQ(argmax(y.data(), 0), -1);
}

}  // namespace
}  // namespace tq::backend::cpu
