// Reference quantizers: the same arithmetic as ggml's quantize_row_*_ref (and the Python gguf
// package's numpy ports), so files tq writes match what llama.cpp would write.
#include "tq/quant/weight_quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "tq/core/fp16.h"

namespace tq::quant {
namespace {

void quant_f32(const float* x, uint8_t* dst, int64_t n) { std::memcpy(dst, x, n * 4); }

template <uint16_t (*kConvert)(float)>
void quant_half(const float* x, uint8_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = kConvert(x[i]);
    std::memcpy(dst + 2 * i, &h, 2);
  }
}

void quant_q8_0(const float* x, uint8_t* dst, int64_t n) {
  auto* b = reinterpret_cast<BlockQ8_0*>(dst);
  for (int64_t i = 0; i < n / kQK; ++i, x += kQK) {
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b[i].d = f32_to_f16(d);
    for (int j = 0; j < kQK; ++j) b[i].qs[j] = static_cast<int8_t>(std::roundf(x[j] * id));
  }
}

// Symmetric 4/5-bit (q4_0, q5_0): d = (the signed value of largest magnitude) / -2^(bits-1),
// so that value maps exactly to q = 0 and the grid spends its extra level on the other sign.
template <typename Block, bool kFiveBit>
void quant_sym(const float* x, uint8_t* dst, int64_t n) {
  constexpr int kHalf = kFiveBit ? 16 : 8;
  constexpr int kMaxQ = 2 * kHalf - 1;
  auto* b = reinterpret_cast<Block*>(dst);
  for (int64_t i = 0; i < n / kQK; ++i, x += kQK) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < kQK; ++j) {
      if (std::fabs(x[j]) > amax) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -static_cast<float>(kHalf);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b[i].d = f32_to_f16(d);
    uint32_t qh = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      const int q0 = std::min(kMaxQ, static_cast<int>(x[j] * id + (kHalf + 0.5f)));
      const int q1 = std::min(kMaxQ, static_cast<int>(x[j + kQK / 2] * id + (kHalf + 0.5f)));
      b[i].qs[j] = static_cast<uint8_t>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
      qh |= static_cast<uint32_t>((q0 >> 4) & 1) << j;
      qh |= static_cast<uint32_t>((q1 >> 4) & 1) << (j + kQK / 2);
    }
    if constexpr (kFiveBit) std::memcpy(b[i].qh, &qh, 4);
  }
}

// Affine 4/5-bit (q4_1, q5_1): d = (max - min) / (2^bits - 1), m = min.
template <typename Block, bool kFiveBit>
void quant_affine(const float* x, uint8_t* dst, int64_t n) {
  constexpr int kMaxQ = kFiveBit ? 31 : 15;
  auto* b = reinterpret_cast<Block*>(dst);
  for (int64_t i = 0; i < n / kQK; ++i, x += kQK) {
    float min = x[0], max = x[0];
    for (int j = 1; j < kQK; ++j) {
      min = std::min(min, x[j]);
      max = std::max(max, x[j]);
    }
    const float d = (max - min) / kMaxQ;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b[i].d = f32_to_f16(d);
    b[i].m = f32_to_f16(min);
    uint32_t qh = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      const int q0 = std::min(kMaxQ, static_cast<int>((x[j] - min) * id + 0.5f));
      const int q1 = std::min(kMaxQ, static_cast<int>((x[j + kQK / 2] - min) * id + 0.5f));
      b[i].qs[j] = static_cast<uint8_t>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
      qh |= static_cast<uint32_t>((q0 >> 4) & 1) << j;
      qh |= static_cast<uint32_t>((q1 >> 4) & 1) << (j + kQK / 2);
    }
    if constexpr (kFiveBit) std::memcpy(b[i].qh, &qh, 4);
  }
}

using QuantFn = void (*)(const float*, uint8_t*, int64_t);

QuantFn quant_fn(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
      return quant_f32;
    case GgmlType::kF16:
      return quant_half<f32_to_f16>;
    case GgmlType::kBF16:
      return quant_half<f32_to_bf16>;
    case GgmlType::kQ4_0:
      return quant_sym<BlockQ4_0, false>;
    case GgmlType::kQ5_0:
      return quant_sym<BlockQ5_0, true>;
    case GgmlType::kQ4_1:
      return quant_affine<BlockQ4_1, false>;
    case GgmlType::kQ5_1:
      return quant_affine<BlockQ5_1, true>;
    case GgmlType::kQ8_0:
      return quant_q8_0;
    default:
      return nullptr;
  }
}

}  // namespace

bool can_quantize(GgmlType type) { return quant_fn(type) != nullptr; }

Status quantize_row_ref(GgmlType type, const float* src, uint8_t* dst, int64_t n) {
  const QuantFn fn = quant_fn(type);
  const GgmlTypeTraits* traits = ggml_type_traits(static_cast<uint32_t>(type));
  if (fn == nullptr || traits == nullptr)
    return unsupported("quantize: type " + std::to_string(static_cast<uint32_t>(type)) +
                       " not supported");
  if (n < 0 || n % traits->block_elems != 0)
    return invalid_argument("quantize " + std::string(traits->name) + ": n=" + std::to_string(n) +
                            " is not a multiple of the block size " +
                            std::to_string(traits->block_elems));
  fn(src, dst, n);
  return ok_status();
}

void quantize_row_q8a_ref(const float* x, BlockQ8A* dst, int64_t n) {
  for (int64_t i = 0; i < n / kQK; ++i, x += kQK) {
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
    // id = 127 / amax (not 1 / d) is what the SIMD quantizer computes: same q everywhere.
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    int sum = 0;
    for (int j = 0; j < kQK; ++j) {
      const int q = static_cast<int>(std::nearbyint(x[j] * id));
      dst[i].qs[j] = static_cast<int8_t>(q);
      sum += q;
    }
    dst[i].d = d;
    dst[i].s = d * static_cast<float>(sum);
  }
}

}  // namespace tq::quant
