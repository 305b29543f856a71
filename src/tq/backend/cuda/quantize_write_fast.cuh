// Float32 quantize-on-write of tq mse formats (and f16 rows for the warp kernel), replacing the
// CPU-order float64 kernel of quantize_write.cuh where speed matters:
// - tq_team_kernel (bulk writes, prefill): a team of d/32 lanes per vector, 32 elements per lane
//   (TeamLayout), grid-stride so every team loads its next vector while it encodes the current
//   one;
// - tq_warp_kernel (small writes, decode): one warp per vector, d/32 elements per lane, K and V
//   of a layer in one launch with the format chosen per warp at run time.
//
// Per vector: z = H (D x) (unnormalised Walsh-Hadamard of the sign-flipped input: in-lane stages
// in registers, across-lane ones through shuffles, their order set by the layout), ||x||^2
// summed pairwise in float32 (relative error <= (log2(d) + 1) u ~ 5e-7) and one approximate
// reciprocal square root, y = z * (1/sqrt(d)) / ||x||, the Lloyd-Max cell by a uniform-grid table
// (quant/cell_lut.h: two FFMAs, two conflict-free loads and a compare give exactly the CPU binary
// search's cell of that float y), and ||C[idx]||^2 pairwise for norm correction. The CPU codec
// (codec_tq.cpp) normalises before rotating and sums in float64, so a code can differ from the
// CPU's only where y lies within a few float32 ulps of a boundary, and norms by a few ulps before
// their fp16 rounding. Edge cases the float32 norm sees differently: an fp32 input with |x| >
// ~1e19 (x^2 overflows: stored NaN, the CPU stores the saturated norm) or a whole vector with
// ||x||^2 below FLT_MIN (||x|| < ~1.1e-19: stored as zero).
// Cost (SASS, team kernel loop, fp16 in, d = 128, tq4): ~106 warp instructions per vector, 4.5
// of them shuffles (TeamLayout: 16-byte chunks interleaved across the team, in-lane stages, then
// select-free swap stages; one rsqrt), against ~116 and 8.5 with 32 consecutive elements per lane
// and two float stages through shuffles (the code before 2026-12-03), 153 with the earlier
// register + shared-memory search tree; the legacy kernel takes ~221 plus float64 conversions and
// DFMAs. Bulk write of 65536 tokens x 8 heads x 128 on an H200 (docs/benchmarks.md): fp16 in
// 84.3 -> 71.3 us (0.47 -> 0.56 of copy), fp32 in 137.0 -> 106.8 us (0.52 -> 0.66).
#pragma once

#include <cfloat>
#include <type_traits>

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

// The vector element a lane's element e is (kLanes = kDim / kE lanes per vector): the lane holds
// chunks of kChunk consecutive elements, chunk c at kChunk * (kLanes * c + lane). kChunk = kE is
// one contiguous run per lane; a smaller kChunk interleaves the lanes, so that a warp's loads
// cover whole sectors (a lane can load at most 16 bytes at a time).
template <int kDim, int kE, int kChunk>
__device__ __forceinline__ constexpr int lane_element(int lane, int e) {
  return kChunk * ((kDim / kE) * (e / kChunk) + lane) + e % kChunk;
}

// One lane's kE input elements (lane_element's layout), raw (fp16 pairs or fp32 bits), and the
// slot of its vector.
template <int kE, bool kF16, int kChunk = kE>
struct LaneInput {
  static constexpr int kWords = kF16 ? kE / 2 : kE;
  static constexpr int kChunkWords = kWords / (kE / kChunk);
  uint32_t w[kWords];
  int32_t sm;  // slot_mapping of the vector's token

