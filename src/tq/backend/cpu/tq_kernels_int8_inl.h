// Internal: the integer fused kernels for packed b-bit codes (b = 1..4), as templates over a
// `Dot` policy (acc += sum of 4 u8 x s8 products per int32 lane). One translation unit per ISA
// flavour includes this file after defining its policy and enabling its instruction set:
// tq_kernels_int8_avx2.cpp (vpmaddubsw + vpmaddwd), tq_kernels_vnni_avx2.cpp (AVX-VNNI
// vpdpbusd), tq_kernels_avx512vnni_avx2.cpp (AVX512-VNNI vpdpbusd on ymm). Everything here has
// internal linkage, so the differently compiled copies never meet at link time.
//
// Idea (reference: src/tq/quant/kernels_ref.cpp; docs/quant.md "CPU fused kernels"):
//   - 32 codes (4*b bytes) are unpacked with one shift/shuffle sequence into 32 index bytes,
//     in an order pi_b fixed per b (positions p -> coordinates, see Unpack below);
//   - one vpshufb maps them to u = C8[idx] + 128 (the codebook rounded to int8, shifted to
//     unsigned), so C[idx] ~ sc * (u - 128); b = 1 uses u = idx and C0 + (C1 - C0) u exactly;
//   - score: the query is rounded to int8 (per-head scale, permuted by pi_b) once per call, and
//     sum_j q_j C[idx_j] ~ sq sc (dot(u, q8) - 128 sum q8): one vpdpbusd per 32 coordinates
//     and head, instead of 4 FMAs plus a float lookup per 8;
//   - accumulate: the weights of 4 keys are rounded to int8 (per-head scale), the u bytes of 4
//     keys are transposed so that an int32 lane holds one coordinate of 4 keys, and
//     vpdpbusd adds sum_{4 keys} u * w8 per coordinate; int32 sums are converted and added to
//     the float accumulators once per chunk of 32 keys.
// Rounding q, w and C to 8 bits (7 for w and q on the vpmaddubsw path, whose int16 pair sums
// must not saturate) is the only approximation: the error bound is in kernels_test.cpp.
// Non-finite queries, weights or tables fall back to the float AVX2 kernels (NaN in, NaN out).
//
// Reads: a step reads up to 16 bytes from its first code byte; the last rows of the plane,
// whose reads could run past its end, are copied into a zero-padded buffer first.

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "tq/backend/cpu/tq_kernels_avx2.h"
#include "tq/quant/kernels.h"

