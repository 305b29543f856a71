// The quantized-weight GEMV and dequantizer (gemv_q.h): one kernel template over the block
// format, the activation type and the token count.
#include <algorithm>
#include <cstring>
#include <mutex>
#include <type_traits>

#include "tq/backend/cuda/cuda_common.cuh"
#include "tq/backend/cuda/gemv_q.h"
#include "tq/backend/cuda/q8_act.cuh"
#include "tq/quant/ggml_blocks.h"

namespace tq::backend::cuda {
namespace {

constexpr int kWarps = 8;  // warps per thread block
// Rows per warp for NT tokens: two for one or two tokens (each activation load serves both
// rows); one from three tokens up, where two rows' accumulators and unpacked weights would cost
// occupancy (188 registers at 8 tokens).
template <int NT>
constexpr int kWarpRows = NT <= 2 ? 2 : 1;

// Byte k of w, an unsigned integer u, as the float u - kBias, exactly: one byte permute puts u
// under the exponent of 2^23 (the float 2^23 + u) and one subtraction leaves u - kBias. Two
// full-rate instructions per weight instead of the int-to-float converter (a quarter of the
// FP32 rate on sm_90), which bounded the first version of this kernel.
template <int kBias>
__device__ __forceinline__ float byte_to_float(uint32_t w, int k) {
  return __uint_as_float(__byte_perm(w, 0x4b000000u, 0x7650u | static_cast<uint32_t>(k))) -
         (8388608.0f + static_cast<float>(kBias));
}

// Per format: quant bytes per block, and the 32 quants of a block as floats (d not applied).
template <WeightFormat F>
struct BlockFormat;

template <>
struct BlockFormat<WeightFormat::kQ4_0> {
  static constexpr int kQsBytes = 16;
  static constexpr int kFileBytes = sizeof(quant::BlockQ4_0);
  // Byte j: q[j] in the low nibble, q[j + 16] in the high one; value q - 8.
  __device__ __forceinline__ static void unpack(const uint4 (&q)[1], float (&v)[32]) {
    const uint32_t w[4] = {q[0].x, q[0].y, q[0].z, q[0].w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t lo = w[i] & 0x0f0f0f0fu, hi = (w[i] >> 4) & 0x0f0f0f0fu;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        v[4 * i + k] = byte_to_float<8>(lo, k);
        v[16 + 4 * i + k] = byte_to_float<8>(hi, k);
      }
    }
  }
};

template <>
struct BlockFormat<WeightFormat::kQ8_0> {
  static constexpr int kQsBytes = 32;
  static constexpr int kFileBytes = sizeof(quant::BlockQ8_0);
  __device__ __forceinline__ static void unpack(const uint4 (&q)[2], float (&v)[32]) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      // b ^ 0x80 is the int8 b plus 128, as an unsigned byte.
      const uint32_t w[4] = {q[h].x ^ 0x80808080u, q[h].y ^ 0x80808080u, q[h].z ^ 0x80808080u,
                             q[h].w ^ 0x80808080u};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int k = 0; k < 4; ++k) v[16 * h + 4 * i + k] = byte_to_float<128>(w[i], k);
    }
  }
};

// The 32 activations of one block as floats (16-byte loads, cached: every row reads them).
__device__ __forceinline__ void load_x(const __half* x, float (&v)[32]) {
  const uint4* p = reinterpret_cast<const uint4*>(x);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const uint4 u = __ldg(p + j);
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __half22float2(dev::bits_h2(w[i]));
      v[8 * j + 2 * i] = f.x;
      v[8 * j + 2 * i + 1] = f.y;
    }
  }
}
__device__ __forceinline__ void load_x(const float* x, float (&v)[32]) {
  const float4* p = reinterpret_cast<const float4*>(x);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float4 f = __ldg(p + j);
    v[4 * j] = f.x;
    v[4 * j + 1] = f.y;
    v[4 * j + 2] = f.z;
    v[4 * j + 3] = f.w;
  }
}

// Blocks a lane loads before it computes: several 16-byte loads in flight per lane hide DRAM
// latency (a Llama-8B row of 4096 columns is 128 blocks: 4 per lane, all issued at once).
template <WeightFormat F>
constexpr int kUnroll = BlockFormat<F>::kQsBytes == 16 ? 4 : 2;

