// AVX2 kernels for matmul (compiled with -mavx2 -mfma -mf16c; chosen at run time). The integer
// paths follow llama.cpp's ggml_vec_dot_q4_1_q8_1 & co: unpack a weight block to 32 bytes,
// _mm256_maddubs_epi16 against the int8 activations, widen, scale, accumulate. Each weight
// block is unpacked once per tile of up to kTokTile tokens.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "tq/backend/cpu/avx2_math.h"
#include "tq/backend/cpu/matmul_kernels.h"
#include "tq/quant/weight_dequant.h"

namespace tq::backend::cpu {
namespace {

using quant::BlockQ8A;
using quant::kQK;

constexpr int kTokTile = 4;

inline int hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

inline float f16(uint16_t h) { return _cvtsh_ss(h); }

// 16 bytes of nibbles -> 32 bytes: low nibbles (elements 0..15), then high (16..31).
inline __m256i unpack_nibbles(const uint8_t* qs) {
  const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m256i b = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
  return _mm256_and_si256(b, _mm256_set1_epi8(0x0F));
}

// Bit j of the little-endian u32 at qh -> byte j = 0x10 if set (llama.cpp's bytes_from_bits_32).
inline __m256i unpack_high_bits(const uint8_t* qh) {
  uint32_t x;
  std::memcpy(&x, qh, 4);
  const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101,
                                         0x0000000000000000);
  __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(x)), shuf);
  bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
  const __m256i set = _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
  return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

// sum over 32 lanes of u[i] * s[i] as 8 float partial sums (|u*s| pairs fit in int16).
inline __m256 dot_u8_s8(__m256i u, __m256i s) {
  const __m256i p16 = _mm256_maddubs_epi16(u, s);
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

// x = d * q + m with q unsigned (0..15 or 0..31): q4_0, q4_1, q5_0, q5_1.
template <typename Block, bool kHasMin, bool kFiveBit>
struct AffineWeights {
  using BlockT = Block;
  static __m256i levels(const Block& b) {
    __m256i q = unpack_nibbles(b.qs);
    if constexpr (kFiveBit) q = _mm256_or_si256(q, unpack_high_bits(b.qh));
    return q;
  }
  static float min(const Block& b, float d) {
    if constexpr (kHasMin) {
      (void)d;
      return f16(b.m);
    } else {
      return -(kFiveBit ? 16.0f : 8.0f) * d;
    }
  }
};

// One weight row against kT activation rows: out[t] = sum_b d_w d_a sum(q qa) + m_w s_a.
// Two block accumulators per token break the FMA latency chain when kT is small.
template <typename W, int kT>
void row_affine(const typename W::BlockT* w, const BlockQ8A* const* a, int64_t n_blocks,
                float* out) {
  __m256 acc[2][kT];
  float macc[2][kT];
  for (int t = 0; t < kT; ++t) {
    acc[0][t] = acc[1][t] = _mm256_setzero_ps();
    macc[0][t] = macc[1][t] = 0.0f;
  }
  auto step = [&](int64_t b, int u) {
    const __m256i q = W::levels(w[b]);
    const float d = f16(w[b].d);
    const float m = W::min(w[b], d);
    for (int t = 0; t < kT; ++t) {
      const BlockQ8A& ab = a[t][b];
      const __m256i qa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ab.qs));
      acc[u][t] = _mm256_fmadd_ps(_mm256_set1_ps(d * ab.d), dot_u8_s8(q, qa), acc[u][t]);
      macc[u][t] += m * ab.s;
    }
  };
  int64_t b = 0;
  for (; b + 2 <= n_blocks; b += 2) {
    step(b, 0);
    step(b + 1, 1);
  }
  if (b < n_blocks) step(b, 0);
  for (int t = 0; t < kT; ++t)
    out[t] = hsum(_mm256_add_ps(acc[0][t], acc[1][t])) + (macc[0][t] + macc[1][t]);
}