namespace tq::backend::cpu {
namespace {

using quant::PlaneAccumulateArgs;
using quant::PlaneScoreArgs;

constexpr int kMaxDim = 1024;                     // quant::Format::validate's limit
constexpr int kMaxSteps = kMaxDim / 32;           // 32 coordinates per step
constexpr size_t kMaxRowBytes = kMaxDim * 4 / 8;  // b <= 4
constexpr int kGroup = 4;                         // query heads per register tile

// quantize_step's packs leave the 8 dwords (4 coordinates each) of a step in the order
// 0, 2, 4, 6, 1, 3, 5, 7; this restores 0..7.
inline __m256i natural(__m256i packed) {
  return _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// ---------------------------------------------------------------------------------------------
// Unpack<b>: indices(p) = the 32 index bytes of the step starting at p (4*b bytes of codes),
// position k of the vector holding the code of coordinate coord(k) of the step. Also
// permute_query(): the query's int8 step (natural order, as made by quantize_step) in that
// same order (the coordinates of the accumulate flush follow from it, see flush_pair).

template <int kBits>
struct Unpack;

template <>
struct Unpack<4> {  // byte j = codes 2j | 2j+1 << 4; position 16L + k -> coordinate 2k + L
  static constexpr int kLoad = 16;
  static __m256i indices(const uint8_t* p) {
    const __m256i x =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_and_si256(_mm256_srlv_epi64(x, _mm256_setr_epi64x(0, 0, 4, 4)),
                            _mm256_set1_epi8(0x0f));
  }
  static __m256i permute_query(__m256i q) {  // natural order, evens of each lane low, lanes
    q = natural(q);
    const __m256i s = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2,
                                       4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    return _mm256_permute4x64_epi64(_mm256_shuffle_epi8(q, s), 0xd8);
  }
};

template <>
struct Unpack<2> {  // byte j = codes 4j..4j+3; position 8m + k -> coordinate 4k + m
  static constexpr int kLoad = 8;
  static __m256i indices(const uint8_t* p) {
    int64_t w;
    std::memcpy(&w, p, 8);
    const __m256i x = _mm256_srlv_epi64(_mm256_set1_epi64x(w), _mm256_setr_epi64x(0, 2, 4, 6));
    return _mm256_and_si256(x, _mm256_set1_epi8(0x03));
  }
  static __m256i permute_query(__m256i q) {
    q = natural(q);
    const __m256i s = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15, 0, 4,
                                       8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(q, s),
                                       _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  }
};

// b = 1 and b = 3 use the order "position 16L + 4k + r -> coordinate 8k + 4L + r": the order in
// which quantize_step's packs leave a step (so the query needs no permutation), and one in
// which the accumulate transposition yields 8 consecutive coordinates per vector.
constexpr int coord_of_position(int p) { return 8 * ((p % 16) / 4) + 4 * (p / 16) + p % 4; }

template <>
struct Unpack<1> {  // bit i of byte j = code 8j + i; indices are 0/1 (no table lookup)
  static constexpr int kLoad = 4;
  static __m256i indices(const uint8_t* p) {
    int32_t w;
    std::memcpy(&w, p, 4);
    const __m256i rep = _mm256_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 0, 0, 0, 0,
                                         1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m256i bit =
        _mm256_setr_epi8(1, 2, 4, 8, 1, 2, 4, 8, 1, 2, 4, 8, 1, 2, 4, 8, 16, 32, 64, -128, 16, 32,
                         64, -128, 16, 32, 64, -128, 16, 32, 64, -128);
    const __m256i x = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(w), rep), bit);
    return _mm256_min_epu8(x, _mm256_set1_epi8(1));
  }
  static __m256i permute_query(__m256i q) { return q; }
};

// b = 3: output word w of lane L is the 16-bit window of the two bytes holding its code,
// shifted right by the code's bit offset with a vpmulhuw by 2^(16 - shift) (a per-word shift
// AVX2 lacks), masked to 3 bits and packed to bytes.
struct Unpack3Tables {
  std::array<int8_t, 64> window{};        // vpshufb control for the two word vectors
  std::array<uint16_t, 32> multiplier{};  // 2^(16 - shift) per word
};

constexpr Unpack3Tables make_unpack3_tables() {
  Unpack3Tables t;
  for (int v = 0; v < 2; ++v) {  // word vector: positions 8v.. of each lane after the pack
    for (int L = 0; L < 2; ++L) {
      for (int w = 0; w < 8; ++w) {
        const int c = coord_of_position(16 * L + 8 * v + w);
        const int bit = 3 * c, s = bit / 8, o = bit % 8;
        const int lo = o == 0 ? s - 1 : s, shift = o == 0 ? 8 : o;
        const int k = 32 * v + 16 * L + 2 * w;
        t.window[k] = static_cast<int8_t>(lo < 0 ? -128 : lo);
        t.window[k + 1] = static_cast<int8_t>(lo + 1 < 12 ? lo + 1 : -128);
        t.multiplier[16 * v + 8 * L + w] = static_cast<uint16_t>(1u << (16 - shift));
      }
    }
  }
  return t;
}
constexpr Unpack3Tables kUnpack3 = make_unpack3_tables();

template <>
struct Unpack<3> {
  static constexpr int kLoad = 16;
  static __m256i indices(const uint8_t* p) {
    const __m256i x =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const auto* win = reinterpret_cast<const __m256i*>(kUnpack3.window.data());
    const auto* mul = reinterpret_cast<const __m256i*>(kUnpack3.multiplier.data());
    const __m256i seven = _mm256_set1_epi16(7);
    const __m256i w0 =
        _mm256_and_si256(_mm256_mulhi_epu16(_mm256_shuffle_epi8(x, _mm256_loadu_si256(win)),
                                            _mm256_loadu_si256(mul)),
                         seven);
    const __m256i w1 =
        _mm256_and_si256(_mm256_mulhi_epu16(_mm256_shuffle_epi8(x, _mm256_loadu_si256(win + 1)),
                                            _mm256_loadu_si256(mul + 1)),
                         seven);
    return _mm256_packus_epi16(w0, w1);
  }
  static __m256i permute_query(__m256i q) { return q; }
};

// ---------------------------------------------------------------------------------------------
// Rounding floats to int8 with one scale per vector.

inline int32_t hmax_epi32(__m256i m) {
  __m128i h = _mm_max_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
  h = _mm_max_epi32(h, _mm_shuffle_epi32(h, 0x4e));
  h = _mm_max_epi32(h, _mm_shuffle_epi32(h, 0xb1));
  return _mm_cvtsi128_si32(h);
}

// max |x_j| over n floats as int bits (non-negative floats order like their bit patterns, and
// NaN/Inf compare above every finite value), so non-finite input is detected for free.
inline int32_t max_abs_bits(const float* x, int n) {
  const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
  __m256i m = _mm256_setzero_si256();
  int j = 0;
  for (; j + 8 <= n; j += 8)
    m = _mm256_max_epi32(
        m, _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + j)), abs_mask));
  int32_t r = hmax_epi32(m);
  for (; j < n; ++j) {
    int32_t b;
    std::memcpy(&b, x + j, 4);
    r = std::max(r, b & 0x7fffffff);
  }
  return r;
}