template <WeightFormat F, typename XT, int NT>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_q_kernel(const uint8_t* __restrict__ qs, const __half* __restrict__ scales, int rows,
                  int nb, const XT* __restrict__ x, int ldx, float* __restrict__ y, int ldy,
                  float beta) {
  using Fmt = BlockFormat<F>;
  constexpr int QW = Fmt::kQsBytes / 16;  // uint4 per block
  constexpr int U = kUnroll<F>;
  constexpr int R = kWarpRows<NT>;
  const int lane = threadIdx.x % 32;
  const int row0 = (blockIdx.x * kWarps + threadIdx.x / 32) * R;
  if (row0 >= rows) return;  // whole warps leave together: the shuffles below stay full
  // A warp's rows past the end repeat its first row (loaded and summed, never stored).
  const uint4* q[R];
  const __half* d[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int row = row0 + r < rows ? row0 + r : row0;
    q[r] = reinterpret_cast<const uint4*>(qs) + static_cast<size_t>(row) * nb * QW;
    d[r] = scales + static_cast<size_t>(row) * nb;
  }
  float acc[R][NT];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[r][t] = 0.0f;
  for (int b0 = lane; b0 < nb; b0 += 32 * U) {
    uint4 qv[U][R][QW] = {};
    float dv[U][R] = {};
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int b = b0 + 32 * u;
      if (b < nb) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
#pragma unroll
          for (int j = 0; j < QW; ++j) qv[u][r][j] = __ldg(q[r] + static_cast<size_t>(b) * QW + j);
          dv[u][r] = __half2float(__ldg(d[r] + b));
        }
      }
    }
    // The weights are in flight; x (and Y) come from the previous kernels (launched with
    // programmatic dependence, this kernel may have started before they ended).
    dev::pdl_wait();
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int b = b0 + 32 * u;
      if (b >= nb) break;
      float v[R][32];
#pragma unroll
      for (int r = 0; r < R; ++r) Fmt::unpack(qv[u][r], v[r]);
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        float xv[32];
        load_x(x + static_cast<size_t>(t) * ldx + static_cast<size_t>(b) * 32, xv);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          float s = 0.0f;
#pragma unroll
          for (int j = 0; j < 32; ++j) s = fmaf(v[r][j], xv[j], s);
          acc[r][t] = fmaf(dv[u][r], s, acc[r][t]);
        }
      }
    }
  }
  dev::pdl_wait();  // (a row shorter than a lane's first block skipped the loop)
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      float a = acc[r][t];
      for (int o = 16; o > 0; o /= 2) a += __shfl_xor_sync(0xffffffffu, a, o);
      if (lane == 0 && row0 + r < rows) {
        float* out = y + static_cast<size_t>(t) * ldy + row0 + r;
        *out = beta == 0.0f ? a : fmaf(beta, *out, a);
      }
    }
}

// --- 8-bit activations (GemvActivations::kQ8) ---
// Each thread block first quantizes the whole of X into shared memory as llama.cpp's q8_1 and
// tq's CPU matmuls do (per 32 columns: d = amax / 127, q = round-to-even(x * 127 / amax), and
// the sum of the q), then its warps walk rows with integer dot products: a Q4_0 block against
// one token is 8 DP4A on masked nibbles and one float FMA, where the float path spends ~100
// instructions (the instruction budget, not bytes, bounded that path at 1.2-2.6 TB/s). The grid
// is at most one wave of resident blocks, each warp taking rows round-robin with the next row's
// weights in flight while it computes the current one, so X is quantized once per resident
// block and the DRAM queue never drains between rows.

// X's quants in shared memory, per token: two planes of [nb][16] int8 (columns 0-15 and 16-31
// of every block, so a lane's 16-byte loads of consecutive blocks never share a bank), then the
// blocks' scales.
constexpr int kQ8BytesPerBlock = 32 + static_cast<int>(sizeof(Q8Scale));

template <int NT>
__host__ __device__ constexpr size_t q8_smem_bytes(int nb) {
  return static_cast<size_t>(NT) * nb * kQ8BytesPerBlock;
}

// 8 consecutive activations as they are stored (uint4 of f16, or two float4).
template <typename XT>
struct Raw8;
template <>
struct Raw8<__half> {
  uint4 u;
  __device__ __forceinline__ void load(const __half* x) { u = *reinterpret_cast<const uint4*>(x); }
  __device__ __forceinline__ void to_float(float (&v)[8]) const {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __half22float2(dev::bits_h2(w[i]));
      v[2 * i] = f.x;
      v[2 * i + 1] = f.y;
    }
  }
};
template <>
struct Raw8<float> {
  float4 a, b;
  __device__ __forceinline__ void load(const float* x) {
    a = *reinterpret_cast<const float4*>(x);
    b = *reinterpret_cast<const float4*>(x + 4);
  }
  __device__ __forceinline__ void to_float(float (&v)[8]) const {
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  }
};