// q8_0: signed weights, so llama.cpp's sign trick: |w| * (a with w's sign).
template <int kT>
void row_q8_0(const quant::BlockQ8_0* w, const BlockQ8A* const* a, int64_t n_blocks, float* out) {
  __m256 acc[2][kT];
  for (int t = 0; t < kT; ++t) acc[0][t] = acc[1][t] = _mm256_setzero_ps();
  auto step = [&](int64_t b, int u) {
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[b].qs));
    const __m256i aq = _mm256_sign_epi8(q, q);
    const float d = f16(w[b].d);
    for (int t = 0; t < kT; ++t) {
      const BlockQ8A& ab = a[t][b];
      const __m256i qa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ab.qs));
      acc[u][t] = _mm256_fmadd_ps(_mm256_set1_ps(d * ab.d), dot_u8_s8(aq, _mm256_sign_epi8(qa, q)),
                                  acc[u][t]);
    }
  };
  int64_t b = 0;
  for (; b + 2 <= n_blocks; b += 2) {
    step(b, 0);
    step(b + 1, 1);
  }
  if (b < n_blocks) step(b, 0);
  for (int t = 0; t < kT; ++t) out[t] = hsum(_mm256_add_ps(acc[0][t], acc[1][t]));
}

template <typename Block>
using RowFn = void (*)(const Block*, const BlockQ8A* const*, int64_t, float*);

// Rows outer, token tiles inner: a weight row stays in L1 while every token tile uses it.
template <typename Block, RowFn<Block> k1, RowFn<Block> k2, RowFn<Block> k3, RowFn<Block> k4>
void tile_int(const TileJob& job) {
  const int64_t n_blocks = job.cols / kQK;
  const auto* act = static_cast<const uint8_t*>(job.act);
  for (int64_t r = job.row_begin; r < job.row_end; ++r) {
    const Block* w = reinterpret_cast<const Block*>(job.w + r * job.row_bytes);
    prefetch_weights_ahead(job, r);
    for (int t0 = 0; t0 < job.n_tokens; t0 += kTokTile) {
      const int nt = std::min(kTokTile, job.n_tokens - t0);
      const BlockQ8A* a[kTokTile];
      for (int t = 0; t < nt; ++t)
        a[t] = reinterpret_cast<const BlockQ8A*>(act + (t0 + t) * job.act_stride);
      float out[kTokTile];
      switch (nt) {
        case 1:
          k1(w, a, n_blocks, out);
          break;
        case 2:
          k2(w, a, n_blocks, out);
          break;
        case 3:
          k3(w, a, n_blocks, out);
          break;
        default:
          k4(w, a, n_blocks, out);
          break;
      }
      for (int t = 0; t < nt; ++t) job.y[(t0 + t) * job.y_stride + r] = out[t];
    }
  }
}

template <typename W>
void tile_affine(const TileJob& job) {
  using B = typename W::BlockT;
  tile_int<B, row_affine<W, 1>, row_affine<W, 2>, row_affine<W, 3>, row_affine<W, 4>>(job);
}

void tile_q8_0(const TileJob& job) {
  tile_int<quant::BlockQ8_0, row_q8_0<1>, row_q8_0<2>, row_q8_0<3>, row_q8_0<4>>(job);
}

// Float weights: kR rows x kT tokens of accumulators share each load.
template <int kR, int kT>
void block_f32(const float* const* w, const float* const* x, int64_t n, float* out) {
  __m256 acc[kR][kT];
  for (int r = 0; r < kR; ++r)
    for (int t = 0; t < kT; ++t) acc[r][t] = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    __m256 xv[kT];
    for (int t = 0; t < kT; ++t) xv[t] = _mm256_loadu_ps(x[t] + c);
    for (int r = 0; r < kR; ++r) {
      const __m256 wv = _mm256_loadu_ps(w[r] + c);
      for (int t = 0; t < kT; ++t) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
    }
  }
  for (int r = 0; r < kR; ++r) {
    for (int t = 0; t < kT; ++t) {
      float s = hsum(acc[r][t]);
      for (int64_t i = c; i < n; ++i) s += w[r][i] * x[t][i];
      out[r * kT + t] = s;
    }
  }
}

constexpr int kRowTileF32 = 4;
constexpr int kTokTileF32 = 2;