constexpr int32_t kInfBits = 0x7f800000;

inline float bits_to_float(int32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// Mask of the first n (0..8) float lanes.
inline __m256i lane_mask(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// round(x[j] * inv) for j < n (n <= 32; zero beyond) as 32 int8 in natural order, and their sum.
inline __m256i quantize_step(const float* x, int n, float inv, __m256i& sum) {
  const __m256 s = _mm256_set1_ps(inv);
  __m256i v[4];
  for (int k = 0; k < 4; ++k) {
    const int m = std::clamp(n - 8 * k, 0, 8);
    const __m256 f =
        m == 8 ? _mm256_loadu_ps(x + 8 * k)
               : (m > 0 ? _mm256_maskload_ps(x + 8 * k, lane_mask(m)) : _mm256_setzero_ps());
    v[k] = _mm256_cvtps_epi32(_mm256_mul_ps(f, s));
    sum = _mm256_add_epi32(sum, v[k]);
  }
  // packs leave dwords in the order 0, 2, 4, 6, 1, 3, 5, 7 (dword = 4 coordinates)
  const __m256i p =
      _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
  return p;
}

inline int hsum_epi32(__m256i v) {
  __m128i h = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
  h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1));
  return _mm_cvtsi128_si32(h);
}

// The codebook as bytes u = C8 + 128 (b >= 2) in both lanes of a vpshufb table, and the affine
// map back: C[idx] ~ base + step * u.
template <int kBits>
struct CodeLut {
  __m256i lut = _mm256_setzero_si256();
  float base = 0.0f, step = 0.0f;
  int offset = 0;  // -base / step when it is an integer (128 for b >= 2), applied exactly in int32

  bool init(const float* table) {
    if constexpr (kBits == 1) {
      base = table[0];
      step = table[1] - table[0];
      return std::isfinite(base) && std::isfinite(step);
    } else {
      constexpr int kCodes = 1 << kBits;
      const __m256 t0 = _mm256_maskload_ps(table, lane_mask(std::min(kCodes, 8)));
      const __m256 t1 = kCodes > 8 ? _mm256_loadu_ps(table + 8) : _mm256_setzero_ps();
      const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
      const int32_t mb =
          hmax_epi32(_mm256_max_epi32(_mm256_and_si256(_mm256_castps_si256(t0), abs_mask),
                                      _mm256_and_si256(_mm256_castps_si256(t1), abs_mask)));
      if (mb >= kInfBits) return false;
      const float cmax = bits_to_float(mb);
      step = cmax / 127.0f;
      const __m256 inv = _mm256_set1_ps(cmax > 0.0f ? 127.0f / cmax : 0.0f);
      const __m256i off = _mm256_set1_epi32(128);
      const __m256i i0 = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(t0, inv)), off);
      const __m256i i1 = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(t1, inv)), off);
      const __m256i w = _mm256_packs_epi32(i0, i1);  // words: codes 0-3, 8-11 | 4-7, 12-15
      const __m256i b = _mm256_packus_epi16(w, w);   // dwords: 0-3, 8-11, .. | 4-7, 12-15, ..
      lut = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 0, 4, 1, 5));
      base = -128.0f * step;
      offset = 128;
      return true;
    }
  }

  __m256i map(__m256i idx) const {
    if constexpr (kBits == 1) {
      return idx;
    } else {
      return _mm256_shuffle_epi8(lut, idx);
    }
  }
};