// X [NT][ldx] -> shared memory, 8 columns per thread and group, the 4 threads of a 32-column
// block adjacent lanes (blockDim and nb * 4 are multiples of 4), reductions by shuffles. A
// thread loads kBatch groups before it quantizes any: one L2 round trip per kBatch groups, not
// one per group (ffn_down's 14336 columns are 7 groups a thread).
template <typename XT, int NT>
__device__ __forceinline__ void quantize_x_q8(const XT* __restrict__ x, int ldx, int nb,
                                              uint8_t* smem) {
  constexpr int kBatch = sizeof(XT) == 2 ? 8 : 4;  // 32 registers of raw x either way
  int8_t* xq = reinterpret_cast<int8_t*>(smem);
  Q8Scale* xs = reinterpret_cast<Q8Scale*>(smem + static_cast<size_t>(NT) * nb * 32);
  const int groups = NT * nb * 4;
  for (int g0 = 0; g0 < groups; g0 += blockDim.x * kBatch) {  // whole warps: full shuffles
    Raw8<XT> raw[kBatch];
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      const int g = g0 + i * blockDim.x + static_cast<int>(threadIdx.x);
      if (g < groups) raw[i].load(x + static_cast<size_t>(g / (nb * 4)) * ldx + (g % (nb * 4)) * 8);
    }
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      if (g0 + i * blockDim.x >= groups) break;  // uniform across the block
      const int g = g0 + i * blockDim.x + static_cast<int>(threadIdx.x);
      const bool valid = g < groups;
      const int t = valid ? g / (nb * 4) : 0, c8 = valid ? g % (nb * 4) : 0;
      const int b = c8 / 4, part = c8 % 4;
      float v[8] = {};
      if (valid) raw[i].to_float(v);
      const float amax = dev::q8_block_scale(v, 4);
      int q[8];
      const int sum = dev::q8_quantize(v, amax, 4, q);
      if (!valid) continue;
      uint2 packed;
      packed.x = (q[0] & 0xff) | (q[1] & 0xff) << 8 | (q[2] & 0xff) << 16 |
                 static_cast<uint32_t>(q[3]) << 24;
      packed.y = (q[4] & 0xff) | (q[5] & 0xff) << 8 | (q[6] & 0xff) << 16 |
                 static_cast<uint32_t>(q[7]) << 24;
      *reinterpret_cast<uint2*>(xq + ((static_cast<size_t>(t) * 2 + part / 2) * nb + b) * 16 +
                                (part % 2) * 8) = packed;
      if (part == 0) xs[static_cast<size_t>(t) * nb + b] = dev::q8_scale(amax, sum);
    }
  }
}

// sum_j q_w[j] q_x[j] of one block and one token (Q4_0: nibbles 0..15, the -8 applied by the
// caller through the quant sum; Q8_0: signed quants). lo/hi: the x planes' 16 quants.
template <WeightFormat F>
struct BlockDot;

template <>
struct BlockDot<WeightFormat::kQ4_0> {
  static constexpr int kOffset = 8;
  struct Unpacked {
    uint32_t lo[4], hi[4];  // columns 4i..4i+3 and 16+4i.. of word i, as bytes 0..15
  };
  __device__ __forceinline__ static Unpacked unpack(const uint4 (&q)[1]) {
    const uint32_t w[4] = {q[0].x, q[0].y, q[0].z, q[0].w};
    Unpacked u;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      u.lo[i] = w[i] & 0x0f0f0f0fu;
      u.hi[i] = (w[i] >> 4) & 0x0f0f0f0fu;
    }
    return u;
  }
  __device__ __forceinline__ static int dot(const Unpacked& u, const uint4& lo, const uint4& hi) {
    int s = __dp4a(static_cast<int>(u.lo[0]), static_cast<int>(lo.x), 0);
    s = __dp4a(static_cast<int>(u.lo[1]), static_cast<int>(lo.y), s);
    s = __dp4a(static_cast<int>(u.lo[2]), static_cast<int>(lo.z), s);
    s = __dp4a(static_cast<int>(u.lo[3]), static_cast<int>(lo.w), s);
    s = __dp4a(static_cast<int>(u.hi[0]), static_cast<int>(hi.x), s);
    s = __dp4a(static_cast<int>(u.hi[1]), static_cast<int>(hi.y), s);
    s = __dp4a(static_cast<int>(u.hi[2]), static_cast<int>(hi.z), s);
    return __dp4a(static_cast<int>(u.hi[3]), static_cast<int>(hi.w), s);
  }
};

