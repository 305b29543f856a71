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
// the CPU's binary search (first two levels from registers, the rest from a shared-memory tree),
// and ||C[idx]||^2 pairwise for norm correction. The CPU codec (codec_tq.cpp) normalises before
// rotating and sums in float64, so a code can differ from the CPU's only where y lies within
// float32 rounding (~1e-7 of |y|) of a boundary, and norms by float32 rounding. Edge cases the
// float32 norm sees differently: an fp32 input with |x| > ~1e19 (x^2 overflows: stored NaN, the
// CPU stores the saturated norm) or a whole vector below ~1e-19 (x^2 underflows: stored as zero).
// Cost (SASS, tq4, d = 128, fp16 in): ~153 warp instructions per vector in the team kernel's
// loop, against ~221 plus float64 conversions and DFMAs in the legacy kernel.
#pragma once

#include "tq/backend/cuda/quantize_write.cuh"

namespace tq::backend::cuda {

// The runtime format of one half of a warp-kernel launch.
enum class WarpFormat : int { kF16 = 0, kTq1 = 1, kTq2 = 2, kTq3 = 3, kTq4 = 4 };

// quantize_write_kv in one launch: half 0 (keys) takes warps [0, vectors[0]), half 1 (values)
// the next vectors[1].
struct WarpWriteArgs {
  WriteArgs half[2];
  WarpFormat format[2];
  int vectors[2];  // tokens * n_kv_heads of each half
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

__device__ __forceinline__ float lds_f32(uint32_t shared_addr) {
  float v;
  asm volatile("ld.shared.f32 %0, [%1];" : "=f"(v) : "r"(shared_addr));
  return v;
}

// The cell search of quant::quantize_coordinate (the number of boundaries below y, by the same
// comparisons as its binary search) over an implicit tree in shared memory: node n (1-based,
// level l, position q) holds boundary (2q + 1) 2^(b-1-l) - 1, its children are 2n and 2n + 1, and
// the 2^b leaves 2^b + idx hold the centroids. The walk keeps the node's shared address, so a
// step is one load, one compare and a = 2a - base + 4 [y > T]: no index arithmetic. Levels 0 and
// 1 come from registers. The table is 128-byte aligned, so the leaf address holds idx in bits
// [2, 2 + b).
template <int kBits>
struct CellTree {
  static constexpr int kLeaves = 1 << kBits;
  static constexpr int kRawFloats = 2 * kLeaves + 32;  // room to align the table to 128 bytes
  uint32_t base = 0, step0 = 0, step1 = 0;             // node 0's address; 0 - base, 4 - base
  float t1 = 0.0f, t2 = 0.0f, t3 = 0.0f;

