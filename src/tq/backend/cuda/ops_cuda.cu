// The small forward-pass kernels (see ops_cuda.cuh). One block per token row; every kernel is
// element-wise or one row reduction, so none of them is worth more than plain loads.
#include <climits>
#include <cmath>

#include "tq/backend/cuda/cuda_common.cuh"
#include "tq/backend/cuda/ops_cuda.cuh"
#include "tq/backend/cuda/q8_act.cuh"

namespace tq::backend::cuda {
namespace {

constexpr int kRowThreads = 256;    // element-wise kernels: one thread per element
constexpr int kNormThreads = 1024;  // RMSNorm: one block per row, few elements per thread

__global__ void embed_kernel(const __half* table, const int32_t* tokens, int dim, float* x) {
  const size_t src = static_cast<size_t>(tokens[blockIdx.x]) * dim;
  const size_t dst = static_cast<size_t>(blockIdx.x) * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) x[dst + i] = __half2float(table[src + i]);
}

// The sum of v over a block of kThreads threads, in every thread. A second call in the same
// kernel needs a __syncthreads() before it (the partial sums' shared memory is reused).
template <int kThreads>
__device__ float block_sum(float v) {
  __shared__ float warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
  return total;
}

// The kernels that feed the GEMVs (RMSNorm, SwiGLU; the attention merge too) let them launch at
// once (dev::pdl_launch_dependents): a GEMV launched with programmatic dependence loads its weights
// meanwhile and waits for this kernel's completion before it reads the activations.
// The f16 value h of element i (of n) also as an 8-bit activation when q8 is set: a warp's 32
// lanes hold one block (callers keep whole warps in step: row lengths % 32 == 0).
__device__ __forceinline__ void store_q8(const Q8Out& q8, size_t i, __half h) {
  if (q8.q) dev::q8_store_warp_block(__half2float(h), q8.q + i - (threadIdx.x & 31), q8.s + i / 32);
}

__global__ void rmsnorm_kernel(const float* x, const float* w, int dim, float eps, __half* y,
                               Q8Out q8) {
  dev::pdl_launch_dependents();
  const float* row = x + static_cast<size_t>(blockIdx.x) * dim;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) ss = fmaf(row[i], row[i], ss);
  const float scale = rsqrtf(block_sum<kNormThreads>(ss) / static_cast<float>(dim) + eps);
  const size_t r0 = static_cast<size_t>(blockIdx.x) * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    const __half h = __float2half_rn(row[i] * scale * w[i]);
    y[r0 + i] = h;
    store_q8(q8, r0 + i, h);
  }
}

// Row t is at position positions[t] when given (a batch of sequences), else pos0 + t.
__global__ void rope_table_kernel(const float* inv_freq, int half, int pos0,
                                  const int32_t* positions, float2* cs) {
  const int t = static_cast<int>(blockIdx.x);
  const double pos = static_cast<double>(positions ? positions[t] : pos0 + t);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    double sn, c;
    sincos(pos * static_cast<double>(inv_freq[i]), &sn, &c);
    cs[static_cast<size_t>(blockIdx.x) * half + i] =
        make_float2(static_cast<float>(c), static_cast<float>(sn));
  }
}