// Row pointers of a plane whose last rows are read through a zero-padded copy.
struct Rows {
  const uint8_t* plane;
  size_t row_bytes;
  int direct;  // rows [0, direct) are read in place
  alignas(32) uint8_t tail[kMaxRowBytes + 64];

  Rows(const uint8_t* p, size_t rb, int n, int dim, int bits, int load) : plane(p), row_bytes(rb) {
    // furthest byte a step of a row reads, past the row's own bytes
    const int steps = (dim + 31) / 32;
    const size_t reach = static_cast<size_t>((steps - 1) * 4 * bits + load);
    const size_t over = reach > rb ? reach - rb : 0;
    const int t = std::min(n, static_cast<int>((over + rb - 1) / rb));
    direct = n - t;
    const size_t copied = static_cast<size_t>(t) * rb;
    if (t > 0) std::memcpy(tail, p + static_cast<size_t>(direct) * rb, copied);
    std::memset(tail + copied, 0, 64);  // t * rb + 16 covers the furthest read
  }
  const uint8_t* row(int i) const {
    return i < direct ? plane + static_cast<size_t>(i) * row_bytes
                      : tail + static_cast<size_t>(i - direct) * row_bytes;
  }
};

// ---------------------------------------------------------------------------------------------
// Score. Rows are taken 4 at a time and transposed by dwords (4 coordinates each): lane j of
// t[k] holds dword 4L + k (L = the 128-bit half) of row j. Against the query dword 4L + k
// broadcast over the half, vpdpbusd keeps each row's partial sums in its own lane, so a row's
// dot is the sum of its two halves: no horizontal reductions, and one accumulator per head
// covers 4 rows.

struct QueryGroup {
  alignas(32) __m256i q[kGroup][kMaxSteps][4];  // [head][step][k]: dword k of each half, broadcast
  __m256i init[kGroup];  // the integer offset -k in the low half (each row's lanes add once)
  float a[kGroup], b[kGroup];
};

// One query rounded to int8 (permuted per b for the unpacked code order), kept so that the
// per-block score calls need not round it again (KernelTable::prepare_score_query).
struct PreparedQuery {
  int32_t finite;  // 0: the query has a NaN or Inf (the float kernel takes it)
  float sq;        // qmax / Dot::kMax: q ~ sq * q8
  int32_t qsum;    // sum of the int8 values
  int32_t pad;
  // followed by the steps' 32 int8 each
};
inline size_t prepared_query_bytes(int dim) {
  return sizeof(PreparedQuery) + 32 * static_cast<size_t>((dim + 31) / 32);
}
size_t score_query_bytes(int dim) { return dim > kMaxDim ? 0 : prepared_query_bytes(dim); }

template <int kBits, class Dot>
void prepare_score_query(const float* q, int dim, uint8_t* out) {
  PreparedQuery h{};
  const int32_t mb = max_abs_bits(q, dim);
  h.finite = mb < kInfBits;
  if (h.finite) {
    const float qmax = bits_to_float(mb);
    const float inv = qmax > 0.0f ? static_cast<float>(Dot::kMax) / qmax : 0.0f;
    h.sq = qmax / static_cast<float>(Dot::kMax);
    __m256i sum = _mm256_setzero_si256();
    for (int s = 0; s < (dim + 31) / 32; ++s) {
      const __m256i v =
          Unpack<kBits>::permute_query(quantize_step(q + 32 * s, dim - 32 * s, inv, sum));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + sizeof(PreparedQuery) + 32 * s), v);
    }
    h.qsum = hsum_epi32(sum);
  }
  std::memcpy(out, &h, sizeof(h));
}