  // Slot e gets element lane_element(lane, e ^ flip) (flip: a multiple of kChunk).
  template <int kDim>
  __device__ __forceinline__ void load(const WriteArgs& a, int token, int head, int lane,
                                       int flip = 0) {
    sm = __ldg(a.slot_mapping + token);
    const size_t off =
        static_cast<size_t>(token) * a.x_token_stride + static_cast<size_t>(head) * kDim;
    const uint32_t* row =
        reinterpret_cast<const uint32_t*>(static_cast<const char*>(a.x) + off * (kF16 ? 2 : 4));
#pragma unroll
    for (int c = 0; c < kE / kChunk; ++c) {
      const uint32_t* p =
          row + lane_element<kDim, kE, kChunk>(lane, (c * kChunk) ^ flip) / (kF16 ? 2 : 1);
      uint32_t* d = w + c * kChunkWords;
      if constexpr (kChunkWords % 4 == 0) {  // the launcher checks 16-byte aligned rows
#pragma unroll
        for (int i = 0; i < kChunkWords / 4; ++i) {
          const uint4 u = __ldg(reinterpret_cast<const uint4*>(p) + i);
          d[4 * i] = u.x, d[4 * i + 1] = u.y, d[4 * i + 2] = u.z, d[4 * i + 3] = u.w;
        }
      } else if constexpr (kChunkWords % 2 == 0) {
#pragma unroll
        for (int i = 0; i < kChunkWords / 2; ++i) {
          const uint2 u = __ldg(reinterpret_cast<const uint2*>(p) + i);
          d[2 * i] = u.x, d[2 * i + 1] = u.y;
        }
      } else {
#pragma unroll
        for (int i = 0; i < kChunkWords; ++i) d[i] = __ldg(p + i);
      }
    }
  }
};

// The Hadamard signs D of this lane's kE elements as XOR masks: for fp16 input one word per pair
// (bit 15 flips element 2m, bit 31 element 2m + 1: one LOP3 a pair), for fp32 input one bit per
// element in a single word (element e's sign is bit e: a shift and a LOP3 each), so that the fp32
// kernels, whose raw input takes twice the registers, hold 1 word of signs instead of kE / 2.
template <int kE, bool kF16>
struct SignMasks {
  static_assert(kF16 || kE <= 32);
  uint32_t w[kF16 ? kE / 2 : 1];
  // fp16: the mask of pair m.
  __device__ __forceinline__ uint32_t pair(int m) const { return w[m]; }
  // fp32: the raw bits x of element e with D's sign applied.
  __device__ __forceinline__ uint32_t apply(uint32_t x, int e) const {
    return x ^ ((w[0] << (31 - e)) & 0x80000000u);
  }
};

template <int kDim, int kE, bool kF16, int kChunk = kE>
__device__ __forceinline__ void load_sign_masks(const float* signs, int lane,
                                                SignMasks<kE, kF16>& masks, int flip = 0) {
  if constexpr (!kF16) masks.w[0] = 0u;
#pragma unroll
  for (int m = 0; m < kE / 2; ++m) {
    const float s0 = __ldg(signs + lane_element<kDim, kE, kChunk>(lane, (2 * m) ^ flip));
    const float s1 = __ldg(signs + lane_element<kDim, kE, kChunk>(lane, (2 * m + 1) ^ flip));
    if constexpr (kF16)
      masks.w[m] = (s0 < 0.0f ? 0x8000u : 0u) | (s1 < 0.0f ? 0x80000000u : 0u);
    else
      masks.w[0] |= (s0 < 0.0f ? 1u : 0u) << (2 * m) | (s1 < 0.0f ? 1u : 0u) << (2 * m + 1);
  }
}

