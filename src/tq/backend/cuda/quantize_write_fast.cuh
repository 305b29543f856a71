// Float32 quantize-on-write of tq mse formats (and f16 rows for the warp kernel), replacing the
// CPU-order float64 kernel of quantize_write.cuh where speed matters:
// - tq_team_kernel (bulk writes, prefill): a team of d/32 lanes per vector, 32 consecutive
//   elements per lane, grid-stride so every team loads its next vector while it encodes the
//   current one;
// - tq_warp_kernel (small writes, decode): one warp per vector, d/32 elements per lane, K and V
//   of a layer in one launch with the format chosen per warp at run time.
//
// Per vector: z = H (D x) (unnormalised Walsh-Hadamard of the sign-flipped input: log2(d/L)
// stages in registers, log2(L) through shuffles), ||x||^2 summed pairwise in float32 (relative
// error <= (log2(d) + 1) u ~ 5e-7, then sqrt), y = z * (1/sqrt(d)) / ||x||, the Lloyd-Max cell by
// a uniform-grid table (quant/cell_lut.h: two FFMAs, two conflict-free loads and a compare give
// exactly the CPU binary search's cell of that float y), and ||C[idx]||^2 pairwise for norm
// correction. The CPU codec (codec_tq.cpp) normalises before rotating and sums in float64, so a
// code can differ from the CPU's only where y lies within float32 rounding (~1e-7 of |y|) of a
// boundary, and norms by float32 rounding. Edge cases the float32 norm sees differently: an fp32
// input with |x| > ~1e19 (x^2 overflows: stored NaN, the CPU stores the saturated norm) or a
// whole vector below ~1e-19 (x^2 underflows: stored as zero).
// Cost (SASS, team kernel loop, fp16 in, d = 128): ~116 warp instructions per vector for tq1..4
// (the cell search does not depend on the width), down from ~122 with a team-uniform trip count
// (partial-mask shuffles with a convergence check each), slot / block_tokens as a division and
// register copies of the prefetched words, and 153 (tq4) / 137 / 124 / 103 (tq1) with the earlier
// register + shared-memory search tree; the legacy kernel takes ~221 plus float64 conversions
// and DFMAs.
#pragma once

#include "tq/backend/cuda/quantize_write.cuh"
#include "tq/quant/cell_lut.h"

namespace tq::backend::cuda {

// The runtime format of one part of a warp-kernel launch.
enum class WarpFormat : int { kF16 = 0, kTq1 = 1, kTq2 = 2, kTq3 = 3, kTq4 = 4 };

// Up to kWarpParts pool writes in one launch (quantize_write_group: a layer's K and V, into the
// pages and into the exact rows): part 0 takes warps [0, vectors[0]), part 1 the next
// vectors[1], and so on; unused parts have no vectors.
inline constexpr int kWarpParts = 4;
struct WarpWriteArgs {
  WriteArgs part[kWarpParts];
  WarpFormat format[kWarpParts];
  int vectors[kWarpParts];  // tokens * n_kv_heads of each part
};

inline constexpr int kWarpWriteWarps = 4;  // warps (vectors) per block of tq_warp_kernel

namespace dev {

// One lane's kE input elements, raw (fp16 pairs or fp32 bits), and the slot of its vector.
template <int kE, bool kF16>
struct LaneInput {
  static constexpr int kWords = kF16 ? kE / 2 : kE;
  uint32_t w[kWords];
  int32_t sm;  // slot_mapping of the vector's token

