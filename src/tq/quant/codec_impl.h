// Internal to the quant layer: the concrete codec factories make_codec dispatches to, and the
// small helpers they share.
#pragma once

#include <cstring>
#include <memory>

#include "tq/core/fp16.h"
#include "tq/quant/codec.h"

namespace tq::quant {

std::unique_ptr<VectorCodec> make_tq_codec(Format f, int dim, const CodecOptions& o,
                                           const Codebook* book, Rotation rotation);
std::unique_ptr<VectorCodec> make_baseline_codec(Format f, int dim, const CodecOptions& o);

// Index of the cell of y: the number of boundaries below it (branchless binary search over
// the 2^bits - 1 ascending boundaries). NaN maps to 0.
inline int quantize_coordinate(const float* boundaries, int bits, float y) {
  int idx = 0;
  for (int step = 1 << (bits - 1); step >= 1; step >>= 1)
    idx += (y > boundaries[idx + step - 1]) ? step : 0;
  return idx;
}

// fp16 storage saturates at the largest finite half instead of overflowing to inf (inf * 0
// would turn a zero attention weight into NaN); NaN stays NaN.
inline uint16_t norm_to_f16(float v) {
  if (v > 65504.0f) v = 65504.0f;
  return f32_to_f16(v);
}

inline void store_scalar(uint8_t* plane, int slot, float v, bool fp32) {
  if (fp32) {
    std::memcpy(plane + 4 * static_cast<size_t>(slot), &v, 4);
  } else {
    const uint16_t h = norm_to_f16(v);
    std::memcpy(plane + 2 * static_cast<size_t>(slot), &h, 2);
  }
}

inline float load_scalar(const uint8_t* plane, int slot, bool fp32) {
  if (fp32) {
    float v;
    std::memcpy(&v, plane + 4 * static_cast<size_t>(slot), 4);
    return v;
  }
  uint16_t h;
  std::memcpy(&h, plane + 2 * static_cast<size_t>(slot), 2);
  return f16_to_f32(h);
}

// out[i] = the scalar of slot slot0 + i, i < n (the kernel table's f16 conversion: F16C on
// AVX2 machines, where the scalar one was a tenth of decode attention at long contexts).
inline void load_scalars(const KernelTable& k, const uint8_t* plane, int slot0, int n, bool fp32,
                         float* out) {
  if (fp32) {
    std::memcpy(out, plane + 4 * static_cast<size_t>(slot0), 4 * static_cast<size_t>(n));
  } else if (k.f16_to_f32) {
    k.f16_to_f32(plane + 2 * static_cast<size_t>(slot0), out, n);
  } else {
    for (int i = 0; i < n; ++i) out[i] = load_scalar(plane, slot0 + i, false);
  }
}

}  // namespace tq::quant