// Grid (element blocks, token): element e of the row is q (e < q_dim), k (< q_dim + kv_dim,
// minus k_mean when given) or v.
__global__ void rope_split_kernel(RopeSplitParams p) {
  dev::pdl_launch_dependents();
  const int t = blockIdx.y;
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  const int q_dim = p.n_heads * p.head_dim, kv_dim = p.n_kv_heads * p.head_dim;
  const int row_len = q_dim + 2 * kv_dim;
  if (e >= row_len) {
    dev::pdl_wait();
    return;
  }
  // What does not come from the matmul before (programmatic dependence): the rotation of this
  // element, the bias, the key mean. Then qkv.
  const int j = e % p.head_dim;
  const int head0 = e - j;
  const int half = p.rope_dims / 2;
  const bool rotated = e < q_dim + kv_dim && j < p.rope_dims;
  int i0 = e, i1 = e;  // the pair's elements
  float2 a = make_float2(1.0f, 0.0f);
  if (rotated) {
    const int i = p.neox ? (j < half ? j : j - half) : j / 2;
    i0 = p.neox ? head0 + i : head0 + 2 * i;
    i1 = p.neox ? head0 + i + half : head0 + 2 * i + 1;
    a = p.cs[static_cast<size_t>(t) * half + i];
  }
  const float b0 = p.bias ? p.bias[i0] : 0.0f, b1 = p.bias ? p.bias[i1] : 0.0f;
  // The slot's statistics for this element: mu and 1/s for a key, s for a query channel of its
  // KV head, 1/t for a value.
  const size_t stat0 = p.stat_rows ? static_cast<size_t>(p.stat_rows[t]) * kv_dim : 0;
  float mu = 0.0f, mul = 1.0f;
  if (e < q_dim) {
    if (p.k_scale) {
      const int group = p.n_heads / p.n_kv_heads;
      mul = p.k_scale[stat0 + (e / p.head_dim / group) * p.head_dim + j];
    }
  } else if (e < q_dim + kv_dim) {
    if (p.k_mean) mu = p.k_mean[stat0 + (e - q_dim)];
    if (p.k_scale) mul = 1.0f / p.k_scale[stat0 + (e - q_dim)];
  } else if (p.v_scale) {
    mul = 1.0f / p.v_scale[stat0 + (e - q_dim - kv_dim)];
  }
  dev::pdl_wait();
  const float* row = p.qkv + static_cast<size_t>(t) * row_len;
  if (e >= q_dim + kv_dim) {
    p.v[static_cast<size_t>(t) * kv_dim + (e - q_dim - kv_dim)] = (row[e] + b0) * mul;
    return;
  }
  float out;
  if (!rotated) {
    out = row[e] + b0;
  } else {
    const float x0 = row[i0] + b0, x1 = row[i1] + b1;
    const bool first = p.neox ? j < half : j % 2 == 0;
    out = first ? x0 * a.x - x1 * a.y : x0 * a.y + x1 * a.x;
  }
  if (e < q_dim)
    p.q[static_cast<size_t>(t) * q_dim + e] = out * mul;
  else
    p.k[static_cast<size_t>(t) * kv_dim + (e - q_dim)] = (out - mu) * mul;
}

// first_pass_stats (ops_cuda.cuh): one block of kStatsThreads per KV head, a thread per channel
// (head_dim <= kStatsThreads).
constexpr int kStatsThreads = 256;

__global__ void first_pass_stats_kernel(FirstPassStatsParams p) {
  const int h = blockIdx.x, e = threadIdx.x, hd = p.head_dim;
  const bool live = e < hd;
  const size_t kv_dim = static_cast<size_t>(p.n_kv_heads) * hd;
  const size_t c = static_cast<size_t>(h) * hd + (live ? e : 0);
  const int group = p.n_heads / p.n_kv_heads;
  const int count = p.to - p.from;
  float mu = 0.0f;
  if (p.mu && live) {
    for (int j = p.from; j < p.to; ++j) mu += p.k[j * kv_dim + c];
    mu = count > 0 ? mu * (1.0f / static_cast<float>(count)) : 0.0f;
    p.mu[c] = mu;
  }
  float s = 1.0f, t = 1.0f;
  if (p.s && count >= 2) {
    float ss = 0.0f, qq = 0.0f;
    if (live)
      for (int j = p.from; j < p.to; ++j) {
        const float x = p.k[j * kv_dim + c] - mu;
        ss = fmaf(x, x, ss);
        for (int g = 0; g < group; ++g) {
          const float y = p.q[(static_cast<size_t>(j) * p.n_heads + h * group + g) * hd + e];
          qq = fmaf(y, y, qq);
        }
      }
    const float r = (sqrtf(ss / count) + 1e-6f) / (sqrtf(qq / (count * group)) + 1e-6f);
    const float geo = expf(block_sum<kStatsThreads>(live ? logf(r) : 0.0f) / hd);
    s = sqrtf(r / geo);
  }
  if (p.t && count >= 2) {
    __syncthreads();  // block_sum's shared memory may still be read by the key scales' sum
    float ss = 0.0f;
    if (live)
      for (int j = p.from; j < p.to; ++j) {
        const float x = p.v[j * kv_dim + c];
        ss = fmaf(x, x, ss);
      }
    float r = sqrtf(ss / count) + 1e-6f;
    if (p.w && live) r /= p.w[c] + 1e-6f;
    const float geo = expf(block_sum<kStatsThreads>(live ? logf(r) : 0.0f) / hd);
    t = sqrtf(r / geo);
  }
  if (!live) return;
  if (p.s) p.s[c] = s;
  if (p.t) p.t[c] = t;
  for (int j = 0; j < p.n; ++j) {
    if (p.mu) p.k[j * kv_dim + c] = (p.k[j * kv_dim + c] - mu) / s;
    if (p.t) p.v[j * kv_dim + c] /= t;
    if (p.s)
      for (int g = 0; g < group; ++g)
        p.q[(static_cast<size_t>(j) * p.n_heads + h * group + g) * hd + e] *= s;
  }
}

