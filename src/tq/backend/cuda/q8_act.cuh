// 8-bit activations for the quantized-weight GEMV (gemv_q.h, GemvActivations::kQ8), one
// rounding rule for every kernel that makes them: per 32 consecutive columns, d = amax / 127
// and q = round-to-nearest-even(x * (127 / amax)) (quantize_row_q8a_ref's arithmetic, the CPU
// matmuls'), plus the sum of the 32 quants (Q4_0's -8 offset becomes one multiply of it).
#pragma once

#include <cstdint>

#include "tq/backend/cuda/gemv_q.h"

namespace tq::backend::cuda::dev {

// The quants of n values of one 32-column block held by `width` adjacent lanes (width * n ==
// 32), amax and sum reduced across those lanes by shuffles (every lane of the warp calls it).
template <int kN>
__device__ __forceinline__ float q8_block_scale(const float (&v)[kN], int width) {
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < kN; ++i) amax = fmaxf(amax, fabsf(v[i]));
  for (int o = 1; o < width; o *= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  return amax;
}
template <int kN>
__device__ __forceinline__ int q8_quantize(const float (&v)[kN], float amax, int width,
                                           int (&q)[kN]) {
  const float id = amax != 0.0f ? __fdiv_rn(127.0f, amax) : 0.0f;
  int sum = 0;
#pragma unroll
  for (int i = 0; i < kN; ++i) {
    q[i] = __float2int_rn(__fmul_rn(v[i], id));
    sum += q[i];
  }
  for (int o = 1; o < width; o *= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  return sum;
}
__device__ __forceinline__ Q8Scale q8_scale(float amax, int sum) {
  return Q8Scale{__fdiv_rn(amax, 127.0f), sum};
}

// One value per lane, the warp's 32 lanes one block (column c0 + lane of a row): writes the
// lane's quant to q[lane] and lane 0 the block's scale. The whole warp calls it.
__device__ __forceinline__ void q8_store_warp_block(float v, int8_t* q, Q8Scale* s) {
  const int lane = threadIdx.x & 31;
  const float x[1] = {v};
  const float amax = q8_block_scale(x, 32);
  int qi[1];
  const int sum = q8_quantize(x, amax, 32, qi);
  q[lane] = static_cast<int8_t>(qi[0]);
  if (lane == 0) *s = q8_scale(amax, sum);
}

}  // namespace tq::backend::cuda::dev
