// Fused score / accumulate / finish == decode-then-compute in float64, for every format, head
// dim, GQA group size, row count and CPU kernel table; every SIMD table == the scalar reference
// (float tables) or == a scalar model of the same int8 rounding (integer tables); and the error
// the int8 rounding adds is a small fraction of the codes' own quantization error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "tq/backend/cpu/tq_kernels.h"
#include "tq/core/fp16.h"
#include "tq/core/rng.h"
#include "tq/quant/codec.h"

namespace tq::quant {
namespace {

// Fused result vs float64 decode-then-compute, relative to the magnitudes involved
// (|q| |x~| for a score, sum_i |w_i| |x~_i| for an accumulated element): float rounding of
// the rotation, the lookups and d-term sums stays far below this.
constexpr double kFusedRelTol = 2e-5;
// Float SIMD vs scalar reference: same math, different summation order.
constexpr double kSimdRelTol = 1e-5;
// Integer tables, where they round (tq codes of <= 4 bits and QJL signs): the same comparison
// with int8 (7-bit on avx2-int8) queries, weights and codebooks. Their RMS error is ~1e-3 of
// |q| |x~| (Int8ErrorIsFarBelowCodeError prints it); 0.05 leaves > 10 sigma.
constexpr double kInt8RelTol = 0.05;
// Integer tables vs the scalar model of the same rounding (ints are exact, so only the final
// float scaling differs), relative to d * max|q| * max|C| (score) or n * max|w| * max|C|.
constexpr double kInt8ModelRelTol = 1e-6;

bool is_int8(const KernelTable& t) { return std::string(t.name).find("int8") != std::string::npos; }
// The int8 range of queries and weights: vpmaddubsw's int16 pair sums limit them to 64.
int int8_max(const KernelTable& t) {
  return std::string(t.name).find("vnni") != std::string::npos ? 127 : 64;
}

const std::vector<std::string>& all_formats() {
  static const std::vector<std::string> kNames = {
      "f16", "q8_0", "q4_0", "tq1",  "tq2",  "tq3",  "tq4",  "tq5",  "tq6", "tq7",
      "tq8", "tq2j", "tq3j", "tq4j", "tq5j", "tq6j", "tq7j", "tq8j", "tq9j"};
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

void check_fused(Case& c, double tol, const std::string& label) {
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
      EXPECT_NEAR(scores[h * c.n + i], dot, tol * std::sqrt(qn * xn) + 1e-30)
          << label << " score h=" << h << " i=" << i;
    }
    c.codec->finish(&acc[h * ad], out.data());
    for (int j = 0; j < d; ++j)
      EXPECT_NEAR(out[j], expect[j], tol * mag) << label << " acc h=" << h << " j=" << j;
  }
}

TEST(FusedKernels, MatchDecodeThenComputeForEveryFormat) {
  CodebookCache books;
  Rng rng(2024);  // seed of the data; the weights use 17
  for (const KernelTable* table : backend::cpu::cpu_kernel_tables()) {
    for (const auto& name : all_formats()) {
      const Format f = *parse_format(name);
      const bool rounds = is_int8(*table) && f.is_tq() && (f.code_bits() <= 4 || f.has_qjl());
      const double tol = rounds ? kInt8RelTol : kFusedRelTol;
      for (int d : {64, 80, 96, 112, 128, 256, 512}) {
        if (!f.validate(d).ok()) continue;
        if (d == 512 && name != "tq4" && name != "tq2j") continue;  // other key chunking
        CodecOptions o;
        o.kernels = table;
        o.norm_fp32 = (d == 112);  // exercise both norm widths
        auto codec = make_codec(f, d, o, books);
        ASSERT_TRUE(codec.ok()) << name << " d=" << d;
        for (int nq : {1, 3, 4}) {
          for (int n : {1, 7, 32, 45}) {
            Case c{std::move(*codec), n + 2, n, nq, {}, {}, {}};
            fill(c, rng);
            check_fused(c, tol,
                        name + " d=" + std::to_string(d) + " nq=" + std::to_string(nq) +
                            " n=" + std::to_string(n) + " kernels=" + table->name);
            codec = std::move(c.codec);
          }
        }
      }
    }
  }
}

// ---- plane level: every table vs the reference (float entries) or the int8 model ----------

struct Plane {
  int bits, d, nq, n;
  size_t row;
  std::vector<uint8_t> bytes;
  std::vector<float> table, q, scale, w;
};

Plane random_plane(Rng& rng, int bits, int d, int nq, int n) {
  Plane p{bits, d, nq, n, static_cast<size_t>(d) * bits / 8, {}, {}, {}, {}, {}};
  p.bytes.resize(p.row * n);
  for (auto& b : p.bytes) b = static_cast<uint8_t>(rng.next_u32());
  p.table.resize(size_t{1} << bits);
  p.q.resize(static_cast<size_t>(nq) * d);
  p.scale.resize(n);
  p.w.resize(static_cast<size_t>(nq) * n);
  for (auto& v : p.table) v = static_cast<float>(rng.normal());
  for (auto& v : p.q) v = static_cast<float>(rng.normal());
  for (auto& v : p.scale) v = static_cast<float>(rng.uniform() + 0.5);
  for (auto& v : p.w) v = static_cast<float>(rng.normal());
  return p;
}

int code_at(const Plane& p, int i, int j) {  // LSB-first bitstream, docs/formats.md
  int v = 0;
  for (int t = 0; t < p.bits; ++t) {
    const size_t bit = static_cast<size_t>(j) * p.bits + t;
    v |= ((p.bytes[p.row * i + bit / 8] >> (bit % 8)) & 1) << t;
  }
  return v;
}

double max_abs(const float* x, int n) {
  double m = 0.0;
  for (int j = 0; j < n; ++j) m = std::max(m, double(std::fabs(x[j])));
  return m;
}

// The integer kernels' arithmetic, scalar: x rounded to int8 as round(x * (kmax / max|x|)) in
// float (as vcvtps2dq does), the codebook to round(C * (127 / max|C|)) for b >= 2 (b = 1 uses
// C0 + (C1 - C0) * code exactly), int dots, one float scale at the end.
struct Int8Model {
  int kmax;
  const Plane& p;

