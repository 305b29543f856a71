// Decode attention over paged K/V in any format, one template (kernel per K format, V format,
// head dim). One CTA = one (split of the sequence, KV head, sequence); its warps walk steps of
// kStep tokens (one page never straddled) and write one unnormalised partial (O, max, sum) that
// merge_kernel (decode_attention.cu) combines with a log-sum-exp merge.
//
// Inner loop (the compute side of the bandwidth floor): every packed element is loaded and
// unpacked once per warp and shared by all query heads of the KV head through tensor-core mma:
//   S   = Q K^T : M = query heads (rows g < group), N = 8 tokens, K = 16 dims  (m16n8k16)
//   O^T = V^T P^T: M = 16 dims, N = query heads, K = 16 tokens
// The S accumulator layout is exactly the P^T B fragment, so P never leaves registers. Codes
// become fp16 through per-lane shared-memory tables (no bank conflicts), K norms scale S after
// the mma, V norms fold into P. Scores and values stay in the rotated domain; the query was
// rotated once (prepare kernel) and the output is rotated back once (merge kernel).
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "tq/backend/cuda/cuda_common.cuh"
#include "tq/backend/cuda/vec_formats.cuh"

namespace tq::backend::cuda {

// Kernel arguments (device pointers; one segment of the cache).
struct AttnArgs {
  const uint8_t* k_pool;
  size_t k_block_stride;
  size_t k_head_stride;
  const uint8_t* v_pool;
  size_t v_block_stride;
  size_t v_head_stride;
  const float* k_centroids;
  const float* v_centroids;
  const int32_t* block_tables;  // [n_seqs][max_blocks]
  int max_blocks;
  const int32_t* lengths;  // [n_seqs]
  int block_tokens;
  int group;    // query heads per KV head (<= 8)
  int n_heads;  // query heads
  const __half* q;         // [n_seqs][n_heads][d], scaled by scale*log2(e) (rotated if K is)
  const __half* q_sketch;  // [n_seqs][n_heads][d], S P q * qjl_scale (QJL keys only)
  float* part_o;           // [n_seqs][n_heads][splits_total][d]
  float2* part_ml;         // [n_seqs][n_heads][splits_total]: (max, sum) in log2 units
  int tokens_per_split;
  int split_offset;  // first split index of this segment
  int splits_total;
};

inline constexpr int kAttnWarps = 4;
inline constexpr int kAttnThreads = kAttnWarps * 32;

// Tokens per warp step: 32 for packed formats, 16 where raw rows are large (register budget).
template <class KF, class VF>
constexpr int attn_step_tokens() {
  return (KF::kCodeBits >= 8 || VF::kCodeBits >= 8) ? 16 : 32;
}

template <class KF, class VF, int kDim>
constexpr bool attn_share_table() {
  return KF::kTableBytes > 0 && KF::kCodeBits == VF::kCodeBits && KF::kTableBytes == VF::kTableBytes;
}

template <class KF, class VF, int kDim>
constexpr int attn_table_bytes() {
  return KF::kTableBytes + (attn_share_table<KF, VF, kDim>() ? 0 : VF::kTableBytes) + KF::kSignTableBytes;
}

template <int kDim>
constexpr int attn_reduce_bytes() {
  return kAttnWarps * 8 * kDim * 4 + kAttnWarps * 8 * 2 * 4;
}

template <class KF, class VF, int kDim>
constexpr int attn_smem_bytes() {
  const int t = attn_table_bytes<KF, VF, kDim>();
  const int r = attn_reduce_bytes<kDim>();
  return t > r ? t : r;
}

template <class KF, class VF, int kDim>
__global__ void __launch_bounds__(kAttnThreads) attention_kernel(const AttnArgs a) {
  using namespace dev;
  constexpr int kStep = attn_step_tokens<KF, VF>();
  constexpr int kNT = kStep / 8;   // S n-tiles (8 tokens) per step
  constexpr int kNH = kStep / 16;  // PV k16 halves per step
  constexpr int kKT = kDim / 16;   // S k-tiles
  constexpr int kKN = kDim / 4;    // dims of the K chunk a thread unpacks (chunk t)
  constexpr int kVN = kDim / 8;    // dims of the V chunk a thread unpacks (chunk g)
  constexpr int kMT = kDim / 16;   // PV m-tiles
  constexpr bool kQjl = KF::kHasQjl;
  extern __shared__ __align__(16) uint8_t smem[];

  const int split = blockIdx.x, kvh = blockIdx.y, seq = blockIdx.z;
  const int len = __ldg(a.lengths + seq);
  const int begin = split * a.tokens_per_split;
  const int end = min(len, begin + a.tokens_per_split);
  const size_t part = (static_cast<size_t>(seq) * a.n_heads + kvh * a.group) * a.splits_total +
                      a.split_offset + split;
  if (begin >= end) {  // an empty split still writes its partial (weight 0)
    for (int h = threadIdx.x; h < a.group; h += blockDim.x)
      a.part_ml[part + static_cast<size_t>(h) * a.splits_total] = make_float2(-INFINITY, 0.0f);
    return;
  }

  uint8_t* k_table = smem;
  uint8_t* v_table = attn_share_table<KF, VF, kDim>() ? smem : smem + KF::kTableBytes;
  uint8_t* s_table = v_table + (attn_share_table<KF, VF, kDim>() ? KF::kTableBytes : VF::kTableBytes);
  if constexpr (KF::kTableBytes > 0) build_table<KF::kCodeBits, KF::kLookup>(k_table, a.k_centroids);
  if constexpr (VF::kTableBytes > 0 && !attn_share_table<KF, VF, kDim>())
    build_table<VF::kCodeBits, VF::kLookup>(v_table, a.v_centroids);
  if constexpr (kQjl) build_table<1, 4>(s_table, nullptr);
  __syncthreads();

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const uint8_t* k_tab = k_table + lane * 2 * (KF::kTableBytes > 0 ? KF::kLookup : 2);
  const uint8_t* v_tab = v_table + lane * 2 * (VF::kTableBytes > 0 ? VF::kLookup : 2);
  const uint8_t* s_tab = s_table + lane * 8;

  // Query A fragments: rows = heads (g < group), k-slots = thread t's K chunk dims.
  uint32_t qa[kKT][2];
  uint32_t qs[kQjl ? kKT : 1][2];
  {
    const bool live = g < a.group;
    const size_t row = (static_cast<size_t>(seq) * a.n_heads + kvh * a.group + (live ? g : 0)) * kDim;
    const __half* qp = a.q + row;
#pragma unroll
    for (int kk = 0; kk < kKT; ++kk)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int i = 4 * kk + 2 * e;
        const __half lo = qp[KF::local_dim(kKN, t, i)], hi = qp[KF::local_dim(kKN, t, i + 1)];
        qa[kk][e] = live ? h2_bits(__halves2half2(lo, hi)) : 0u;
        if constexpr (kQjl) {
          const __half* sp = a.q_sketch + row;
          qs[kk][e] = live ? h2_bits(__halves2half2(sp[t * kKN + i], sp[t * kKN + i + 1])) : 0u;
        }
      }
  }

