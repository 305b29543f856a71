// Quantize-on-write: new K or V vectors encoded straight into their paged slots, one fused
// kernel per format (norm, randomized Hadamard rotation through warp shuffles, Lloyd-Max cell
// search, bit packing, QJL sign sketch; or f16 / q8_0 / q4_0 rows).
//
// A "team" of lanes encodes one vector, consecutive elements per lane (TqWriteTeam: 32 per lane
// for tq formats; WriteTeam: 8 per lane for f16 / q8_0 / q4_0). Every float operation follows
// the CPU codec's (src/tq/quant/codec_tq.cpp, codec_baseline.cpp) order and rounding, with no
// FMA contraction, so the blocks come out byte-identical: the Hadamard butterflies are the same
// additions, norms are float64 sums (only their order differs, which can flip a result only
// within ~1e-16 relative of a rounding or cell boundary). For tq mse formats this is the legacy
// kernel (WriteKernel::kLegacy; tq prod always): quantize_write_fast.cuh has the float32 ones.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>
#include <vector>

#include "tq/backend/cuda/cuda_common.cuh"
#include "tq/quant/format.h"

namespace tq::backend::cuda {

struct WriteArgs {
  uint8_t* pool;
  size_t block_stride;
  size_t head_stride;
  int block_tokens;
  int n_kv_heads;
  const void* x;
  bool x_f16;
  size_t x_token_stride;  // elements
  const int32_t* slot_mapping;
  int tokens;
  const float* centroids;
  const float* boundaries;
  const float* hadamard_signs;
  const float* qjl_t;        // S^T (coalesced rows for the sign sketch)
  const uint16_t* qjl_smem;  // S as the QJL team kernels hold it (qjl_team_images)
  const uint32_t* cell_lut;  // quant::CellLut image (the float32 kernels; tq mse <= 4 bits)
  float hadamard_scale;      // 1 / sqrt(d) exactly as the CPU computes it
  bool norm_correction;
  // slot / block_tokens for slot in [0, 2^31) without a division (set by block_divisor; the
  // float32 kernels): __umulhi(slot, block_magic) >> block_magic_shift.
  uint32_t block_magic;
  int block_magic_shift;
};

// Granlund-Montgomery round-up reciprocal of d in [2, 2^31) for 31-bit numerators: with
// l = ceil(log2 d) >= 1 and m = ceil(2^(31 + l) / d), 2^(31 + l) <= m d < 2^(31 + l) + 2^l, so
// floor(n m / 2^(31 + l)) = floor(n / d) for every n < 2^31, and m < 2^32 (m = 2^31 for
// d = 2^l): the kernels shift the high word of n m by l - 1. Pools hold multiples of 32.
inline void block_divisor(int d, uint32_t& magic, int& shift) {
  int l = 0;
  while ((int64_t{1} << l) < d) ++l;
  magic = static_cast<uint32_t>(((uint64_t{1} << (31 + l)) + static_cast<uint64_t>(d) - 1) /
                                static_cast<uint64_t>(d));
  shift = l - 1;
}

inline constexpr int kWriteThreads = 128;

// S (row-major float, d x d) as fp16 in the shared-memory orders of the QJL team kernel's
// variants (quantize_write_qjl.cuh: kQjlImages images of qjl_image_halves), round to nearest as
// __float2half_rn; empty for head dims that kernel does not take.
std::vector<uint16_t> qjl_team_images(const float* s, int dim);

// f16 / q8_0 / q4_0: kE = 8 elements per lane (16 lanes for d = 128; a ggml block is 4 lanes).
template <int kDim>
struct WriteTeam {
  static constexpr int kLanes = kDim / 8 < 32 ? kDim / 8 : 32;
  static constexpr int kE = kDim / kLanes;  // consecutive elements per lane
  static constexpr int kTeams = kWriteThreads / kLanes;
};

namespace dev {

// Butterfly sum over a team of kLanes consecutive lanes: every lane pairs the same partial sums
// (addition commutes), so all lanes hold the same result. double (the CPU-order kernel) or float
// (quantize_write_fast.cuh).
template <int kLanes, typename T>
__device__ __forceinline__ T team_sum(unsigned mask, T v) {
#pragma unroll
  for (int o = kLanes / 2; o > 0; o >>= 1) v += __shfl_xor_sync(mask, v, o);
  return v;
}

// The lanes of this thread's team (teams of kLanes consecutive lanes may exit independently).
template <int kLanes>
__device__ __forceinline__ unsigned team_mask() {
  if constexpr (kLanes == 32) {
    return 0xffffffffu;
  } else {
    return ((1u << kLanes) - 1u) << ((threadIdx.x % 32) / kLanes * kLanes);
  }
}

// CPU norm_to_f16: saturate at 65504, NaN as 0x7e00, otherwise round to nearest even.
__device__ __forceinline__ uint16_t norm_to_f16(float v) {
  if (isnan(v)) return 0x7e00u;
  if (v > 65504.0f) v = 65504.0f;
  return __half_as_ushort(__float2half_rn(v));
}

// CPU f32_to_f16 (no saturation): NaN as 0x7e00.
__device__ __forceinline__ uint16_t f16_bits(float v) {
  return isnan(v) ? uint16_t{0x7e00u} : __half_as_ushort(__float2half_rn(v));
}

// The CPU's branchless binary search: number of boundaries below y (NaN -> 0).
template <int kBits>
__device__ __forceinline__ int cell_of(const float* boundaries, float y) {
  int idx = 0;
#pragma unroll
  for (int step = 1 << (kBits - 1); step >= 1; step >>= 1)
    idx += (y > boundaries[idx + step - 1]) ? step : 0;
  return idx;
}

}  // namespace dev

// Locates vector v = token * n_kv_heads + head; nullptr when the token is skipped.
__device__ __forceinline__ uint8_t* write_block(const WriteArgs& a, int v, int* slot) {
  const int token = v / a.n_kv_heads, head = v % a.n_kv_heads;
  const int sm = __ldg(a.slot_mapping + token);
  if (sm < 0) return nullptr;
  *slot = sm % a.block_tokens;
  return a.pool + static_cast<size_t>(sm / a.block_tokens) * a.block_stride +
         static_cast<size_t>(head) * a.head_stride;
}

template <int kDim>
__device__ __forceinline__ void load_team_x(const WriteArgs& a, int v, int lane,
                                            float (&x)[WriteTeam<kDim>::kE]) {
  constexpr int kE = WriteTeam<kDim>::kE;
  const int token = v / a.n_kv_heads, head = v % a.n_kv_heads;
  const size_t off =
      static_cast<size_t>(token) * a.x_token_stride + static_cast<size_t>(head) * kDim + lane * kE;
  if (a.x_f16) {
    const __half* p = static_cast<const __half*>(a.x) + off;
#pragma unroll
    for (int e = 0; e < kE; ++e) x[e] = __half2float(p[e]);
  } else {
    const float* p = static_cast<const float*>(a.x) + off;
#pragma unroll
    for (int e = 0; e < kE; ++e) x[e] = p[e];
  }
}

// TurboQuant mse / prod encode (kBits = mse code bits). A team of kDim / 32 lanes per vector,
// 32 consecutive elements per lane: 5 of the Hadamard stages stay in registers, the float64
// norm work is shared by 8 vectors per warp, and each lane's 32 codes are exactly kBits words of
// the bitstream, packed and stored straight from registers.
template <int kDim>
struct TqWriteTeam {
  static constexpr int kE = 32;
  static constexpr int kLanes = kDim / kE;
  static constexpr int kTeams = kWriteThreads / kLanes;
};

template <int kDim, int kBits, bool kQjl>
__global__ void __launch_bounds__(kWriteThreads) tq_write_kernel(const WriteArgs a) {
  using Team = TqWriteTeam<kDim>;
  constexpr int kLanes = Team::kLanes, kE = Team::kE;
  constexpr int kCodeBytes = kDim * kBits / 8;
  constexpr int kSignBytes = kQjl ? kDim / 8 : 0;
  __shared__ float team_r[kQjl ? Team::kTeams : 1][kQjl ? kDim : 1];
  __shared__ float s_bounds[1 << kBits], s_cent[1 << kBits];
  for (int i = threadIdx.x; i < (1 << kBits); i += blockDim.x) {
    s_cent[i] = __ldg(a.centroids + i);
    if (i + 1 < (1 << kBits)) s_bounds[i] = __ldg(a.boundaries + i);
  }
  __syncthreads();

  const int team = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const int v = blockIdx.x * Team::kTeams + team;
  if (v >= a.tokens * a.n_kv_heads) return;  // whole teams exit together
  int slot = 0;
  uint8_t* blk = write_block(a, v, &slot);
  if (!blk) return;
  const unsigned mask = dev::team_mask<kLanes>();

  float x[kE];
  {
    const int token = v / a.n_kv_heads, head = v % a.n_kv_heads;
    const size_t off = static_cast<size_t>(token) * a.x_token_stride +
                       static_cast<size_t>(head) * kDim + lane * kE;
    if (a.x_f16) {
      const uint4* p = reinterpret_cast<const uint4*>(static_cast<const __half*>(a.x) + off);
#pragma unroll
      for (int i = 0; i < kE / 8; ++i) {
        const uint4 u = p[i];
        const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const float2 f = __half22float2(dev::bits_h2(w[k]));
          x[8 * i + 2 * k] = f.x;
          x[8 * i + 2 * k + 1] = f.y;
        }
      }
    } else {
      const float4* p = reinterpret_cast<const float4*>(static_cast<const float*>(a.x) + off);
#pragma unroll
      for (int i = 0; i < kE / 4; ++i) {
        const float4 f = p[i];
        x[4 * i] = f.x, x[4 * i + 1] = f.y, x[4 * i + 2] = f.z, x[4 * i + 3] = f.w;
      }
    }
  }
  double n2 = 0.0;
#pragma unroll
  for (int e = 0; e < kE; ++e) n2 += static_cast<double>(x[e]) * x[e];
  const double norm = sqrt(dev::team_sum<kLanes>(mask, n2));

