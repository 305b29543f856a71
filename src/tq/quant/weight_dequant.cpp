// Scalar dequantizers, one per ggml block layout, transcribed from ggml's dequantize_row_*.
#include "tq/quant/weight_dequant.h"

#include <cstring>
#include <string>

#include "tq/core/fp16.h"
#include "tq/quant/ggml_blocks.h"

namespace tq::quant {
namespace {

template <typename Block>
const Block* blocks_of(const uint8_t* src) {
  return reinterpret_cast<const Block*>(src);  // all block types are byte-aligned PODs
}

void dequant_f32(const uint8_t* src, float* y, int64_t n) { std::memcpy(y, src, n * 4); }

void dequant_f16(const uint8_t* src, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    y[i] = f16_to_f32(h);
  }
}

void dequant_bf16(const uint8_t* src, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    y[i] = bf16_to_f32(h);
  }
}

// The 32-element 4/5-bit types: q[j] = low nibble of qs[j % 16] (j < 16) or high nibble,
// plus bit j of qh for the 5-bit ones; x = d * q + m (m = -8d / -16d for the symmetric ones).
template <typename Block, bool kHasMin, bool kFiveBit>
void dequant_q4q5(const uint8_t* src, float* y, int64_t n) {
  const Block* b = blocks_of<Block>(src);
  for (int64_t i = 0; i < n / kQK; ++i, y += kQK) {
    const float d = f16_to_f32(b[i].d);
    uint32_t qh = 0;
    if constexpr (kFiveBit) std::memcpy(&qh, b[i].qh, 4);
    for (int j = 0; j < kQK / 2; ++j) {
      int q0 = b[i].qs[j] & 0x0F;
      int q1 = b[i].qs[j] >> 4;
      if constexpr (kFiveBit) {
        q0 |= static_cast<int>((qh >> j) & 1u) << 4;
        q1 |= static_cast<int>((qh >> (j + 16)) & 1u) << 4;
      }
      if constexpr (kHasMin) {
        const float m = f16_to_f32(b[i].m);
        y[j] = q0 * d + m;
        y[j + kQK / 2] = q1 * d + m;
      } else {
        const int offset = kFiveBit ? 16 : 8;
        y[j] = (q0 - offset) * d;
        y[j + kQK / 2] = (q1 - offset) * d;
      }
    }
  }
}

void dequant_q8_0(const uint8_t* src, float* y, int64_t n) {
  const BlockQ8_0* b = blocks_of<BlockQ8_0>(src);
  for (int64_t i = 0; i < n / kQK; ++i, y += kQK) {
    const float d = f16_to_f32(b[i].d);
    for (int j = 0; j < kQK; ++j) y[j] = b[i].qs[j] * d;
  }
}

// q4_K and q5_K: four 64-element groups; each holds two 32-element sub-blocks, the low and
// high nibbles of 32 bytes of qs, with their own 6-bit scale and min.
template <typename Block, bool kFiveBit>
void dequant_q4k_q5k(const uint8_t* src, float* y, int64_t n) {
  const Block* b = blocks_of<Block>(src);
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const float d = f16_to_f32(b[i].d);
    const float dmin = f16_to_f32(b[i].dmin);
    const uint8_t* q = b[i].qs;
    for (int g = 0; g < 4; ++g, q += 32) {
      uint8_t sc0, m0, sc1, m1;
      k_scale_min(2 * g, b[i].scales, &sc0, &m0);
      k_scale_min(2 * g + 1, b[i].scales, &sc1, &m1);
      const float d0 = d * sc0, mm0 = dmin * m0;
      const float d1 = d * sc1, mm1 = dmin * m1;
      for (int l = 0; l < 32; ++l) {
        int lo = q[l] & 0x0F, hi = q[l] >> 4;
        if constexpr (kFiveBit) {
          lo += (b[i].qh[l] >> (2 * g)) & 1 ? 16 : 0;
          hi += (b[i].qh[l] >> (2 * g + 1)) & 1 ? 16 : 0;
        }
        y[l] = d0 * lo - mm0;
        y[l + 32] = d1 * hi - mm1;
      }
      y += 64;
    }
  }
}

// q6_K: two 128-element halves; in each, element l + 32k takes 4 bits from ql and 2 from qh.
void dequant_q6_k(const uint8_t* src, float* y, int64_t n) {
  const BlockQ6_K* b = blocks_of<BlockQ6_K>(src);
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const float d = f16_to_f32(b[i].d);
    const uint8_t* ql = b[i].ql;
    const uint8_t* qh = b[i].qh;
    const int8_t* sc = b[i].scales;
    for (int half = 0; half < 2; ++half, ql += 64, qh += 32, sc += 8, y += 128) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * sc[is + 0] * q1;
        y[l + 32] = d * sc[is + 2] * q2;
        y[l + 64] = d * sc[is + 4] * q3;
        y[l + 96] = d * sc[is + 6] * q4;
      }
    }
  }
}

using DequantFn = void (*)(const uint8_t*, float*, int64_t);

DequantFn dequant_fn(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
      return dequant_f32;
    case GgmlType::kF16:
      return dequant_f16;
    case GgmlType::kBF16:
      return dequant_bf16;
    case GgmlType::kQ4_0:
      return dequant_q4q5<BlockQ4_0, false, false>;
    case GgmlType::kQ4_1:
      return dequant_q4q5<BlockQ4_1, true, false>;
    case GgmlType::kQ5_0:
      return dequant_q4q5<BlockQ5_0, false, true>;
    case GgmlType::kQ5_1:
      return dequant_q4q5<BlockQ5_1, true, true>;
    case GgmlType::kQ8_0:
      return dequant_q8_0;
    case GgmlType::kQ4_K:
      return dequant_q4k_q5k<BlockQ4_K, false>;
    case GgmlType::kQ5_K:
      return dequant_q4k_q5k<BlockQ5_K, true>;
    case GgmlType::kQ6_K:
      return dequant_q6_k;
    default:
      return nullptr;
  }
}

}  // namespace

bool can_dequantize(GgmlType type) { return dequant_fn(type) != nullptr; }

Status dequantize_row_ref(GgmlType type, const uint8_t* src, float* dst, int64_t n) {
  const DequantFn fn = dequant_fn(type);
  const GgmlTypeTraits* traits = ggml_type_traits(static_cast<uint32_t>(type));
  if (fn == nullptr || traits == nullptr)
    return unsupported("dequantize: type " + std::to_string(static_cast<uint32_t>(type)) +
                       " not supported");
  if (n < 0 || n % traits->block_elems != 0)
    return invalid_argument("dequantize " + std::string(traits->name) + ": n=" + std::to_string(n) +
                            " is not a multiple of the block size " +
                            std::to_string(traits->block_elems));
  fn(src, dst, n);
  return ok_status();
}

}  // namespace tq::quant