// Head h of the group from its prepared form; false if it is not finite.
template <int kBits>
bool load_query(const uint8_t* prep, int dim, const CodeLut<kBits>& lut, QueryGroup& qg, int h) {
  PreparedQuery p;
  std::memcpy(&p, prep, sizeof(p));
  if (!p.finite) return false;
  for (int s = 0; s < (dim + 31) / 32; ++s) {
    const __m256i v =
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(prep + sizeof(PreparedQuery) + 32 * s));
    qg.q[h][s][0] = _mm256_shuffle_epi32(v, 0x00);
    qg.q[h][s][1] = _mm256_shuffle_epi32(v, 0x55);
    qg.q[h][s][2] = _mm256_shuffle_epi32(v, 0xaa);
    qg.q[h][s][3] = _mm256_shuffle_epi32(v, 0xff);
  }
  // sum_j q8_j (base + step u_j) = a + b (dot - k), a = 0 for b >= 2 (base = -128 step)
  const int k = lut.offset * p.qsum;
  qg.init[h] = _mm256_setr_epi32(-k, -k, -k, -k, 0, 0, 0, 0);
  qg.a[h] =
      p.sq * static_cast<float>(p.qsum) * (lut.base + lut.step * static_cast<float>(lut.offset));
  qg.b[h] = p.sq * lut.step;
  return true;
}

// The group's queries as int8 (permuted per b), from a.q_prep when the caller prepared them;
// false if one is not finite.
template <int kBits, class Dot>
bool prepare_queries(const PlaneScoreArgs& a, int h0, int g, const CodeLut<kBits>& lut,
                     QueryGroup& qg) {
  alignas(32) uint8_t own[sizeof(PreparedQuery) + 32 * kMaxSteps];
  for (int h = 0; h < g; ++h) {
    const uint8_t* prep = own;
    if (a.q_prep) {
      prep = a.q_prep + static_cast<size_t>(h0 + h) * a.q_prep_stride;
    } else {
      prepare_score_query<kBits, Dot>(a.q + static_cast<size_t>(h0 + h) * a.q_stride, a.dim, own);
    }
    if (!load_query<kBits>(prep, a.dim, lut, qg, h)) return false;
  }
  return true;
}

// Dwords transposed within each half: t[k] lane j = dword k (low half) / 4 + k (high half) of u[j].
inline void transpose_dwords(const __m256i* u, __m256i* t) {
  const __m256i t0 = _mm256_unpacklo_epi32(u[0], u[1]), t1 = _mm256_unpackhi_epi32(u[0], u[1]);
  const __m256i t2 = _mm256_unpacklo_epi32(u[2], u[3]), t3 = _mm256_unpackhi_epi32(u[2], u[3]);
  t[0] = _mm256_unpacklo_epi64(t0, t2);
  t[1] = _mm256_unpackhi_epi64(t0, t2);
  t[2] = _mm256_unpacklo_epi64(t1, t3);
  t[3] = _mm256_unpackhi_epi64(t1, t3);
}

// sums[h] = the int32 dots (offset included) of rows i..i+7 (clamped to n - 1) with head h.
template <int kBits, class Dot, int kG>
inline void score_rows8(const Rows& rows, int i, int n, int steps, const CodeLut<kBits>& lut,
                        const QueryGroup& qg, __m256i* sums) {
  __m256i acc[2][kG];
  const uint8_t* p[8];
  for (int r = 0; r < 8; ++r) p[r] = rows.row(std::min(i + r, n - 1));
  for (int h = 0; h < kG; ++h) acc[0][h] = acc[1][h] = qg.init[h];
  for (int s = 0; s < steps; ++s) {
    for (int g = 0; g < 2; ++g) {
      __m256i u[4], t[4];
      for (int r = 0; r < 4; ++r)
        u[r] = lut.map(Unpack<kBits>::indices(p[4 * g + r] + 4 * kBits * s));
      transpose_dwords(u, t);
      for (int h = 0; h < kG; ++h)
        for (int k = 0; k < 4; ++k) acc[g][h] = Dot::dot(acc[g][h], t[k], qg.q[h][s][k]);
    }
  }
  for (int h = 0; h < kG; ++h)  // [rows 0-3 low + high | rows 4-7 low + high]
    sums[h] = _mm256_add_epi32(_mm256_permute2x128_si256(acc[0][h], acc[1][h], 0x20),
                               _mm256_permute2x128_si256(acc[0][h], acc[1][h], 0x31));
}