// Grid (element blocks, token).
__global__ void silu_mul_kernel(const float* gu, int ffn, __half* h, Q8Out q8) {
  dev::pdl_launch_dependents();
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= ffn) return;  // whole warps (ffn % 32 == 0 when q8 is written)
  const float* row = gu + static_cast<size_t>(blockIdx.y) * 2 * ffn;
  const float g = row[i];
  const size_t o = static_cast<size_t>(blockIdx.y) * ffn + i;
  const __half v = __float2half_rn(g / (1.0f + expf(-g)) * row[ffn + i]);
  h[o] = v;
  store_q8(q8, o, v);
}

constexpr int kGemvWarps = 8;  // rows per block

__global__ void __launch_bounds__(kGemvWarps * 32)
    gemv_f16_kernel(const __half* __restrict__ w, int rows, int cols, const __half* __restrict__ x,
                    float* __restrict__ y, float beta) {
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * kGemvWarps + threadIdx.x / 32;
  if (row >= rows) return;  // whole warps leave together: the shuffles below stay full
  const uint4* wr = reinterpret_cast<const uint4*>(w + static_cast<size_t>(row) * cols);
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  const int n8 = cols / 8;
  float acc = 0.0f;
#pragma unroll 4
  for (int i = lane; i < n8; i += 32) {
    const uint4 a = __ldg(wr + i);
    const uint4 b = __ldg(xv + i);
    const uint32_t aw[4] = {a.x, a.y, a.z, a.w}, bw[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 af = __half22float2(dev::bits_h2(aw[k])),
                   bf = __half22float2(dev::bits_h2(bw[k]));
      acc = fmaf(af.x, bf.x, acc);
      acc = fmaf(af.y, bf.y, acc);
    }
  }
  for (int o = 16; o > 0; o /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0) y[row] = beta == 0.0f ? acc : fmaf(beta, y[row], acc);
}

__device__ __forceinline__ int32_t pool_slot(const int32_t* table, int bt, int i) {
  return table[i / bt] * bt + i % bt;
}

__global__ void step_tables_kernel(StepTablesParams p) {
  const int t = blockIdx.x;
  const bool batched = p.seqs != nullptr;
  const int seq = batched ? p.seqs[t] : 0;
  const int32_t* table = p.table + static_cast<size_t>(seq) * p.max_blocks;
  const int pos = p.positions ? p.positions[t] : p.pos0 + t;
  const ExactRowsParams& e = p.exact;
  const int S = e.slots ? e.sinks : 0, W = e.slots ? e.window : 0;
  // Every row sees the region as stored, unless a truncation left rows of cut positions in it.
  const bool one_row = batched || (p.n == 1 && e.exact_from == 0);
  const int end = one_row ? pos + 1 : p.pos0 + p.n;
  const int keep_from = max(max(S, end - W), e.slots ? e.exact_from : 0);
  const int bt = p.block_tokens;
  if (threadIdx.x == 0) {
    const int c = pos - S;
    p.slots[t] = c >= 0 ? pool_slot(table, bt, c) : -1;
    p.lengths[t] = max(0, min(pos + 1, keep_from) - S);
    if (e.slots) {
      const int32_t* et = e.table + static_cast<size_t>(seq) * e.blocks;
      const int row = pos < S ? pos : pos >= keep_from ? S + (pos - S) % W : -1;
      e.slots[t] = row >= 0 ? pool_slot(et, bt, row) : -1;
      e.lengths[t] = one_row ? min(pos + 1, S + W) : min(pos + 1, S) + max(0, pos + 1 - keep_from);
    }
  }
  int32_t* dst = p.tables + static_cast<size_t>(t) * p.max_blocks;
  for (int j = threadIdx.x; j < p.max_blocks; j += blockDim.x) dst[j] = table[j];
  if (!e.slots) return;
  const int32_t* et = e.table + static_cast<size_t>(seq) * e.blocks;
  const int32_t* seen = one_row ? et : e.scratch_table;
  int32_t* edst = e.tables + static_cast<size_t>(t) * e.blocks;
  for (int j = threadIdx.x; j < e.blocks; j += blockDim.x) edst[j] = seen[j];
  if (one_row || t != 0) return;
  // The gather of a multi-row pass: scratch row j = sink j, or the window position
  // keep_from + (j - S), from its ring row; rows past the pass's end stay unwritten.
  for (int j = threadIdx.x; j < S + W; j += blockDim.x) {
    const int q = j < S ? j : keep_from + (j - S);
    const int src = q >= end ? -1 : j < S ? j : S + (q - S) % W;
    e.gather_src[j] = src >= 0 ? pool_slot(et, bt, src) : -1;
    e.gather_dst[j] = pool_slot(e.scratch_table, bt, j);
  }
}

