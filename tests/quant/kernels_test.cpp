// Fused score / accumulate / finish == decode-then-compute in float64, for every format, head
// dim, GQA group size and row count; and the AVX2 table == the scalar reference.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "tq/backend/cpu/tq_kernels.h"
#include "tq/core/rng.h"
#include "tq/quant/codec.h"

namespace tq::quant {
namespace {

// Fused result vs float64 decode-then-compute, relative to the magnitudes involved
// (|q| |x~| for a score, sum_i |w_i| |x~_i| for an accumulated element): float rounding of
// the rotation, the lookups and d-term sums stays far below this.
constexpr double kFusedRelTol = 2e-5;
// AVX2 vs scalar reference: same math, different summation order.
constexpr double kSimdRelTol = 1e-5;

const std::vector<std::string>& all_formats() {
  static const std::vector<std::string> kNames = {
      "f16", "q8_0", "q4_0", "tq1", "tq2", "tq3", "tq4", "tq5", "tq6", "tq7", "tq8",
      "tq2j", "tq3j", "tq4j", "tq5j", "tq6j", "tq7j", "tq8j", "tq9j"};
  return kNames;
}

struct Case {
  std::unique_ptr<VectorCodec> codec;
  int cap, n, nq;
  std::vector<uint8_t> block;
  std::vector<float> queries;                // [nq][d]
  std::vector<std::vector<double>> decoded;  // [n][d]
};

void fill(Case& c, Rng& rng) {
  const int d = c.codec->dim();
  c.block.assign(c.codec->block_bytes(c.cap), 0);
  c.decoded.clear();
  std::vector<float> x(d), back(d);
  for (int i = 0; i < c.n; ++i) {
    const double scale = 0.5 + 3.0 * rng.uniform();
    for (auto& v : x) v = static_cast<float>(scale * rng.normal());
    c.codec->encode(x.data(), c.block.data(), c.cap, i);
    c.codec->decode(c.block.data(), c.cap, i, back.data());
    c.decoded.emplace_back(back.begin(), back.end());
  }
  c.queries.resize(static_cast<size_t>(c.nq) * d);
  for (auto& v : c.queries) v = static_cast<float>(rng.normal());
}

void check_fused(Case& c, const std::string& label) {
  const int d = c.codec->dim(), ss = c.codec->query_state_size(), ad = c.codec->acc_dim();
  std::vector<float> states(static_cast<size_t>(c.nq) * ss);
  for (int h = 0; h < c.nq; ++h) c.codec->prepare_query(&c.queries[h * d], &states[h * ss]);
  std::vector<float> scores(static_cast<size_t>(c.nq) * c.n, -1.0f);
  c.codec->score(states.data(), c.nq, c.block.data(), c.cap, c.n, scores.data());
  std::vector<float> w(static_cast<size_t>(c.nq) * c.n);
  Rng rng(17);
  for (auto& v : w) v = static_cast<float>(rng.uniform() - 0.3);
  std::vector<float> acc(static_cast<size_t>(c.nq) * ad, 0.0f), out(d);
  c.codec->accumulate(w.data(), c.nq, c.block.data(), c.cap, c.n, acc.data());
  for (int h = 0; h < c.nq; ++h) {
    double qn = 0.0;
    for (int j = 0; j < d; ++j) qn += double(c.queries[h * d + j]) * c.queries[h * d + j];
    std::vector<double> expect(d, 0.0);
    double mag = 0.0;
    for (int i = 0; i < c.n; ++i) {
      double dot = 0.0, xn = 0.0;
      for (int j = 0; j < d; ++j) {
        dot += c.queries[h * d + j] * c.decoded[i][j];
        xn += c.decoded[i][j] * c.decoded[i][j];
        expect[j] += w[h * c.n + i] * c.decoded[i][j];
      }
      mag += std::fabs(w[h * c.n + i]) * std::sqrt(xn);
      EXPECT_NEAR(scores[h * c.n + i], dot, kFusedRelTol * std::sqrt(qn * xn) + 1e-30)
          << label << " score h=" << h << " i=" << i;
    }
    c.codec->finish(&acc[h * ad], out.data());
    for (int j = 0; j < d; ++j)
      EXPECT_NEAR(out[j], expect[j], kFusedRelTol * mag) << label << " acc h=" << h << " j=" << j;
  }
}

std::vector<const KernelTable*> tables() {
  std::vector<const KernelTable*> t = {&ref_kernel_table()};
  if (const KernelTable* avx2 = backend::cpu::avx2_kernel_table()) t.push_back(avx2);
  return t;
}

TEST(FusedKernels, MatchDecodeThenComputeForEveryFormat) {
  CodebookCache books;
  Rng rng(2024);
  for (const KernelTable* table : tables()) {
    for (const auto& name : all_formats()) {
      const Format f = *parse_format(name);
      for (int d : {64, 80, 96, 112, 128, 256}) {
        if (!f.validate(d).ok()) continue;
        CodecOptions o;
        o.kernels = table;
        o.norm_fp32 = (d == 112);  // exercise both norm widths
        auto codec = make_codec(f, d, o, books);
        ASSERT_TRUE(codec.ok()) << name << " d=" << d;
        for (int nq : {1, 3, 4}) {
          for (int n : {1, 7, 32}) {
            Case c{std::move(*codec), n + 2, n, nq, {}, {}, {}};
            fill(c, rng);
            check_fused(c, name + " d=" + std::to_string(d) + " nq=" + std::to_string(nq) +
                               " n=" + std::to_string(n) + " kernels=" + table->name);
            codec = std::move(c.codec);
          }
        }
      }
    }
  }
}

TEST(FusedKernels, Avx2MatchesReference) {
  const KernelTable* avx2 = backend::cpu::avx2_kernel_table();
  if (!avx2) GTEST_SKIP() << "CPU without AVX2/FMA/F16C";
  const KernelTable& ref = ref_kernel_table();
  Rng rng(77);
  for (int bits = 1; bits <= 8; ++bits) {
    for (int d : {8, 24, 64, 80, 128, 256}) {
      for (int nq : {1, 2, 3, 4, 5, 9}) {
        for (int n : {1, 2, 5, 33}) {
          const size_t row = static_cast<size_t>(d) * bits / 8;
          std::vector<uint8_t> plane(row * n);
          for (auto& b : plane) b = static_cast<uint8_t>(rng.next_u32());
          std::vector<float> table(1 << bits), q(static_cast<size_t>(nq) * d), scale(n),
              w(static_cast<size_t>(nq) * n);
          for (auto& v : table) v = static_cast<float>(rng.normal());
          for (auto& v : q) v = static_cast<float>(rng.normal());
          for (auto& v : scale) v = static_cast<float>(rng.uniform() + 0.5);
          for (auto& v : w) v = static_cast<float>(rng.normal());
          PlaneScoreArgs a{q.data(), d, nq, plane.data(), row, n, d, table.data(), scale.data(),
                           nullptr, n, false};
          std::vector<float> s_ref(static_cast<size_t>(nq) * n), s_simd(s_ref.size(), 9.0f);
          a.out = s_ref.data();
          ref.score_codes[bits](a);
          a.out = s_simd.data();
          avx2->score_codes[bits](a);
          double tmax = 0.0;
          for (float v : table) tmax = std::max(tmax, double(std::fabs(v)));
          for (size_t k = 0; k < s_ref.size(); ++k)
            EXPECT_NEAR(s_simd[k], s_ref[k], kSimdRelTol * tmax * 2.0 * d)
                << "bits=" << bits << " d=" << d << " nq=" << nq << " n=" << n << " k=" << k;
          PlaneAccumulateArgs b{w.data(), n, nq, plane.data(), row, n, d, table.data(), nullptr, d};
          std::vector<float> a_ref(static_cast<size_t>(nq) * d, 0.25f), a_simd = a_ref;
          b.acc = a_ref.data();
          ref.accumulate_codes[bits](b);
          b.acc = a_simd.data();
          avx2->accumulate_codes[bits](b);
          for (size_t k = 0; k < a_ref.size(); ++k)
            EXPECT_NEAR(a_simd[k], a_ref[k], kSimdRelTol * tmax * 3.0 * n)
                << "acc bits=" << bits << " d=" << d << " nq=" << nq << " n=" << n;
        }
      }
    }
  }
}

}  // namespace
}  // namespace tq::quant