template <int kR>
void rows_f32(const float* const* w, const TileJob& job, int64_t r) {
  const auto* act = static_cast<const uint8_t*>(job.act);
  for (int t0 = 0; t0 < job.n_tokens; t0 += kTokTileF32) {
    const int nt = std::min(kTokTileF32, job.n_tokens - t0);
    const float* x[kTokTileF32];
    for (int t = 0; t < nt; ++t)
      x[t] = reinterpret_cast<const float*>(act + (t0 + t) * job.act_stride);
    float out[kR * kTokTileF32];
    if (nt == 2) {
      block_f32<kR, 2>(w, x, job.cols, out);
    } else {
      block_f32<kR, 1>(w, x, job.cols, out);
    }
    for (int i = 0; i < kR; ++i)
      for (int t = 0; t < nt; ++t) job.y[(t0 + t) * job.y_stride + r + i] = out[i * nt + t];
  }
}

void tile_f32(const TileJob& job) {
  for (int64_t r = job.row_begin; r < job.row_end; r += kRowTileF32) {
    const int nr = static_cast<int>(std::min<int64_t>(kRowTileF32, job.row_end - r));
    prefetch_weights_ahead(job, r, nr);
    const float* w[kRowTileF32];
    for (int i = 0; i < nr; ++i)
      w[i] = reinterpret_cast<const float*>(job.w + (r + i) * job.row_bytes);
    switch (nr) {
      case 1:
        rows_f32<1>(w, job, r);
        break;
      case 2:
        rows_f32<2>(w, job, r);
        break;
      case 3:
        rows_f32<3>(w, job, r);
        break;
      default:
        rows_f32<4>(w, job, r);
        break;
    }
  }
}

// Same arithmetic as quantize_row_q8a_ref: id = 127 / amax, round to nearest even.
void quantize_q8a(const float* x, BlockQ8A* dst, int64_t n) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t i = 0; i < n / kQK; ++i, x += kQK) {
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    for (int k = 0; k < 4; ++k) {
      v[k] = _mm256_loadu_ps(x + 8 * k);
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[k]));
    }
    const float am = hmax(amax);
    const float d = am / 127.0f;
    const __m256 id = _mm256_set1_ps(am != 0.0f ? 127.0f / am : 0.0f);
    __m256i q[4];
    for (int k = 0; k < 4; ++k)
      q[k] = _mm256_cvtps_epi32(
          _mm256_round_ps(_mm256_mul_ps(v[k], id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const int sum =
        hsum_i32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
    // packs interleave 128-bit lanes; the permute restores element order.
    const __m256i p16a = _mm256_packs_epi32(q[0], q[1]);
    const __m256i p16b = _mm256_packs_epi32(q[2], q[3]);
    const __m256i p8 = _mm256_packs_epi16(p16a, p16b);
    const __m256i ordered =
        _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst[i].qs), ordered);
    dst[i].d = d;
    dst[i].s = d * static_cast<float>(sum);
  }
}

void dequantize_avx2(quant::GgmlType type, const uint8_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  if (type == quant::GgmlType::kF16) {
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(
          dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i))));
  } else if (type == quant::GgmlType::kBF16) {
    for (; i + 8 <= n; i += 8) {
      const __m256i h =
          _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i)));
      _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(h, 16)));
    }
  } else {
    (void)quant::dequantize_row_ref(type, src, dst, n);
    return;
  }
  if (i < n) (void)quant::dequantize_row_ref(type, src + 2 * i, dst + i, n - i);
}

constexpr MatmulKernels kAvx2 = {
    "avx2",
    quantize_q8a,
    tile_affine<AffineWeights<quant::BlockQ4_0, false, false>>,
    tile_affine<AffineWeights<quant::BlockQ4_1, true, false>>,
    tile_affine<AffineWeights<quant::BlockQ5_0, false, true>>,
    tile_affine<AffineWeights<quant::BlockQ5_1, true, true>>,
    tile_q8_0,
    tile_f32,
    dequantize_avx2,
};

}  // namespace

const MatmulKernels& matmul_kernels_avx2_table() { return kAvx2; }

}  // namespace tq::backend::cpu
