// The ggml weight types: the type table, the scalar dequantizers against hand-computed blocks
// and against the Python gguf package (tests/data/ggml_types.gguf, written by
// scripts/gen_ggml_fixtures.py), and the reference quantizers against the same package.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "test_env.h"
#include "tq/core/fp16.h"
#include "tq/model/gguf.h"
#include "tq/quant/ggml_blocks.h"
#include "tq/quant/ggml_types.h"
#include "tq/quant/weight_dequant.h"
#include "tq/quant/weight_quant.h"

namespace tq::quant {
namespace {

template <typename Block>
std::vector<float> dequant_block(GgmlType type, const Block& b, int n) {
  std::vector<float> out(n);
  EXPECT_TRUE(dequantize_row_ref(type, reinterpret_cast<const uint8_t*>(&b), out.data(), n).ok());
  return out;
}

TEST(GgmlTypes, TableMatchesGgmlCommon) {
  struct Row {
    GgmlType t;
    const char* name;
    uint32_t elems, bytes;
  };
  const Row rows[] = {{GgmlType::kF32, "f32", 1, 4},       {GgmlType::kF16, "f16", 1, 2},
                      {GgmlType::kBF16, "bf16", 1, 2},     {GgmlType::kQ4_0, "q4_0", 32, 18},
                      {GgmlType::kQ4_1, "q4_1", 32, 20},   {GgmlType::kQ5_0, "q5_0", 32, 22},
                      {GgmlType::kQ5_1, "q5_1", 32, 24},   {GgmlType::kQ8_0, "q8_0", 32, 34},
                      {GgmlType::kQ4_K, "q4_K", 256, 144}, {GgmlType::kQ5_K, "q5_K", 256, 176},
                      {GgmlType::kQ6_K, "q6_K", 256, 210}};
  for (const Row& r : rows) {
    const GgmlTypeTraits* t = ggml_type_traits(static_cast<uint32_t>(r.t));
    ASSERT_NE(t, nullptr) << r.name;
    EXPECT_EQ(t->name, r.name);
    EXPECT_EQ(t->block_elems, r.elems) << r.name;
    EXPECT_EQ(t->block_bytes, r.bytes) << r.name;
    EXPECT_TRUE(t->supported) << r.name;
    EXPECT_TRUE(can_dequantize(r.t)) << r.name;
  }
  for (uint32_t bad : {4u, 5u, 16u, 29u, 31u, 1000u, 0xFFFFFFFFu})
    EXPECT_EQ(ggml_type_traits(bad), nullptr) << bad;
  EXPECT_FALSE(ggml_type_traits(static_cast<uint32_t>(GgmlType::kQ2_K))->supported);
  EXPECT_EQ(ggml_row_bytes(GgmlType::kQ4_1, 576), 18u * 20);
  EXPECT_EQ(ggml_row_bytes(GgmlType::kQ6_K, 512), 2u * 210);
  EXPECT_EQ(ggml_row_bytes(GgmlType::kQ4_0, 33), 0u);  // not a whole block
  EXPECT_EQ(ggml_row_bytes(GgmlType::kF16, 7), 14u);
}

TEST(GgmlDequant, HandComputedQ4_0Q4_1Q8_0) {
  BlockQ4_0 a{};
  a.d = f32_to_f16(0.5f);
  for (int j = 0; j < 16; ++j) a.qs[j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  const auto x = dequant_block(GgmlType::kQ4_0, a, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(x[j], (j - 8) * 0.5f) << j;
    EXPECT_EQ(x[j + 16], (7 - j) * 0.5f) << j;
  }
  BlockQ4_1 b{};
  b.d = f32_to_f16(0.25f);
  b.m = f32_to_f16(-1.0f);
  for (int j = 0; j < 16; ++j) b.qs[j] = static_cast<uint8_t>(j | (3 << 4));
  const auto y = dequant_block(GgmlType::kQ4_1, b, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], j * 0.25f - 1.0f) << j;
    EXPECT_EQ(y[j + 16], 3 * 0.25f - 1.0f) << j;
  }
  BlockQ8_0 c{};
  c.d = f32_to_f16(0.125f);
  for (int j = 0; j < 32; ++j) c.qs[j] = static_cast<int8_t>(j * 8 - 128);
  const auto z = dequant_block(GgmlType::kQ8_0, c, 32);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(z[j], (j * 8 - 128) * 0.125f) << j;
}

TEST(GgmlDequant, HandComputedQ5_0Q5_1) {
  // q[j] = j: low nibble j & 15 in qs[j % 16], bit 4 in qh bit j (set for j >= 16).
  BlockQ5_0 a{};
  a.d = f32_to_f16(2.0f);
  for (int j = 0; j < 16; ++j) a.qs[j] = static_cast<uint8_t>(j | (j << 4));
  const uint32_t qh = 0xFFFF0000u;
  std::memcpy(a.qh, &qh, 4);
  const auto x = dequant_block(GgmlType::kQ5_0, a, 32);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(x[j], (j - 16) * 2.0f) << j;
  BlockQ5_1 b{};
  b.d = f32_to_f16(0.5f);
  b.m = f32_to_f16(3.0f);
  std::memcpy(b.qs, a.qs, 16);
  std::memcpy(b.qh, a.qh, 4);
  const auto y = dequant_block(GgmlType::kQ5_1, b, 32);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], j * 0.5f + 3.0f) << j;
}