  float y[kE];
  uint32_t words[kBits];  // this lane's 32 codes: kBits words of the LSB-first bitstream
#pragma unroll
  for (int e = 0; e < kE; ++e) y[e] = 0.0f;
#pragma unroll
  for (int w = 0; w < kBits; ++w) words[w] = 0u;
  float stored = static_cast<float>(norm), residual = 0.0f;
  if (!isfinite(norm)) {
    stored = NAN;
  } else if (norm > 0.0) {
    const float inv = static_cast<float>(1.0 / norm);
#pragma unroll
    for (int e = 0; e < kE; ++e)
      y[e] = __fmul_rn(__fmul_rn(x[e], inv), __ldg(a.hadamard_signs + lane * kE + e));
    dev::lane_fwht<kDim, kE>(y, lane, mask);
    double c2 = 0.0;
#pragma unroll
    for (int e = 0; e < kE; ++e) {
      y[e] = __fmul_rn(y[e], a.hadamard_scale);
      const uint32_t idx = static_cast<uint32_t>(dev::cell_of<kBits>(s_bounds, y[e]));
      const float c = s_cent[idx];
      c2 += static_cast<double>(c) * c;
      if constexpr (kQjl) y[e] = __fsub_rn(y[e], c);  // r = y - C[idx]
      const int pos = kBits * e;
      words[pos / 32] |= idx << (pos % 32);
      if (pos % 32 + kBits > 32) words[pos / 32 + 1] |= idx >> (32 - pos % 32);
    }
    const double recon2 = dev::team_sum<kLanes>(mask, c2);
    if (a.norm_correction && !kQjl) stored = static_cast<float>(norm / sqrt(recon2));
    if constexpr (kQjl) {
      double r2 = 0.0;
#pragma unroll
      for (int e = 0; e < kE; ++e) r2 += static_cast<double>(y[e]) * y[e];
      residual = static_cast<float>(sqrt(dev::team_sum<kLanes>(mask, r2)));
    }
  }
  uint32_t* codes = reinterpret_cast<uint32_t*>(blk + slot * kCodeBytes) + kBits * lane;
#pragma unroll
  for (int w = 0; w < kBits; ++w) codes[w] = words[w];