template <int kBits, class Dot, int kG>
void score_group(const PlaneScoreArgs& a, const Rows& rows, int h0, const CodeLut<kBits>& lut,
                 const QueryGroup& qg) {
  const int steps = (a.dim + 31) / 32;
  for (int i = 0; i < a.n; i += 8) {
    __m256i sums[kG];
    score_rows8<kBits, Dot, kG>(rows, i, a.n, steps, lut, qg, sums);
    const int cnt = std::min(8, a.n - i);
    const __m256i mask = lane_mask(cnt);
    for (int h = 0; h < kG; ++h) {
      float* out = a.out + static_cast<size_t>(h0 + h) * a.out_stride + i;
      __m256 res = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[h]), _mm256_set1_ps(qg.b[h]),
                                   _mm256_set1_ps(qg.a[h]));
      if (cnt == 8) {
        if (a.scale) res = _mm256_mul_ps(res, _mm256_loadu_ps(a.scale + i));
        if (a.add) res = _mm256_add_ps(res, _mm256_loadu_ps(out));
        _mm256_storeu_ps(out, res);
      } else {
        if (a.scale) res = _mm256_mul_ps(res, _mm256_maskload_ps(a.scale + i, mask));
        if (a.add) res = _mm256_add_ps(res, _mm256_maskload_ps(out, mask));
        _mm256_maskstore_ps(out, mask, res);
      }
    }
  }
}

template <int kBits, class Dot>
void score_codes(const PlaneScoreArgs& a) {
  const quant::KernelTable& fallback = avx2_kernel_table_unchecked();
  CodeLut<kBits> lut;
  if (a.n <= 0) return;
  if (a.dim > kMaxDim || a.row_bytes > kMaxRowBytes || !lut.init(a.table))
    return fallback.score_codes[kBits](a);
  const Rows rows(a.plane, a.row_bytes, a.n, a.dim, kBits, Unpack<kBits>::kLoad);
  QueryGroup qg;
  for (int h0 = 0; h0 < a.nq; h0 += kGroup) {
    const int g = std::min(kGroup, a.nq - h0);
    if (!prepare_queries<kBits, Dot>(a, h0, g, lut, qg)) {
      PlaneScoreArgs sub = a;
      sub.q = a.q + static_cast<size_t>(h0) * a.q_stride;
      sub.nq = g;
      sub.out = a.out + static_cast<size_t>(h0) * a.out_stride;
      fallback.score_codes[kBits](sub);
      continue;
    }
    switch (g) {
      case 1:
        score_group<kBits, Dot, 1>(a, rows, h0, lut, qg);
        break;
      case 2:
        score_group<kBits, Dot, 2>(a, rows, h0, lut, qg);
        break;
      case 3:
        score_group<kBits, Dot, 3>(a, rows, h0, lut, qg);
        break;
      default:
        score_group<kBits, Dot, 4>(a, rows, h0, lut, qg);
        break;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Accumulate.

// The u bytes of 4 keys transposed: dword j of lane L of out[k] holds position 16L + 4k + j of
// keys 0..3 (one byte each), so out[k] covers positions 4k..4k+3 and 16+4k..16+4k+3.
inline void transpose4(const __m256i* u, __m256i* out) {
  const __m256i t0 = _mm256_unpacklo_epi8(u[0], u[1]), t1 = _mm256_unpackhi_epi8(u[0], u[1]);
  const __m256i t2 = _mm256_unpacklo_epi8(u[2], u[3]), t3 = _mm256_unpackhi_epi8(u[2], u[3]);
  out[0] = _mm256_unpacklo_epi16(t0, t2);
  out[1] = _mm256_unpackhi_epi16(t0, t2);
  out[2] = _mm256_unpacklo_epi16(t1, t3);
  out[3] = _mm256_unpackhi_epi16(t1, t3);
}

// acc += a + b * x for the int32 sums x0, x1 of transposed vectors k and k + 2 (k = 0, 1): two
// blocks of 8 consecutive coordinates of the step's 32 (`valid` of them real).
template <int kBits>
inline void flush_pair(__m256i x0, __m256i x1, int k, float a, float b, float* acc, int valid) {
  __m256 f0 = _mm256_cvtepi32_ps(x0), f1 = _mm256_cvtepi32_ps(x1);
  int c0, c1;
  if constexpr (kBits == 2) {  // f0 = coords 16k + {0,4,8,12 | 2,6,10,14}, f1 = the same + 1
    const __m256 lo = _mm256_unpacklo_ps(f0, f1), hi = _mm256_unpackhi_ps(f0, f1);
    f0 = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(lo), 0xd8));
    f1 = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(hi), 0xd8));
    c0 = 16 * k;
    c1 = 16 * k + 8;
  } else {
    if constexpr (kBits == 4) {  // coords 8k + {0,2,4,6 | 1,3,5,7}
      const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
      f0 = _mm256_permutevar8x32_ps(f0, perm);
      f1 = _mm256_permutevar8x32_ps(f1, perm);
    }
    c0 = 8 * k;
    c1 = 8 * k + 16;
  }
  const __m256 bv = _mm256_set1_ps(b);
  auto update = [&](float* dst, __m256 f) {
    __m256 v = _mm256_loadu_ps(dst);
    if constexpr (kBits == 1) v = _mm256_add_ps(v, _mm256_set1_ps(a));  // a = 0 for b >= 2
    _mm256_storeu_ps(dst, _mm256_fmadd_ps(f, bv, v));
  };
  if (c0 < valid) update(acc + c0, f0);
  if (c1 < valid) update(acc + c1, f1);
}

