// The split-K merge of decode attention, run inside attention_kernel by the last CTA of each
// (sequence, KV head) to finish (an arrival counter per pair), so a call is one kernel: no merge
// launch and no round of waiting for the whole attention grid to drain before it.
//
// out = (P_v^T sum_{main} w_s O_s + sum_{window} w_s O_s) / sum_s w_s l_s, w_s = 2^(m_s - M),
// the sums in split order. A warp per query head of the group, each lane kDim / 32 consecutive
// dims (the layout of lane_fwht, which rotates the value sum back with shuffles only). The
// epilogue scales the output and writes it as f32, fp16 and 8-bit activations
// (DecodeAttentionParams).
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "tq/backend/cuda/cuda_common.cuh"
#include "tq/backend/cuda/q8_act.cuh"
#include "tq/backend/cuda/q8_scale.h"

namespace tq::backend::cuda {

struct MergeArgs {
  const float* part_o;    // [n_seqs][n_heads][splits_total][d]
  const float2* part_ml;  // [n_seqs][n_heads][splits_total]: (max, sum) in log2 units
  int splits_main;        // splits [0, splits_main) hold rotated sums (P_v applies), the rest not
  int splits_total;
  int n_heads;
  int group;
  int* counters;         // [n_seqs][n_kv_heads] arrivals; zero between calls
  const float* signs_v;  // P_v = H D / sqrt(d), or
  const float* rot_v;    // dense P_v, or neither (values not rotated)
  float inv_sqrt_d;
  float* out;              // [n_seqs][n_heads][d] or null
  const float* out_scale;  // [rows][n_kv_heads * d] or null
  const int32_t* out_scale_rows;
  __half* out_f16;
  int8_t* out_q8;
  Q8Scale* out_q8_scales;
};

namespace dev {

// kE floats at p (16- or 8-byte aligned), through L2 (other CTAs wrote them in this kernel).
template <int kE>
__device__ __forceinline__ void load_cg(const float* p, float (&v)[kE]) {
  if constexpr (kE % 4 == 0) {
#pragma unroll
    for (int i = 0; i < kE / 4; ++i) {
      const float4 f = __ldcg(reinterpret_cast<const float4*>(p) + i);
      v[4 * i] = f.x, v[4 * i + 1] = f.y, v[4 * i + 2] = f.z, v[4 * i + 3] = f.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < kE / 2; ++i) {
      const float2 f = __ldcg(reinterpret_cast<const float2*>(p) + i);
      v[2 * i] = f.x, v[2 * i + 1] = f.y;
    }
  }
}

// The merged outputs of KV head kvh's query heads of sequence seq. The whole CTA (kWarps warps)
// calls it; sh: kWarps * kDim floats of shared memory (the dense rotation's staging).
template <int kDim, int kWarps>
__device__ __forceinline__ void merge_group(const MergeArgs& a, int seq, int kvh, float* sh) {
  constexpr int kE = kDim / 32, kUnroll = 4, kQ8Lanes = 32 / kE;
  static_assert(kDim % 64 == 0, "lane_fwht and the 8-bit blocks take whole warps of >= 2 dims");
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const size_t kv_dim = static_cast<size_t>(a.n_heads / a.group) * kDim;
  for (int hg = warp; hg < a.group; hg += kWarps) {  // warp-uniform
    const int head = kvh * a.group + hg;
    const size_t ph = (static_cast<size_t>(seq) * a.n_heads + head) * a.splits_total;
    float m = -INFINITY;
    for (int s = lane; s < a.splits_total; s += 32) m = fmaxf(m, __ldcg(a.part_ml + ph + s).x);
#pragma unroll
    for (int o = 16; o >= 1; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float l = 0.0f, acc_main[kE], acc_win[kE];
#pragma unroll
    for (int e = 0; e < kE; ++e) acc_main[e] = acc_win[e] = 0.0f;
    if (m != -INFINITY) {
      for (int s0 = 0; s0 < a.splits_total; s0 += kUnroll) {
        float2 ml[kUnroll];
        float ov[kUnroll][kE];
#pragma unroll
        for (int i = 0; i < kUnroll; ++i) {
          const int s = s0 + i;
          if (s < a.splits_total) {
            ml[i] = __ldcg(a.part_ml + ph + s);
            load_cg<kE>(a.part_o + (ph + s) * kDim + lane * kE, ov[i]);
          } else {
            ml[i] = make_float2(-INFINITY, 0.0f);
          }
        }
#pragma unroll
        for (int i = 0; i < kUnroll; ++i) {
          if (ml[i].x == -INFINITY) continue;
          const float w = exp2f(ml[i].x - m);
          l += w * ml[i].y;
          const bool main = s0 + i < a.splits_main;
#pragma unroll
          for (int e = 0; e < kE; ++e) {
            const float v = w * ov[i][e];
            if (main)
              acc_main[e] += v;
            else
              acc_win[e] += v;
          }
        }
      }
    }
    float y[kE];
#pragma unroll
    for (int e = 0; e < kE; ++e) y[e] = acc_main[e];
    if (a.signs_v) {  // P^T y = D H y / sqrt(d)
      lane_fwht<kDim, kE>(y, lane, 0xffffffffu);
#pragma unroll
      for (int e = 0; e < kE; ++e) y[e] = y[e] * a.inv_sqrt_d * __ldg(a.signs_v + lane * kE + e);
    } else if (a.rot_v) {  // x_j = sum_i P_ij y_i
      float* w = sh + warp * kDim;
#pragma unroll
      for (int e = 0; e < kE; ++e) w[lane * kE + e] = acc_main[e];
      __syncwarp();
#pragma unroll
      for (int e = 0; e < kE; ++e) {
        const int j = lane * kE + e;
        float x = 0.0f;
        for (int i = 0; i < kDim; ++i)
          x = fmaf(__ldg(a.rot_v + static_cast<size_t>(i) * kDim + j), w[i], x);
        y[e] = x;
      }
      __syncwarp();
    }
    const size_t o = (static_cast<size_t>(seq) * a.n_heads + head) * kDim + lane * kE;
    float r[kE];
#pragma unroll
    for (int e = 0; e < kE; ++e) r[e] = l > 0.0f ? (y[e] + acc_win[e]) / l : 0.0f;
    if (a.out_scale) {
      const size_t row = a.out_scale_rows ? static_cast<size_t>(a.out_scale_rows[seq]) : 0;
      const float* t = a.out_scale + row * kv_dim + static_cast<size_t>(kvh) * kDim + lane * kE;
#pragma unroll
      for (int e = 0; e < kE; ++e) r[e] *= t[e];
    }
    if (a.out) {
#pragma unroll
      for (int e = 0; e < kE; ++e) a.out[o + e] = r[e];
    }
    if (a.out_f16) {
      float hv[kE];
#pragma unroll
      for (int e = 0; e < kE; ++e) {
        const __half h = __float2half_rn(r[e]);
        a.out_f16[o + e] = h;
        hv[e] = __half2float(h);
      }
      if (a.out_q8) {  // kQ8Lanes adjacent lanes hold one 32-column block
        const float amax = q8_block_scale<kE>(hv, kQ8Lanes);
        int q[kE];
        const int sum = q8_quantize<kE>(hv, amax, kQ8Lanes, q);
#pragma unroll
        for (int e = 0; e < kE; ++e) a.out_q8[o + e] = static_cast<int8_t>(q[e]);
        if (lane % kQ8Lanes == 0) a.out_q8_scales[o / 32] = q8_scale(amax, sum);
      }
    }
  }
}

// The merge of this CTA's (sequence, KV head) = (blockIdx.z, blockIdx.y), its arguments in
// shared memory. Not inlined, and taking nothing but a shared-memory pointer, so that the
// attention kernel's register allocation of its main loop does not see the merge's.
template <int kDim, int kWarps>
__device__ __noinline__ void merge_tail(const MergeArgs* sa, float* sh) {
  merge_group<kDim, kWarps>(*sa, static_cast<int>(blockIdx.z), static_cast<int>(blockIdx.y), sh);
}

// Called by every CTA of the attention grid(s) once its partial is stored: the last of the
// pair's splits_total CTAs to arrive merges (and sets the counter back to zero for the next
// call). The classic fence / count / fence pattern: each CTA's partial is visible device-wide
// before its arrival counts, and the last one reads them through L2 after it. sh: dynamic
// shared memory free once the partial is stored, 16 + sizeof(MergeArgs) + kWarps * kDim * 4
// bytes. (No static __shared__ here: it would move the dynamic base, which the attention
// kernel's table lookups take as the fixed 0x400.)
template <int kDim, int kWarps>
__device__ __forceinline__ void arrive_and_merge(const MergeArgs& a, uint8_t* sh) {
  constexpr int kArgsOff = 16, kSmemOff = kArgsOff + (sizeof(MergeArgs) + 15) / 16 * 16;
  static_assert(sizeof(MergeArgs) % 4 == 0);
  int* last = reinterpret_cast<int*>(sh);
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    int* c = a.counters + static_cast<size_t>(blockIdx.z) * gridDim.y + blockIdx.y;
    *last = atomicAdd(c, 1) == a.splits_total - 1;
    if (*last) atomicExch(c, 0);
  }
  __syncthreads();
  if (!*last) return;
  __threadfence();
  auto* args = reinterpret_cast<MergeArgs*>(sh + kArgsOff);
  if (threadIdx.x == 0) *args = a;
  __syncthreads();
  merge_tail<kDim, kWarps>(args, reinterpret_cast<float*>(sh + kSmemOff));
}

}  // namespace dev
}  // namespace tq::backend::cuda