  const int cap = a.block_tokens;
  if constexpr (kQjl) {
    // sign_i = (S r)_i >= 0 in float64; lane l owns rows l + kLanes * k, so the team's ballot is
    // bits [kLanes * k, kLanes * (k + 1)) of the LSB-first sign bitstream.
#pragma unroll
    for (int e = 0; e < kE; ++e) team_r[team][lane * kE + e] = y[e];
    __syncwarp(mask);
    const int team_base = (threadIdx.x % 32) / kLanes * kLanes;
    uint32_t sig[kDim / 32];
#pragma unroll
    for (int w = 0; w < kDim / 32; ++w) sig[w] = 0u;
#pragma unroll
    for (int k = 0; k < kDim / kLanes; ++k) {
      const int row = lane + kLanes * k;
      double s = 0.0;
      for (int j = 0; j < kDim; ++j)  // S^T[j][row]: the team's lanes read consecutive floats
        s += static_cast<double>(__ldg(a.qjl_t + static_cast<size_t>(j) * kDim + row)) *
             team_r[team][j];
      const uint32_t ballot = __ballot_sync(mask, s >= 0.0);
      const uint32_t piece = (ballot >> team_base) & ((1u << kLanes) - 1u);
      sig[(kLanes * k) / 32] |= piece << ((kLanes * k) % 32);
    }
    if (lane == 0) {
      uint32_t* signs = reinterpret_cast<uint32_t*>(blk + cap * kCodeBytes + slot * kSignBytes);
#pragma unroll
      for (int w = 0; w < kDim / 32; ++w) signs[w] = sig[w];
      reinterpret_cast<uint16_t*>(blk + cap * (kCodeBytes + kSignBytes + 2))[slot] =
          dev::norm_to_f16(residual);
    }
  }
  if (lane == 0)
    reinterpret_cast<uint16_t*>(blk + cap * (kCodeBytes + kSignBytes))[slot] =
        dev::norm_to_f16(stored);
}