// D x as floats (sign flips are exact, so it does not matter where they happen).
template <int kE, bool kF16, int kChunk>
__device__ __forceinline__ void signed_input(const LaneInput<kE, kF16, kChunk>& in,
                                             const SignMasks<kE, kF16>& masks, float (&y)[kE]) {
#pragma unroll
  for (int m = 0; m < kE / 2; ++m) {
    if constexpr (kF16) {
      const float2 f = __half22float2(bits_h2(in.w[m] ^ masks.pair(m)));
      y[2 * m] = f.x;
      y[2 * m + 1] = f.y;
    } else {
      y[2 * m] = __uint_as_float(masks.apply(in.w[2 * m], 2 * m));
      y[2 * m + 1] = __uint_as_float(masks.apply(in.w[2 * m + 1], 2 * m + 1));
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

// WarpLayout's first stage of z = H (D x), across the element bit of lane bit 0, taken on the
// raw inputs: a lane swaps its sign-flipped words with lane ^ 1, which holds the other elements
// of its pairs, so fp16 input crosses lanes as packed pairs (half the shuffles of a float
// stage). Returns the lane's pairwise sum of squares of D x.
template <int kE, bool kF16>
__device__ __forceinline__ float first_stage(const LaneInput<kE, kF16>& in,
                                             const SignMasks<kE, kF16>& masks, int lane,
                                             unsigned mask, float (&y)[kE]) {
  constexpr int kPartner = 1;
  const float s = (lane & kPartner) ? -1.0f : 1.0f;  // as lane_fwht: other - mine, mine + other
  LaneSum<kE> n2;
#pragma unroll
  for (int m = 0; m < kE / 2; ++m) {
    float a[2], b[2];
    if constexpr (kF16) {
      const uint32_t mine = in.w[m] ^ masks.pair(m);
      const float2 fa = __half22float2(bits_h2(mine));
      const float2 fb = __half22float2(bits_h2(__shfl_xor_sync(mask, mine, kPartner)));
      a[0] = fa.x, a[1] = fa.y, b[0] = fb.x, b[1] = fb.y;
    } else {
      const uint32_t m0 = masks.apply(in.w[2 * m], 2 * m);
      const uint32_t m1 = masks.apply(in.w[2 * m + 1], 2 * m + 1);
      a[0] = __uint_as_float(m0), a[1] = __uint_as_float(m1);
      b[0] = __uint_as_float(__shfl_xor_sync(mask, m0, kPartner));
      b[1] = __uint_as_float(__shfl_xor_sync(mask, m1, kPartner));
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      n2.add_sq(2 * m + i, a[i]);
      y[2 * m + i] = fmaf(a[i], s, b[i]);
    }
  }
  return n2.total();
}

// Where a lane's elements sit, before and after the transform, for tq_encode:
// - WarpLayout (tq_warp_kernel): kDim / 32 consecutive elements per lane, first_stage then
//   lane_fwht's other stages;
// - TeamLayout (tq_team_kernel): lane_element's chunks of 16 bytes (so that a warp's loads cover
//   whole sectors), all five in-lane stages, then one swap_stage per lane bit,
//   which leaves lane l with elements [32 l, 32 l + 32): contiguous codes, one store per lane.
// position(e): the element's index among the lane's codes after the transform; sign_index(e):
// which of the lane's 2^kSignBits scale signs its value carries (see swap_stage).
template <int kDim>
struct WarpLayout {
  static constexpr int kE = kDim / 32, kLanes = 32, kSignBits = 0;
  static __device__ __forceinline__ void transform(float (&y)[kE], int lane, unsigned mask) {
    lane_fwht<kDim, kE, 1>(y, lane, mask);
  }
  static constexpr int position(int e) { return e; }
  static constexpr int sign_index(int) { return 0; }
};

// One butterfly stage across lane bit m that also swaps that lane bit with local bit k: lane
// pairs (l, l ^ m) exchange half their values (one shuffle per two outputs, where a float stage
// takes two), so that afterwards the lower lane holds the pairs' sums and differences at the old
// positions with bit k clear, the upper lane those with bit k set (new local bit k = old lane
// bit, new lane bit = old local bit k). The upper lane comes in with its slots flipped along bit
// k (slot e holds local position e ^ 1 << k; TeamLayout::flip), so every lane keeps slot e and
// sends slot e | 1 << k, without a select. Its differences come out negated (mine - other, for
// other - mine): the caller's scale takes the sign back (sign_index).
template <int kE>
__device__ __forceinline__ void swap_stage(float (&y)[kE], int m, int k) {
#pragma unroll
  for (int e = 0; e < kE; ++e)
    if ((e >> k & 1) == 0) {
      const int e1 = e | 1 << k;
      const float mine = y[e];
      const float other = __shfl_xor_sync(0xffffffffu, y[e1], m);
      y[e] = __fadd_rn(mine, other);
      y[e1] = __fsub_rn(mine, other);
    }
}

// A chunk is 16 bytes of input (8 fp16 or 4 fp32 elements), or 4 elements with 8 lanes (d 256),
// whose three swaps need three chunk-index bits. Element bits, low to high, before the swaps
// (in-chunk, lane, chunk index): fp16 d 64: 3, 1, 2; d 128: 3, 2, 2; d 256: 2, 3, 3; fp32: 2, then
// 1 / 2 / 3 lane bits, then 3.
template <int kDim, bool kF16>
struct TeamLayout {
  static constexpr int kE = 32, kLanes = kDim / kE;
  static constexpr int kChunk = kF16 && kLanes < 8 ? 8 : 4;
  static constexpr int kJBits = kChunk == 8 ? 3 : 2, kCBits = 5 - kJBits;
  static constexpr int kLaneBits = kLanes == 8 ? 3 : kLanes == 4 ? 2 : 1, kSignBits = kLaneBits;
  static_assert(kLanes == 2 || kLanes == 4 || kLanes == 8);
  // Swap i trades lane bit i for local bit swap_bit(i), one of the chunk-index bits, each of
  // which holds the top element bits: so the lanes end up with the top element bits.
  static constexpr int swap_bit(int i) { return kJBits + kCBits - kLaneBits + i; }
  // The lane's slot flips (see swap_stage): bit swap_bit(i) where lane bit i is set.
  static __device__ __forceinline__ int flip(int lane) {
    int x = 0;
#pragma unroll
    for (int i = 0; i < kLaneBits; ++i) x |= (lane >> i & 1) << swap_bit(i);
    return x;
  }
  // The five in-lane stages, then the swaps. Along a swap bit the upper lane's slots are flipped,
  // so its stage writes other - mine and mine + other (an FFMA by -1 each, as cheap as the FADD)
  // and keeps the flip.
  static __device__ __forceinline__ void transform(float (&y)[kE], int lane, unsigned) {
#pragma unroll
    for (int b = 0; b < 5; ++b) {
      const int h = 1 << b;
      int i = -1;  // the swap along local bit b, if any
#pragma unroll
      for (int j = 0; j < kLaneBits; ++j) i = swap_bit(j) == b ? j : i;
      const float s = i >= 0 && (lane >> i & 1) ? -1.0f : 1.0f;
#pragma unroll
      for (int e = 0; e < kE; ++e)
        if ((e & h) == 0) {
          const float p = y[e], q = y[e + h];
          y[e] = i >= 0 ? fmaf(p, s, q) : __fadd_rn(p, q);
          y[e + h] = i >= 0 ? fmaf(q, -s, p) : __fsub_rn(p, q);
        }
    }
#pragma unroll
    for (int i = 0; i < kLaneBits; ++i) swap_stage<kE>(y, 1 << i, swap_bit(i));
  }
  // Local chunk bit b held element bit kJBits + kLaneBits + b; swapped, it holds the lane bit's.
  static constexpr int position(int e) {
    int g = e & (kChunk - 1);
    for (int b = 0; b < kCBits; ++b)
      if (e >> (kJBits + b) & 1) {
        const int i = b - (kCBits - kLaneBits);
        g |= 1 << (i >= 0 ? kJBits + i : kJBits + kLaneBits + b);
      }
    return g;
  }
  static constexpr int sign_index(int e) {
    int t = 0;
    for (int i = 0; i < kLaneBits; ++i) t |= (e >> swap_bit(i) & 1) << i;
    return t;
  }
};

// QuadMmaLayout (the QJL team kernel at d 128 from fp16 rows): the team is an mma quad (lanes
// 4g..4g + 3, groupID g) and six of the transform's seven butterfly levels run on the tensor
// cores, where an fp16 input needs no conversion and the +-1 products are exact. Lane t loads
// elements [32 t, 32 t + 32) (word m: elements 2m, 2m + 1) and ends with coordinates
// [32 t, 32 t + 32) in slot order: contiguous codes, as TeamLayout's. Element bits: 0 (in the
// word), 1 (X: the A pair a0 / a2), 2 (R: row g or g + 8, the vector's two halves), 3-4 (the
// k-tile kk: words 4 kk..4 kk + 3), 5-6 (the lane t). One m16n8k16 with B = H_16 in natural
// order mixes element bits {0, 1, 5, 6} into coordinate bits {0, 1, 5, 6} (c0 / c1, n-tile,
// lane); the four k-tiles' products are summed by the tensor cores, with +H_16 or -H_16 as
// (-1)^popcount(grp & kk), into the accumulators of output group grp (coordinate bits 3-4): 32
// HMMA a vector. What is left is bit 2 (R), which the lane holds in c0 / c1 against c2 / c3:
// one in-lane stage of 32 FADD. Slot of (grp, R, nt, b) = 8 grp + 4 R + 2 nt + b. The tensor
// cores sum exact products in float32 (within a few ulps of the largest, as the float32 stages
// they replace); the sum of squares is taken after the transform and divided by d (exact).
// Per vector and lane: 32 HMMA, 32 FADD and 16 LOP3 (the signs), against TeamLayout's 32
// conversions, 224 FADD and 32 shuffles. The mse kernels, not bound by issue, stay on TeamLayout
// (0.95-0.99x with this layout; H100, docs/benchmarks.md, session 30).
struct QuadMmaLayout {
  static constexpr int kE = 32, kLanes = 4, kChunk = 32, kSignBits = 0;
  static __device__ __forceinline__ int flip(int) { return 0; }
  static __device__ __forceinline__ void transform(float (&)[kE], int, unsigned) {}
  static constexpr int position(int e) { return e; }
  static constexpr int sign_index(int) { return 0; }
};

// The lane's B fragments of +H_16 and -H_16 (entry (k, n) = (-1)^popcount(k & n)) for n-tiles 0
// and 1: [nt][0] holds rows 2t, 2t + 1 of column 8 nt + g, [nt][1] rows 2t + 8, 2t + 9.
struct QuadMmaHadamard {
  uint32_t pos[2][2], neg[2][2];
  __device__ __forceinline__ explicit QuadMmaHadamard(int warp_lane) {
    const int g = warp_lane >> 2, t = warp_lane & 3;
    const auto h = [](int k, int n) -> uint32_t { return __popc(k & n) & 1 ? 0xbc00u : 0x3c00u; };
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int k = 2 * t + 8 * r, n = 8 * nt + g;
        pos[nt][r] = h(k, n) | h(k + 1, n) << 16;
        neg[nt][r] = pos[nt][r] ^ 0x80008000u;
      }
  }
};

// z = H (D x) of the quad's vector in QuadMmaLayout's slots (unnormalised); returns the lane's
// pairwise sum of squares of z divided by d (= of D x, as TeamLayout's caller passes it). The
// warp must be converged (mma.sync).
__device__ __forceinline__ float quad_mma_rotate(const LaneInput<32, true, 32>& in,
                                                 const SignMasks<32, true>& masks,
                                                 const QuadMmaHadamard& h, float (&y)[32]) {
  // Output group grp (coordinate bits 3-4), n-tile, c0..c3; zeroed, the k-tile-0 MMAs take RZ.
  float acc[4][2][4] = {};
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    uint32_t a[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) a[i] = in.w[4 * kk + i] ^ masks.pair(4 * kk + i);
#pragma unroll
    for (int grp = 0; grp < 4; ++grp)
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        const uint32_t(&b)[2] = __popc(grp & kk) & 1 ? h.neg[nt] : h.pos[nt];
        // A registers: row g (R 0) X 0, row g + 8 (R 1) X 0, row g X 1, row g + 8 X 1
        mma_16816(acc[grp][nt], a[0], a[2], a[1], a[3], b[0], b[1]);
      }
  }
  LaneSum<32> n2;
#pragma unroll
  for (int grp = 0; grp < 4; ++grp)
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int b = 0; b < 2; ++b) {  // the R stage: c[b] (R 0) with c[2 + b] (R 1)
        const int e = 8 * grp + 2 * nt + b;
        const float p = acc[grp][nt][b], q = acc[grp][nt][2 + b];
        y[e] = __fadd_rn(p, q);
        y[e + 4] = __fsub_rn(p, q);
        n2.add_sq(e, y[e]);
        n2.add_sq(e + 4, y[e + 4]);
      }
  return n2.total() * (1.0f / 128.0f);
}

