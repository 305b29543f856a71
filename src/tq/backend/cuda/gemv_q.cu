// The quantized-weight GEMV and dequantizer (gemv_q.h): one kernel template over the block
// format, the activation type and the token count.
#include <cstring>

#include "tq/backend/cuda/cuda_common.cuh"
#include "tq/backend/cuda/gemv_q.h"
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

template <WeightFormat F, typename XT, int NT>
cudaError_t launch(const MatrixView& w, const XT* x, int ldx, float* y, int ldy, float beta,
                   cudaStream_t s, bool overlap) {
  const int nb = w.cols / 32;
  const uint8_t* qs = static_cast<const uint8_t*>(w.data);
  const __half* sc = reinterpret_cast<const __half*>(qs + static_cast<size_t>(w.rows) * nb *
                                                              BlockFormat<F>::kQsBytes);
  constexpr int kBlockRows = kWarps * kWarpRows<NT>;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3((w.rows + kBlockRows - 1) / kBlockRows);
  cfg.blockDim = dim3(kWarps * 32);
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = overlap ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, gemv_q_kernel<F, XT, NT>, qs, sc, w.rows, nb, x, ldx, y, ldy,
                            beta);
}

// The token count as a template argument: the accumulators stay in registers.
template <WeightFormat F, typename XT>
cudaError_t launch_n(const MatrixView& w, const XT* x, int n, int ldx, float* y, int ldy,
                     float beta, cudaStream_t s, bool overlap) {
  switch (n) {
    case 1:
      return launch<F, XT, 1>(w, x, ldx, y, ldy, beta, s, overlap);
    case 2:
      return launch<F, XT, 2>(w, x, ldx, y, ldy, beta, s, overlap);
    case 3:
      return launch<F, XT, 3>(w, x, ldx, y, ldy, beta, s, overlap);
    case 4:
      return launch<F, XT, 4>(w, x, ldx, y, ldy, beta, s, overlap);
    case 5:
      return launch<F, XT, 5>(w, x, ldx, y, ldy, beta, s, overlap);
    case 6:
      return launch<F, XT, 6>(w, x, ldx, y, ldy, beta, s, overlap);
    case 7:
      return launch<F, XT, 7>(w, x, ldx, y, ldy, beta, s, overlap);
    default:
      return launch<F, XT, 8>(w, x, ldx, y, ldy, beta, s, overlap);
  }
}

template <typename XT>
Status gemv_q_any(const MatrixView& w, const XT* x, int n, int ldx, float* y, int ldy, float beta,
                  cudaStream_t s, bool overlap) {
  if (w.rows <= 0 || n <= 0) return ok_status();
  constexpr int kAlign = 16 / static_cast<int>(sizeof(XT));
  if (w.format == WeightFormat::kF16 || w.cols % 32 != 0 || n > kGemvMaxTokens ||
      ldx % kAlign != 0 || reinterpret_cast<uintptr_t>(x) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(w.data) % 16 != 0)
    return invalid_argument(
        "gemv_q: needs a Q4_0/Q8_0 matrix with cols % 32 == 0, 1..8 tokens, 16-byte aligned x "
        "rows");
  TQ_CUDA_TRY(w.format == WeightFormat::kQ4_0
                  ? launch_n<WeightFormat::kQ4_0>(w, x, n, ldx, y, ldy, beta, s, overlap)
                  : launch_n<WeightFormat::kQ8_0>(w, x, n, ldx, y, ldy, beta, s, overlap));
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
              cudaStream_t s, bool overlap) {
  return gemv_q_any(w, x, n, ldx, y, ldy, beta, s, overlap);
}

Status gemv_q(const MatrixView& w, const float* x, int n, int ldx, float* y, int ldy, float beta,
              cudaStream_t s, bool overlap) {
  return gemv_q_any(w, x, n, ldx, y, ldy, beta, s, overlap);
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