template <>
struct BlockDot<WeightFormat::kQ8_0> {
  static constexpr int kOffset = 0;
  struct Unpacked {
    uint4 lo, hi;
  };
  __device__ __forceinline__ static Unpacked unpack(const uint4 (&q)[2]) { return {q[0], q[1]}; }
  __device__ __forceinline__ static int dot(const Unpacked& u, const uint4& lo, const uint4& hi) {
    int s = __dp4a(static_cast<int>(u.lo.x), static_cast<int>(lo.x), 0);
    s = __dp4a(static_cast<int>(u.lo.y), static_cast<int>(lo.y), s);
    s = __dp4a(static_cast<int>(u.lo.z), static_cast<int>(lo.z), s);
    s = __dp4a(static_cast<int>(u.lo.w), static_cast<int>(lo.w), s);
    s = __dp4a(static_cast<int>(u.hi.x), static_cast<int>(hi.x), s);
    s = __dp4a(static_cast<int>(u.hi.y), static_cast<int>(hi.y), s);
    s = __dp4a(static_cast<int>(u.hi.z), static_cast<int>(hi.z), s);
    return __dp4a(static_cast<int>(u.hi.w), static_cast<int>(hi.w), s);
  }
};

// One "item" of a warp's walk: U blocks per lane of one row (blocks ch * 32U + 32u + lane).
template <WeightFormat F>
struct RowChunk {
  static constexpr int QW = BlockFormat<F>::kQsBytes / 16;
  static constexpr int U = kUnroll<F>;
  uint4 q[U][QW];
  float d[U];
  __device__ __forceinline__ void load(const uint4* qs, const __half* scales, int nb, int row,
                                       int ch, int lane) {
    const size_t r0 = static_cast<size_t>(row) * nb;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int b = ch * 32 * U + 32 * u + lane;
      if (b < nb) {
#pragma unroll
        for (int j = 0; j < QW; ++j) q[u][j] = __ldg(qs + (r0 + b) * QW + j);
        d[u] = __half2float(__ldg(scales + r0 + b));
      }
    }
  }
};

// Where the kernel finds X's quants. SmemX: the thread block quantizes X itself into shared
// memory first (any caller of gemv_q); GlobalX: the kernel before wrote them to device memory
// (the model's RMSNorm, SwiGLU and attention-output kernels, gemv_q8), so no block repeats the
// work and the weights stream from the first instruction.
template <typename XT, int NT>
struct SmemX {
  const XT* x;
  int ldx;
  const uint4* q = nullptr;  // [NT][2][nb] 16-byte groups (the two column planes)
  const Q8Scale* s = nullptr;
  int nb = 0;
  __device__ __forceinline__ void init(uint8_t* smem, int n_blocks) {
    quantize_x_q8<XT, NT>(x, ldx, n_blocks, smem);
    __syncthreads();
    nb = n_blocks;
    q = reinterpret_cast<const uint4*>(smem);
    s = reinterpret_cast<const Q8Scale*>(smem + static_cast<size_t>(NT) * nb * 32);
  }
  __device__ __forceinline__ void fetch(int t, int b, uint4& lo, uint4& hi, Q8Scale& sc) const {
    const size_t o = static_cast<size_t>(t) * 2 * nb + b;
    lo = q[o];
    hi = q[o + nb];
    sc = s[static_cast<size_t>(t) * nb + b];
  }
};
struct GlobalX {
  const int8_t* q;   // [NT][ld]
  const Q8Scale* s;  // [NT][ld / 32]
  int ld;
  __device__ __forceinline__ void init(uint8_t*, int) {}
  __device__ __forceinline__ void fetch(int t, int b, uint4& lo, uint4& hi, Q8Scale& sc) const {
    const uint4* p = reinterpret_cast<const uint4*>(q + static_cast<size_t>(t) * ld) + 2 * b;
    lo = __ldg(p);
    hi = __ldg(p + 1);
    const int2 v = __ldg(reinterpret_cast<const int2*>(s + static_cast<size_t>(t) * (ld / 32) + b));
    sc = Q8Scale{__int_as_float(v.x), v.y};
  }
};

