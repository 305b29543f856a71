// matmul for every weight type: the scalar reference table, the AVX2 table and the public
// entry point (threaded) against a float64 product of the dequantized weights.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "tq/backend/cpu/matmul.h"
#include "tq/backend/cpu/matmul_kernels.h"
#include "tq/core/fp16.h"
#include "tq/core/rng.h"
#include "tq/quant/weight_dequant.h"
#include "tq/quant/weight_quant.h"

namespace tq::backend::cpu {
namespace {

using quant::GgmlType;

// Float summation order differs between tables: n_blocks * 2^-24 relative to sum |w x| is
// far below this.
constexpr double kOrderTol = 1e-5;

const char* type_name(GgmlType t) {
  return quant::ggml_type_traits(static_cast<uint32_t>(t))->name.data();
}

// Random weights: quantized normals where tq has a quantizer, random blocks with finite fp16
// scales for the k-quants (as scripts/gen_ggml_fixtures.py builds them).
std::vector<uint8_t> random_weights(GgmlType type, int64_t rows, int64_t cols, Rng& rng) {
  const size_t row_bytes = quant::ggml_row_bytes(type, cols);
  std::vector<uint8_t> w(row_bytes * rows);
  if (quant::can_quantize(type)) {
    std::vector<float> row(cols);
    for (int64_t r = 0; r < rows; ++r) {
      const double scale = 0.02 + 0.2 * rng.uniform();
      for (float& v : row) v = static_cast<float>(rng.normal() * scale);
      EXPECT_TRUE(quant::quantize_row_ref(type, row.data(), w.data() + r * row_bytes, cols).ok());
    }
    return w;
  }
  for (uint8_t& b : w) b = static_cast<uint8_t>(rng.next_u32());
  const auto* traits = quant::ggml_type_traits(static_cast<uint32_t>(type));
  const size_t bb = traits->block_bytes;
  std::vector<size_t> halves = {0, 2};  // d, dmin of q4_K / q5_K
  if (type == GgmlType::kQ6_K) halves = {208};
  for (size_t off = 0; off < w.size(); off += bb) {
    for (size_t h : halves) {
      const float s =
          static_cast<float>((0.001 + 0.01 * rng.uniform()) * (rng.uniform() < 0.5 ? -1 : 1));
      const uint16_t bits = f32_to_f16(s);
      std::memcpy(&w[off + h], &bits, 2);
    }
  }
  return w;
}

struct Problem {
  GgmlType type;
  int64_t rows, cols;
  int n_tokens;
  uint64_t seed;
  std::vector<uint8_t> w;
  std::vector<float> x;
  std::vector<double> y64;  // [t][r]
  std::vector<double> tol;  // per output: the activation rounding bound (int paths)
  std::vector<double> mag;  // per output: sum |w x|
};

Problem make_problem(GgmlType type, int64_t rows, int64_t cols, int n_tokens, uint64_t seed) {
  Problem p{type, rows, cols, n_tokens, seed, {}, {}, {}, {}, {}};
  Rng rng(seed);
  p.w = random_weights(type, rows, cols, rng);
  p.x.resize(static_cast<size_t>(n_tokens * cols));
  for (float& v : p.x) v = static_cast<float>(rng.normal());
  if (n_tokens > 2) std::fill(p.x.begin() + cols, p.x.begin() + 2 * cols, 0.0f);  // a zero token
  const size_t row_bytes = quant::ggml_row_bytes(type, cols);
  std::vector<float> wr(cols);
  p.y64.assign(n_tokens * rows, 0.0);
  p.tol.assign(n_tokens * rows, 0.0);
  p.mag.assign(n_tokens * rows, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_TRUE(quant::dequantize_row_ref(type, p.w.data() + r * row_bytes, wr.data(), cols).ok());
    for (int t = 0; t < n_tokens; ++t) {
      const float* x = p.x.data() + t * cols;
      double acc = 0, mag = 0, bound = 0;
      for (int64_t b = 0; b < cols / 32; ++b) {
        double amax = 0, wsum = 0;
        for (int j = 0; j < 32; ++j) {
          const int64_t c = b * 32 + j;
          acc += static_cast<double>(wr[c]) * x[c];
          mag += std::fabs(static_cast<double>(wr[c]) * x[c]);
          amax = std::max(amax, std::fabs(static_cast<double>(x[c])));
          wsum += std::fabs(static_cast<double>(wr[c]));
        }
        // int8 activations: each element off by at most half a step, amax / 254.
        bound += wsum * amax / 254.0;
      }
      p.y64[t * rows + r] = acc;
      p.mag[t * rows + r] = mag;
      p.tol[t * rows + r] = matmul_has_int_path(type) ? bound * 1.01 : 0.0;
    }
  }
  return p;
}

std::string describe(const Problem& p) {
  return std::string(type_name(p.type)) + " rows=" + std::to_string(p.rows) +
         " cols=" + std::to_string(p.cols) + " n_tokens=" + std::to_string(p.n_tokens) +
         " seed=" + std::to_string(p.seed);
}

std::vector<float> run(const MatmulKernels& k, ThreadPool& pool, const Problem& p) {
  std::vector<float> y(p.n_tokens * p.rows, -1e30f);
  const WeightView w{p.type, p.w.data(), p.rows, p.cols};
  const Status s = matmul_with(k, pool, w, p.x.data(), p.n_tokens, y.data());
  EXPECT_TRUE(s.ok()) << s.to_string();
  return y;
}

void expect_close_to_f64(const Problem& p, const std::vector<float>& y, const char* table) {
  for (size_t i = 0; i < y.size(); ++i) {
    const double tol = p.tol[i] + kOrderTol * p.mag[i] + 1e-6;
    ASSERT_NEAR(y[i], p.y64[i], tol) << table << " " << describe(p) << " out " << i;
  }
}

const GgmlType kAllTypes[] = {GgmlType::kF32,  GgmlType::kF16,  GgmlType::kBF16, GgmlType::kQ4_0,
                              GgmlType::kQ4_1, GgmlType::kQ5_0, GgmlType::kQ5_1, GgmlType::kQ8_0,
                              GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K};

TEST(Matmul, EveryTypeAndTableMatchesFloat64) {
  ThreadPool one(1);
  const MatmulKernels* avx2 = matmul_kernels_avx2();
  uint64_t seed = 100;
  for (GgmlType type : kAllTypes) {
    const bool k_quant = quant::ggml_type_traits(static_cast<uint32_t>(type))->block_elems == 256;
    const int64_t col_options[] = {k_quant ? 256 : 96, 512};
    for (int64_t cols : col_options) {
      for (int64_t rows : {1, 7, 33}) {
        for (int n_tokens : {1, 3, 17}) {
          const Problem p = make_problem(type, rows, cols, n_tokens, ++seed);
          const std::vector<float> ref = run(matmul_kernels_ref(), one, p);
          expect_close_to_f64(p, ref, "ref");
          if (avx2 == nullptr) continue;
          const std::vector<float> simd = run(*avx2, one, p);
          expect_close_to_f64(p, simd, "avx2");
          for (size_t i = 0; i < ref.size(); ++i)
            ASSERT_NEAR(simd[i], ref[i], kOrderTol * p.mag[i] + 1e-6)
                << "avx2 vs ref " << describe(p) << " out " << i;
          // The zero token (t = 1) multiplies to exactly zero on every path.
          if (n_tokens > 2) {
            for (int64_t r = 0; r < rows; ++r) ASSERT_EQ(simd[rows + r], 0.0f) << describe(p);
          }
        }
      }
    }
  }
}

// Float activations: the quantized types lose the 8-bit activation bound and match the float64
// product of the dequantized weights to summation order alone (Model::set_activations).
TEST(Matmul, FloatActivationsDropTheRoundingBound) {
  ThreadPool two(2);
  for (GgmlType type : {GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ5_0, GgmlType::kQ8_0}) {
    ASSERT_TRUE(matmul_has_int_path(type)) << type_name(type);
    const int64_t cols = 512;
    Problem p = make_problem(type, 37, cols, 5, 900 + static_cast<uint64_t>(type));
    const WeightView w{type, p.w.data(), p.rows, p.cols};
    std::vector<float> yf(p.y64.size(), -1e30f), yq(p.y64.size(), -1e30f);
    ASSERT_TRUE(matmul(two, w, p.x.data(), p.n_tokens, yf.data(), Activations::kFloat).ok());
    ASSERT_TRUE(matmul(two, w, p.x.data(), p.n_tokens, yq.data()).ok());
    double worst_float = 0, worst_quant = 0;
    for (size_t i = 0; i < yf.size(); ++i) {
      ASSERT_NEAR(yf[i], p.y64[i], kOrderTol * p.mag[i] + 1e-6) << describe(p) << " out " << i;
      worst_float = std::max(worst_float, std::fabs(yf[i] - p.y64[i]) / (p.mag[i] + 1e-12));
      worst_quant = std::max(worst_quant, std::fabs(yq[i] - p.y64[i]) / (p.mag[i] + 1e-12));
    }
    // The default path does round: its error is orders above the float path's.
    EXPECT_GT(worst_quant, 10 * worst_float) << describe(p);
  }
}

TEST(Matmul, ThreadedMatchesSingleThreadExactly) {
  ThreadPool one(1), two(2);
  for (GgmlType type : {GgmlType::kQ4_1, GgmlType::kQ8_0, GgmlType::kF16, GgmlType::kQ6_K}) {
    const Problem p = make_problem(type, 301, 512, 5, 7);  // ~770k MACs: the threaded path
    const std::vector<float> a = run(matmul_kernels_active(), one, p);
    std::vector<float> b(a.size());
    ASSERT_TRUE(
        matmul(two, WeightView{type, p.w.data(), p.rows, p.cols}, p.x.data(), p.n_tokens, b.data())
            .ok());
    EXPECT_EQ(a, b) << describe(p);  // rows are split, never a dot product
    expect_close_to_f64(p, b, "threaded");
  }
}

TEST(Matmul, QuantizeActivationsAvx2MatchesRefBytes) {
  const MatmulKernels* avx2 = matmul_kernels_avx2();
  if (avx2 == nullptr) GTEST_SKIP() << "no AVX2 on this CPU";
  Rng rng(3);
  for (int64_t n : {32, 96, 576, 1536}) {
    std::vector<float> x(n);
    for (float& v : x) v = static_cast<float>(rng.normal() * (1 + 100 * rng.uniform()));
    std::fill(x.begin(), x.begin() + 32, 0.0f);  // a zero block: d = 0
    std::vector<quant::BlockQ8A> a(n / 32), b(n / 32);
    quant::quantize_row_q8a_ref(x.data(), a.data(), n);
    avx2->quantize_q8a(x.data(), b.data(), n);
    for (int64_t i = 0; i < n / 32; ++i) {
      ASSERT_EQ(a[i].d, b[i].d) << "n=" << n << " block " << i;
      ASSERT_EQ(a[i].s, b[i].s) << "n=" << n << " block " << i;
      ASSERT_EQ(0, std::memcmp(a[i].qs, b[i].qs, 32)) << "n=" << n << " block " << i;
    }
  }
}

TEST(Matmul, DequantizeRowAvx2MatchesRef) {
  const MatmulKernels* avx2 = matmul_kernels_avx2();
  if (avx2 == nullptr) GTEST_SKIP() << "no AVX2 on this CPU";
  Rng rng(5);
  for (GgmlType type : kAllTypes) {
    const int64_t n =
        quant::ggml_type_traits(static_cast<uint32_t>(type))->block_elems == 1 ? 37 : 512;
    const std::vector<uint8_t> w = random_weights(type, 1, n, rng);
    std::vector<float> a(n), b(n);
    ASSERT_TRUE(quant::dequantize_row_ref(type, w.data(), a.data(), n).ok());
    avx2->dequantize(type, w.data(), b.data(), n);
    EXPECT_EQ(a, b) << type_name(type);
  }
}

TEST(Matmul, RejectsBadShapesAndTypes) {
  ThreadPool pool(1);
  std::vector<uint8_t> w(1024, 0);
  std::vector<float> x(64, 1.0f), y(64);
  EXPECT_EQ(matmul(pool, {GgmlType::kQ2_K, w.data(), 1, 256}, x.data(), 1, y.data()).code(),
            StatusCode::kUnsupported);
  EXPECT_EQ(matmul(pool, {GgmlType::kQ4_0, w.data(), 1, 48}, x.data(), 1, y.data()).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(matmul(pool, {GgmlType::kQ4_0, w.data(), 0, 32}, x.data(), 1, y.data()).code(),
            StatusCode::kInvalidArgument);
  EXPECT_TRUE(matmul(pool, {GgmlType::kQ4_0, w.data(), 1, 32}, x.data(), 0, y.data()).ok());
  std::vector<float> row(8, 1.0f);
  dequantize_row(GgmlType::kQ4_0, w.data(), row.data(), 8);  // not a whole block: zeros
  EXPECT_EQ(row, std::vector<float>(8, 0.0f));
}

}  // namespace
}  // namespace tq::backend::cpu