// Grid: one block per row; 16-byte words of every KV head's f16 row.
__global__ void copy_exact_rows_kernel(uint8_t* k, uint8_t* v, size_t block_stride,
                                       size_t head_stride, int bt, int n_kv_heads, int row_words,
                                       const int32_t* src, const int32_t* dst) {
  const int s = src[blockIdx.x];
  if (s < 0) return;
  const int d = dst[blockIdx.x];
  const size_t row_bytes = static_cast<size_t>(row_words) * 16;
  const size_t so = static_cast<size_t>(s / bt) * block_stride + (s % bt) * row_bytes;
  const size_t dof = static_cast<size_t>(d / bt) * block_stride + (d % bt) * row_bytes;
  const int words = n_kv_heads * row_words;
  for (int i = threadIdx.x; i < 2 * words; i += blockDim.x) {
    uint8_t* base = i < words ? k : v;
    const int w = i < words ? i : i - words;
    const size_t h = static_cast<size_t>(w / row_words) * head_stride + (w % row_words) * 16;
    *reinterpret_cast<uint4*>(base + dof + h) = *reinterpret_cast<const uint4*>(base + so + h);
  }
}

}  // namespace

Status embed_rows(const __half* table, const int32_t* tokens, int n, int dim, float* x,
                  cudaStream_t s) {
  if (n <= 0) return ok_status();
  embed_kernel<<<n, kRowThreads, 0, s>>>(table, tokens, dim, x);
  TQ_CUDA_CHECK_LAUNCH(s);
  return ok_status();
}

Status rmsnorm_rows(const float* x, const float* w, int n, int dim, float eps, __half* y,
                    cudaStream_t s, Q8Out q8) {
  if (n <= 0) return ok_status();
  if (q8.q && dim % 32 != 0)
    return invalid_argument("rmsnorm_rows: 8-bit output needs dim % 32 == 0");
  rmsnorm_kernel<<<n, kNormThreads, 0, s>>>(x, w, dim, eps, y, q8);
  TQ_CUDA_CHECK_LAUNCH(s);
  return ok_status();
}

Status rope_table(const float* inv_freq, int half, int pos0, int n, float2* cs, cudaStream_t s) {
  if (n <= 0 || half <= 0) return ok_status();
  rope_table_kernel<<<n, 64, 0, s>>>(inv_freq, half, pos0, nullptr, cs);
  TQ_CUDA_CHECK_LAUNCH(s);
  return ok_status();
}

Status rope_table_at(const float* inv_freq, int half, const int32_t* positions, int n, float2* cs,
                     cudaStream_t s) {
  if (n <= 0 || half <= 0) return ok_status();
  rope_table_kernel<<<n, 64, 0, s>>>(inv_freq, half, 0, positions, cs);
  TQ_CUDA_CHECK_LAUNCH(s);
  return ok_status();
}

Status rope_split(const RopeSplitParams& p, cudaStream_t s) {
  if (p.n <= 0) return ok_status();
  if (p.rope_dims > p.head_dim || p.rope_dims % 2 != 0)
    return invalid_argument("rope_split: rope_dims must be even and at most head_dim");
  const int row_len = (p.n_heads + 2 * p.n_kv_heads) * p.head_dim;
  TQ_CUDA_TRY(launch_maybe_pdl(rope_split_kernel,
                               dim3((row_len + kRowThreads - 1) / kRowThreads, p.n),
                               dim3(kRowThreads), 0, s, p.overlap, p));
  TQ_CUDA_CHECK_LAUNCH(s);
  return ok_status();
}

Status first_pass_stats(const FirstPassStatsParams& p, cudaStream_t s) {
  if (p.n <= 0 || (!p.mu && !p.t)) return ok_status();
  if (p.head_dim <= 0 || p.head_dim > kStatsThreads || p.n_kv_heads <= 0 ||
      p.n_heads % p.n_kv_heads != 0 || p.from < 0 || p.to > p.n || (p.s && !p.mu))
    return invalid_argument("first_pass_stats: bad shape, range, or key scales without a mean");
  first_pass_stats_kernel<<<p.n_kv_heads, kStatsThreads, 0, s>>>(p);
  TQ_CUDA_CHECK_LAUNCH(s);
  return ok_status();
}