// Quants in device memory copied into shared memory first (the two column planes, as SmemX):
// with several tokens every block's x is read once per token from shared memory instead of L1,
// which otherwise bounds the larger matrices (gate+up at 2 tokens: 30 us direct, 26 staged).
template <int NT>
struct StagedX {
  const int8_t* gq;
  const Q8Scale* gs;
  int ld;
  const uint4* q = nullptr;
  const Q8Scale* s = nullptr;
  int nb = 0;
  __device__ __forceinline__ void init(uint8_t* smem, int n_blocks) {
    nb = n_blocks;
    uint4* dq = reinterpret_cast<uint4*>(smem);
    Q8Scale* ds = reinterpret_cast<Q8Scale*>(smem + static_cast<size_t>(NT) * nb * 32);
#pragma unroll 8
    for (int i = threadIdx.x; i < NT * nb * 2; i += blockDim.x) {
      const int t = i / (2 * nb), r = i % (2 * nb), b = r / 2, plane = r % 2;
      dq[(t * 2 + plane) * nb + b] =
          __ldg(reinterpret_cast<const uint4*>(gq + static_cast<size_t>(t) * ld) + 2 * b + plane);
    }
#pragma unroll 4
    for (int i = threadIdx.x; i < NT * nb; i += blockDim.x) {
      const int t = i / nb, b = i % nb;
      const int2 v =
          __ldg(reinterpret_cast<const int2*>(gs + static_cast<size_t>(t) * (ld / 32) + b));
      ds[i] = Q8Scale{__int_as_float(v.x), v.y};
    }
    __syncthreads();
    q = dq;
    s = ds;
  }
  __device__ __forceinline__ void fetch(int t, int b, uint4& lo, uint4& hi, Q8Scale& sc) const {
    const size_t o = static_cast<size_t>(t) * 2 * nb + b;
    lo = q[o];
    hi = q[o + nb];
    sc = s[static_cast<size_t>(t) * nb + b];
  }
};

template <WeightFormat F, int NT, class XSrc>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_q8a_kernel(const uint8_t* __restrict__ qs, const __half* __restrict__ scales, int rows,
                    int nb, XSrc xsrc, float* __restrict__ y, int ldy, float beta) {
  using Dot = BlockDot<F>;
  constexpr int U = kUnroll<F>;
  extern __shared__ __align__(16) uint8_t smem[];
  dev::pdl_launch_dependents();  // RoPE after the QKV matmul may start loading its tables
  const int lane = threadIdx.x % 32;
  const int stride = gridDim.x * kWarps;
  const int chunks = (nb + 32 * U - 1) / (32 * U);
  const uint4* q4 = reinterpret_cast<const uint4*>(qs);
  int row = blockIdx.x * kWarps + static_cast<int>(threadIdx.x) / 32, ch = 0;
  RowChunk<F> cur;
  if (row < rows) cur.load(q4, scales, nb, row, ch, lane);  // in flight before X is ready
  dev::pdl_wait();  // X and Y come from the kernels before (programmatic dependence)
  xsrc.init(smem, nb);
  float acc[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
  while (row < rows) {
    int next_row = row, next_ch = ch + 1;
    if (next_ch == chunks) next_ch = 0, next_row += stride;
    RowChunk<F> next;
    if (next_row < rows) next.load(q4, scales, nb, next_row, next_ch, lane);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int b = ch * 32 * U + 32 * u + lane;
      if (b >= nb) break;
      const typename Dot::Unpacked w = Dot::unpack(cur.q[u]);
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        uint4 lo, hi;
        Q8Scale a;
        xsrc.fetch(t, b, lo, hi, a);
        const int s = Dot::dot(w, lo, hi) - Dot::kOffset * a.sum;
        acc[t] = fmaf(cur.d[u] * a.d, static_cast<float>(s), acc[t]);
      }
    }
    if (ch == chunks - 1) {
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        float a = acc[t];
        for (int o = 16; o > 0; o /= 2) a += __shfl_xor_sync(0xffffffffu, a, o);
        if (lane == 0) {
          float* out = y + static_cast<size_t>(t) * ldy + row;
          *out = beta == 0.0f ? a : fmaf(beta, *out, a);
        }
        acc[t] = 0.0f;
      }
    }
    cur = next;
    row = next_row;
    ch = next_ch;
  }
}

// X [n][ldx] f16 -> quants [n][cols] and scales [n][cols / 32], one warp per block of 32.
__global__ void quantize_q8_kernel(const __half* __restrict__ x, int cols, int ldx, size_t count,
                                   int8_t* __restrict__ q, Q8Scale* __restrict__ s) {
  dev::pdl_launch_dependents();
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  // count is a multiple of 32 and so is blockDim: whole warps take the same trips.
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    const size_t t = i / cols, c = i % cols;
    dev::q8_store_warp_block(__half2float(x[t * ldx + c]), q + i - (threadIdx.x & 31), s + i / 32);
  }
}