struct WeightGroup {
  alignas(32) int32_t w8[kGroup][8];  // 4 int8 weights (one quad of keys) per dword
  float a[kGroup], b[kGroup];
  int k[kGroup];
};

template <int kBits, class Dot>
bool prepare_weights(const PlaneAccumulateArgs& a, int h0, int g, int i0, int m,
                     const CodeLut<kBits>& lut, WeightGroup& wg) {
  for (int h = 0; h < g; ++h) {
    const float* w = a.w + static_cast<size_t>(h0 + h) * a.w_stride + i0;
    const int32_t mb = max_abs_bits(w, m);
    if (mb >= kInfBits) return false;
    const float wmax = bits_to_float(mb);
    const float inv = wmax > 0.0f ? static_cast<float>(Dot::kMax) / wmax : 0.0f;
    const float sw = wmax / static_cast<float>(Dot::kMax);
    __m256i sum = _mm256_setzero_si256();
    const __m256i v = quantize_step(w, m, inv, sum);
    _mm256_store_si256(reinterpret_cast<__m256i*>(wg.w8[h]), natural(v));
    const int wsum = hsum_epi32(sum);
    wg.a[h] =
        sw * static_cast<float>(wsum) * (lut.base + lut.step * static_cast<float>(lut.offset));
    wg.b[h] = sw * lut.step;
    wg.k[h] = lut.offset * wsum;
  }
  return true;
}

template <int kBits, class Dot, int kG>
void accumulate_step(const PlaneAccumulateArgs& a, int h0, int s, int quads, const __m256i* tr,
                     const WeightGroup& wg) {
  const int valid = a.dim - 32 * s;
  for (int k = 0; k < 2; ++k) {
    __m256i acc[kG][2];
    for (int h = 0; h < kG; ++h) acc[h][0] = acc[h][1] = _mm256_set1_epi32(-wg.k[h]);  // the offset
    for (int q = 0; q < quads; ++q) {
      const __m256i d0 = _mm256_load_si256(tr + 4 * q + k),
                    d1 = _mm256_load_si256(tr + 4 * q + k + 2);
      for (int h = 0; h < kG; ++h) {
        const __m256i w = _mm256_set1_epi32(wg.w8[h][q]);
        acc[h][0] = Dot::dot(acc[h][0], d0, w);
        acc[h][1] = Dot::dot(acc[h][1], d1, w);
      }
    }
    for (int h = 0; h < kG; ++h)
      flush_pair<kBits>(acc[h][0], acc[h][1], k, wg.a[h], wg.b[h],
                        a.acc + static_cast<size_t>(h0 + h) * a.acc_stride + 32 * s, valid);
  }
}

