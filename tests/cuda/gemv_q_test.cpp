// The quantized-weight GEMV (backend/cuda/gemv_q.h) against a float64 host reference that
// decodes the same ggml blocks itself (not through split_blocks): Q4_0 and Q8_0, x in f16 and
// f32, 1..8 tokens, beta 0 and 1, and shapes that exercise every path of the kernel: fewer
// blocks per row than lanes, a partial unrolled step, rows not a multiple of the 8 rows of a
// thread block, and Llama-8B-like widths (128 and 448 blocks per row).
//
// Bound: each product q * d * x is formed in f32 from exact inputs (q small integers, d and an
// f16 x exact in f32, q * x exact), then summed in f32: at most ~50 roundings along any path
// (32 in a block, one d multiply, nb/32 block partials, 5 shuffle levels), so
// |got - ref| <= 50 * 2^-24 * (sum_c |w x| + |beta y|) ~ 3e-6 of that abs-sum; kRelTol = 1e-5.
// The dequantizer must give exactly f16(d * q) (what the host upload writes for the f16 path).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda_test_util.h"
#include "tq/backend/cuda/gemv_q.h"
#include "tq/core/fp16.h"
#include "tq/core/rng.h"

namespace tq::backend::cuda {
namespace {

constexpr double kRelTol = 1e-5;

int file_block_bytes(WeightFormat f) { return f == WeightFormat::kQ4_0 ? 18 : 34; }

// rows x cols of random ggml blocks: scales of either sign in [0.002, 0.02] (never zero),
// every quant random.
std::vector<uint8_t> random_blocks(WeightFormat f, int rows, int cols, uint64_t seed) {
  Rng rng(seed);
  const size_t blocks = static_cast<size_t>(rows) * (cols / 32);
  const int bb = file_block_bytes(f);
  std::vector<uint8_t> out(blocks * bb);
  for (size_t i = 0; i < blocks; ++i) {
    uint8_t* b = out.data() + i * bb;
    const float d = rng.uniform_f(0.002f, 0.02f) * (rng.coin() ? -1.0f : 1.0f);
    const uint16_t h = f32_to_f16(d);
    std::memcpy(b, &h, 2);
    for (int j = 2; j < bb; ++j) {
      uint8_t v = static_cast<uint8_t>(rng.next_u32() & 0xffu);
      if (f == WeightFormat::kQ8_0 && v == 0x80) v = 0x81;  // ggml's int8 quants are in [-127, 127]
      b[j] = v;
    }
  }
  return out;
}

// The weight at (r, c), straight from the ggml block bytes.
double weight(WeightFormat f, const std::vector<uint8_t>& blocks, int cols, int r, int c) {
  const int bb = file_block_bytes(f);
  const uint8_t* b = blocks.data() + (static_cast<size_t>(r) * (cols / 32) + c / 32) * bb;
  uint16_t h;
  std::memcpy(&h, b, 2);
  const double d = f16_to_f32(h);
  const int j = c % 32;
  if (f == WeightFormat::kQ4_0) {
    const uint8_t byte = b[2 + (j % 16)];
    const int q = j < 16 ? (byte & 15) : (byte >> 4);
    return d * (q - 8);
  }
  return d * static_cast<int8_t>(b[2 + j]);
}

// The device copy in gemv_q.h's split layout.
test::DeviceBuffer upload(WeightFormat f, const std::vector<uint8_t>& blocks, int rows, int cols) {
  const size_t nb = static_cast<size_t>(rows) * (cols / 32);
  std::vector<uint8_t> bytes(weight_matrix_bytes(f, rows, cols));
  EXPECT_EQ(bytes.size(), nb * (quant_qs_bytes(f) + 2));
  split_blocks(f, blocks.data(), rows, cols, bytes.data(),
               reinterpret_cast<uint16_t*>(bytes.data() + nb * quant_qs_bytes(f)));
  return test::DeviceBuffer::from(bytes);
}

struct Shape {
  int rows, cols;
};

// X as the kQ8 kernel quantizes it, dequantized: per 32 columns d = amax / 127, q =
// round-to-even(x * (127 / amax)), all in f32 (the same operations, so the same q). bound[i]:
// |x - d q| <= d / 2 for each element, the error the 8-bit activations may add.
void quantize_x_like_q8(const std::vector<double>& x, int n, int cols, int ldx,
                        std::vector<double>* xq, std::vector<double>* half_step) {
  xq->assign(x.size(), 0.0);
  half_step->assign(x.size(), 0.0);
  for (int t = 0; t < n; ++t)
    for (int b = 0; b < cols / 32; ++b) {
      const size_t o = static_cast<size_t>(t) * ldx + b * 32;
      float amax = 0.0f;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(static_cast<float>(x[o + j])));
      const float id = amax != 0.0f ? 127.0f / amax : 0.0f, d = amax / 127.0f;
      for (int j = 0; j < 32; ++j) {
        const float p = static_cast<float>(x[o + j]) * id;
        (*xq)[o + j] = static_cast<double>(d) * std::nearbyint(p);
        (*half_step)[o + j] = 0.5 * d;
      }
    }
}

template <typename XT>
void check(WeightFormat f, Shape sh, int n, float beta, uint64_t seed,
           GemvActivations acts = GemvActivations::kExact) {
  SCOPED_TRACE(std::string(weight_format_name(f)) + " " + std::to_string(sh.rows) + "x" +
               std::to_string(sh.cols) + " n " + std::to_string(n) + " beta " +
               std::to_string(beta) + (sizeof(XT) == 2 ? " x f16" : " x f32") +
               (acts == GemvActivations::kQ8 ? " q8" : ""));
  const auto blocks = random_blocks(f, sh.rows, sh.cols, seed);
  Rng rng(seed ^ 0x78u);
  const int ldx = sh.cols + 8;  // rows of x with a gap: ldx is honoured
  std::vector<double> xd(static_cast<size_t>(n) * ldx, 0.0);
  std::vector<XT> xs(xd.size());
  for (size_t i = 0; i < xd.size(); ++i) {
    const float v = static_cast<float>(rng.normal());
    if constexpr (sizeof(XT) == 2) {
      xs[i] = f32_to_f16(v);
      xd[i] = f16_to_f32(xs[i]);
    } else {
      xs[i] = v;
      xd[i] = v;
    }
  }
  const int ldy = sh.rows + 3;
  std::vector<float> y0(static_cast<size_t>(n) * ldy);
  for (auto& v : y0) v = static_cast<float>(rng.normal());
  const test::DeviceBuffer w = upload(f, blocks, sh.rows, sh.cols);
  const test::DeviceBuffer x = test::DeviceBuffer::from(xs);
  const test::DeviceBuffer y = test::DeviceBuffer::from(y0);
  const MatrixView view{f, w.get(), sh.rows, sh.cols};
  using DevX = std::conditional_t<sizeof(XT) == 2, __half, float>;
  // kQ8 (where it applies): the reference takes the 8-bit x; the f32 x's result must stay
  // within the rounding's own bound, sum_c |w| d / 2 (+ the float tolerance).
  const bool q8 =
      acts == GemvActivations::kQ8 && gemv_q8_applies({f, nullptr, sh.rows, sh.cols}, n);
  std::vector<double> xq, half_step;
  if (q8) quantize_x_like_q8(xd, n, sh.cols, ldx, &xq, &half_step);
  const std::vector<double>& xr = q8 ? xq : xd;
  const Status st =
      gemv_q(view, x.get<DevX>(), n, ldx, y.get<float>(), ldy, beta, nullptr, false, acts);
  ASSERT_TRUE(st.ok()) << st.to_string();
  TQ_CUDA_OK(cudaDeviceSynchronize());
  const std::vector<float> got = y.to_host<float>();
  double worst = 0.0;
  for (int t = 0; t < n; ++t)
    for (int r = 0; r < ldy; ++r) {
      const size_t o = static_cast<size_t>(t) * ldy + r;
      if (r >= sh.rows) {  // the gap between y rows is untouched
        ASSERT_EQ(got[o], y0[o]);
        continue;
      }
      double ref = beta * static_cast<double>(y0[o]), abs_sum = std::fabs(ref);
      double exact = ref, q8_bound = 0.0;
      for (int c = 0; c < sh.cols; ++c) {
        const size_t i = static_cast<size_t>(t) * ldx + c;
        const double wv = weight(f, blocks, sh.cols, r, c);
        const double p = wv * xr[i];
        ref += p;
        abs_sum += std::fabs(p);
        if (q8) {
          exact += wv * xd[i];
          q8_bound += std::fabs(wv) * half_step[i];
        }
      }
      ASSERT_GT(abs_sum, 0.0);
      const double err = std::fabs(got[o] - ref) / abs_sum;
      worst = std::max(worst, err);
      ASSERT_LE(err, kRelTol) << "token " << t << " row " << r << ": " << got[o] << " vs " << ref;
      if (q8)
        ASSERT_LE(std::fabs(got[o] - exact), q8_bound + kRelTol * abs_sum)
            << "token " << t << " row " << r << ": 8-bit x moved the result past its bound";
    }
  if (sh.rows * sh.cols >= 4096 * 128)
    std::printf("[ measured ] gemv_q %s %dx%d n %d: max |err| / abs-sum %.2e (tol %.0e)\n",
                weight_format_name(f), sh.rows, sh.cols, n, worst, kRelTol);
}

const Shape kShapes[] = {
    {1, 32},        // one block: 31 idle lanes
    {7, 96},        // fewer rows than a thread block
    {37, 32 * 45},  // a partial unrolled step, 37 % 8 != 0
    {130, 4096},    // 128 blocks per row: one full unrolled step (Q4_0)
    {9, 14336},     // 448 blocks per row (Llama-8B's ffn_down)
    {3, 32 * 257},  // 257 blocks: one block past the steps
};

class GemvQTest : public ::testing::TestWithParam<WeightFormat> {};

TEST_P(GemvQTest, MatchesFloat64ReferenceF16X) {
  TQ_REQUIRE_GPU();
  uint64_t seed = 11;
  for (const Shape& sh : kShapes)
    for (const int n : {1, 2, 3, 4, 5, 6, 7, 8})
      for (const float beta : {0.0f, 1.0f}) {
        if (n > 2 && n != 8 && sh.rows * sh.cols > 64 * 1024 && beta != 0.0f) continue;
        check<uint16_t>(GetParam(), sh, n, beta, ++seed);
      }
}

TEST_P(GemvQTest, MatchesFloat64ReferenceF32X) {
  TQ_REQUIRE_GPU();
  uint64_t seed = 101;
  for (const Shape& sh : kShapes)
    for (const int n : {1, 3, 8})
      for (const float beta : {0.0f, 1.0f}) check<float>(GetParam(), sh, n, beta, ++seed);
}

// 8-bit activations: the same shapes and token counts, plus a matrix tall enough that every
// warp of the one-wave grid walks several rows (the next row's weights loaded while it
// computes), and calls whose shared memory would be too large (8 tokens of 448 blocks), which
// take the exact path.
TEST_P(GemvQTest, Q8ActivationsMatchFloat64Reference) {
  TQ_REQUIRE_GPU();
  uint64_t seed = 501;
  for (const Shape& sh : kShapes)
    for (const int n : {1, 2, 3, 8})
      for (const float beta : {0.0f, 1.0f}) {
        check<uint16_t>(GetParam(), sh, n, beta, ++seed, GemvActivations::kQ8);
        if (n != 2) check<float>(GetParam(), sh, n, beta, ++seed, GemvActivations::kQ8);
      }
  check<uint16_t>(GetParam(), {6000, 2048}, 1, 1.0f, ++seed, GemvActivations::kQ8);
  check<uint16_t>(GetParam(), {6000, 2048}, 4, 0.0f, ++seed, GemvActivations::kQ8);
  EXPECT_TRUE(gemv_q8_applies({GetParam(), nullptr, 4096, 14336}, 1));
  EXPECT_FALSE(gemv_q8_applies({GetParam(), nullptr, 4096, 14336}, 8));
}

// quantize_q8 writes the quants the host rounding gives, and gemv_q8 over them equals gemv_q's
// kQ8 path bit for bit (the same kernel body; only where the quants come from differs).
TEST_P(GemvQTest, Q8FromDeviceMemoryEqualsSharedMemoryPath) {
  TQ_REQUIRE_GPU();
  const WeightFormat f = GetParam();
  uint64_t seed = 901;
  for (const Shape sh : {Shape{37, 32 * 45}, Shape{130, 4096}, Shape{9, 14336}, Shape{6000, 2048}})
    for (const int n : {1, 3, 8}) {
      SCOPED_TRACE(std::to_string(sh.rows) + "x" + std::to_string(sh.cols) + " n " +
                   std::to_string(n));
      const auto blocks = random_blocks(f, sh.rows, sh.cols, ++seed);
      Rng rng(seed ^ 0x51u);
      const int ldx = sh.cols + 8;
      std::vector<uint16_t> xs(static_cast<size_t>(n) * ldx);
      std::vector<double> xd(xs.size());
      for (size_t i = 0; i < xs.size(); ++i) {
        xs[i] = f32_to_f16(static_cast<float>(rng.normal()) * (i % 97 == 0 ? 20.0f : 1.0f));
        xd[i] = f16_to_f32(xs[i]);
      }
      std::vector<double> xq, half_step;
      quantize_x_like_q8(xd, n, sh.cols, ldx, &xq, &half_step);
      const test::DeviceBuffer w = upload(f, blocks, sh.rows, sh.cols);
      const test::DeviceBuffer x = test::DeviceBuffer::from(xs);
      test::DeviceBuffer q(static_cast<size_t>(n) * sh.cols);
      test::DeviceBuffer sc(static_cast<size_t>(n) * sh.cols / 32 * sizeof(Q8Scale));
      test::DeviceBuffer y1(static_cast<size_t>(n) * sh.rows * sizeof(float));
      test::DeviceBuffer y2(static_cast<size_t>(n) * sh.rows * sizeof(float));
      ASSERT_TRUE(
          quantize_q8(x.get<__half>(), n, sh.cols, ldx, q.get<int8_t>(), sc.get<Q8Scale>(), nullptr)
              .ok());
      const MatrixView view{f, w.get(), sh.rows, sh.cols};
      const Q8Activations xa{q.get<int8_t>(), sc.get<Q8Scale>(), sh.cols};
      ASSERT_TRUE(gemv_q8(view, xa, n, y1.get<float>(), sh.rows, 0.0f, nullptr).ok());
      ASSERT_TRUE(gemv_q(view, x.get<__half>(), n, ldx, y2.get<float>(), sh.rows, 0.0f, nullptr,
                         false, GemvActivations::kQ8)
                      .ok());
      TQ_CUDA_OK(cudaDeviceSynchronize());
      const std::vector<int8_t> qh = q.to_host<int8_t>();
      const std::vector<Q8Scale> sh8 = sc.to_host<Q8Scale>();
      for (int t = 0; t < n; ++t)
        for (int c = 0; c < sh.cols; ++c) {
          const size_t i = static_cast<size_t>(t) * sh.cols + c;
          const Q8Scale& s8 = sh8[i / 32];
          ASSERT_EQ(static_cast<double>(s8.d) * qh[i], xq[static_cast<size_t>(t) * ldx + c])
              << "token " << t << " col " << c;
          if (c % 32 == 0) {
            int sum = 0;
            for (int j = 0; j < 32; ++j) sum += qh[i + j];
            ASSERT_EQ(s8.sum, sum);
          }
        }
      if (gemv_q8_applies(view, n)) {
        const std::vector<float> a = y1.to_host<float>(), b = y2.to_host<float>();
        for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << "output " << i;
      }
    }
  const MatrixView bad{f, nullptr, 4, 48};  // cols % 32 != 0
  EXPECT_EQ(gemv_q8(bad, Q8Activations{}, 1, nullptr, 4, 0.0f, nullptr).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(quantize_q8(nullptr, 1, 48, 48, nullptr, nullptr, nullptr).code(),
            StatusCode::kInvalidArgument);
}

// An all-zero block of x (amax 0) quantizes to zeros, not NaN.
TEST_P(GemvQTest, Q8ActivationsZeroBlock) {
  TQ_REQUIRE_GPU();
  const WeightFormat f = GetParam();
  const int rows = 9, cols = 128;
  const auto blocks = random_blocks(f, rows, cols, 91);
  std::vector<uint16_t> xs(cols, f32_to_f16(0.0f));
  for (int c = 64; c < cols; ++c) xs[c] = f32_to_f16(0.25f * static_cast<float>(c % 7) - 0.5f);
  const test::DeviceBuffer w = upload(f, blocks, rows, cols);
  const test::DeviceBuffer x = test::DeviceBuffer::from(xs);
  test::DeviceBuffer y(rows * sizeof(float));
  const MatrixView view{f, w.get(), rows, cols};
  ASSERT_TRUE(gemv_q(view, x.get<__half>(), 1, cols, y.get<float>(), rows, 0.0f, nullptr, false,
                     GemvActivations::kQ8)
                  .ok());
  TQ_CUDA_OK(cudaDeviceSynchronize());
  const std::vector<float> got = y.to_host<float>();
  for (int r = 0; r < rows; ++r) {
    double ref = 0.0;
    for (int c = 64; c < cols; ++c) ref += weight(f, blocks, cols, r, c) * f16_to_f32(xs[c]);
    ASSERT_TRUE(std::isfinite(got[r]));
    // x's values are multiples of 1/4 up to 1: exact in 8 bits (127 / amax * x lands on integers
    // only for some; bound by the half step instead).
    double bound = 0.0;
    for (int c = 64; c < cols; ++c) bound += std::fabs(weight(f, blocks, cols, r, c)) * 0.5 / 127.0;
    EXPECT_LE(std::fabs(got[r] - ref), bound + 1e-5) << "row " << r;
  }
}

// dequant_rows: rows [row0, row0 + nrows) exactly as f16(d * q).
TEST_P(GemvQTest, DequantRowsExact) {
  TQ_REQUIRE_GPU();
  const WeightFormat f = GetParam();
  const int rows = 37, cols = 32 * 45, row0 = 5, nrows = 23;
  const auto blocks = random_blocks(f, rows, cols, 77);
  const test::DeviceBuffer w = upload(f, blocks, rows, cols);
  test::DeviceBuffer out(static_cast<size_t>(nrows) * cols * sizeof(uint16_t));
  const MatrixView view{f, w.get(), rows, cols};
  ASSERT_TRUE(dequant_rows(view, row0, nrows, out.get<__half>(), nullptr).ok());
  TQ_CUDA_OK(cudaDeviceSynchronize());
  const std::vector<uint16_t> got = out.to_host<uint16_t>();
  int nonzero = 0;
  for (int r = 0; r < nrows; ++r)
    for (int c = 0; c < cols; ++c) {
      const uint16_t want = f32_to_f16(static_cast<float>(weight(f, blocks, cols, row0 + r, c)));
      const uint16_t g = got[static_cast<size_t>(r) * cols + c];
      nonzero += f16_to_f32(want) != 0.0f;
      ASSERT_EQ(g, want) << "row " << row0 + r << " col " << c;
    }
  EXPECT_GT(nonzero, nrows * cols / 2);
  EXPECT_EQ(dequant_rows(view, rows - 2, 3, out.get<__half>(), nullptr).code(),
            StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Formats, GemvQTest,
                         ::testing::Values(WeightFormat::kQ4_0, WeightFormat::kQ8_0),
                         [](const ::testing::TestParamInfo<WeightFormat>& i) {
                           return std::string(weight_format_name(i.param));
                         });

}  // namespace
}  // namespace tq::backend::cuda