// Packs 6-bit scales/mins of the 8 sub-blocks the way ggml's quantize_row_q4_K does.
void pack_k_scales(const int sc[8], const int mn[8], uint8_t out[12]) {
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      out[j] = static_cast<uint8_t>(sc[j]);
      out[j + 4] = static_cast<uint8_t>(mn[j]);
    } else {
      out[j + 4] = static_cast<uint8_t>((sc[j] & 0xF) | ((mn[j] & 0xF) << 4));
      out[j - 4] |= static_cast<uint8_t>((sc[j] >> 4) << 6);
      out[j] |= static_cast<uint8_t>((mn[j] >> 4) << 6);
    }
  }
}

TEST(GgmlDequant, HandComputedQ4_KQ5_K) {
  const int sc[8] = {1, 5, 17, 63, 20, 33, 48, 62};
  const int mn[8] = {0, 2, 9, 31, 16, 40, 63, 7};
  BlockQ5_K b{};
  b.d = f32_to_f16(0.5f);
  b.dmin = f32_to_f16(0.25f);
  pack_k_scales(sc, mn, b.scales);
  // Element e: sub-block s = e / 32, q = (e * 7) % 32 (5 bits). Sub-block 2g is the low nibble
  // of qs[32g + l], 2g + 1 the high nibble; bit 4 in qh[l] bit s.
  for (int e = 0; e < 256; ++e) {
    const int s = e / 32, l = e % 32, q = (e * 7) % 32;
    uint8_t& byte = b.qs[32 * (s / 2) + l];
    byte |= static_cast<uint8_t>((q & 0xF) << (s % 2 ? 4 : 0));
    b.qh[l] |= static_cast<uint8_t>(((q >> 4) & 1) << s);
  }
  const auto x = dequant_block(GgmlType::kQ5_K, b, 256);
  for (int e = 0; e < 256; ++e) {
    const int s = e / 32, q = (e * 7) % 32;
    EXPECT_EQ(x[e], 0.5f * sc[s] * q - 0.25f * mn[s]) << e;
  }
  // q4_K is q5_K without qh: the same block minus bit 4.
  BlockQ4_K a{};
  a.d = b.d;
  a.dmin = b.dmin;
  std::memcpy(a.scales, b.scales, 12);
  std::memcpy(a.qs, b.qs, 128);
  const auto y = dequant_block(GgmlType::kQ4_K, a, 256);
  for (int e = 0; e < 256; ++e) {
    const int s = e / 32, q = ((e * 7) % 32) & 15;
    EXPECT_EQ(y[e], 0.5f * sc[s] * q - 0.25f * mn[s]) << e;
  }
}

TEST(GgmlDequant, HandComputedQ6_K) {
  BlockQ6_K b{};
  b.d = f32_to_f16(0.5f);
  for (int i = 0; i < 16; ++i) b.scales[i] = static_cast<int8_t>(i * 9 - 70);
  // Element e in half h = e / 128, r = e % 128, k = r / 32, l = r % 32: 4 low bits in
  // ql[64h + l + 32 (k & 1)] (high nibble for k >= 2), 2 high bits at qh[32h + l] bits 2k.
  auto q_of = [](int e) { return (e * 13 + 5) % 64; };
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, r = e % 128, k = r / 32, l = r % 32, q = q_of(e);
    b.ql[64 * h + l + 32 * (k & 1)] |= static_cast<uint8_t>((q & 0xF) << (k >= 2 ? 4 : 0));
    b.qh[32 * h + l] |= static_cast<uint8_t>((q >> 4) << (2 * k));
  }
  const auto x = dequant_block(GgmlType::kQ6_K, b, 256);
  for (int e = 0; e < 256; ++e) {
    const int scale = b.scales[e / 16];  // 16 sub-blocks of 16 in element order
    EXPECT_EQ(x[e], 0.5f * scale * (q_of(e) - 32)) << e;
  }
}

TEST(GgmlDequant, RejectsBadLengthsAndTypes) {
  std::vector<uint8_t> src(64, 0);
  std::vector<float> dst(64);
  EXPECT_EQ(dequantize_row_ref(GgmlType::kQ4_0, src.data(), dst.data(), 31).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(dequantize_row_ref(GgmlType::kQ2_K, src.data(), dst.data(), 256).code(),
            StatusCode::kUnsupported);
  EXPECT_EQ(quantize_row_ref(GgmlType::kQ4_K, dst.data(), src.data(), 256).code(),
            StatusCode::kUnsupported);
}

class PythonFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string path = test::fixture_path("ggml_types.gguf");
    TQ_REQUIRE_FILE(path);
    auto f = model::GgufFile::open(path);
    ASSERT_TRUE(f.ok()) << f.status().to_string();
    file_ = std::move(f).value();
    auto n = file_->get_int("tq.fixture.n");
    ASSERT_TRUE(n.ok());
    n_ = *n;
  }
  std::vector<float> f32_tensor(const std::string& name) {
    const model::GgufTensor* t = file_->find_tensor(name);
    EXPECT_NE(t, nullptr) << name;
    if (t == nullptr || t->type != GgmlType::kF32) return {};
    std::vector<float> v(t->n_elements());
    std::memcpy(v.data(), t->data, t->nbytes);
    return v;
  }
  std::unique_ptr<model::GgufFile> file_;
  int64_t n_ = 0;
};