// The start of a team kernel's encode: y = Layout's values before tq_encode's transform, returns
// the lane's sum of squares of D x. rot: QuadMmaLayout's B fragments (TeamLayout: none).
template <class Layout, int kE, bool kF16, int kChunk>
__device__ __forceinline__ float team_rotate(const LaneInput<kE, kF16, kChunk>& in,
                                             const SignMasks<kE, kF16>& masks,
                                             const QuadMmaHadamard* rot, float (&y)[kE]) {
  if constexpr (std::is_same_v<Layout, QuadMmaLayout>) {
    return quad_mma_rotate(in, masks, *rot, y);
  } else {
    (void)rot;
    signed_input(in, masks, y);
    LaneSum<kE> n2;
#pragma unroll
    for (int e = 0; e < kE; ++e) n2.add_sq(e, y[e]);
    return n2.total();
  }
}

// Encodes the vector whose elements the team holds in y (Layout's, before its transform; for
// WarpLayout after first_stage), lane_n2 the lane's pairwise sum of squares of D x. Returns the
// norm to store; words get the lane's kE codes after the transform, position p at bits
// [kBits p, kBits p + kBits) of the lane's piece of the LSB-first bitstream (all zero for a zero
// or non-finite vector, as the CPU codec). With a `residual` array (QJL keys), residual[e] gets
// y - C[idx] of element e (the rotated unit vector's coordinate less its centroid), meaningless
// (possibly NaN) for a zero or non-finite vector, whose returned norm is not > 0: the caller stores
// such a vector's residual as zero (a select per vector, not one per element).
template <int kDim, int kBits, class Layout>
__device__ __forceinline__ float tq_encode(float (&y)[Layout::kE], float lane_n2, int lane,
                                           unsigned mask, const CellLut& lut, float hadamard_scale,
                                           bool norm_correction,
                                           uint32_t (&words)[(Layout::kE * kBits + 31) / 32],
                                           float* residual = nullptr) {
  constexpr int kE = Layout::kE, kLanes = Layout::kLanes;
  constexpr int kWords = (kE * kBits + 31) / 32;
  // One MUFU.RSQ (<= 2 ulp) for the norm and its inverse: IEEE sqrtf and divisions took ~40 of
  // a team kernel step's ~950 instructions. It moves y by a few ulps (a code can change only that
  // close to a boundary) and the stored norm by a few float32 ulps before its fp16 rounding.
  const float n2 = team_sum<kLanes>(mask, lane_n2);
  const float inv_norm = rsqrtf(n2);
  const float norm = n2 * inv_norm;

  Layout::transform(y, lane, mask);  // z = H (D x), up to Layout's signs

  // Below FLT_MIN the approximate rsqrt is not to be trusted: such a vector (norm < 1.1e-19,
  // far below fp16's smallest norm) is stored as zero, as is an exact zero one.
  const bool finite_nonzero = n2 >= FLT_MIN && n2 <= FLT_MAX;  // NaN: false
  static_assert(Layout::kSignBits <= 3);                       // `top` below
  float f[1 << Layout::kSignBits];  // y = P x / ||x||, with each sign the transform left
  f[0] = finite_nonzero ? hadamard_scale * inv_norm : 0.0f;
#pragma unroll
  for (int t = 1; t < (1 << Layout::kSignBits); ++t) {
    const int top = t >= 4 ? 2 : t >= 2 ? 1 : 0;  // the swap whose upper lanes negate these
    f[t] = (lane >> top & 1) ? -f[t ^ 1 << top] : f[t ^ 1 << top];
  }
  LaneSum<kE> c2;
  // Codes enter the words biased (kBias + idx, shifted): start each word at minus the sum of
  // its shifted biases (a compile-time constant), so that only the codes remain.
#pragma unroll
  for (int w = 0; w < kWords; ++w) words[w] = 0u;
#pragma unroll
  for (int e = 0; e < kE; ++e) words[kBits * e / 32] -= CellLut::kBias << (kBits * e % 32);
#pragma unroll
  for (int e = 0; e < kE; ++e) {
    const float v = y[e] * f[Layout::sign_index(e)];
    const uint32_t biased = lut.biased_code(v);
    const float c = lut.centroid(biased);
    c2.add_sq(e, c);
    if (residual) residual[e] = __fsub_rn(v, c);
    const int pos = kBits * Layout::position(e);
    words[pos / 32] += biased << (pos % 32);  // one LEA; fields are disjoint, so + is |
    if (pos % 32 + kBits > 32) words[pos / 32 + 1] += (biased - CellLut::kBias) >> (32 - pos % 32);
  }
  const float recon2 = team_sum<kLanes>(mask, c2.total());
  if (!finite_nonzero) {
#pragma unroll
    for (int w = 0; w < kWords; ++w) words[w] = 0u;
    return n2 <= FLT_MAX ? 0.0f : NAN;  // 0 for a zero (or tiny) vector, NaN for inf / NaN input
  }
  return norm_correction ? norm * rsqrtf(recon2) : norm;
}

