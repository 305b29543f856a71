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

template <typename XT>
void check(WeightFormat f, Shape sh, int n, float beta, uint64_t seed) {
  SCOPED_TRACE(std::string(weight_format_name(f)) + " " + std::to_string(sh.rows) + "x" +
               std::to_string(sh.cols) + " n " + std::to_string(n) + " beta " +
               std::to_string(beta) + (sizeof(XT) == 2 ? " x f16" : " x f32"));
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
  const Status st = gemv_q(view, x.get<DevX>(), n, ldx, y.get<float>(), ldy, beta, nullptr);
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
      for (int c = 0; c < sh.cols; ++c) {
        const double p = weight(f, blocks, sh.cols, r, c) * xd[static_cast<size_t>(t) * ldx + c];
        ref += p;
        abs_sum += std::fabs(p);
      }
      ASSERT_GT(abs_sum, 0.0);
      const double err = std::fabs(got[o] - ref) / abs_sum;
      worst = std::max(worst, err);
      ASSERT_LE(err, kRelTol) << "token " << t << " row " << r << ": " << got[o] << " vs " << ref;
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