  // The 128-byte aligned table inside raw (kRawFloats floats of shared memory).
  static __device__ __forceinline__ float* table(float* raw) {
    const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(raw));
    return raw + (((128u - (a & 127u)) & 127u) >> 2);
  }
  // Entry i of the table (i < 2^kBits): centroid i and, for i >= 1, node i.
  static __device__ __forceinline__ void fill(float* tree, const float* boundaries,
                                              const float* centroids, int i) {
    tree[kLeaves + i] = __ldg(centroids + i);
    if (i >= 1) {
      const int l = 31 - __clz(i), q = i - (1 << l);
      tree[i] = __ldg(boundaries + ((2 * q + 1) << (kBits - 1 - l)) - 1);
    }
  }
  // After fill and a barrier.
  __device__ __forceinline__ explicit CellTree(const float* tree) {
    base = static_cast<uint32_t>(__cvta_generic_to_shared(tree));
    step0 = 0u - base;
    step1 = 4u - base;
    t1 = tree[1];
    if constexpr (kBits >= 2) t2 = tree[2], t3 = tree[3];
  }
  // The shared address of y's leaf, base + 4 (2^b + idx). NaN takes cell 0, as on the CPU.
  __device__ __forceinline__ uint32_t leaf(float y) const {
    const bool p1 = y > t1;
    uint32_t a = p1 ? base + 12u : base + 8u;
    if constexpr (kBits >= 2) {
      a = 2u * a + (y > (p1 ? t3 : t2) ? step1 : step0);
#pragma unroll
      for (int l = 2; l < kBits; ++l) a = 2u * a + (y > lds_f32(a) ? step1 : step0);
    }
    return a;
  }
  static __device__ __forceinline__ uint32_t code(uint32_t leaf_addr) {
    return (leaf_addr >> 2) & (kLeaves - 1u);
  }
  static __device__ __forceinline__ float centroid(uint32_t leaf_addr) {
    return lds_f32(leaf_addr);
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
                                           const CellTree<kBits>& tree, float hadamard_scale,
                                           bool norm_correction,
                                           uint32_t (&words)[(kDim / kLanes * kBits + 31) / 32]) {
  constexpr int kE = kDim / kLanes;
  constexpr int kWords = (kE * kBits + 31) / 32;
  LaneSum<kE> n2;
#pragma unroll
  for (int e = 0; e < kE; ++e) n2.add_sq(e, y[e]);
  const float norm = sqrtf(team_sum<kLanes>(mask, n2.total()));  // IEEE sqrt (no fast math)

  // z = H (D x): stage h pairs (j, j + h), inside the lane while h < kE, then across lanes
  // (the upper lane of a pair takes other - mine, exactly as one rounding of a subtraction).
#pragma unroll
  for (int h = 1; h < kE; h *= 2)
#pragma unroll
    for (int e = 0; e < kE; ++e)
      if ((e & h) == 0) {
        const float p = y[e], q = y[e + h];
        y[e] = p + q;
        y[e + h] = p - q;
      }
#pragma unroll
  for (int h = kE; h < kDim; h *= 2) {
    const int m = h / kE;
    const float s = (lane & m) ? -1.0f : 1.0f;
#pragma unroll
    for (int e = 0; e < kE; ++e) y[e] = fmaf(y[e], s, __shfl_xor_sync(mask, y[e], m));
  }

  const bool finite_nonzero = norm > 0.0f && isfinite(norm);
  const float f = finite_nonzero ? hadamard_scale / norm : 0.0f;  // y = P x / ||x||
  LaneSum<kE> c2;
#pragma unroll
  for (int w = 0; w < kWords; ++w) words[w] = 0u;
#pragma unroll
  for (int e = 0; e < kE; ++e) {
    const uint32_t leaf = tree.leaf(y[e] * f);
    const uint32_t idx = CellTree<kBits>::code(leaf);
    c2.add_sq(e, CellTree<kBits>::centroid(leaf));
    const int pos = kBits * e;
    words[pos / 32] |= idx << (pos % 32);
    if (pos % 32 + kBits > 32) words[pos / 32 + 1] |= idx >> (32 - pos % 32);
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
// loading the next vector (and its slot) before encoding the current one.
template <int kDim, int kBits, bool kF16In>
__global__ void __launch_bounds__(kWriteThreads, 4) tq_team_kernel(const WriteArgs a) {
  constexpr int kE = 32, kLanes = kDim / kE, kTeams = kWriteThreads / kLanes;
  constexpr int kCodeBytes = kDim * kBits / 8;
  __shared__ float s_raw[dev::CellTree<kBits>::kRawFloats];
  const int team = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const int heads = a.n_kv_heads, nvec = a.tokens * heads;  // the launcher checks it fits an int
  const int stride = gridDim.x * kTeams, stride_tokens = stride / heads,
            stride_heads = stride % heads;
  int v = blockIdx.x * kTeams + team;
  int token = v / heads, head = v % heads;  // of v, then stepped without divisions
  dev::LaneInput<kE, kF16In> cur;
  if (v < nvec) cur.template load<kDim>(a, token, head, lane);  // in flight while the tables load
  uint32_t hmask[kE / 2];
  dev::load_sign_masks<kE>(a.hadamard_signs, lane, hmask);
  float* s_tree = dev::CellTree<kBits>::table(s_raw);
  if (threadIdx.x < (1 << kBits))
    dev::CellTree<kBits>::fill(s_tree, a.boundaries, a.centroids, threadIdx.x);
  __syncthreads();
  const dev::CellTree<kBits> tree(s_tree);
  const unsigned mask = dev::team_mask<kLanes>();
  const int cap = a.block_tokens;

  for (; v < nvec; v += stride) {  // team-uniform
    int next_token = token + stride_tokens, next_head = head + stride_heads;
    if (next_head >= heads) next_head -= heads, ++next_token;
    const bool more = v + stride < nvec;  // past the end: reload this one (unused)
    dev::LaneInput<kE, kF16In> next;
    next.template load<kDim>(a, more ? next_token : token, more ? next_head : head, lane);
    if (cur.sm >= 0) {
      float y[kE];
      dev::signed_input<kE, kF16In>(cur, hmask, y);
      uint32_t words[kBits];
      const float stored = dev::tq_encode<kDim, kBits, kLanes>(
          y, lane, mask, tree, a.hadamard_scale, a.norm_correction, words);
      const int slot = cur.sm % cap;
      uint8_t* blk = a.pool + static_cast<size_t>(cur.sm / cap) * a.block_stride +
                     static_cast<size_t>(head) * a.head_stride;
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
    cur = next;
    token = next_token;
    head = next_head;
  }
}

namespace dev {

// Shared floats per warp of tq_warp_kernel: one CellTree table of up to 4 bits.
inline constexpr int kWarpTableFloats = CellTree<4>::kRawFloats;

// One warp encodes vector v of a tq mse pool (raw: this warp's kWarpTableFloats shared floats).
template <int kDim, int kBits, bool kF16In>
__device__ __forceinline__ void warp_write_tq(const WriteArgs& a, int v, int lane, float* raw) {
  constexpr int kE = kDim / 32;
  constexpr int kCodeBytes = kDim * kBits / 8, kLaneBits = kE * kBits, kWords = kDim * kBits / 32;
  const int token = v / a.n_kv_heads, head = v % a.n_kv_heads;
  LaneInput<kE, kF16In> in;
  in.template load<kDim>(a, token, head, lane);
  uint32_t hmask[kE / 2];
  load_sign_masks<kE>(a.hadamard_signs, lane, hmask);
  float* table = CellTree<kBits>::table(raw);
  if (lane < (1 << kBits)) CellTree<kBits>::fill(table, a.boundaries, a.centroids, lane);
  __syncwarp();
  if (in.sm < 0) return;  // warp-uniform
  const CellTree<kBits> tree(table);
  float y[kE];
  signed_input<kE, kF16In>(in, hmask, y);
  uint32_t piece[1];  // this lane's kLaneBits <= 32 bits of the bitstream
  const float stored = tq_encode<kDim, kBits, 32>(y, lane, 0xffffffffu, tree, a.hadamard_scale,
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
  __shared__ float tables[kWarpWriteWarps][dev::kWarpTableFloats];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int v = blockIdx.x * kWarpWriteWarps + warp;
  const int half = v < p.vectors[0] ? 0 : 1;
  if (half == 1) v -= p.vectors[0];
  if (v >= p.vectors[half]) return;  // whole warps exit; no block-wide barrier follows
  const WriteArgs& a = p.half[half];
  switch (p.format[half]) {
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
