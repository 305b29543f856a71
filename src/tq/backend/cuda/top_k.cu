// top_k_rows (see top_k.h): one block per logits row.
#include <cuda_runtime.h>

#include <cstdint>

#include "tq/backend/cuda/cuda_common.cuh"
#include "tq/backend/cuda/top_k.h"

namespace tq::backend::cuda {
namespace {

// A float's bits as an unsigned key in the float order (NaN as -inf), then the complemented
// index: distinct keys, larger for a larger value, and for the lower index of equal values.
__device__ __forceinline__ uint64_t top_key(float v, int i) {
  uint32_t b = v != v ? 0xff800000u : __float_as_uint(v);
  b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return (static_cast<uint64_t>(b) << 32) | static_cast<uint32_t>(~static_cast<uint32_t>(i));
}

constexpr int kTopThreads = 1024;
__global__ void __launch_bounds__(kTopThreads)
    top_k_kernel(const float* x, int n, int k, int32_t* ids, float* values) {
  __shared__ unsigned hist[256];
  __shared__ uint64_t keys[kTopRowsMax];
  __shared__ uint64_t prefix_s;
  __shared__ int need_s, count_s;
  const float* row = x + static_cast<size_t>(blockIdx.x) * n;
  const int tid = threadIdx.x;
  uint64_t prefix = 0, mask = 0;
  int need = k;
  // The k-th largest key, 8 bits at a time from the top: histogram the keys that share the
  // prefix found so far, then take the digit where the count from the top reaches `need`.
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += blockDim.x) hist[i] = 0u;
    __syncthreads();
    // Whole warps in step (n rounded up), one shared-memory add per distinct digit of a warp:
    // the first digits of a logits row fall into a few bins.
    for (int base = 0; base < n; base += blockDim.x) {
      const int i = base + tid;
      unsigned digit = 256u;
      if (i < n) {
        const uint64_t key = top_key(row[i], i);
        if ((key & mask) == prefix) digit = static_cast<unsigned>(key >> shift) & 255u;
      }
      const unsigned same = __match_any_sync(0xffffffffu, digit);
      if (digit < 256u && (tid & 31) == __ffs(same) - 1) atomicAdd(&hist[digit], __popc(same));
    }
    __syncthreads();
    if (tid == 0) {
      int above = 0, d = 255;
      for (; d > 0 && above + static_cast<int>(hist[d]) < need; --d)
        above += static_cast<int>(hist[d]);
      need_s = need - above;
      prefix_s = prefix | (static_cast<uint64_t>(d) << shift);
    }
    __syncthreads();
    need = need_s;
    prefix = prefix_s;
    mask |= uint64_t{255} << shift;
  }
  // Exactly k keys are >= the k-th largest (keys are distinct).
  if (tid == 0) count_s = 0;
  __syncthreads();
  for (int i = tid; i < n; i += blockDim.x) {
    const uint64_t key = top_key(row[i], i);
    if (key >= prefix) {
      const int at = atomicAdd(&count_s, 1);
      if (at < kTopRowsMax) keys[at] = key;
    }
  }
  __syncthreads();
  int p2 = 1;
  while (p2 < k) p2 *= 2;
  for (int i = k + tid; i < p2; i += blockDim.x) keys[i] = 0u;  // below every real key
  __syncthreads();
  // Bitonic sort, descending.
  for (int size = 2; size <= p2; size *= 2)
    for (int stride = size / 2; stride > 0; stride /= 2) {
      for (int i = tid; i < p2; i += blockDim.x) {
        const int j = i ^ stride;
        if (j > i) {
          const bool desc = (i & size) == 0;
          const uint64_t a = keys[i], b = keys[j];
          if (desc ? a < b : a > b) {
            keys[i] = b;
            keys[j] = a;
          }
        }
      }
      __syncthreads();
    }
  for (int i = tid; i < k; i += blockDim.x) {
    const int id = static_cast<int>(~static_cast<uint32_t>(keys[i]));
    const float v = row[id];
    ids[static_cast<size_t>(blockIdx.x) * k + i] = id;
    values[static_cast<size_t>(blockIdx.x) * k + i] = v != v ? -INFINITY : v;
  }
}

}  // namespace

Status top_k_rows(const float* x, int rows, int n, int k, int32_t* ids, float* values,
                  void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (rows <= 0) return ok_status();
  if (k < 1 || k > kTopRowsMax || k > n)
    return invalid_argument("top_k_rows: k must be in [1, min(1024, n)]");
  top_k_kernel<<<rows, kTopThreads, 0, s>>>(x, n, k, ids, values);
  TQ_CUDA_CHECK_LAUNCH(s);
  return ok_status();
}

}  // namespace tq::backend::cuda
