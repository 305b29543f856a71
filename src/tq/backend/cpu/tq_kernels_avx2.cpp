// AVX2/FMA/F16C versions of the fused KV kernels (reference: src/tq/quant/kernels_ref.cpp).
//
// One template per primitive, parameterised by a row Loader that turns 8 consecutive stored
// elements into a __m256 (codes: shift + mask the b-bit indices out of b bytes, then an
// in-register codebook lookup: vpermps for b <= 3, two vpermps + blend for b = 4, four for
// b = 5, a gather for b >= 6; f16: vcvtph2ps; q8_0/q4_0: widen, subtract, scale).
// GQA: each loaded group of 8 elements is used for up to 4 query heads held in registers.
#include "tq/backend/cpu/tq_kernels_avx2.h"

#include "tq/backend/cpu/avx2_math.h"

#include "tq/quant/bitpack.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace tq::backend::cpu {
namespace {

using quant::PlaneAccumulateArgs;
using quant::PlaneScoreArgs;

template <int kBits>
struct CodesLoader {
  __m256 t0, t1, t2, t3;  // table entries [0,8), [8,16), [16,24), [24,32) (as many as used)
  const float* table;

  explicit CodesLoader(const float* tbl) : table(tbl) {
    float pad[32] = {};
    std::memcpy(pad, tbl, sizeof(float) * std::min(32, 1 << kBits));
    t0 = _mm256_loadu_ps(pad);
    t1 = _mm256_loadu_ps(pad + 8);
    t2 = _mm256_loadu_ps(pad + 16);
    t3 = _mm256_loadu_ps(pad + 24);
  }

  // Indices of elements 8g .. 8g+7: they fill exactly kBits bytes of the row.
  static __m256i indices(const uint8_t* row, int g) {
    const uint64_t word = quant::load_le<kBits>(row + static_cast<size_t>(kBits) * g);
    const __m256i mask = _mm256_set1_epi32((1 << kBits) - 1);
    if constexpr (kBits <= 4) {
      const __m256i shifts = _mm256_setr_epi32(0, kBits, 2 * kBits, 3 * kBits, 4 * kBits, 5 * kBits,
                                               6 * kBits, 7 * kBits);
      return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(word)), shifts),
                              mask);
    } else {  // 8*kBits > 32: lanes 0-3 from the low half-group, lanes 4-7 from the high one
      const int lo = static_cast<int>(word & 0xffffffffu);
      const int hi = static_cast<int>(word >> (4 * kBits));
      const __m256i v = _mm256_setr_epi32(lo, lo, lo, lo, hi, hi, hi, hi);
      const __m256i shifts =
          _mm256_setr_epi32(0, kBits, 2 * kBits, 3 * kBits, 0, kBits, 2 * kBits, 3 * kBits);
      return _mm256_and_si256(_mm256_srlv_epi32(v, shifts), mask);
    }
  }

  __m256 load(const uint8_t* row, int g) const {
    const __m256i idx = indices(row, g);
    if constexpr (kBits <= 3) {
      return _mm256_permutevar8x32_ps(t0, idx);
    } else if constexpr (kBits == 4) {
      const __m256 lo = _mm256_permutevar8x32_ps(t0, idx);
      const __m256 hi = _mm256_permutevar8x32_ps(t1, idx);
      return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
    } else if constexpr (kBits == 5) {
      const __m256 bit3 = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
      const __m256 a = _mm256_blendv_ps(_mm256_permutevar8x32_ps(t0, idx),
                                        _mm256_permutevar8x32_ps(t1, idx), bit3);
      const __m256 b = _mm256_blendv_ps(_mm256_permutevar8x32_ps(t2, idx),
                                        _mm256_permutevar8x32_ps(t3, idx), bit3);
      return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 27)));
    } else {
      return _mm256_i32gather_ps(table, idx, 4);
    }
  }
};

struct F16Loader {
  explicit F16Loader(const float*) {}
  static __m256 load(const uint8_t* row, int g) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16 * g)));
  }
};

inline float f16_scale(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

struct Q8_0Loader {  // block of 34 bytes = 4 groups
  explicit Q8_0Loader(const float*) {}
  static __m256 load(const uint8_t* row, int g) {
    const uint8_t* blk = row + 34 * (g / 4);
    const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 2 + 8 * (g % 4)));
    const __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
    return _mm256_mul_ps(v, _mm256_set1_ps(f16_scale(blk)));
  }
};