// One thread per block: its 32 weights as f16 (four 16-byte stores).
template <WeightFormat F>
__global__ void dequant_kernel(const uint8_t* __restrict__ qs, const __half* __restrict__ scales,
                               size_t first, size_t count, __half* __restrict__ out) {
  using Fmt = BlockFormat<F>;
  constexpr int QW = Fmt::kQsBytes / 16;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    const uint4* q = reinterpret_cast<const uint4*>(qs) + (first + i) * QW;
    uint4 qv[QW];
#pragma unroll
    for (int j = 0; j < QW; ++j) qv[j] = __ldg(q + j);
    const float dv = __half2float(scales[first + i]);
    float v[32];
    Fmt::unpack(qv, v);
    uint4* o = reinterpret_cast<uint4*>(out + i * 32);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      uint4 w;
      w.x = dev::pack_h2(v[8 * j] * dv, v[8 * j + 1] * dv);
      w.y = dev::pack_h2(v[8 * j + 2] * dv, v[8 * j + 3] * dv);
      w.z = dev::pack_h2(v[8 * j + 4] * dv, v[8 * j + 5] * dv);
      w.w = dev::pack_h2(v[8 * j + 6] * dv, v[8 * j + 7] * dv);
      o[j] = w;
    }
  }
}

// Streaming multiprocessors of the current device (asked once per device).
int sm_count() {
  static int counts[16] = {};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 16) return 1;
  if (counts[dev] == 0) {
    int n = 1;
    cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
    counts[dev] = n > 0 ? n : 1;
  }
  return counts[dev];
}

// Resident thread blocks per SM of gemv_q8a_kernel<F, NT, XSrc> with `smem` dynamic bytes (its
// shared-memory limit raised first where needed), remembered per instance and smem (a decode
// step asks the same few shapes again and again).
template <WeightFormat F, int NT, class XSrc>
int q8_resident_blocks(size_t smem) {
  struct Entry {
    size_t smem;
    int blocks;
  };
  static Entry cache[8] = {};
  static int used = 0;
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  for (int i = 0; i < used; ++i)
    if (cache[i].smem == smem) return cache[i].blocks;
  const auto fn = gemv_q8a_kernel<F, NT, XSrc>;
  if (smem > 48 * 1024)
    cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  int blocks = 1;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, fn, kWarps * 32, smem) !=
          cudaSuccess ||
      blocks < 1)
    blocks = 1;
  if (used < 8) cache[used++] = Entry{smem, blocks};
  return blocks;
}

// fn(std::integral_constant<int, NT>{}) for NT = n (1..kGemvMaxTokens; larger n as 8): the
// token count as a template argument, so the accumulators stay in registers.
template <class Fn>
cudaError_t by_tokens(int n, Fn&& fn) {
  switch (n) {
    case 1:
      return fn(std::integral_constant<int, 1>{});
    case 2:
      return fn(std::integral_constant<int, 2>{});
    case 3:
      return fn(std::integral_constant<int, 3>{});
    case 4:
      return fn(std::integral_constant<int, 4>{});
    case 5:
      return fn(std::integral_constant<int, 5>{});
    case 6:
      return fn(std::integral_constant<int, 6>{});
    case 7:
      return fn(std::integral_constant<int, 7>{});
    default:
      return fn(std::integral_constant<int, 8>{});
  }
}

// The matrix's two parts (gemv_q.h's split layout).
template <WeightFormat F>
struct Parts {
  const uint8_t* qs;
  const __half* scales;
  int nb;
  explicit Parts(const MatrixView& w)
      : qs(static_cast<const uint8_t*>(w.data)),
        scales(reinterpret_cast<const __half*>(qs + static_cast<size_t>(w.rows) * (w.cols / 32) *
                                                        BlockFormat<F>::kQsBytes)),
        nb(w.cols / 32) {}
};

// gemv_q8a_kernel over one wave of resident blocks (at most one warp per row).
template <WeightFormat F, int NT, class XSrc>
cudaError_t launch_q8a(const MatrixView& w, XSrc xsrc, size_t smem, float* y, int ldy, float beta,
                       cudaStream_t s, bool overlap) {
  const Parts<F> m(w);
  const int tiles = (w.rows + kWarps - 1) / kWarps;
  const int wave = q8_resident_blocks<F, NT, XSrc>(smem) * sm_count();
  return launch_maybe_pdl(gemv_q8a_kernel<F, NT, XSrc>, dim3(std::min(tiles, wave)),
                          dim3(kWarps * 32), smem, s, overlap, m.qs, m.scales, w.rows, m.nb, xsrc,
                          y, ldy, beta);
}