// The team kernels' start: this lane's Hadamard sign masks, and the cell table in shared
// memory (filled by the first threads, then a barrier).
template <int kDim, int kE, bool kF16, int kChunk>
__device__ __forceinline__ CellLut team_tables(const WriteArgs& a, int lane, int flip,
                                               uint32_t* s_lut, SignMasks<kE, kF16>& masks) {
  load_sign_masks<kDim, kE, kF16, kChunk>(a.hadamard_signs, lane, masks, flip);
  static_assert(kWriteThreads >= CellLut::kWords);
  if (threadIdx.x < CellLut::kWords) CellLut::fill(s_lut, a.cell_lut, threadIdx.x);
  __syncthreads();
  return CellLut(s_lut, a.cell_lut);
}

// The page block (of KV head `head`) that slot_mapping value sm >= 0 names, and the slot in it:
// a division by block_tokens as a multiply-high by its magic number.
__device__ __forceinline__ uint8_t* slot_block(const WriteArgs& a, int32_t sm, int head,
                                               int& slot) {
  const uint32_t block = __umulhi(static_cast<uint32_t>(sm), a.block_magic) >> a.block_magic_shift;
  slot = sm - static_cast<int>(block) * a.block_tokens;
  return a.pool + static_cast<size_t>(block) * a.block_stride +
         static_cast<size_t>(head) * a.head_stride;
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
  using Layout = dev::TeamLayout<kDim, kF16In>;
  constexpr int kChunk = Layout::kChunk;
  using Input = dev::LaneInput<kE, kF16In, kChunk>;
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
  Input cur;
  const int flip = Layout::flip(lane);
  if (v < warp_end) cur.template load<kDim>(a, token, head, lane, flip);  // during the tables
  dev::SignMasks<kE, kF16In> masks;
  const dev::CellLut lut = dev::team_tables<kDim, kE, kF16In, kChunk>(a, lane, flip, s_lut, masks);
  const int cap = a.block_tokens;

  // One vector: encode now's, load the next (or now's again) into nxt. Once converted, now's raw
  // words are dead; two buffers in turn let nxt be in flight during the encode with no register
  // copies at the back edge.
  Input other;
  const auto step = [&](const Input& now, Input& nxt) {
    const bool store = v < nvec;
    const bool more = v + stride < nvec;  // else reload this one (unused)
    int next_token = token + stride_tokens, next_head = head + stride_heads;
    if (next_head >= heads) next_head -= heads, ++next_token;
    float y[kE];
    const float lane_n2 = dev::team_rotate<Layout>(now, masks, nullptr, y);
    const int32_t sm = now.sm;
    const int vec_head = head;
    if (more) token = next_token, head = next_head;
    nxt.template load<kDim>(a, token, head, lane, flip);
    uint32_t words[kBits];
    const float stored = dev::tq_encode<kDim, kBits, Layout>(
        y, lane_n2, lane, 0xffffffffu, lut, a.hadamard_scale, a.norm_correction, words);
    if (store && sm >= 0) {
      int slot;
      uint8_t* blk = dev::slot_block(a, sm, vec_head, slot);
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
  SignMasks<kE, kF16In> masks;
  load_sign_masks<kDim, kE, kF16In>(a.hadamard_signs, lane, masks);
#pragma unroll
  for (int i = lane; i < CellLut::kWords; i += 32) CellLut::fill(table, a.cell_lut, i);
  const CellLut lut(table, a.cell_lut);
  pdl_wait();  // x (and the slot mapping) come from the kernels before
  LaneInput<kE, kF16In> in;
  in.template load<kDim>(a, token, head, lane);
  __syncwarp();
  if (in.sm < 0) return;  // warp-uniform
  float y[kE];
  const float lane_n2 = first_stage<kE, kF16In>(in, masks, lane, 0xffffffffu, y);
  uint32_t piece[1];  // this lane's kLaneBits <= 32 bits of the bitstream
  const float stored = tq_encode<kDim, kBits, WarpLayout<kDim>>(
      y, lane_n2, lane, 0xffffffffu, lut, a.hadamard_scale, a.norm_correction, piece);

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
  const SignMasks<kE, kF16In> no_signs = {};
  float x[kE];
  signed_input(in, no_signs, x);
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