  float m_run = -INFINITY;  // running max of head g (log2 units), same in the 4 lanes of a quad
  float l_run = 0.0f;       // this lane's share of the running sum of head g
  float o[kMT][4];
#pragma unroll
  for (int mm = 0; mm < kMT; ++mm) o[mm][0] = o[mm][1] = o[mm][2] = o[mm][3] = 0.0f;

  const int cap = a.block_tokens;
  const int32_t* table = a.block_tables + static_cast<size_t>(seq) * a.max_blocks;
  for (int tok0 = begin + warp * kStep; tok0 < end; tok0 += kAttnWarps * kStep) {
    const int page = __ldg(table + tok0 / cap);
    const int slot0 = tok0 % cap;
    const int valid = end - tok0;  // tokens of this step that exist
    const uint8_t* kb = a.k_pool + static_cast<size_t>(page) * a.k_block_stride +
                        static_cast<size_t>(kvh) * a.k_head_stride;
    const uint8_t* vb = a.v_pool + static_cast<size_t>(page) * a.v_block_stride +
                        static_cast<size_t>(kvh) * a.v_head_stride;

    // Issue every load of the step first (bytes in flight), then compute.
    typename KF::template Raw<kKN> kr[kNT];
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
      if (8 * j + g < valid) KF::template load<kKN>(kr[j], kb, cap, slot0 + 8 * j + g, t);
      else kr[j].zero();
    }
    typename VF::template Raw<kVN> vr[kNH][4];
#pragma unroll
    for (int h = 0; h < kNH; ++h)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int tok = 16 * h + 2 * t + (e & 1) + 8 * (e >> 1);
        if (tok < valid) VF::template load<kVN>(vr[h][e], vb, cap, slot0 + tok, g);
        else vr[h][e].zero();
      }
    float2 ks[kNT], vs[kNT];
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
      // Slots past `valid` may hold stale bytes (even NaN norms): their factors become 0.
      const int tk = 8 * j + 2 * t;
      ks[j] = tk < valid ? KF::scale2(kb, cap, slot0 + tk) : make_float2(0.0f, 0.0f);
      vs[j] = tk < valid ? VF::scale2(vb, cap, slot0 + tk) : make_float2(0.0f, 0.0f);
      if (tk + 1 >= valid) ks[j].y = vs[j].y = 0.0f;
    }
    typename dev::SignsOf<KF, kKN>::type sr[kNT];
    [[maybe_unused]] float2 rs[kNT];
    if constexpr (kQjl) {
#pragma unroll
      for (int j = 0; j < kNT; ++j) {
        if (8 * j + g < valid) KF::template load_signs<kKN>(sr[j].r, kb, cap, slot0 + 8 * j + g, t);
        else sr[j].r.zero();
        rs[j] = (8 * j + 2 * t < valid) ? KF::residual2(kb, cap, slot0 + 8 * j + 2 * t)
                                        : make_float2(0.0f, 0.0f);
      }
    }

    // S = Q K^T (c0, c1: head g, tokens 8j + 2t, 8j + 2t + 1).
    float s[kNT][4];
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
      s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
      uint32_t kp[kKN / 2];
      decode_chunk<KF, kKN>(kr[j], t, k_tab, kp);