  std::vector<int> round8(const float* x, int n, int limit, double& scale) const {
    const float m = static_cast<float>(max_abs(x, n));
    const float inv = m > 0.0f ? static_cast<float>(limit) / m : 0.0f;
    scale = static_cast<double>(m / static_cast<float>(limit));
    std::vector<int> r(n);
    for (int j = 0; j < n; ++j) r[j] = static_cast<int>(std::nearbyint(x[j] * inv));
    return r;
  }
  // value(code) = base + step * u(code)
  void codebook(std::vector<int>& u, double& base, double& step) const {
    if (p.bits == 1) {
      u = {0, 1};
      base = p.table[0];
      step = double(p.table[1]) - p.table[0];
      return;
    }
    u = round8(p.table.data(), static_cast<int>(p.table.size()), 127, step);
    base = 0.0;
  }
  double score(int h, int i) const {
    double sq, base, step;
    const std::vector<int> q8 = round8(&p.q[static_cast<size_t>(h) * p.d], p.d, kmax, sq);
    std::vector<int> u;
    codebook(u, base, step);
    long long dot = 0, qsum = 0;
    for (int j = 0; j < p.d; ++j) {
      dot += static_cast<long long>(q8[j]) * u[code_at(p, i, j)];
      qsum += q8[j];
    }
    return p.scale[i] * sq * (base * qsum + step * dot);
  }
  // acc[h][j] += ..., keys in chunks of 32 (the kernels' chunk for d <= 256), one scale each.
  double accumulate(int h, int j) const {
    double base, step, sum = 0.0;
    std::vector<int> u;
    codebook(u, base, step);
    for (int i0 = 0; i0 < p.n; i0 += 32) {
      const int m = std::min(32, p.n - i0);
      double sw;
      const std::vector<int> w8 = round8(&p.w[static_cast<size_t>(h) * p.n + i0], m, kmax, sw);
      long long dot = 0, wsum = 0;
      for (int i = 0; i < m; ++i) {
        dot += static_cast<long long>(w8[i]) * u[code_at(p, i0 + i, j)];
        wsum += w8[i];
      }
      sum += sw * (base * wsum + step * dot);
    }
    return sum;
  }
};

void compare_tables(const KernelTable& ref, const KernelTable& t, const Plane& p,
                    const std::string& label) {
  const int d = p.d, nq = p.nq, n = p.n, bits = p.bits;
  const bool model = is_int8(t) && bits <= 4;
  const Int8Model m{int8_max(t), p};
  const double tmax = max_abs(p.table.data(), static_cast<int>(p.table.size()));
  PlaneScoreArgs a{p.q.data(),     d,       nq, p.bytes.data(), p.row, n, d, p.table.data(),
                   p.scale.data(), nullptr, n,  false};
  std::vector<float> s_ref(static_cast<size_t>(nq) * n), s_t(s_ref.size(), 9.0f);
  a.out = s_ref.data();
  ref.score_codes[bits](a);
  a.out = s_t.data();
  t.score_codes[bits](a);
  for (int h = 0; h < nq; ++h) {
    const double qmax = max_abs(&p.q[static_cast<size_t>(h) * d], d);
    for (int i = 0; i < n; ++i) {
      const float got = s_t[static_cast<size_t>(h) * n + i];
      if (model)
        ASSERT_NEAR(got, m.score(h, i), kInt8ModelRelTol * d * qmax * tmax * p.scale[i])
            << label << " score h=" << h << " i=" << i;
      else
        ASSERT_NEAR(got, s_ref[static_cast<size_t>(h) * n + i], kSimdRelTol * tmax * 2.0 * d)
            << label << " score h=" << h << " i=" << i;
    }
  }
  PlaneAccumulateArgs b{p.w.data(), n, nq, p.bytes.data(), p.row, n, d, p.table.data(), nullptr, d};
  std::vector<float> a_ref(static_cast<size_t>(nq) * d, 0.25f), a_t = a_ref;
  b.acc = a_ref.data();
  ref.accumulate_codes[bits](b);
  b.acc = a_t.data();
  t.accumulate_codes[bits](b);
  for (int h = 0; h < nq; ++h) {
    const double wmax = max_abs(&p.w[static_cast<size_t>(h) * n], n);
    for (int j = 0; j < d; ++j) {
      const float got = a_t[static_cast<size_t>(h) * d + j];
      if (model)
        ASSERT_NEAR(got, 0.25 + m.accumulate(h, j), kInt8ModelRelTol * n * wmax * tmax + 1e-6)
            << label << " acc h=" << h << " j=" << j;
      else
        ASSERT_NEAR(got, a_ref[static_cast<size_t>(h) * d + j], kSimdRelTol * tmax * 3.0 * n)
            << label << " acc h=" << h << " j=" << j;
    }
  }
}

TEST(FusedKernels, SimdTablesMatchReferenceOrInt8Model) {
  const KernelTable& ref = ref_kernel_table();
  const uint64_t seed = 77;
  Rng rng(seed);
  for (const KernelTable* t : backend::cpu::cpu_kernel_tables()) {
    if (t == &ref) continue;
    for (int bits = 1; bits <= 8; ++bits)
      for (int d : {8, 24, 64, 80, 96, 112, 128, 256})
        for (int nq : {1, 3, 4, 5, 9})
          for (int n : {1, 5, 33, 70}) {
            const Plane p = random_plane(rng, bits, d, nq, n);
            compare_tables(ref, *t, p,
                           std::string(t->name) + " bits=" + std::to_string(bits) +
                               " d=" + std::to_string(d) + " nq=" + std::to_string(nq) +
                               " n=" + std::to_string(n) + " seed=" + std::to_string(seed));
          }
  }
}

// A table's prepared queries (prepare_score_query, made once per query by the codec) give the
// same scores, bit for bit, as the kernel preparing them itself on every call; a non-finite
// query still takes the float path. And a tq codec built on the table passes them.
TEST(FusedKernels, PreparedQueriesScoreLikeUnprepared) {
  Rng rng(41);
  int tables = 0;
  for (const KernelTable* t : backend::cpu::cpu_kernel_tables()) {
    if (!t->score_query_bytes) continue;
    ++tables;
    for (int bits = 1; bits <= 4; ++bits) {
      ASSERT_NE(t->prepare_score_query[bits], nullptr) << t->name;
      for (int d : {24, 64, 128})
        for (int nq : {1, 3, 5}) {
          Plane p = random_plane(rng, bits, d, nq, 33);
          if (nq == 3) p.q[d + 2] = NAN;  // head 1 goes through the float kernel
          const size_t stride = t->score_query_bytes(d) + 4;  // any stride
          std::vector<uint8_t> prep(stride * nq);
          for (int h = 0; h < nq; ++h)
            t->prepare_score_query[bits](&p.q[static_cast<size_t>(h) * d], d, &prep[stride * h]);
          std::vector<float> own(static_cast<size_t>(nq) * p.n), given(own.size());
          PlaneScoreArgs a{p.q.data(),     d,          nq,  p.bytes.data(),
                           p.row,          p.n,        d,   p.table.data(),
                           p.scale.data(), own.data(), p.n, false};
          t->score_codes[bits](a);
          a.out = given.data();
          a.q_prep = prep.data();
          a.q_prep_stride = stride;
          t->score_codes[bits](a);
          for (size_t i = 0; i < own.size(); ++i) {
            if (std::isnan(own[i])) {
              ASSERT_TRUE(std::isnan(given[i])) << t->name << " bits=" << bits << " i=" << i;
              continue;
            }
            ASSERT_EQ(own[i], given[i]) << t->name << " bits=" << bits << " d=" << d << " i=" << i;
          }
        }
    }
    // The codec reserves the room after its float state and fills it.
    CodebookCache books;
    CodecOptions o;
    o.kernels = t;
    auto codec = make_codec(Format{FormatKind::kTqMse, 4}, 64, o, books);
    ASSERT_TRUE(codec.ok());
    EXPECT_GE((*codec)->query_state_size() * sizeof(float),
              64 * sizeof(float) + t->score_query_bytes(64));
  }
  if (tables == 0) GTEST_SKIP() << "no kernel table with prepared queries on this CPU (needs AVX2)";
}

// Every table converts a norm plane exactly as core/fp16.h does: normal, subnormal, zero, inf
// and every length (the SIMD body and its scalar tail), from an odd address.
TEST(FusedKernels, F16PlaneConversionIsExact) {
  Rng rng(31);
  std::vector<uint16_t> h = {0x0000, 0x8000, 0x0001, 0x03ff, 0x0400, 0x3c00, 0xbc00,
                             0x7bff, 0xfbff, 0x7c00, 0xfc00, 0x3555, 0x1234};
  while (h.size() < 75) h.push_back(static_cast<uint16_t>(rng.next_u32() & 0x7bffu));  // finite
  std::vector<uint8_t> bytes(1 + 2 * h.size());
  std::memcpy(bytes.data() + 1, h.data(), 2 * h.size());
  for (const KernelTable* t : backend::cpu::cpu_kernel_tables()) {
    ASSERT_NE(t->f16_to_f32, nullptr) << t->name;
    for (const int n : {0, 1, 7, 8, 9, 16, 31, 75}) {
      std::vector<float> out(static_cast<size_t>(n) + 1, -7.0f);
      t->f16_to_f32(bytes.data() + 1, out.data(), n);
      for (int i = 0; i < n; ++i)
        ASSERT_EQ(out[i], f16_to_f32(h[i])) << t->name << " n=" << n << " i=" << i;
      ASSERT_EQ(out[n], -7.0f) << t->name << ": wrote past n";
    }
  }
}

TEST(FusedKernels, Int8TablesPropagateNonFiniteInput) {
  Rng rng(5);
  for (const KernelTable* t : backend::cpu::cpu_kernel_tables()) {
    if (!is_int8(*t)) continue;
    for (int bits = 1; bits <= 4; ++bits) {
      Plane p = random_plane(rng, bits, 64, 3, 9);
      p.q[64 + 5] = NAN;          // head 1
      p.w[2 * 9 + 4] = INFINITY;  // head 2, key 4
      PlaneScoreArgs a{p.q.data(), 64,      3, p.bytes.data(), p.row, 9, 64, p.table.data(),
                       nullptr,    nullptr, 9, false};
      std::vector<float> s(3 * 9);
      a.out = s.data();
      t->score_codes[bits](a);
      for (int i = 0; i < 9; ++i) {
        EXPECT_TRUE(std::isfinite(s[i])) << t->name << " bits=" << bits;
        EXPECT_TRUE(std::isnan(s[9 + i])) << t->name << " bits=" << bits;
      }
      PlaneAccumulateArgs b{p.w.data(),     9,       3, p.bytes.data(), p.row, 9, 64,
                            p.table.data(), nullptr, 64};
      std::vector<float> acc(3 * 64, 0.0f);
      b.acc = acc.data();
      t->accumulate_codes[bits](b);
      for (int j = 0; j < 64; ++j) {
        EXPECT_TRUE(std::isfinite(acc[j])) << t->name << " bits=" << bits;
        EXPECT_FALSE(std::isfinite(acc[128 + j])) << t->name << " bits=" << bits;
      }
    }
  }
}

// ---- accuracy: the int8 rounding vs the codes' own error ----------------------------------

// RMS over random unit keys and queries of (fused int8 score - exact score of the decoded key)
// must stay below kInt8ErrorShare of the RMS of (exact decoded score - true score <q, k>): the
// rounding is noise next to the quantization (measured: docs/quant.md).
constexpr double kInt8ErrorShare = 0.15;

TEST(FusedKernels, Int8ErrorIsFarBelowCodeError) {
  CodebookCache books;
  const uint64_t seed = 99;
  for (const KernelTable* t : backend::cpu::cpu_kernel_tables()) {
    if (!is_int8(*t)) continue;
    for (const char* name : {"tq2", "tq3", "tq4", "tq3j", "tq4j"}) {
      for (int d : {64, 128}) {
        Rng rng(seed);
        CodecOptions o;
        o.kernels = t;
        auto made = make_codec(*parse_format(name), d, o, books);
        ASSERT_TRUE(made.ok()) << name;
        std::unique_ptr<VectorCodec> codec = std::move(*made);
        constexpr int kN = 64, kQ = 8;
        std::vector<uint8_t> block(codec->block_bytes(kN));
        std::vector<float> keys(static_cast<size_t>(kN) * d), q(static_cast<size_t>(kQ) * d);
        for (auto& v : keys) v = static_cast<float>(rng.normal());
        for (auto& v : q) v = static_cast<float>(rng.normal());
        std::vector<std::vector<float>> dec(kN, std::vector<float>(d));
        for (int i = 0; i < kN; ++i) {
          codec->encode(&keys[static_cast<size_t>(i) * d], block.data(), kN, i);
          codec->decode(block.data(), kN, i, dec[i].data());
        }
        const int ss = codec->query_state_size();
        std::vector<float> st(static_cast<size_t>(kQ) * ss), sc(static_cast<size_t>(kQ) * kN);
        for (int h = 0; h < kQ; ++h)
          codec->prepare_query(&q[static_cast<size_t>(h) * d], &st[static_cast<size_t>(h) * ss]);
        codec->score(st.data(), kQ, block.data(), kN, kN, sc.data());
        double e_int8 = 0.0, e_code = 0.0;
        for (int h = 0; h < kQ; ++h)
          for (int i = 0; i < kN; ++i) {
            double truth = 0.0, exact = 0.0;
            for (int j = 0; j < d; ++j) {
              truth += double(q[h * d + j]) * keys[static_cast<size_t>(i) * d + j];
              exact += double(q[h * d + j]) * dec[i][j];
            }
            e_int8 += std::pow(sc[static_cast<size_t>(h) * kN + i] - exact, 2);
            e_code += std::pow(exact - truth, 2);
          }
        const double share = std::sqrt(e_int8 / e_code);
        EXPECT_LT(share, kInt8ErrorShare)
            << t->name << " " << name << " d=" << d << " seed=" << seed;
        std::printf("[ int8 ] %-16s %-5s d=%3d score: rounding RMS / code RMS = %.4f\n", t->name,
                    name, d, share);
      }
    }
  }
}

// Every table's online softmax against float64, block by block as attention walks a cache:
// weights within 4e-7 relative (float expf and the AVX2 polynomial, 2 ulp), the running sum within
// 1e-5, the rescale factor of every block, zeros past `visible`; scores spanning exp's whole
// float range (large negative differences underflow to 0, as expf does). NaN scores leave the
// maximum alone and give NaN weights.
TEST(FusedKernels, OnlineSoftmaxMatchesFloat64) {
  Rng rng(123);
  for (const KernelTable* t : backend::cpu::cpu_kernel_tables()) {
    const OnlineSoftmaxFn f = t->online_softmax ? t->online_softmax : online_softmax_ref;
    for (float spread : {0.5f, 8.0f, 120.0f})
      for (int cnt : {1, 7, 8, 32, 45}) {
        float m = -INFINITY, l = 0.0f;
        double md = -INFINITY, ld = 0.0;
        for (int block = 0; block < 6; ++block) {
          const int visible = 1 + static_cast<int>(rng.uniform() * cnt) % cnt;
          std::vector<float> row(static_cast<size_t>(cnt));
          // later blocks reach higher, so the maximum moves and c < 1
          for (float& x : row) x = rng.uniform_f(-spread, spread * 0.2f) + 0.3f * block;
          const std::vector<float> in = row;
          double mx = -INFINITY;
          for (int j = 0; j < visible; ++j) mx = std::max(mx, static_cast<double>(in[j]));
          const double m_new = std::max(md, mx);
          // (the kernels subtract in float: the reference exponentiates the same differences)
          const float mf = static_cast<float>(m_new);
          const double c_ref = std::exp(static_cast<double>(m - mf));
          const float c = f(row.data(), visible, cnt, &m, &l);
          const std::string at = std::string(t->name) + " spread " + std::to_string(spread) +
                                 " cnt " + std::to_string(cnt) + " block " + std::to_string(block);
          ASSERT_EQ(m, static_cast<float>(m_new)) << at;
          ASSERT_NEAR(c, c_ref, 1e-6 * c_ref + 1e-30) << at;
          double sum = 0.0;
          for (int j = 0; j < cnt; ++j) {
            const double w = j < visible ? std::exp(static_cast<double>(in[j] - mf)) : 0.0;
            sum += w;
            // below float's normal range expf is allowed to flush
            if (w < 1.2e-38) {
              ASSERT_LE(row[j], 1.2e-38) << at << " j " << j;
            } else {
              ASSERT_NEAR(row[j], w, 4e-7 * w) << at << " j " << j << " x " << in[j] - m_new;
            }
          }
          ld = ld * c_ref + sum;
          md = m_new;
          ASSERT_NEAR(l, ld, 1e-5 * ld) << at;  // float sums of up to 45 terms, 6 blocks
        }
      }
    std::vector<float> row = {0.5f, NAN, 1.0f, -2.0f, 0.0f, 0.25f, 3.0f, -1.0f, 2.0f};
    float m = -INFINITY, l = 0.0f;
    f(row.data(), 9, 9, &m, &l);
    EXPECT_EQ(m, 3.0f) << t->name;
    EXPECT_TRUE(std::isnan(row[1])) << t->name;
    EXPECT_FLOAT_EQ(row[6], 1.0f) << t->name;
    EXPECT_TRUE(std::isnan(l)) << t->name;
  }
}

}  // namespace
}  // namespace tq::quant
