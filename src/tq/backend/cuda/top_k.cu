// top_k_rows (see top_k.h). Long rows take two stages of the same block routine: each block
// selects the top k of one chunk of a row (kTopChunk values), then one block per row selects the
// top k of its chunks' candidates.
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "tq/backend/cuda/cuda_common.cuh"
#include "tq/backend/cuda/top_k.h"

namespace tq::backend::cuda {
namespace {

constexpr int kTopThreads = 1024;
constexpr int kTopChunk = 8192;  // values per first-stage block

// A float's bits as an unsigned key in the float order (NaN as -inf), then the complemented
// index: distinct keys, larger for a larger value, and for the lower index of equal values.
// Every real key is above 0, the padding of short candidate lists.
__device__ __forceinline__ uint64_t top_key(float v, int i) {
  uint32_t b = v != v ? 0xff800000u : __float_as_uint(v);
  b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return (static_cast<uint64_t>(b) << 32) | static_cast<uint32_t>(~static_cast<uint32_t>(i));
}

// Keys of values x[begin, begin + len) of a row (index = position in the row).
struct ValueKeys {
  const float* x;
  int begin;
  __device__ uint64_t operator()(int j) const { return top_key(x[begin + j], begin + j); }
};
// Keys already made (the first stage's candidates).
struct StoredKeys {
  const uint64_t* keys;
  __device__ uint64_t operator()(int j) const { return keys[j]; }
};

// The block's top k of keys 0..len-1 (k <= len, k <= kTopRowsMax), sorted descending into
// `out` (shared, kTopRowsMax entries, the first k valid).
template <class Keys>
__device__ void block_top_k(const Keys& key_of, int len, int k, uint64_t* out) {
  __shared__ unsigned hist[256];
  __shared__ uint64_t prefix_s;
  __shared__ int need_s, count_s;
  const int tid = threadIdx.x;
  uint64_t prefix = 0, mask = 0;
  int need = k;
  // The k-th largest key, 8 bits at a time from the top: histogram the keys that share the
  // prefix found so far, then take the digit where the count from the top reaches `need`.
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += blockDim.x) hist[i] = 0u;
    __syncthreads();
    // Whole warps in step (len rounded up), one shared-memory add per distinct digit of a warp:
    // the first digits of a logits row fall into a few bins.
    for (int base = 0; base < len; base += blockDim.x) {
      const int i = base + tid;
      unsigned digit = 256u;
      if (i < len) {
        const uint64_t key = key_of(i);
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
  // Exactly k keys are >= the k-th largest (keys are distinct; padding 0 only below it).
  if (tid == 0) count_s = 0;
  __syncthreads();
  for (int i = tid; i < len; i += blockDim.x) {
    const uint64_t key = key_of(i);
    if (key >= prefix && key != 0u) {
      const int at = atomicAdd(&count_s, 1);
      if (at < kTopRowsMax) out[at] = key;
    }
  }
  __syncthreads();
  int p2 = 1;
  while (p2 < k) p2 *= 2;
  for (int i = k + tid; i < p2; i += blockDim.x) out[i] = 0u;
  __syncthreads();
  // Bitonic sort, descending.
  for (int size = 2; size <= p2; size *= 2)
    for (int stride = size / 2; stride > 0; stride /= 2) {
      for (int i = tid; i < p2; i += blockDim.x) {
        const int j = i ^ stride;
        if (j > i) {
          const bool desc = (i & size) == 0;
          const uint64_t a = out[i], b = out[j];
          if (desc ? a < b : a > b) {
            out[i] = b;
            out[j] = a;
          }
        }
      }
      __syncthreads();
    }
}

// The first k sorted keys of row `row` as ids and values (NaN as -inf).
__device__ void write_top(const uint64_t* sorted, const float* x_row, int k, int row, int32_t* ids,
                          float* values) {
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    const int id = static_cast<int>(~static_cast<uint32_t>(sorted[i]));
    const float v = x_row[id];
    ids[static_cast<size_t>(row) * k + i] = id;
    values[static_cast<size_t>(row) * k + i] = v != v ? -INFINITY : v;
  }
}

// One stage: one block per row (grid.x = rows).
__global__ void __launch_bounds__(kTopThreads)
    top_k_row_kernel(const float* x, int n, int k, int32_t* ids, float* values) {
  __shared__ uint64_t sorted[kTopRowsMax];
  const float* row = x + static_cast<size_t>(blockIdx.x) * n;
  block_top_k(ValueKeys{row, 0}, n, k, sorted);
  write_top(sorted, row, k, blockIdx.x, ids, values);
}

// Stage 1: block (chunk, row) writes the top k of its chunk, padded with 0, to
// cand[row][chunk][0..k).
__global__ void __launch_bounds__(kTopThreads)
    top_k_chunk_kernel(const float* x, int n, int k, uint64_t* cand) {
  __shared__ uint64_t sorted[kTopRowsMax];
  const int chunk = blockIdx.x, row = blockIdx.y;
  const int begin = chunk * kTopChunk;
  const int len = min(kTopChunk, n - begin);
  const int kc = min(k, len);
  block_top_k(ValueKeys{x + static_cast<size_t>(row) * n, begin}, len, kc, sorted);
  uint64_t* dst = cand + (static_cast<size_t>(row) * gridDim.x + chunk) * k;
  for (int i = threadIdx.x; i < k; i += blockDim.x) dst[i] = i < kc ? sorted[i] : 0u;
}

// Stage 2: one block per row over its chunks' candidates.
__global__ void __launch_bounds__(kTopThreads)
    top_k_merge_kernel(const float* x, int n, int chunks, int k, const uint64_t* cand, int32_t* ids,
                       float* values) {
  __shared__ uint64_t sorted[kTopRowsMax];
  const int row = blockIdx.x;
  block_top_k(StoredKeys{cand + static_cast<size_t>(row) * chunks * k}, chunks * k, k, sorted);
  write_top(sorted, x + static_cast<size_t>(row) * n, k, row, ids, values);
}

int chunks_of(int n) { return (n + kTopChunk - 1) / kTopChunk; }

__global__ void __launch_bounds__(kTopThreads)
    log_partition_kernel(const float* x, int n, double* out) {
  __shared__ float s_max[kTopThreads / 32];
  __shared__ double s_sum[kTopThreads / 32];
  const float* row = x + static_cast<size_t>(blockIdx.x) * n;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  float m = -INFINITY;
  for (int i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, row[i]);  // fmaxf drops NaN
  for (int o = 16; o >= 1; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if (lane == 0) s_max[warp] = m;
  __syncthreads();
  m = s_max[0];
  for (int w = 1; w < warps; ++w) m = fmaxf(m, s_max[w]);
  if (m == -INFINITY) {  // no finite value
    if (threadIdx.x == 0) out[blockIdx.x] = -INFINITY;
    return;
  }
  double sum = 0.0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = row[i];
    if (v >= -FLT_MAX) sum += exp(static_cast<double>(v - m));  // not NaN, not -inf
  }
  for (int o = 16; o >= 1; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if (lane == 0) s_sum[warp] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < warps; ++w) total += s_sum[w];
    out[blockIdx.x] = static_cast<double>(m) + log(total);
  }
}

}  // namespace