// f16 / q8_0 / q4_0 rows (ggml reference rounding).
template <int kDim, quant::FormatKind kKind>
__global__ void __launch_bounds__(kWriteThreads) baseline_write_kernel(const WriteArgs a) {
  using Team = WriteTeam<kDim>;
  constexpr int kLanes = Team::kLanes, kE = Team::kE;
  constexpr int kGroupLanes = 32 / kE;  // lanes per 32-element ggml block
  const int team = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const int v = blockIdx.x * Team::kTeams + team;
  if (v >= a.tokens * a.n_kv_heads) return;
  int slot = 0;
  uint8_t* blk = write_block(a, v, &slot);
  if (!blk) return;
  const unsigned mask = dev::team_mask<kLanes>();
  float x[kE];
  load_team_x<kDim>(a, v, lane, x);

  if constexpr (kKind == quant::FormatKind::kF16) {
    uint32_t h[kE / 2];  // kE = 8: one 16-byte store per lane
#pragma unroll
    for (int e = 0; e < kE; e += 2)
      h[e / 2] = dev::f16_bits(x[e]) | (static_cast<uint32_t>(dev::f16_bits(x[e + 1])) << 16);
    uint32_t* row = reinterpret_cast<uint32_t*>(blk + slot * 2 * kDim) + lane * (kE / 2);
#pragma unroll
    for (int e = 0; e < kE / 2; e += 4)
      *reinterpret_cast<uint4*>(row + e) = make_uint4(h[e], h[e + 1], h[e + 2], h[e + 3]);
    return;
  } else {
    constexpr int kRowBytes = kDim / 32 * (kKind == quant::FormatKind::kQ8_0 ? 34 : 18);
    const int b = lane / kGroupLanes, m = lane % kGroupLanes;  // ggml block, lane within it
    uint8_t* gb = blk + slot * kRowBytes + b * (kRowBytes / (kDim / 32));
    bool finite = true;
    float amax = 0.0f, vmax = 0.0f;
    int jmax = 0;
#pragma unroll
    for (int e = 0; e < kE; ++e) {
      finite = finite && isfinite(x[e]);
      if (fabsf(x[e]) > amax) amax = fabsf(x[e]), vmax = x[e], jmax = m * kE + e;
    }
#pragma unroll
    for (int o = kGroupLanes / 2; o > 0; o >>= 1) {  // first index of the largest |x| wins
      const float oa = __shfl_xor_sync(mask, amax, o);
      const float ov = __shfl_xor_sync(mask, vmax, o);
      const int oj = __shfl_xor_sync(mask, jmax, o);
      if (oa > amax || (oa == amax && oj < jmax)) amax = oa, vmax = ov, jmax = oj;
    }
#pragma unroll
    for (int o = kGroupLanes / 2; o > 0; o >>= 1)
      finite = __shfl_xor_sync(mask, static_cast<int>(finite), o) && finite;
    if constexpr (kKind == quant::FormatKind::kQ8_0) {
      const float s = finite ? __fdiv_rn(amax, 127.0f) : NAN;
      const float inv = (finite && s != 0.0f) ? __fdiv_rn(1.0f, s) : 0.0f;
      if (m == 0) *reinterpret_cast<uint16_t*>(gb) = dev::f16_bits(s);
      uint16_t* qs = reinterpret_cast<uint16_t*>(gb + 2 + m * kE);
#pragma unroll
      for (int e = 0; e < kE; e += 2) {
        const float p0 = __fmul_rn(x[e], inv), p1 = __fmul_rn(x[e + 1], inv);
        const int q0 = isfinite(p0) ? static_cast<int>(roundf(p0)) : 0;
        const int q1 = isfinite(p1) ? static_cast<int>(roundf(p1)) : 0;
        qs[e / 2] = static_cast<uint16_t>((q0 & 0xff) | ((q1 & 0xff) << 8));
      }
    } else {
      const float s = finite ? __fdiv_rn(vmax, -8.0f) : NAN;
      const float inv = (finite && s != 0.0f) ? __fdiv_rn(1.0f, s) : 0.0f;
      if (m == 0) *reinterpret_cast<uint16_t*>(gb) = dev::f16_bits(s);
      int q[kE];
#pragma unroll
      for (int e = 0; e < kE; ++e)
        q[e] = min(15, __float2int_rz(__fadd_rn(__fmul_rn(x[e], inv), 8.5f)));
      // Byte j holds element j (low nibble) and j + 16 (high): lane m < kGroupLanes/2 pairs with
      // lane m + kGroupLanes/2.
      int hi[kE];
#pragma unroll
      for (int e = 0; e < kE; ++e) hi[e] = __shfl_xor_sync(mask, q[e], kGroupLanes / 2);
      if (m < kGroupLanes / 2) {
        uint16_t* qs = reinterpret_cast<uint16_t*>(gb + 2 + m * kE);
#pragma unroll
        for (int e = 0; e < kE; e += 2)
          qs[e / 2] = static_cast<uint16_t>(((q[e] & 0xf) | ((hi[e] & 0xf) << 4)) |
                                            (((q[e + 1] & 0xf) | ((hi[e + 1] & 0xf) << 4)) << 8));
      }
    }
  }
}

}  // namespace tq::backend::cuda
