// Scalar reference kernels for matmul: the integer dot products exactly as the SIMD kernels
// define them (same activation quantization, same per-block integer sums), in plain loops.
#include <cstring>

#include "tq/backend/cpu/matmul_kernels.h"
#include "tq/core/fp16.h"
#include "tq/quant/weight_dequant.h"
#include "tq/quant/weight_quant.h"

namespace tq::backend::cpu {
namespace {

using quant::BlockQ8A;
using quant::kQK;

// Unpacks one 32-element weight block into unsigned levels q[32] and its affine map
// x = d * q + m. Symmetric types fold their offset into m (q4_0: m = -8d).
template <typename Block, bool kHasMin, bool kFiveBit>
void unpack_affine(const Block& b, uint8_t q[kQK], float* d, float* m) {
  uint32_t qh = 0;
  if constexpr (kFiveBit) std::memcpy(&qh, b.qh, 4);
  for (int j = 0; j < kQK / 2; ++j) {
    q[j] = static_cast<uint8_t>((b.qs[j] & 0x0F) | (kFiveBit ? ((qh >> j) & 1u) << 4 : 0));
    q[j + kQK / 2] =
        static_cast<uint8_t>((b.qs[j] >> 4) | (kFiveBit ? ((qh >> (j + 16)) & 1u) << 4 : 0));
  }
  *d = f16_to_f32(b.d);
  if constexpr (kHasMin) {
    *m = f16_to_f32(b.m);
  } else {
    *m = -(kFiveBit ? 16.0f : 8.0f) * *d;
  }
}

// sum_i (d q_i + m) * (da qa_i) = d da sum(q qa) + m * s, with s = da * sum(qa).
template <typename Block, bool kHasMin, bool kFiveBit>
void tile_affine_ref(const TileJob& job) {
  const int64_t n_blocks = job.cols / kQK;
  for (int64_t r = job.row_begin; r < job.row_end; ++r) {
    const Block* w = reinterpret_cast<const Block*>(job.w + r * job.row_bytes);
    for (int t = 0; t < job.n_tokens; ++t) {
      const BlockQ8A* a = reinterpret_cast<const BlockQ8A*>(static_cast<const uint8_t*>(job.act) +
                                                            t * job.act_stride);
      float acc = 0.0f;
      for (int64_t b = 0; b < n_blocks; ++b) {
        uint8_t q[kQK];
        float d, m;
        unpack_affine<Block, kHasMin, kFiveBit>(w[b], q, &d, &m);
        int sum = 0;
        for (int i = 0; i < kQK; ++i) sum += q[i] * a[b].qs[i];
        acc += d * a[b].d * static_cast<float>(sum) + m * a[b].s;
      }
      job.y[t * job.y_stride + r] = acc;
    }
  }
}

void tile_q8_0_ref(const TileJob& job) {
  const int64_t n_blocks = job.cols / kQK;
  for (int64_t r = job.row_begin; r < job.row_end; ++r) {
    const auto* w = reinterpret_cast<const quant::BlockQ8_0*>(job.w + r * job.row_bytes);
    for (int t = 0; t < job.n_tokens; ++t) {
      const BlockQ8A* a = reinterpret_cast<const BlockQ8A*>(static_cast<const uint8_t*>(job.act) +
                                                            t * job.act_stride);
      float acc = 0.0f;
      for (int64_t b = 0; b < n_blocks; ++b) {
        int sum = 0;
        for (int i = 0; i < kQK; ++i) sum += w[b].qs[i] * a[b].qs[i];
        acc += f16_to_f32(w[b].d) * a[b].d * static_cast<float>(sum);
      }
      job.y[t * job.y_stride + r] = acc;
    }
  }
}

void tile_f32_ref(const TileJob& job) {
  for (int64_t r = job.row_begin; r < job.row_end; ++r) {
    const float* w = reinterpret_cast<const float*>(job.w + r * job.row_bytes);
    for (int t = 0; t < job.n_tokens; ++t) {
      const float* x =
          reinterpret_cast<const float*>(static_cast<const uint8_t*>(job.act) + t * job.act_stride);
      float acc = 0.0f;
      for (int64_t c = 0; c < job.cols; ++c) acc += w[c] * x[c];
      job.y[t * job.y_stride + r] = acc;
    }
  }
}

void dequantize_ref(quant::GgmlType type, const uint8_t* src, float* dst, int64_t n) {
  // matmul validated type and n; the Status only repeats that check.
  (void)quant::dequantize_row_ref(type, src, dst, n);
}

constexpr MatmulKernels kRef = {
    "ref",
    quant::quantize_row_q8a_ref,
    tile_affine_ref<quant::BlockQ4_0, false, false>,
    tile_affine_ref<quant::BlockQ4_1, true, false>,
    tile_affine_ref<quant::BlockQ5_0, false, true>,
    tile_affine_ref<quant::BlockQ5_1, true, true>,
    tile_q8_0_ref,
    tile_f32_ref,
    dequantize_ref,
};

}  // namespace

const MatmulKernels& matmul_kernels_ref() { return kRef; }

}  // namespace tq::backend::cpu