// One block per row: each thread scans a strided part, then a shared-memory tree of
// (value, index) pairs keeps the larger value, or the lower index of equal ones.
constexpr int kArgmaxThreads = 256;
__global__ void argmax_kernel(const float* x, int n, int32_t* out) {
  __shared__ float sv[kArgmaxThreads];
  __shared__ int si[kArgmaxThreads];
  const float* row = x + static_cast<size_t>(blockIdx.x) * n;
  float bv = -INFINITY;
  int bi = INT_MAX;
  for (int i = threadIdx.x; i < n; i += kArgmaxThreads) {
    const float v = isnan(row[i]) ? -INFINITY : row[i];
    if (v > bv || (v == bv && i < bi)) bv = v, bi = i;
  }
  sv[threadIdx.x] = bv;
  si[threadIdx.x] = bi;
  __syncthreads();
  for (int h = kArgmaxThreads / 2; h > 0; h /= 2) {
    if (threadIdx.x < h) {
      const float ov = sv[threadIdx.x + h];
      const int oi = si[threadIdx.x + h];
      if (ov > sv[threadIdx.x] || (ov == sv[threadIdx.x] && oi < si[threadIdx.x]))
        sv[threadIdx.x] = ov, si[threadIdx.x] = oi;
    }
    __syncthreads();
  }
  // -1 when every value is NaN or -inf (runtime::greedy_token's contract).
  if (threadIdx.x == 0) out[blockIdx.x] = sv[0] == -INFINITY ? -1 : si[0];
}

Status argmax_rows(const float* x, int rows, int n, int32_t* out, cudaStream_t s) {
  if (rows <= 0 || n <= 0) return ok_status();
  argmax_kernel<<<rows, kArgmaxThreads, 0, s>>>(x, n, out);
  TQ_CUDA_CHECK_LAUNCH(s);
  return ok_status();
}

Status silu_mul_rows(const float* gu, int n, int ffn, __half* h, cudaStream_t s, Q8Out q8) {
  if (n <= 0) return ok_status();
  if (q8.q && ffn % 32 != 0)
    return invalid_argument("silu_mul_rows: 8-bit output needs ffn % 32 == 0");
  silu_mul_kernel<<<dim3((ffn + kRowThreads - 1) / kRowThreads, n), kRowThreads, 0, s>>>(gu, ffn, h,
                                                                                         q8);
  TQ_CUDA_CHECK_LAUNCH(s);
  return ok_status();
}

Status gemv_f16(const __half* w, int rows, int cols, const __half* x, float* y, float beta,
                cudaStream_t s) {
  if (rows <= 0) return ok_status();
  if (cols % 8 != 0 || reinterpret_cast<uintptr_t>(w) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(x) % 16 != 0)
    return invalid_argument("gemv_f16: cols must be a multiple of 8 and w, x 16-byte aligned");
  gemv_f16_kernel<<<(rows + kGemvWarps - 1) / kGemvWarps, kGemvWarps * 32, 0, s>>>(w, rows, cols, x,
                                                                                   y, beta);
  TQ_CUDA_CHECK_LAUNCH(s);
  return ok_status();
}

Status step_tables(const StepTablesParams& p, cudaStream_t s) {
  if (p.n <= 0) return ok_status();
  if (p.exact.slots && (p.exact.sinks < 0 || p.exact.window < 0 ||
                        p.exact.blocks * p.block_tokens < p.exact.sinks + p.exact.window))
    return invalid_argument("step_tables: the exact rows' pages do not hold sinks + window rows");
  step_tables_kernel<<<p.n, 128, 0, s>>>(p);
  TQ_CUDA_CHECK_LAUNCH(s);
  return ok_status();
}

Status copy_exact_rows(const PagedPool& k, const PagedPool& v, const int32_t* src,
                       const int32_t* dst, int rows, cudaStream_t s) {
  if (rows <= 0) return ok_status();
  if (!(k.format == quant::kFormatF16) || !(v.format == quant::kFormatF16) ||
      k.head_dim != v.head_dim || k.n_kv_heads != v.n_kv_heads ||
      k.block_tokens != v.block_tokens ||
      k.block_stride_or_default() != v.block_stride_or_default() ||
      k.head_stride_or_default() != v.head_stride_or_default() || k.head_dim % 8 != 0)
    return invalid_argument(
        "copy_exact_rows: needs two f16 pools of one shape (head_dim % 8 == 0)");
  copy_exact_rows_kernel<<<rows, 128, 0, s>>>(k.data, v.data, k.block_stride_or_default(),
                                              k.head_stride_or_default(), k.block_tokens,
                                              k.n_kv_heads, k.head_dim / 8, src, dst);
  TQ_CUDA_CHECK_LAUNCH(s);
  return ok_status();
}

}  // namespace tq::backend::cuda
