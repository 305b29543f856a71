// ggml's block layouts, byte for byte (ggml-common.h), plus tq's own activation blocks used by
// the integer matmul. fp16 fields are kept as raw uint16_t bits (see tq/core/fp16.h).
#pragma once

#include <cstdint>

namespace tq::quant {

inline constexpr int kQK = 32;           // elements per block of the 32-element types
inline constexpr int kQK_K = 256;        // elements per super-block of the k-quants
inline constexpr int kKScaleBytes = 12;  // packed 6-bit scales and mins of q4_K / q5_K

// x[j] = d * (q[j] - 8); byte j holds q[j] (low nibble) and q[j + 16] (high nibble).
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[kQK / 2];
};
// x[j] = d * q[j] + m.
struct BlockQ4_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qs[kQK / 2];
};
// x[j] = d * (q[j] - 16); bit j of qh (little-endian u32) is bit 4 of q[j].
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
// x[j] = d * q[j] + m, q as in BlockQ5_0.
struct BlockQ5_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
// x[j] = d * qs[j].
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[kQK];
};
// 8 sub-blocks of 32: x = d * sc[i] * q - dmin * m[i], sc/m 6-bit packed in `scales`.
struct BlockQ4_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[kKScaleBytes];
  uint8_t qs[kQK_K / 2];
};
// As q4_K with a fifth bit per element in qh.
struct BlockQ5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[kKScaleBytes];
  uint8_t qh[kQK_K / 8];
  uint8_t qs[kQK_K / 2];
};
// 16 sub-blocks of 16: x = d * scales[i] * (q - 32), q = 4 low bits (ql) | 2 high bits (qh).
struct BlockQ6_K {
  uint8_t ql[kQK_K / 2];
  uint8_t qh[kQK_K / 4];
  int8_t scales[kQK_K / 16];
  uint16_t d;
};

static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ5_0) == 22 &&
              sizeof(BlockQ5_1) == 24 && sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ4_K) == 144 && sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210);

// tq's activation block for the 32-element types (not a file format): x ~ d * qs,
// s = d * sum(qs) so that affine weights (x = d*q + m) need no second pass.
struct BlockQ8A {
  float d;
  float s;
  int8_t qs[kQK];
};
static_assert(sizeof(BlockQ8A) == 40);

// q4_K / q5_K: 6-bit scale and min of sub-block j (0..7), as ggml's get_scale_min_k4.
inline void k_scale_min(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

}  // namespace tq::quant
