// TurboQuant codecs: measured distortion vs the Lloyd-Max optimum, unbiased QJL inner products,
// block layout, and the edge cases (zero vectors, huge norms, NaN/Inf).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "tq/core/rng.h"
#include "tq/quant/codec.h"
#include "tq/quant/qjl.h"

namespace tq::quant {
namespace {

std::unique_ptr<VectorCodec> codec_for(const char* name, int dim, CodebookCache& books,
                                       CodecOptions o = {}) {
  auto f = parse_format(name);
  EXPECT_TRUE(f.ok()) << name;
  auto c = make_codec(*f, dim, o, books);
  EXPECT_TRUE(c.ok()) << name << ": " << c.status().to_string();
  return c.ok() ? std::move(*c) : nullptr;
}

std::vector<float> random_unit(Rng& rng, int d) {
  std::vector<float> x(d);
  double n2 = 0.0;
  for (auto& v : x) {
    v = static_cast<float>(rng.normal());
    n2 += double(v) * v;
  }
  for (auto& v : x) v = static_cast<float>(v / std::sqrt(n2));
  return x;
}

constexpr double kMseRelTol = 0.02;  // measured vs Lloyd-Max optimum

TEST(TqCodec, MseMatchesLloydMaxOptimumAtD128) {
  constexpr int kDim = 128, kVectors = 3000, kCap = 16;
  constexpr uint64_t kSeed = 1234;
  CodebookCache books;
  for (int b = 1; b <= 4; ++b) {
    auto codec = codec_for(("tq" + std::to_string(b)).c_str(), kDim, books);
    const double optimum = books.get(kDim, b).value()->mse_per_vector;
    Rng rng(kSeed + b);
    std::vector<uint8_t> block(codec->block_bytes(kCap));
    std::vector<float> back(kDim);
    double sum = 0.0;
    for (int v = 0; v < kVectors; ++v) {
      const auto x = random_unit(rng, kDim);
      codec->encode(x.data(), block.data(), kCap, v % kCap);
      codec->decode(block.data(), kCap, v % kCap, back.data());
      for (int j = 0; j < kDim; ++j) sum += double(x[j] - back[j]) * (x[j] - back[j]);
    }
    const double mse = sum / kVectors;
    EXPECT_NEAR(mse, optimum, kMseRelTol * optimum) << "b=" << b << " seed=" << kSeed + b;
  }
}

// The QJL estimate is unbiased over the random rotation and sketch: fix one key and one
// correlated query, redraw the seed many times. The mse codec at the same total bits is
// visibly biased (it shrinks inner products), which shows the test has the power to see it.
TEST(TqCodec, ProdInnerProductIsUnbiasedOverSeeds) {
  constexpr int kDim = 64, kSeeds = 600;
  CodebookCache books;
  Rng rng(99);
  const auto x = random_unit(rng, kDim);
  std::vector<float> q(kDim);
  const auto z = random_unit(rng, kDim);
  for (int j = 0; j < kDim; ++j) q[j] = 0.8f * x[j] + 0.6f * z[j];
  double truth = 0.0;
  for (int j = 0; j < kDim; ++j) truth += double(q[j]) * x[j];
  for (const char* name : {"tq2j", "tq3j", "tq2"}) {
    double sum = 0.0, sum2 = 0.0;
    for (int s = 0; s < kSeeds; ++s) {
      CodecOptions o;
      o.seed = 1000 + s;
      auto codec = codec_for(name, kDim, books, o);
      std::vector<uint8_t> block(codec->block_bytes(1));
      std::vector<float> state(codec->query_state_size());
      codec->encode(x.data(), block.data(), 1, 0);
      codec->prepare_query(q.data(), state.data());
      float est = 0.0f;
      codec->score(state.data(), 1, block.data(), 1, 1, &est);
      sum += est - truth;
      sum2 += (est - truth) * (est - truth);
    }
    const double bias = sum / kSeeds;
    const double se = std::sqrt((sum2 / kSeeds - bias * bias) / (kSeeds - 1));
    if (std::string(name) == "tq2") {
      EXPECT_GT(std::fabs(bias), 8 * se)
          << "mse codec should be biased; bias=" << bias << " se=" << se;
    } else {
      EXPECT_LT(std::fabs(bias), 4 * se)
          << name << " bias=" << bias << " se=" << se << " seeds 1000.." << 1000 + kSeeds;
    }
  }
}

TEST(TqCodec, BytesPerVectorAndSlotsAreIndependent) {
  CodebookCache books;
  for (const char* name :
       {"tq1", "tq3", "tq4", "tq8", "tq2j", "tq4j", "tq9j", "f16", "q8_0", "q4_0"}) {
    auto f = *parse_format(name);
    auto codec = codec_for(name, 128, books);
    EXPECT_EQ(codec->bytes_per_vector(), f.bytes_per_vector(128)) << name;
    if (f.is_tq()) {
      CodecOptions o;
      o.norm_fp32 = true;
      auto c32 = codec_for(name, 128, books, o);
      EXPECT_EQ(c32->bytes_per_vector(), f.bytes_per_vector(128) + (f.has_qjl() ? 4 : 2)) << name;
    }
    // Writing slot 2 of an odd-capacity block leaves the other slots' bytes alone.
    constexpr int kCap = 5;
    Rng rng(5);
    std::vector<uint8_t> block(codec->block_bytes(kCap));
    std::vector<std::vector<float>> xs;
    for (int s = 0; s < kCap; ++s) {
      xs.push_back(random_unit(rng, 128));
      codec->encode(xs.back().data(), block.data(), kCap, s);
    }
    std::vector<float> a(128), b(128);
    codec->decode(block.data(), kCap, 1, a.data());
    codec->encode(random_unit(rng, 128).data(), block.data(), kCap, 2);
    codec->decode(block.data(), kCap, 1, b.data());
    EXPECT_EQ(a, b) << name;
  }
}

TEST(TqCodec, ZeroHugeAndNonFiniteInputs) {
  CodebookCache books;
  for (const char* name : {"tq3", "tq4j", "f16", "q8_0", "q4_0"}) {
    for (bool fp32 : {false, true}) {
      CodecOptions o;
      o.norm_fp32 = fp32;
      auto codec = codec_for(name, 96 + 32 * (name[0] != 't'), books, o);  // 96 for tq, 128 else
      const int d = codec->dim();
      std::vector<uint8_t> block(codec->block_bytes(3));
      std::vector<float> x(d, 0.0f), back(d, 1.0f);
      codec->encode(x.data(), block.data(), 3, 0);  // zero vector decodes to exactly zero
      codec->decode(block.data(), 3, 0, back.data());
      for (float v : back) EXPECT_EQ(v, 0.0f) << name;
      // Huge norms: 3e4 fits fp16, 1e30 saturates fp16 norms but is exact with fp32 norms.
      Rng rng(3);
      for (double scale : {3e4, 1e30}) {
        // f16 elements and ggml's fp16 block scales overflow to inf by design.
        if (name[0] != 't' && scale > 65504) continue;
        auto u = random_unit(rng, d);
        for (int j = 0; j < d; ++j) x[j] = static_cast<float>(u[j] * scale);
        codec->encode(x.data(), block.data(), 3, 1);
        codec->decode(block.data(), 3, 1, back.data());
        double n2 = 0.0, err = 0.0;
        for (int j = 0; j < d; ++j) {
          n2 += double(back[j]) * back[j];
          err += (double(back[j]) - x[j]) * (double(back[j]) - x[j]);
        }
        if (fp32 || scale < 65504) {
          EXPECT_LT(std::sqrt(err) / scale, 0.6) << name << " scale=" << scale;
        } else {
          EXPECT_NEAR(std::sqrt(n2), 65504.0, 0.1 * 65504) << name << " saturates";
        }
        for (float v : back) EXPECT_TRUE(std::isfinite(v)) << name << " scale=" << scale;
      }
      // NaN / Inf: must not crash; the slot decodes to something, other slots are untouched.
      std::vector<float> before(d);
      codec->decode(block.data(), 3, 1, before.data());
      for (float bad : {NAN, INFINITY}) {
        x.assign(d, 0.5f);
        x[d / 2] = bad;
        codec->encode(x.data(), block.data(), 3, 2);
        codec->decode(block.data(), 3, 2, back.data());
        codec->decode(block.data(), 3, 1, back.data());
        EXPECT_EQ(back, before) << name;
      }
    }
  }
}

TEST(TqCodec, NormCorrectionKeepsTheNorm) {
  CodebookCache books;
  CodecOptions o;
  o.norm_correction = true;
  auto codec = codec_for("tq2", 128, books, o);
  Rng rng(8);
  std::vector<uint8_t> block(codec->block_bytes(1));
  std::vector<float> back(128);
  for (int t = 0; t < 10; ++t) {
    auto x = random_unit(rng, 128);
    for (auto& v : x) v *= 7.0f;
    codec->encode(x.data(), block.data(), 1, 0);
    codec->decode(block.data(), 1, 0, back.data());
    double n2 = 0.0;
    for (float v : back) n2 += double(v) * v;
    EXPECT_NEAR(std::sqrt(n2), 7.0, 7.0 * 2e-3);  // fp16 norm rounding
  }
}

TEST(TqCodec, RejectsUnsupportedDims) {
  CodebookCache books;
  EXPECT_EQ(make_codec(*parse_format("q4_0"), 80, {}, books).status().code(),
            StatusCode::kUnsupported);
  EXPECT_EQ(make_codec(*parse_format("tq4"), 84, {}, books).status().code(),
            StatusCode::kUnsupported);
  EXPECT_TRUE(make_codec(*parse_format("tq4"), 80, {}, books).ok());
}

}  // namespace
}  // namespace tq::quant