template <int kBits, class Dot>
void accumulate_codes(const PlaneAccumulateArgs& a) {
  const quant::KernelTable& fallback = avx2_kernel_table_unchecked();
  CodeLut<kBits> lut;
  if (a.n <= 0) return;
  if (a.dim > kMaxDim || a.row_bytes > kMaxRowBytes || !lut.init(a.table))
    return fallback.accumulate_codes[kBits](a);
  const Rows rows(a.plane, a.row_bytes, a.n, a.dim, kBits, Unpack<kBits>::kLoad);
  const int steps = (a.dim + 31) / 32;
  // Keys per chunk: 32 (8 quads), fewer for large dims so the transposed bytes stay <= 8 KiB.
  const int chunk = std::clamp(256 / steps, 4, 32) & ~3;
  alignas(32) __m256i tr[8 * 4 * 8];  // [step][quad][4]
  WeightGroup wg;
  for (int i0 = 0; i0 < a.n; i0 += chunk) {
    const int m = std::min(chunk, a.n - i0);
    const int quads = (m + 3) / 4;
    // Pass 1, shared by all heads: unpack, look up and transpose the u bytes of 4 keys.
    for (int q = 0; q < quads; ++q) {
      const uint8_t* p[4];
      for (int r = 0; r < 4; ++r)
        p[r] = rows.row(i0 + std::min(4 * q + r, m - 1));  // pads: weight 0
      for (int s = 0; s < steps; ++s) {
        __m256i u[4];
        for (int r = 0; r < 4; ++r) u[r] = lut.map(Unpack<kBits>::indices(p[r] + 4 * kBits * s));
        transpose4(u, tr + (s * quads + q) * 4);
      }
    }
    // Pass 2, per group of heads: int32 dot products over the keys, then the float update.
    for (int h0 = 0; h0 < a.nq; h0 += kGroup) {
      const int g = std::min(kGroup, a.nq - h0);
      if (!prepare_weights<kBits, Dot>(a, h0, g, i0, m, lut, wg)) {
        PlaneAccumulateArgs sub = a;
        sub.w = a.w + static_cast<size_t>(h0) * a.w_stride + i0;
        sub.nq = g;
        sub.plane = a.plane + static_cast<size_t>(i0) * a.row_bytes;
        sub.n = m;
        sub.acc = a.acc + static_cast<size_t>(h0) * a.acc_stride;
        fallback.accumulate_codes[kBits](sub);
        continue;
      }
      for (int s = 0; s < steps; ++s) {
        const __m256i* t = tr + s * quads * 4;
        switch (g) {
          case 1:
            accumulate_step<kBits, Dot, 1>(a, h0, s, quads, t, wg);
            break;
          case 2:
            accumulate_step<kBits, Dot, 2>(a, h0, s, quads, t, wg);
            break;
          case 3:
            accumulate_step<kBits, Dot, 3>(a, h0, s, quads, t, wg);
            break;
          default:
            accumulate_step<kBits, Dot, 4>(a, h0, s, quads, t, wg);
            break;
        }
      }
    }
  }
}

// Puts the integer b = 1..4 code kernels into t (assignments only: the table itself is built
// in tq_kernels.cpp, outside any TU compiled for a wider ISA).
template <class Dot>
void set_int8_code_kernels(quant::KernelTable& t) {
  t.score_codes[1] = score_codes<1, Dot>;
  t.score_codes[2] = score_codes<2, Dot>;
  t.score_codes[3] = score_codes<3, Dot>;
  t.score_codes[4] = score_codes<4, Dot>;
  t.accumulate_codes[1] = accumulate_codes<1, Dot>;
  t.accumulate_codes[2] = accumulate_codes<2, Dot>;
  t.accumulate_codes[3] = accumulate_codes<3, Dot>;
  t.accumulate_codes[4] = accumulate_codes<4, Dot>;
  t.score_query_bytes = score_query_bytes;
  t.prepare_score_query[1] = prepare_score_query<1, Dot>;
  t.prepare_score_query[2] = prepare_score_query<2, Dot>;
  t.prepare_score_query[3] = prepare_score_query<3, Dot>;
  t.prepare_score_query[4] = prepare_score_query<4, Dot>;
}

}  // namespace
}  // namespace tq::backend::cpu