template <WeightFormat F, typename XT>
cudaError_t launch_n(const MatrixView& w, const XT* x, int n, int ldx, float* y, int ldy,
                     float beta, cudaStream_t s, bool overlap, GemvActivations acts) {
  return by_tokens(n, [&](auto nt) {
    constexpr int NT = decltype(nt)::value;
    const size_t smem = q8_smem_bytes<NT>(w.cols / 32);
    if (acts == GemvActivations::kQ8 && smem <= kGemvQ8MaxSmem)
      return launch_q8a<F, NT>(w, SmemX<XT, NT>{x, ldx}, smem, y, ldy, beta, s, overlap);
    const Parts<F> m(w);
    constexpr int kBlockRows = kWarps * kWarpRows<NT>;
    return launch_maybe_pdl(gemv_q_kernel<F, XT, NT>, dim3((w.rows + kBlockRows - 1) / kBlockRows),
                            dim3(kWarps * 32), 0, s, overlap, m.qs, m.scales, w.rows, m.nb, x, ldx,
                            y, ldy, beta);
  });
}

// 8-bit activations from device memory (gemv_q8): several tokens copy them into shared memory
// first, one token reads them in place.
template <WeightFormat F>
cudaError_t launch_q8_n(const MatrixView& w, const Q8Activations& x, int n, float* y, int ldy,
                        float beta, cudaStream_t s, bool overlap) {
  return by_tokens(n, [&](auto nt) {
    constexpr int NT = decltype(nt)::value;
    const size_t smem = q8_smem_bytes<NT>(w.cols / 32);
    if (NT >= 2 && smem <= kGemvQ8MaxSmem)
      return launch_q8a<F, NT>(w, StagedX<NT>{x.q, x.scales, x.ld}, smem, y, ldy, beta, s, overlap);
    return launch_q8a<F, NT>(w, GlobalX{x.q, x.scales, x.ld}, 0, y, ldy, beta, s, overlap);
  });
}

template <typename XT>
Status gemv_q_any(const MatrixView& w, const XT* x, int n, int ldx, float* y, int ldy, float beta,
                  cudaStream_t s, bool overlap, GemvActivations acts) {
  if (w.rows <= 0 || n <= 0) return ok_status();
  constexpr int kAlign = 16 / static_cast<int>(sizeof(XT));
  if (w.format == WeightFormat::kF16 || w.cols % 32 != 0 || n > kGemvMaxTokens ||
      ldx % kAlign != 0 || reinterpret_cast<uintptr_t>(x) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(w.data) % 16 != 0)
    return invalid_argument(
        "gemv_q: needs a Q4_0/Q8_0 matrix with cols % 32 == 0, 1..8 tokens, 16-byte aligned x "
        "rows");
  TQ_CUDA_TRY(w.format == WeightFormat::kQ4_0
                  ? launch_n<WeightFormat::kQ4_0>(w, x, n, ldx, y, ldy, beta, s, overlap, acts)
                  : launch_n<WeightFormat::kQ8_0>(w, x, n, ldx, y, ldy, beta, s, overlap, acts));
  TQ_CUDA_CHECK_LAUNCH(s);
  return ok_status();
}

template <WeightFormat F>
void split_rows(const uint8_t* src, size_t blocks, uint8_t* qs, uint16_t* scales) {
  using Fmt = BlockFormat<F>;
  for (size_t i = 0; i < blocks; ++i) {
    const uint8_t* b = src + i * Fmt::kFileBytes;
    std::memcpy(&scales[i], b, sizeof(uint16_t));  // d first in both ggml blocks
    std::memcpy(qs + i * Fmt::kQsBytes, b + sizeof(uint16_t), Fmt::kQsBytes);
  }
}

}  // namespace

const char* weight_format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::kQ4_0:
      return "q4_0";
    case WeightFormat::kQ8_0:
      return "q8_0";
    default:
      return "f16";
  }
}

int quant_qs_bytes(WeightFormat f) {
  switch (f) {
    case WeightFormat::kQ4_0:
      return BlockFormat<WeightFormat::kQ4_0>::kQsBytes;
    case WeightFormat::kQ8_0:
      return BlockFormat<WeightFormat::kQ8_0>::kQsBytes;
    default:
      return 0;
  }
}

size_t weight_matrix_bytes(WeightFormat f, int64_t rows, int64_t cols) {
  const size_t n = static_cast<size_t>(rows) * static_cast<size_t>(cols);
  if (f == WeightFormat::kF16) return n * sizeof(__half);
  const size_t blocks = n / 32;
  return blocks * (static_cast<size_t>(quant_qs_bytes(f)) + sizeof(uint16_t));
}