size_t top_k_workspace_bytes(int rows, int n, int k) {
  if (rows <= 0 || n < 2 * kTopChunk) return 0;
  return static_cast<size_t>(rows) * chunks_of(n) * k * sizeof(uint64_t);
}

Status top_k_rows(const float* x, int rows, int n, int k, int32_t* ids, float* values, void* stream,
                  void* workspace, size_t workspace_bytes) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (rows <= 0) return ok_status();
  if (k < 1 || k > kTopRowsMax || k > n)
    return invalid_argument("top_k_rows: k must be in [1, min(1024, n)]");
  const size_t need = top_k_workspace_bytes(rows, n, k);
  if (need > 0 && workspace != nullptr && workspace_bytes >= need) {
    const int chunks = chunks_of(n);
    auto* cand = static_cast<uint64_t*>(workspace);
    top_k_chunk_kernel<<<dim3(chunks, rows), kTopThreads, 0, s>>>(x, n, k, cand);
    TQ_CUDA_CHECK_LAUNCH(s);
    top_k_merge_kernel<<<rows, kTopThreads, 0, s>>>(x, n, chunks, k, cand, ids, values);
    TQ_CUDA_CHECK_LAUNCH(s);
    return ok_status();
  }
  top_k_row_kernel<<<rows, kTopThreads, 0, s>>>(x, n, k, ids, values);
  TQ_CUDA_CHECK_LAUNCH(s);
  return ok_status();
}

Status log_partition_rows(const float* x, int rows, int n, double* out, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (rows <= 0) return ok_status();
  if (n < 1) return invalid_argument("log_partition_rows: empty rows");
  log_partition_kernel<<<rows, kTopThreads, 0, s>>>(x, n, out);
  TQ_CUDA_CHECK_LAUNCH(s);
  return ok_status();
}

}  // namespace tq::backend::cuda