#pragma unroll
      for (int kk = 0; kk < kKT; ++kk) mma_16816(s[j], qa[kk][0], 0u, qa[kk][1], 0u, kp[2 * kk], kp[2 * kk + 1]);
      if constexpr (kQjl) {
        float s2[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        uint32_t sp[kKN / 2];
        KF::template decode_signs<kKN>(sr[j].r, s_tab, sp);
#pragma unroll
        for (int kk = 0; kk < kKT; ++kk) mma_16816(s2, qs[kk][0], 0u, qs[kk][1], 0u, sp[2 * kk], sp[2 * kk + 1]);
        s[j][0] += rs[j].x * s2[0];
        s[j][1] += rs[j].y * s2[1];
      }
      if constexpr (KF::kTokenScale) {
        s[j][0] *= ks[j].x;
        s[j][1] *= ks[j].y;
      }
      if (8 * j + 2 * t >= valid) s[j][0] = -INFINITY;
      if (8 * j + 2 * t + 1 >= valid) s[j][1] = -INFINITY;
    }

    // Online softmax of head g over the step.
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < kNT; ++j) mx = fmaxf(mx, fmaxf(s[j][0], s[j][1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m_run, mx);
    const float m_use = m_new == -INFINITY ? 0.0f : m_new;
    const float alpha = exp2f(m_run - m_use);
    m_run = m_new;
    uint32_t pb[kNH][2];
    float psum = 0.0f;
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
      const float p0 = exp2f(s[j][0] - m_use), p1 = exp2f(s[j][1] - m_use);
      psum += p0 + p1;
      const float w0 = VF::kTokenScale ? p0 * vs[j].x : p0;
      const float w1 = VF::kTokenScale ? p1 * vs[j].y : p1;
      pb[j / 2][j % 2] = pack_h2(w0, w1);
    }
    l_run = l_run * alpha + psum;
    // O^T columns are heads 2t, 2t+1; their factors live in lanes 8t and 8t + 4.
    const float a0 = __shfl_sync(0xffffffffu, alpha, 8 * t);
    const float a1 = __shfl_sync(0xffffffffu, alpha, 8 * t + 4);
#pragma unroll
    for (int mm = 0; mm < kMT; ++mm) {
      o[mm][0] *= a0;
      o[mm][1] *= a1;
      o[mm][2] *= a0;
      o[mm][3] *= a1;
    }

    // O^T += V^T P^T (A rows g / g+8 of m-tile mm = local V dims 2mm / 2mm+1 of chunk g).
#pragma unroll
    for (int h = 0; h < kNH; ++h) {
      uint32_t vp[4][kVN / 2];
#pragma unroll
      for (int e = 0; e < 4; ++e) decode_chunk<VF, kVN>(vr[h][e], g, v_tab, vp[e]);
#pragma unroll
      for (int mm = 0; mm < kMT; ++mm)
        mma_16816(o[mm], prmt(vp[0][mm], vp[1][mm], 0x5410u), prmt(vp[0][mm], vp[1][mm], 0x7632u),
                  prmt(vp[2][mm], vp[3][mm], 0x5410u), prmt(vp[2][mm], vp[3][mm], 0x7632u), pb[h][0],
                  pb[h][1]);
    }
  }

  // Combine the warps of the CTA (shared memory reused: the tables are no longer read).
  l_run += __shfl_xor_sync(0xffffffffu, l_run, 1);
  l_run += __shfl_xor_sync(0xffffffffu, l_run, 2);
  __syncthreads();
  float* red_o = reinterpret_cast<float*>(smem);  // [warp][8 heads][kDim]
  float* red_m = red_o + kAttnWarps * 8 * kDim;   // [warp][8]
  float* red_l = red_m + kAttnWarps * 8;          // [warp][8]
  if (t == 0) {
    red_m[warp * 8 + g] = m_run;
    red_l[warp * 8 + g] = l_run;
  }