struct Q4_0Loader {  // block of 18 bytes = 4 groups: low nibbles are elements 0-15, high 16-31
  explicit Q4_0Loader(const float*) {}
  static __m256 load(const uint8_t* row, int g) {
    const uint8_t* blk = row + 18 * (g / 4);
    const int sub = g % 4;
    __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 2 + 8 * (sub & 1)));
    if (sub >= 2) q = _mm_srli_epi16(q, 4);
    q = _mm_and_si128(q, _mm_set1_epi8(0x0f));
    const __m256i v = _mm256_sub_epi32(_mm256_cvtepu8_epi32(q), _mm256_set1_epi32(8));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(f16_scale(blk)));
  }
};

// {sum(a), sum(b), sum(c), sum(d)}
inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

// Scores of rows [i, i+kRows) for kG heads starting at h0.
template <typename Loader, int kG, int kRows>
inline void score_rows(const Loader& ld, const PlaneScoreArgs& a, int h0, int i) {
  __m256 acc[kRows][4];
  for (int r = 0; r < kRows; ++r)
    for (int h = 0; h < 4; ++h) acc[r][h] = _mm256_setzero_ps();
  const uint8_t* row0 = a.plane + static_cast<size_t>(i) * a.row_bytes;
  for (int g = 0; g < a.dim / 8; ++g) {
    __m256 v[kRows];
    for (int r = 0; r < kRows; ++r) v[r] = ld.load(row0 + r * a.row_bytes, g);
    for (int h = 0; h < kG; ++h) {
      const __m256 q = _mm256_loadu_ps(a.q + static_cast<size_t>(h0 + h) * a.q_stride + 8 * g);
      for (int r = 0; r < kRows; ++r) acc[r][h] = _mm256_fmadd_ps(q, v[r], acc[r][h]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    float sums[4];
    _mm_storeu_ps(sums, hsum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));
    const float s = a.scale ? a.scale[i + r] : 1.0f;
    for (int h = 0; h < kG; ++h) {
      float& o = a.out[static_cast<size_t>(h0 + h) * a.out_stride + i + r];
      o = (a.add ? o : 0.0f) + s * sums[h];
    }
  }
}

template <typename Loader, int kG>
void score_group(const Loader& ld, const PlaneScoreArgs& a, int h0) {
  int i = 0;
  for (; i + 2 <= a.n; i += 2) score_rows<Loader, kG, 2>(ld, a, h0, i);
  if (i < a.n) score_rows<Loader, kG, 1>(ld, a, h0, i);
}

template <typename Loader>
void score_avx2(const PlaneScoreArgs& a) {
  const Loader ld(a.table);
  for (int h0 = 0; h0 < a.nq; h0 += 4) {
    switch (std::min(4, a.nq - h0)) {
      case 1:
        score_group<Loader, 1>(ld, a, h0);
        break;
      case 2:
        score_group<Loader, 2>(ld, a, h0);
        break;
      case 3:
        score_group<Loader, 3>(ld, a, h0);
        break;
      default:
        score_group<Loader, 4>(ld, a, h0);
        break;
    }
  }
}

// acc[h][8g .. 8g + 8*kGroups) += sum_i w[h][i] row_i, for kG heads starting at h0: the
// accumulators stay in registers across all rows.
template <typename Loader, int kG, int kGroups>
inline void accumulate_groups(const Loader& ld, const PlaneAccumulateArgs& a, int h0, int g0) {
  __m256 acc[kG][kGroups];
  for (int h = 0; h < kG; ++h)
    for (int k = 0; k < kGroups; ++k)
      acc[h][k] =
          _mm256_loadu_ps(a.acc + static_cast<size_t>(h0 + h) * a.acc_stride + 8 * (g0 + k));
  for (int i = 0; i < a.n; ++i) {
    const uint8_t* row = a.plane + static_cast<size_t>(i) * a.row_bytes;
    __m256 v[kGroups];
    for (int k = 0; k < kGroups; ++k) v[k] = ld.load(row, g0 + k);
    for (int h = 0; h < kG; ++h) {
      const __m256 w = _mm256_broadcast_ss(a.w + static_cast<size_t>(h0 + h) * a.w_stride + i);
      for (int k = 0; k < kGroups; ++k) acc[h][k] = _mm256_fmadd_ps(w, v[k], acc[h][k]);
    }
  }
  for (int h = 0; h < kG; ++h)
    for (int k = 0; k < kGroups; ++k)
      _mm256_storeu_ps(a.acc + static_cast<size_t>(h0 + h) * a.acc_stride + 8 * (g0 + k),
                       acc[h][k]);
}

template <typename Loader, int kG>
void accumulate_group(const Loader& ld, const PlaneAccumulateArgs& a, int h0) {
  // Enough independent FMA chains to cover the FMA latency: 8 for 1-2 heads, 4 groups else.
  constexpr int kGroups = kG <= 2 ? 4 : 2;
  const int groups = a.dim / 8;
  int g = 0;
  for (; g + kGroups <= groups; g += kGroups) accumulate_groups<Loader, kG, kGroups>(ld, a, h0, g);
  for (; g < groups; ++g) accumulate_groups<Loader, kG, 1>(ld, a, h0, g);
}

template <typename Loader>
void accumulate_avx2(const PlaneAccumulateArgs& a) {
  const Loader ld(a.table);
  for (int h0 = 0; h0 < a.nq; h0 += 4) {
    switch (std::min(4, a.nq - h0)) {
      case 1:
        accumulate_group<Loader, 1>(ld, a, h0);
        break;
      case 2:
        accumulate_group<Loader, 2>(ld, a, h0);
        break;
      case 3:
        accumulate_group<Loader, 3>(ld, a, h0);
        break;
      default:
        accumulate_group<Loader, 4>(ld, a, h0);
        break;
    }
  }
}

// A norm plane's f16 values as floats, 8 at a time (F16C).
void f16_to_f32_avx2(const uint8_t* src, float* dst, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(
        dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i))));
  for (; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    dst[i] = _cvtsh_ss(h);
  }
}