  // The lane's elements [lane * kE, lane * kE + kE) of (token, head).
  template <int kDim>
  __device__ __forceinline__ void load(const WriteArgs& a, int token, int head, int lane) {
    sm = __ldg(a.slot_mapping + token);
    const size_t off = static_cast<size_t>(token) * a.x_token_stride +
                       static_cast<size_t>(head) * kDim + static_cast<size_t>(lane) * kE;
    const uint32_t* p =
        reinterpret_cast<const uint32_t*>(static_cast<const char*>(a.x) + off * (kF16 ? 2 : 4));
    if constexpr (kWords % 4 == 0) {  // the launcher checks 16-byte aligned rows
#pragma unroll
      for (int i = 0; i < kWords / 4; ++i) {
        const uint4 u = __ldg(reinterpret_cast<const uint4*>(p) + i);
        w[4 * i] = u.x, w[4 * i + 1] = u.y, w[4 * i + 2] = u.z, w[4 * i + 3] = u.w;
      }
    } else if constexpr (kWords % 2 == 0) {
#pragma unroll
      for (int i = 0; i < kWords / 2; ++i) {
        const uint2 u = __ldg(reinterpret_cast<const uint2*>(p) + i);
        w[2 * i] = u.x, w[2 * i + 1] = u.y;
      }
    } else {
#pragma unroll
      for (int i = 0; i < kWords; ++i) w[i] = __ldg(p + i);
    }
  }
};

// The Hadamard signs D of this lane's elements as XOR masks on fp16 pairs: bit 15 flips element
// 2m, bit 31 element 2m + 1.
template <int kE>
__device__ __forceinline__ void load_sign_masks(const float* signs, int lane,
                                                uint32_t (&hmask)[kE / 2]) {
#pragma unroll
  for (int m = 0; m < kE / 2; ++m) {
    const float s0 = __ldg(signs + lane * kE + 2 * m), s1 = __ldg(signs + lane * kE + 2 * m + 1);
    hmask[m] = (s0 < 0.0f ? 0x8000u : 0u) | (s1 < 0.0f ? 0x80000000u : 0u);
  }
}

// D x as floats (sign flips are exact, so it does not matter where they happen).
template <int kE, bool kF16>
__device__ __forceinline__ void signed_input(const LaneInput<kE, kF16>& in,
                                             const uint32_t (&hmask)[kE / 2], float (&y)[kE]) {
#pragma unroll
  for (int m = 0; m < kE / 2; ++m) {
    if constexpr (kF16) {
      const float2 f = __half22float2(bits_h2(in.w[m] ^ hmask[m]));
      y[2 * m] = f.x;
      y[2 * m + 1] = f.y;
    } else {
      y[2 * m] = __uint_as_float(in.w[2 * m] ^ (hmask[m] << 16));
      y[2 * m + 1] = __uint_as_float(in.w[2 * m + 1] ^ (hmask[m] & 0x80000000u));
    }
  }
}

// One 32-bit word at shared address addr + kOffset (bytes; the offset rides in the LDS).
template <int kOffset>
__device__ __forceinline__ uint32_t lds_u32(uint32_t addr) {
  uint32_t v;
  asm("ld.shared.u32 %0, [%1+%2];" : "=r"(v) : "r"(addr), "n"(kOffset));
  return v;
}

// 1.0f when a > b, else 0.0f (NaN: 0): one FSET.BF.
__device__ __forceinline__ float gt_one(float a, float b) {
  float r;
  asm("set.gt.f32.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}

// The cell search of quant::quantize_coordinate (the number of boundaries strictly below y, NaN
// -> 0) by the uniform-grid table of quant/cell_lut.h, whose header proves the result exact:
// grid cell k = rint(saturate(y * scale + offset) * 31) by two FFMAs (the second adds 1.5 * 2^23,
// so the float's bits are kCellLutMagicBits + k and the entry's shared address is one LEA
// away), then idx = cand[k] + (y > bound[k]), again as a float 1.5 * 2^23 + idx (an FSET and an
// FADD): its bits, "biased codes", are kCellLutMagicBits + idx, which a LEA shifts into the code
// words (the bias is a constant, taken off once per word) or into the centroid's address. The
// table is three 32-word columns (bound, 1.5 * 2^23 + cand, centroids), each word in its own
// bank: a warp's loads never conflict.
struct CellLut {
  static constexpr int kCells = quant::kCellLutCells;
  static constexpr int kWords = 3 * kCells;  // in shared memory; scale and offset in registers
  static constexpr uint32_t kBias = quant::kCellLutMagicBits;
  // Shared addresses less 4 kBias, so that a LEA of biased bits lands on the word: the entry of
  // grid cell k in the bound column, and centroid idx.
  uint32_t entry_off = 0, cent_off = 0;
  float scale = 0.0f, offset = 0.0f;

  // Word i < kWords of the table.
  static __device__ __forceinline__ void fill(uint32_t* table, const uint32_t* image, int i) {
    table[i] = __ldg(image + i);
  }
  // After fill and a barrier.
  __device__ __forceinline__ CellLut(const uint32_t* table, const uint32_t* image) {
    // -4 kBias is read from the image: as a compile-time constant ptxas would split it off
    // again and add it back before every load (an IADD3 per LDS).
    const uint32_t base =
        static_cast<uint32_t>(__cvta_generic_to_shared(table)) + __ldg(image + kWords + 2);
    entry_off = base;
    cent_off = base + 8u * kCells;
    scale = __uint_as_float(__ldg(image + kWords));
    offset = __uint_as_float(__ldg(image + kWords + 1));
  }
  // kBias + the code of y.
  __device__ __forceinline__ uint32_t biased_code(float y) const {
    const float t = __saturatef(__fmaf_rn(y, scale, offset));  // NaN -> 0, as cell_lut_grid
    const float g = __fmaf_rn(t, static_cast<float>(kCells - 1), quant::kCellLutMagic);
    const uint32_t e = 4u * __float_as_uint(g) + entry_off;
    const float cand = __uint_as_float(lds_u32<4 * kCells>(e));  // 1.5 * 2^23 + cand
    return __float_as_uint(cand + gt_one(y, __uint_as_float(lds_u32<0>(e))));
  }
  __device__ __forceinline__ float centroid(uint32_t biased) const {
    return __uint_as_float(lds_u32<0>(4u * biased + cent_off));
  }
};

// Pairwise sum of kE values held by this lane (kP interleaved partial sums, then a tree).
template <int kE>
struct LaneSum {
  static constexpr int kP = kE < 8 ? kE : 8;
  float acc[kP];
  // e: the unrolled element index
  __device__ __forceinline__ void add_sq(int e, float v) {
    acc[e % kP] = e < kP ? v * v : fmaf(v, v, acc[e % kP]);
  }
  __device__ __forceinline__ float total() {
#pragma unroll
    for (int w = kP / 2; w >= 1; w /= 2)
#pragma unroll
      for (int i = 0; i < w; ++i) acc[i] += acc[i + w];
    return acc[0];
  }
};

// Encodes the vector whose signed elements D x the team holds in y (lane: elements
// [lane * kE, lane * kE + kE)). Returns the norm to store; words get the lane's codes, element e
// at bits [kBits * e, kBits * e + kBits) of the lane's piece of the LSB-first bitstream (all
// zero for a zero or non-finite vector, as the CPU codec).
template <int kDim, int kBits, int kLanes>
__device__ __forceinline__ float tq_encode(float (&y)[kDim / kLanes], int lane, unsigned mask,
                                           const CellLut& lut, float hadamard_scale,
                                           bool norm_correction,
                                           uint32_t (&words)[(kDim / kLanes * kBits + 31) / 32]) {
  constexpr int kE = kDim / kLanes;
  constexpr int kWords = (kE * kBits + 31) / 32;
  LaneSum<kE> n2;
#pragma unroll
  for (int e = 0; e < kE; ++e) n2.add_sq(e, y[e]);
  const float norm = sqrtf(team_sum<kLanes>(mask, n2.total()));  // IEEE sqrt (no fast math)

  lane_fwht<kDim, kE>(y, lane, mask);  // z = H (D x)

  const bool finite_nonzero = norm > 0.0f && isfinite(norm);
  const float f = finite_nonzero ? hadamard_scale / norm : 0.0f;  // y = P x / ||x||
  LaneSum<kE> c2;
  // Codes enter the words biased (kBias + idx, shifted): start each word at minus the sum of
  // its shifted biases (a compile-time constant), so that only the codes remain.
#pragma unroll
  for (int w = 0; w < kWords; ++w) words[w] = 0u;
#pragma unroll
  for (int e = 0; e < kE; ++e) words[kBits * e / 32] -= CellLut::kBias << (kBits * e % 32);
#pragma unroll
  for (int e = 0; e < kE; ++e) {
    const float v = y[e] * f;
    const uint32_t biased = lut.biased_code(v);
    c2.add_sq(e, lut.centroid(biased));
    const int pos = kBits * e;
    words[pos / 32] += biased << (pos % 32);  // one LEA; fields are disjoint, so + is |
    if (pos % 32 + kBits > 32) words[pos / 32 + 1] += (biased - CellLut::kBias) >> (32 - pos % 32);
  }
  const float recon2 = team_sum<kLanes>(mask, c2.total());
  if (!finite_nonzero) {
#pragma unroll
    for (int w = 0; w < kWords; ++w) words[w] = 0u;
    return isfinite(norm) ? norm : NAN;  // 0 for a zero vector, NaN for inf / NaN input
  }
  return norm_correction ? norm / sqrtf(recon2) : norm;
}

}  // namespace dev

// Bulk writes: a team of kDim / 32 lanes per vector; each team walks the vectors grid-stride,
// loading the next vector (and its slot) before encoding the current one. The trip count is
// warp-uniform (that of the warp's first team): a team past the end keeps encoding its last
// vector (or vector nvec - 1) without storing it, so that every shuffle takes the full mask and
// needs no convergence check. Vectors with a negative slot are encoded too, and not stored.
template <int kDim, int kBits, bool kF16In>
__global__ void __launch_bounds__(kWriteThreads, 4) tq_team_kernel(const WriteArgs a) {
  constexpr int kE = 32, kLanes = kDim / kE, kTeams = kWriteThreads / kLanes;
  constexpr int kCodeBytes = kDim * kBits / 8;
  __shared__ uint32_t s_lut[dev::CellLut::kWords];
  const int team = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const int heads = a.n_kv_heads, nvec = a.tokens * heads;  // the launcher checks it fits an int
  const int stride = gridDim.x * kTeams, stride_tokens = stride / heads,
            stride_heads = stride % heads;
  int v = blockIdx.x * kTeams + team;
  // The loop runs while the warp's first team has a vector: v < nvec + (team's rank in the warp).
  const int warp_end = nvec + team % (32 / kLanes);
  // The vector the team loads (its last one once past the end), stepped without divisions.
  const int v0 = min(v, nvec - 1);
  int token = v0 / heads, head = v0 % heads;
  dev::LaneInput<kE, kF16In> cur;
  if (v < warp_end) cur.template load<kDim>(a, token, head, lane);  // in flight during the tables
  uint32_t hmask[kE / 2];
  dev::load_sign_masks<kE>(a.hadamard_signs, lane, hmask);
  static_assert(kWriteThreads >= dev::CellLut::kWords);
  if (threadIdx.x < dev::CellLut::kWords) dev::CellLut::fill(s_lut, a.cell_lut, threadIdx.x);
  __syncthreads();
  const dev::CellLut lut(s_lut, a.cell_lut);
  const uint32_t magic = a.block_magic;
  const int magic_shift = a.block_magic_shift, cap = a.block_tokens;

  // One vector: encode now's, load the next (or now's again) into nxt. Once converted, now's raw
  // words are dead; two buffers in turn let nxt be in flight during the encode with no register
  // copies at the back edge.
  dev::LaneInput<kE, kF16In> other;
  const auto step = [&](const dev::LaneInput<kE, kF16In>& now, dev::LaneInput<kE, kF16In>& nxt) {
    const bool store = v < nvec;
    const bool more = v + stride < nvec;  // else reload this one (unused)
    int next_token = token + stride_tokens, next_head = head + stride_heads;
    if (next_head >= heads) next_head -= heads, ++next_token;
    float y[kE];
    dev::signed_input<kE, kF16In>(now, hmask, y);
    const int32_t sm = now.sm;
    const int vec_head = head;
    if (more) token = next_token, head = next_head;
    nxt.template load<kDim>(a, token, head, lane);
    uint32_t words[kBits];
    const float stored = dev::tq_encode<kDim, kBits, kLanes>(
        y, lane, 0xffffffffu, lut, a.hadamard_scale, a.norm_correction, words);
    if (store && sm >= 0) {
      const uint32_t block = __umulhi(static_cast<uint32_t>(sm), magic) >> magic_shift;
      const int slot = sm - static_cast<int>(block) * cap;
      uint8_t* blk = a.pool + static_cast<size_t>(block) * a.block_stride +
                     static_cast<size_t>(vec_head) * a.head_stride;
      uint8_t* codes = blk + slot * kCodeBytes + lane * kBits * 4;  // lane's kBits words
      if constexpr (kBits == 4) {
        *reinterpret_cast<uint4*>(codes) = make_uint4(words[0], words[1], words[2], words[3]);
      } else if constexpr (kBits == 2) {
        *reinterpret_cast<uint2*>(codes) = make_uint2(words[0], words[1]);
      } else {
#pragma unroll
        for (int w = 0; w < kBits; ++w) reinterpret_cast<uint32_t*>(codes)[w] = words[w];
      }
      if (lane == 0)
        reinterpret_cast<uint16_t*>(blk + cap * kCodeBytes)[slot] = dev::norm_to_f16(stored);
    }
    v += stride;
  };
  while (v < warp_end) {  // warp-uniform
    step(cur, other);
    if (v >= warp_end) break;
    step(other, cur);
  }
}

namespace dev {

// One warp encodes vector v of a tq mse pool (table: this warp's CellLut::kWords shared words).
template <int kDim, int kBits, bool kF16In>
__device__ __forceinline__ void warp_write_tq(const WriteArgs& a, int v, int lane,
                                              uint32_t* table) {
  constexpr int kE = kDim / 32;
  constexpr int kCodeBytes = kDim * kBits / 8, kLaneBits = kE * kBits, kWords = kDim * kBits / 32;
  const int token = v / a.n_kv_heads, head = v % a.n_kv_heads;
  // The signs and the cell table are older than the kernel before: loaded before pdl_wait, so
  // their L2 round trip overlaps that kernel's tail instead of following the input's.
  uint32_t hmask[kE / 2];
  load_sign_masks<kE>(a.hadamard_signs, lane, hmask);
#pragma unroll
  for (int i = lane; i < CellLut::kWords; i += 32) CellLut::fill(table, a.cell_lut, i);
  const CellLut lut(table, a.cell_lut);
  pdl_wait();  // x (and the slot mapping) come from the kernels before
  LaneInput<kE, kF16In> in;
  in.template load<kDim>(a, token, head, lane);
  __syncwarp();
  if (in.sm < 0) return;  // warp-uniform
  float y[kE];
  signed_input<kE, kF16In>(in, hmask, y);
  uint32_t piece[1];  // this lane's kLaneBits <= 32 bits of the bitstream
  const float stored = tq_encode<kDim, kBits, 32>(y, lane, 0xffffffffu, lut, a.hadamard_scale,
                                                  a.norm_correction, piece);

  // Word w of the vector's codes gathers the pieces of the lanes whose bits overlap it.
  const int w = lane;
  const int first = (32 * w) / kLaneBits;
  constexpr int kSources = (32 + kLaneBits - 1) / kLaneBits + 1;
  uint32_t word = 0u;
#pragma unroll
  for (int i = 0; i < kSources; ++i) {
    const int src = first + i;
    const uint32_t got = __shfl_sync(0xffffffffu, piece[0], src < 32 ? src : 31);
    const int pos = src * kLaneBits - 32 * w;  // where the piece's bit 0 lands in word w
    if (src < 32 && pos >= 0 && pos < 32) word |= got << pos;
    if (src < 32 && pos < 0 && pos > -kLaneBits) word |= got >> -pos;
  }
  const int cap = a.block_tokens, slot = in.sm % cap;
  uint8_t* blk = a.pool + static_cast<size_t>(in.sm / cap) * a.block_stride +
                 static_cast<size_t>(head) * a.head_stride;
  if (w < kWords) reinterpret_cast<uint32_t*>(blk + slot * kCodeBytes)[w] = word;
  if (lane == 0) reinterpret_cast<uint16_t*>(blk + cap * kCodeBytes)[slot] = norm_to_f16(stored);
}

// One warp writes vector v of an f16 pool (the CPU's f32_to_f16: round to nearest, NaN 0x7e00).
template <int kDim, bool kF16In>
__device__ __forceinline__ void warp_write_f16(const WriteArgs& a, int v, int lane) {
  constexpr int kE = kDim / 32;
  const int token = v / a.n_kv_heads, head = v % a.n_kv_heads;
  pdl_wait();
  LaneInput<kE, kF16In> in;
  in.template load<kDim>(a, token, head, lane);
  if (in.sm < 0) return;
  const uint32_t no_signs[kE / 2] = {};
  float x[kE];
  signed_input<kE, kF16In>(in, no_signs, x);
  uint32_t h[kE / 2];
#pragma unroll
  for (int m = 0; m < kE / 2; ++m)
    h[m] = f16_bits(x[2 * m]) | (static_cast<uint32_t>(f16_bits(x[2 * m + 1])) << 16);
  const int cap = a.block_tokens, slot = in.sm % cap;
  uint8_t* row = a.pool + static_cast<size_t>(in.sm / cap) * a.block_stride +
                 static_cast<size_t>(head) * a.head_stride + static_cast<size_t>(slot) * 2 * kDim +
                 lane * kE * 2;
  if constexpr (kE == 8) {
    *reinterpret_cast<uint4*>(row) = make_uint4(h[0], h[1], h[2], h[3]);
  } else if constexpr (kE == 4) {
    *reinterpret_cast<uint2*>(row) = make_uint2(h[0], h[1]);
  } else {
    *reinterpret_cast<uint32_t*>(row) = h[0];
  }
}

}  // namespace dev

// Small writes: one warp per vector, keys then values; the format is warp-uniform.
template <int kDim, bool kF16In>
__global__ void __launch_bounds__(kWarpWriteWarps * 32) tq_warp_kernel(const WarpWriteArgs p) {
  __shared__ uint32_t tables[kWarpWriteWarps][dev::CellLut::kWords];
  // The attention after it may start building its tables. Each part's writer calls pdl_wait
  // itself, after loading what does not depend on the kernels before (programmatic dependence);
  // warps without a vector read nothing and do not wait.
  dev::pdl_launch_dependents();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int v = blockIdx.x * kWarpWriteWarps + warp;
  int part = 0;
#pragma unroll
  for (int i = 0; i + 1 < kWarpParts; ++i)
    if (part == i && v >= p.vectors[i]) {
      v -= p.vectors[i];
      part = i + 1;
    }
  if (v >= p.vectors[part]) return;  // whole warps exit; no block-wide barrier follows
  const WriteArgs& a = p.part[part];
  switch (p.format[part]) {
    case WarpFormat::kTq1:
      return dev::warp_write_tq<kDim, 1, kF16In>(a, v, lane, tables[warp]);
    case WarpFormat::kTq2:
      return dev::warp_write_tq<kDim, 2, kF16In>(a, v, lane, tables[warp]);
    case WarpFormat::kTq3:
      return dev::warp_write_tq<kDim, 3, kF16In>(a, v, lane, tables[warp]);
    case WarpFormat::kTq4:
      return dev::warp_write_tq<kDim, 4, kF16In>(a, v, lane, tables[warp]);
    case WarpFormat::kF16:
      return dev::warp_write_f16<kDim, kF16In>(a, v, lane);
  }
}

}  // namespace tq::backend::cuda