#pragma unroll
  for (int mm = 0; mm < kMT; ++mm) {
    const int d0 = VF::local_dim(kVN, g, 2 * mm), d1 = VF::local_dim(kVN, g, 2 * mm + 1);
    float* base = red_o + warp * 8 * kDim;
    base[(2 * t) * kDim + d0] = o[mm][0];
    base[(2 * t + 1) * kDim + d0] = o[mm][1];
    base[(2 * t) * kDim + d1] = o[mm][2];
    base[(2 * t + 1) * kDim + d1] = o[mm][3];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < a.group * kDim; i += blockDim.x) {
    const int h = i / kDim, d = i % kDim;
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < kAttnWarps; ++w) m = fmaxf(m, red_m[w * 8 + h]);
    float acc = 0.0f, l = 0.0f;
    if (m != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kAttnWarps; ++w) {
        const float f = exp2f(red_m[w * 8 + h] - m);
        acc += f * red_o[(w * 8 + h) * kDim + d];
        l += f * red_l[w * 8 + h];
      }
    }
    const size_t p = part + static_cast<size_t>(h) * a.splits_total;
    a.part_o[p * kDim + d] = acc;
    if (d == 0) a.part_ml[p] = make_float2(m, l);
  }
}

}  // namespace tq::backend::cuda