float online_softmax_avx2(float* row, int visible, int cnt, float* m, float* l) {
  // max(x, acc) keeps acc where x is NaN, as std::max(acc, x) does in the reference.
  __m256 vmx = _mm256_set1_ps(-INFINITY);
  int j = 0;
  for (; j + 8 <= visible; j += 8) vmx = _mm256_max_ps(_mm256_loadu_ps(row + j), vmx);
  float mx = hmax(vmx);
  for (; j < visible; ++j) mx = std::max(mx, row[j]);
  const float m_new = std::max(*m, mx);
  // 0 on the first block (m = -inf); exactly 1, without the call, while the maximum holds
  const float c = m_new == *m ? 1.0f : std::exp(*m - m_new);
  const __m256 vm = _mm256_set1_ps(m_new);
  __m256 vsum = _mm256_setzero_ps();
  for (j = 0; j + 8 <= visible; j += 8) {
    const __m256 w = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(row + j), vm));
    _mm256_storeu_ps(row + j, w);
    vsum = _mm256_add_ps(vsum, w);
  }
  float sum = hsum(vsum);
  for (; j < visible; ++j) {
    const float w = std::exp(row[j] - m_new);
    row[j] = w;
    sum += w;
  }
  for (; j < cnt; ++j) row[j] = 0.0f;
  *l = *l * c + sum;
  *m = m_new;
  return c;
}

quant::KernelTable make_avx2_table() {
  quant::KernelTable t;
  t.name = "avx2";
  t.f16_to_f32 = f16_to_f32_avx2;
  t.online_softmax = online_softmax_avx2;
  t.score_codes[1] = score_avx2<CodesLoader<1>>;
  t.score_codes[2] = score_avx2<CodesLoader<2>>;
  t.score_codes[3] = score_avx2<CodesLoader<3>>;
  t.score_codes[4] = score_avx2<CodesLoader<4>>;
  t.score_codes[5] = score_avx2<CodesLoader<5>>;
  t.score_codes[6] = score_avx2<CodesLoader<6>>;
  t.score_codes[7] = score_avx2<CodesLoader<7>>;
  t.score_codes[8] = score_avx2<CodesLoader<8>>;
  t.accumulate_codes[1] = accumulate_avx2<CodesLoader<1>>;
  t.accumulate_codes[2] = accumulate_avx2<CodesLoader<2>>;
  t.accumulate_codes[3] = accumulate_avx2<CodesLoader<3>>;
  t.accumulate_codes[4] = accumulate_avx2<CodesLoader<4>>;
  t.accumulate_codes[5] = accumulate_avx2<CodesLoader<5>>;
  t.accumulate_codes[6] = accumulate_avx2<CodesLoader<6>>;
  t.accumulate_codes[7] = accumulate_avx2<CodesLoader<7>>;
  t.accumulate_codes[8] = accumulate_avx2<CodesLoader<8>>;
  t.score_f16 = score_avx2<F16Loader>;
  t.accumulate_f16 = accumulate_avx2<F16Loader>;
  t.score_q8_0 = score_avx2<Q8_0Loader>;
  t.accumulate_q8_0 = accumulate_avx2<Q8_0Loader>;
  t.score_q4_0 = score_avx2<Q4_0Loader>;
  t.accumulate_q4_0 = accumulate_avx2<Q4_0Loader>;
  return t;
}

}  // namespace

const quant::KernelTable& avx2_kernel_table_unchecked() {
  static const quant::KernelTable kTable = make_avx2_table();
  return kTable;
}

}  // namespace tq::backend::cpu