void split_blocks(WeightFormat f, const uint8_t* src, int64_t rows, int64_t cols, uint8_t* qs,
                  uint16_t* scales) {
  const size_t blocks = static_cast<size_t>(rows) * static_cast<size_t>(cols / 32);
  if (f == WeightFormat::kQ4_0) split_rows<WeightFormat::kQ4_0>(src, blocks, qs, scales);
  if (f == WeightFormat::kQ8_0) split_rows<WeightFormat::kQ8_0>(src, blocks, qs, scales);
}

Status gemv_q(const MatrixView& w, const __half* x, int n, int ldx, float* y, int ldy, float beta,
              cudaStream_t s, bool overlap, GemvActivations acts) {
  return gemv_q_any(w, x, n, ldx, y, ldy, beta, s, overlap, acts);
}

Status gemv_q(const MatrixView& w, const float* x, int n, int ldx, float* y, int ldy, float beta,
              cudaStream_t s, bool overlap, GemvActivations acts) {
  return gemv_q_any(w, x, n, ldx, y, ldy, beta, s, overlap, acts);
}

bool gemv_q8_applies(const MatrixView& w, int n) {
  const size_t smem = static_cast<size_t>(n) * (w.cols / 32) * kQ8BytesPerBlock;
  return w.format != WeightFormat::kF16 && n >= 1 && n <= kGemvMaxTokens && smem <= kGemvQ8MaxSmem;
}

Status quantize_q8(const __half* x, int n, int cols, int ldx, int8_t* q, Q8Scale* scales,
                   cudaStream_t s) {
  if (n <= 0) return ok_status();
  if (cols <= 0 || cols % 32 != 0 || ldx < cols)
    return invalid_argument("quantize_q8: cols must be a positive multiple of 32, ldx >= cols");
  const size_t count = static_cast<size_t>(n) * cols;
  const size_t grid = (count + 255) / 256;
  quantize_q8_kernel<<<static_cast<unsigned>(grid < 4096 ? grid : 4096), 256, 0, s>>>(
      x, cols, ldx, count, q, scales);
  TQ_CUDA_CHECK_LAUNCH(s);
  return ok_status();
}

Status gemv_q8(const MatrixView& w, const Q8Activations& x, int n, float* y, int ldy, float beta,
               cudaStream_t s, bool overlap) {
  if (w.rows <= 0 || n <= 0) return ok_status();
  if (w.format == WeightFormat::kF16 || w.cols % 32 != 0 || n > kGemvMaxTokens || x.ld < w.cols ||
      x.ld % 32 != 0 || reinterpret_cast<uintptr_t>(x.q) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(x.scales) % 8 != 0 ||
      reinterpret_cast<uintptr_t>(w.data) % 16 != 0)
    return invalid_argument(
        "gemv_q8: needs a Q4_0/Q8_0 matrix with cols % 32 == 0, 1..8 tokens, 16-byte aligned "
        "quants with ld >= cols, ld % 32 == 0");
  TQ_CUDA_TRY(w.format == WeightFormat::kQ4_0
                  ? launch_q8_n<WeightFormat::kQ4_0>(w, x, n, y, ldy, beta, s, overlap)
                  : launch_q8_n<WeightFormat::kQ8_0>(w, x, n, y, ldy, beta, s, overlap));
  TQ_CUDA_CHECK_LAUNCH(s);
  return ok_status();
}

Status dequant_rows(const MatrixView& w, int row0, int nrows, __half* out, cudaStream_t s) {
  if (nrows <= 0) return ok_status();
  if (w.format == WeightFormat::kF16 || w.cols % 32 != 0 || row0 < 0 || row0 + nrows > w.rows ||
      reinterpret_cast<uintptr_t>(out) % 16 != 0)
    return invalid_argument("dequant_rows: needs a Q4_0/Q8_0 matrix, rows in range, aligned out");
  const size_t nb = static_cast<size_t>(w.cols / 32);
  const size_t first = static_cast<size_t>(row0) * nb, count = static_cast<size_t>(nrows) * nb;
  const uint8_t* qs = static_cast<const uint8_t*>(w.data);
  const __half* sc = reinterpret_cast<const __half*>(
      qs + static_cast<size_t>(w.rows) * nb * static_cast<size_t>(quant_qs_bytes(w.format)));
  const size_t grid = (count + 255) / 256;
  const unsigned g = static_cast<unsigned>(grid < 8192 ? grid : 8192);
  if (w.format == WeightFormat::kQ4_0)
    dequant_kernel<WeightFormat::kQ4_0><<<g, 256, 0, s>>>(qs, sc, first, count, out);
  else
    dequant_kernel<WeightFormat::kQ8_0><<<g, 256, 0, s>>>(qs, sc, first, count, out);
  TQ_CUDA_CHECK_LAUNCH(s);
  return ok_status();
}

}  // namespace tq::backend::cuda