// Python computes the same float32 products in the same order: the results must be identical.
TEST_F(PythonFixture, DequantizeMatchesPythonGgufExactly) {
  const char* names[] = {"f16",  "bf16", "q4_0", "q4_1", "q5_0",
                         "q5_1", "q8_0", "q4_k", "q5_k", "q6_k"};
  for (const char* name : names) {
    const model::GgufTensor* raw = file_->find_tensor(std::string(name) + ".raw");
    ASSERT_NE(raw, nullptr) << name;
    const std::vector<float> expected = f32_tensor(std::string(name) + ".deq");
    ASSERT_EQ(static_cast<int64_t>(expected.size()), n_) << name;
    std::vector<float> got(n_);
    ASSERT_TRUE(dequantize_row_ref(raw->type, raw->data, got.data(), n_).ok()) << name;
    int mismatches = 0;
    for (int64_t i = 0; i < n_; ++i) {
      if (got[i] != expected[i] && mismatches++ < 5)
        ADD_FAILURE() << name << "[" << i << "]: tq " << got[i] << " python " << expected[i];
    }
    EXPECT_EQ(mismatches, 0) << name << " (fixture seed 1234)";
  }
}

// ggml's reference quantizers (and their numpy ports) are deterministic float32 arithmetic:
// tq must write the same bytes.
TEST_F(PythonFixture, QuantizeMatchesPythonGgufBytes) {
  const std::vector<float> src = f32_tensor("src");
  ASSERT_EQ(static_cast<int64_t>(src.size()), n_);
  const char* names[] = {"f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0"};
  for (const char* name : names) {
    const model::GgufTensor* want = file_->find_tensor(std::string(name) + ".quant");
    ASSERT_NE(want, nullptr) << name;
    std::vector<uint8_t> got(want->nbytes);
    ASSERT_TRUE(quantize_row_ref(want->type, src.data(), got.data(), n_).ok()) << name;
    int mismatches = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      if (got[i] != want->data[i] && mismatches++ < 5)
        ADD_FAILURE() << name << " byte " << i << ": tq " << int(got[i]) << " python "
                      << int(want->data[i]);
    }
    EXPECT_EQ(mismatches, 0) << name << " (fixture seed 1234)";
  }
}

// Round trip through each quantizer stays within its step (see the tolerance below).
TEST_F(PythonFixture, QuantizeDequantizeErrorWithinStep) {
  const std::vector<float> src = f32_tensor("src");
  struct Case {
    GgmlType t;
    double levels;  // step = block range / levels
  };
  for (const Case c :
       {Case{GgmlType::kQ8_0, 254}, Case{GgmlType::kQ4_0, 15}, Case{GgmlType::kQ4_1, 15},
        Case{GgmlType::kQ5_0, 31}, Case{GgmlType::kQ5_1, 31}}) {
    std::vector<uint8_t> q(ggml_row_bytes(c.t, n_));
    std::vector<float> back(n_);
    ASSERT_TRUE(quantize_row_ref(c.t, src.data(), q.data(), n_).ok());
    ASSERT_TRUE(dequantize_row_ref(c.t, q.data(), back.data(), n_).ok());
    for (int64_t b = 0; b < n_ / 32; ++b) {
      double lo = src[b * 32], hi = lo, amax = 0;
      for (int j = 0; j < 32; ++j) {
        lo = std::min<double>(lo, src[b * 32 + j]);
        hi = std::max<double>(hi, src[b * 32 + j]);
        amax = std::max<double>(amax, std::fabs(src[b * 32 + j]));
      }
      // Affine types span [lo, hi] and q8_0 [-amax, amax]: half a step. q4_0/q5_0 give the
      // largest magnitude the extra level, so its negation clamps: up to one whole step.
      const bool affine = c.t == GgmlType::kQ4_1 || c.t == GgmlType::kQ5_1;
      const bool clamps = c.t == GgmlType::kQ4_0 || c.t == GgmlType::kQ5_0;
      const double step = (affine ? hi - lo : 2 * amax) / c.levels;
      // plus fp16 rounding of d and m (relative 2^-11 of the block's magnitude)
      const double tol = (clamps ? 1.0 : 0.5) * step * 1.01 + 2e-3 * amax + 1e-6;
      for (int j = 0; j < 32; ++j)
        EXPECT_NEAR(back[b * 32 + j], src[b * 32 + j], tol)
            << ggml_type_traits(static_cast<uint32_t>(c.t))->name << " block " << b;
    }
  }
}

}  // namespace
}  // namespace tq::quant
