// Decode attention over paged K/V in any format, one template (kernel per K format, V format,
// head dim, page size). One CTA = one (split of the sequence, KV head, sequence); its warps walk
// steps of kStep tokens (one page never straddled) and write one unnormalised partial (O, max,
// sum) that merge_kernel (decode_attention.cu) combines with a log-sum-exp merge.
//
// Inner loop (the compute side of the bandwidth floor): every packed element is loaded and
// unpacked once per warp and shared by all query heads of the KV head through tensor-core mma:
//   S^T = K Q^T  : M = 16 tokens, N = query heads (columns < group), K = 16 dims  (m16n8k16)
//   O^T = V^T P^T: M = 16 dims, N = query heads, K = 16 tokens
// Every row of both products is real data (the heads, at most 8, are the N side); one movmatrix
// per 8 tokens turns the S^T accumulators into the P^T B fragment, so P never leaves registers.
// Codes
// become fp16 through per-lane shared-memory tables (vec_formats.cuh: one byte permute builds the
// address, the table base is the load's immediate), values are decoded straight into token
// pairs, K norms scale S after the mma, V norms fold into P, and the next step's key codes (and,
// once the current step's S is done, its value codes) are loaded while the current step computes.
// Scores and values stay in the rotated domain; the query is rotated once per CTA (or by the
// prepare kernel for QJL keys) and the output is rotated back once (merge kernel).
#pragma once

#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "tq/backend/cuda/cuda_common.cuh"
#include "tq/backend/cuda/q8_act.cuh"
#include "tq/backend/cuda/split_by_length.cuh"
#include "tq/backend/cuda/vec_formats.cuh"

namespace tq::backend::cuda {

// Where a call's output rows go (DecodeAttentionParams' epilogue): the value sum rotated back,
// over the softmax sum, times the value scale, as f32 and/or fp16 and 8-bit activations.
// Written by the merge kernel, or by the attention CTA that ends a pair (AttnArgs::merge_counters).
struct AttnOut {
  const float* signs_v;  // P_v = H D / sqrt(d), or
  const float* rot_v;    // dense P_v (merge kernel only), or neither (values not rotated)
  float inv_sqrt_d;
  float* out;
  const float* out_scale;
  const int32_t* out_scale_rows;
  __half* out_f16;
  int8_t* out_q8;
  Q8Scale* out_q8_scales;
};

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
  int block_shift;         // log2(block_tokens) when a power of two (no integer division), else -1
  int group;               // query heads per KV head (<= 8)
  int n_heads;             // query heads
  const __half* q;         // [n_seqs][n_heads][d], scaled by scale*log2(e) (rotated if K is)
  const __half* q_sketch;  // [n_seqs][n_heads][d], S P q * qjl_scale (QJL keys only)
  // When q_raw is set, q is unused: each CTA prepares its group's queries itself from the f32
  // rows, q_scale * (q_rot_scale * H D q_raw) with D = q_signs, or q_scale * q_raw when q_signs
  // is null (the same float operations as the prepare kernel, so the same fp16 queries). Saves
  // a launch and a round trip through memory per call; QJL keys still take the prepare kernel.
  const float* q_raw;    // [n_seqs][n_heads][d]
  const float* q_signs;  // [d] Hadamard signs of K's rotation, or null
  float q_scale;         // scale * log2(e)
  float q_rot_scale;     // 1 / sqrt(d)
  float* part_o;         // [n_seqs][n_heads][splits_total][d]
  float2* part_ml;       // [n_seqs][n_heads][splits_total]: (max, sum) in log2 units
  int tokens_per_split;
  int split_offset;  // first split index of this segment
  int splits_total;
  // Splits by length (split_plan.h; the kernels instanced with kByLength): the grid is
  // (split_budget, KV heads), CTA x takes global split x of the n_seqs sequences' ceil(len / T)
  // (at most split_cap of one sequence) and writes its partial at part_base + (kvh *
  // split_budget + x) * group + h. Otherwise the grid is (splits, KV heads, sequences), the
  // partial of split x at part_base + (seq * n_heads + kvh * group + h) * splits_total +
  // split_offset + x.
  int n_seqs;
  int split_budget;
  int split_cap;
  size_t part_base;
  // Always 0. The pipelined loop adds `code & zero` to the next step's addresses: a data
  // dependence that keeps those loads after the current step's first use of its codes (see
  // attention_kernel).
  uint32_t zero;
  // Queries that share a block table (the kernels instanced with kShared, a pass of one
  // sequence's tokens): CTA z takes queries z * queries .. + queries - 1 as its mma columns
  // (query c / group, head c % group), each with its own length.
  int queries;
  // The merge in this kernel (DecodeAttentionParams::merge_counters; no window, one query a
  // CTA): a counter per (sequence, KV head), on which each CTA arrives once its partial is
  // written; the last one merges the pair's rows into `fin` (attn_arrive_and_finish).
  int* merge_counters;
  AttnOut fin;
#ifdef TQ_ATTN_TIMELINE
  unsigned long long* timeline;  // [CTA][10] %globaltimer stamps (diagnostic build only)
#endif
};

inline constexpr int kAttnWarps = 4;
inline constexpr int kAttnThreads = kAttnWarps * 32;

// Tokens per warp step: 32 for packed formats, 16 where raw rows are large (register budget).
template <class KF, class VF>
constexpr int attn_step_tokens() {
  return (KF::kCodeBits >= 8 || VF::kCodeBits >= 8) ? 16 : 32;
}

// Shared-memory table layout (rows of 256 bytes, every table in a 128-byte half, vec_formats.cuh):
// K's table at rows from 0 (half 0), V's shared with K when the code widths match (but for 2-bit
// values, whose table is pair-major: TqFmt::decode_pair), else in half 1 of the same rows when
// both have tables, else after K's rows; the QJL sign table last.
template <class KF, class VF>
struct AttnTables {
  static constexpr bool kShare =
      KF::kTableRows > 0 && KF::kCodeBits == VF::kCodeBits && !dev::pair_major_values<VF>();
  static constexpr bool kVSecondHalf = !kShare && KF::kTableRows > 0 && VF::kTableRows > 0;
  static constexpr int kVRow = (kShare || kVSecondHalf) ? 0 : KF::kTableRows;
  static constexpr int kVHalf = kVSecondHalf ? 1 : 0;
  static constexpr int kRowsKV =
      kShare         ? KF::kTableRows
      : kVSecondHalf ? (KF::kTableRows > VF::kTableRows ? KF::kTableRows : VF::kTableRows)
                     : KF::kTableRows + VF::kTableRows;
  static constexpr int kSignRow = kRowsKV;
  static constexpr int kBytes = (kRowsKV + KF::kSignTableRows) * 256;
};

// tq keys are small: the next step's codes and norms are loaded while the current step computes
// (software pipelining), with registers capped for 3 CTAs per SM. Wide rows (f16, q8_0, q4_0)
// load at the step start instead and keep the compiler's register choice.
template <class KF>
constexpr bool attn_pipeline_keys() {
  return KF::kTokenScale;
}

// Pipelined instances whose steps are whole pages (kCap == the step) list their split's pages in
// shared memory, kAttnPages of them (16k tokens of 32-token pages; a longer split reads the rest
// from the block table), so the next step's loads wait for no block-table read. Their kernels
// for splits by length list all of a split's pages, up to kAttnPagesByLength (64k tokens; the
// plan asks them no longer split), so that their loop never reads the block table: the sequence
// and the split's start are not held through it (with them, a 64-bit spill and a 2% slower loop).
// 8 KB: with 64 KB of tables three CTAs still fit an SM. (The same list without the fallback in
// the longest's-cut kernels, 3% fewer loop instructions, ran no faster and tq4/tq3 4% slower:
// docs/benchmarks.md, session 19.)
inline constexpr int kAttnPages = 512;
inline constexpr int kAttnPagesByLength = 2048;
template <bool kByLength>
constexpr int attn_pages() {
  return kByLength ? kAttnPagesByLength : kAttnPages;
}
template <class KF, class VF, int kCap>
constexpr bool attn_page_list() {
  return attn_pipeline_keys<KF>() && kCap == attn_step_tokens<KF, VF>();
}
// Instances with a second kernel for splits by length (kByLength): the page-list ones and those
// that do not pipeline their loads (f16, q8_0, q4_0). The generic-page tq ones would spill, and
// with 3-bit values that kernel's loop came out 4-7% longer than the other's (register
// allocation; 0.90-0.91x on equal lengths at 32k), so those take the longest's cut.
template <class KF, class VF, int kCap>
constexpr bool attn_by_length() {
  return (attn_page_list<KF, VF, kCap>() && VF::kCodeBits != 3) || !attn_pipeline_keys<KF>();
}

// The epilogue's combine of the warps: each warp's partial output in shared memory, a row of
// attn_reduce_row floats per (warp, head), dim d at d + d / 32. Lane (g, t) stores heads 2t and
// 2t + 1 at dims VF::local_dim(kDim / 8, g, i): with rows of kDim floats a warp's 32 stores fell
// in 2 banks at d 128 (16-way conflicts: 2048 of a CTA's ~2330 store wavefronts, session 21's
// ncu). attn_reduce_conflicts is the worst bank's count over the stores for a row stride; the row
// is the shortest that makes it smallest (1 for the tq and f16 mappings at d 64 and 128).
template <class VF, int kDim>
constexpr int attn_reduce_conflicts(int row) {
  int worst = 0;
  for (int mm = 0; mm < kDim / 16; ++mm)
    for (int s = 0; s < 4; ++s) {  // o[mm][s]: head 2t + (s & 1), local dim 2 mm + (s >> 1)
      int count[32] = {};
      for (int lane = 0; lane < 32; ++lane) {
        const int d = VF::local_dim(kDim / 8, lane >> 2, 2 * mm + (s >> 1));
        const int c = ++count[((2 * (lane & 3) + (s & 1)) * row + d + d / 32) % 32];
        worst = c > worst ? c : worst;
      }
    }
  return worst;
}
template <class VF, int kDim>
constexpr int attn_reduce_row() {
  constexpr int kMin = kDim + kDim / 32;
  int best = kMin, best_c = 33;
  for (int row = kMin; row < kMin + 32; ++row) {
    const int c = attn_reduce_conflicts<VF, kDim>(row);
    if (c < best_c) best = row, best_c = c;
  }
  return best;
}

template <class VF, int kDim>
constexpr int attn_reduce_bytes() {
  return kAttnWarps * 8 * attn_reduce_row<VF, kDim>() * 4 + kAttnWarps * 8 * 2 * 4;
}

// The group's fp16 queries (at most 8 heads) after the tables, when the CTA prepares them.
template <class KF, class VF>
constexpr int attn_query_offset() {
  return (AttnTables<KF, VF>::kBytes + 15) / 16 * 16;
}

template <class KF, class VF, int kDim>
constexpr int attn_pages_offset() {
  return attn_query_offset<KF, VF>() + 8 * kDim * 2;
}

// Splits by length: the CTA's sequence, split, tokens a split and the sequence's split count,
// found by warp 0, then (CTA 0, for the merge in the kernel) the empty sequences' bit masks. Past
// the warps' combine buffer too: the merge in the kernel reads them after the combine, and
// formats without code tables would have them there.
inline constexpr int kAttnPlanInts = 8;
template <class KF, class VF, int kDim, int kCap, bool kByLength>
constexpr int attn_plan_offset() {
  const int after_pages = attn_pages_offset<KF, VF, kDim>() +
                          (attn_page_list<KF, VF, kCap>() ? attn_pages<kByLength>() * 4 : 0);
  const int after_combine = (attn_reduce_bytes<VF, kDim>() + 15) / 16 * 16;
  return after_pages > after_combine ? after_pages : after_combine;
}

template <class KF, class VF, int kDim, int kCap, bool kByLength>
constexpr int attn_smem_bytes() {
  const int t =
      attn_plan_offset<KF, VF, kDim, kCap, kByLength>() + (kByLength ? 4 * kAttnPlanInts : 0);
  const int r = attn_reduce_bytes<VF, kDim>();
  return t > r ? t : r;
}

namespace dev {

// q_sh[h][0..kDim) = the prepared query of head h < group of this CTA's KV head (AttnArgs::q_raw):
// a warp per head, kDim / 32 consecutive elements per lane, rotated by lane_fwht (the prepare
// kernel's block_fwht butterflies in the same order, so the same floats).
// kShared: columns h < `columns` are query seq + h / group's head h % group.
template <int kDim, bool kShared = false>
__device__ __forceinline__ void prepare_group_query(const AttnArgs& a, int seq, int kvh,
                                                    __half* q_sh, int columns = 0) {
  constexpr int kE = kDim / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int h = warp; h < (kShared ? columns : a.group); h += kAttnWarps) {
    const int qs = kShared ? seq + h / a.group : seq, qh = kShared ? h % a.group : h;
    const float* qp =
        a.q_raw + (static_cast<size_t>(qs) * a.n_heads + kvh * a.group + qh) * kDim + lane * kE;
    float x[kE];
#pragma unroll
    for (int e = 0; e < kE; ++e) x[e] = __ldg(qp + e);
    if (a.q_signs) {
#pragma unroll
      for (int e = 0; e < kE; ++e) x[e] *= __ldg(a.q_signs + lane * kE + e);
      lane_fwht<kDim, kE>(x, lane, 0xffffffffu);
#pragma unroll
      for (int e = 0; e < kE; ++e) x[e] *= a.q_rot_scale;
    }
#pragma unroll
    for (int e = 0; e < kE; ++e) q_sh[h * kDim + lane * kE + e] = __float2half_rn(a.q_scale * x[e]);
  }
}

// The epilogue of kE consecutive output elements a lane, from element e0 of [rows][d] (a warp's
// lanes hold 32 kE consecutive ones, so 32 / kE lanes make a 32-column block of the 8-bit
// activations, q8_act.cuh's rounding). The whole warp calls it.
template <int kE>
__device__ __forceinline__ void attn_store_out(const AttnOut& o, size_t e0, const float (&r)[kE]) {
  if (o.out)
#pragma unroll
    for (int e = 0; e < kE; ++e) o.out[e0 + e] = r[e];
  if (!o.out_f16) return;
  float hv[kE];
#pragma unroll
  for (int e = 0; e < kE; ++e) {
    const __half h = __float2half_rn(r[e]);
    o.out_f16[e0 + e] = h;
    hv[e] = __half2float(h);
  }
  if (!o.out_q8) return;
  constexpr int kWidth = 32 / kE;
  const float amax = q8_block_scale(hv, kWidth);
  int q[kE];
  const int sum = q8_quantize(hv, amax, kWidth, q);
#pragma unroll
  for (int e = 0; e < kE; ++e) o.out_q8[e0 + e] = static_cast<int8_t>(q[e]);
  if ((threadIdx.x & (kWidth - 1)) == 0) o.out_q8_scales[e0 / 32] = q8_scale(amax, sum);
}

// The value scale of query head `head` of sequence `seq` at dim j (out_scale set).
__device__ __forceinline__ float attn_out_scale(const AttnOut& o, int n_heads, int group, int d,
                                                int seq, int head, int j) {
  const size_t row = o.out_scale_rows ? static_cast<size_t>(o.out_scale_rows[seq]) : 0;
  const size_t kv_dim = static_cast<size_t>(n_heads / group) * d;
  return o.out_scale[row * kv_dim + static_cast<size_t>(head / group) * d + j];
}

// The rows of sequence `seq`'s heads kvh * group .. + group - 1 when it holds no token, as the
// merge kernel writes them (no weight: zeros, times the value scale), by the whole CTA. Inline and
// light: the attention kernel calls it before its loop, where a call would cost the loop registers.
template <int kDim>
__device__ __forceinline__ void attn_empty_rows(const AttnOut& o, int seq, int kvh, int group,
                                                int n_heads) {
  for (int i = static_cast<int>(threadIdx.x); i < group * kDim; i += kAttnThreads) {
    const int head = kvh * group + i / kDim, j = i % kDim;
    const size_t e = (static_cast<size_t>(seq) * n_heads + head) * kDim + j;
    const float r =
        o.out_scale ? 0.0f * attn_out_scale(o, n_heads, group, kDim, seq, head, j) : 0.0f;
    if (o.out) o.out[e] = r;
    if (!o.out_f16) continue;
    const __half h = __float2half_rn(r);
    o.out_f16[e] = h;
    if (!o.out_q8) continue;
    o.out_q8[e] = 0;  // (amax 0: every quant 0, the scale 0)
    if (j % 32 == 0) o.out_q8_scales[e / 32] = q8_scale(0.0f, 0);
  }
}

// The merge in the attention kernel (AttnArgs::merge_counters). Every thread of a CTA with tokens
// calls it once the CTA's partials are written. The CTA arrives on its (sequence, KV head)'s
// counter; the one that brings it to `count` resets it and merges the
// pair's `group` rows from the partials at first + split * stride_s + head * stride_h: warp w
// takes heads w, w + 4, ..., a lane kDim / 32 consecutive dims, in split order with the merge
// kernel's operations and rotation butterflies (lane_fwht is block_fwht's order), so the output
// has the same bits. Only CTAs with tokens arrive (`count` of them: the splits without tokens are
// the pair's last ones, their partials never read). flag_sh: an int of shared memory the CTA no
// longer uses. Not inlined, and called from the kernel's end only: the attention loop's registers
// stay as they were.
template <int kDim>
__device__ __noinline__ void attn_arrive_and_finish(AttnOut o, const float* part_o,
                                                    const float2* part_ml, int* counter, int count,
                                                    size_t first, int stride_s, int stride_h,
                                                    int seq, int kvh, int group, int n_heads,
                                                    int* flag_sh) {
  __syncthreads();  // every partial of the CTA stored
  if (threadIdx.x == 0) {
    __threadfence();  // (release: cumulative over the CTA's stores the barrier ordered)
    const bool last = atomicAdd(counter, 1) == count - 1;
    if (last) *counter = 0;  // (no other CTA of the pair touches it again in this call)
    *flag_sh = last ? 1 : 0;
  }
  __syncthreads();
  if (*flag_sh == 0) return;
  __threadfence();  // (acquire: the other CTAs' partials, read through L2 below)
  constexpr int kE = kDim / 32;
  // (4 splits a round trip: with 8, the function took the head-dim-64 f16 and q8_0 kernels from
  // 96 to 107 registers, 5 CTAs an SM to 4; a noinline callee sets the call graph's count)
  constexpr int kUnroll = 4;
  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
  for (int h = warp; h < group; h += kAttnWarps) {
    const size_t p0 = first + static_cast<size_t>(h) * stride_h;
    float2 ml[kUnroll];
    float ov[kUnroll][kE];
    const auto load = [&](int s0) {  // splits s0 .. s0 + kUnroll - 1
#pragma unroll
      for (int i = 0; i < kUnroll; ++i) {
        ml[i] = make_float2(-INFINITY, 0.0f);
        if (s0 + i >= count) continue;
        const size_t p = p0 + static_cast<size_t>(s0 + i) * stride_s;
        ml[i] = __ldcg(part_ml + p);
#pragma unroll
        for (int e = 0; e < kE; e += 2) {  // (8-byte loads)
          const float2 v =
              __ldcg(reinterpret_cast<const float2*>(part_o + p * kDim + lane * kE + e));
          ov[i][e] = v.x, ov[i][e + 1] = v.y;
        }
      }
    };
    load(0);  // (requested before the maximum's loads: one L2 round trip for both)
    float m = -INFINITY;
    for (int s = lane; s < count; s += 32)
      m = fmaxf(m, __ldcg(part_ml + p0 + static_cast<size_t>(s) * stride_s).x);
#pragma unroll
    for (int x = 16; x >= 1; x /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, x));
    float acc[kE], l = 0.0f;
#pragma unroll
    for (int e = 0; e < kE; ++e) acc[e] = 0.0f;
    if (m != -INFINITY) {
      for (int s0 = 0; s0 < count; s0 += kUnroll) {
        if (s0 > 0) load(s0);
#pragma unroll
        for (int i = 0; i < kUnroll; ++i) {
          if (s0 + i >= count || ml[i].x == -INFINITY) continue;
          const float w = exp2f(ml[i].x - m);
          l = fmaf(w, ml[i].y, l);
#pragma unroll
          for (int e = 0; e < kE; ++e) acc[e] = fmaf(w, ov[i][e], acc[e]);
        }
      }
    }
    if (o.signs_v) {  // P^T y = D H y / sqrt(d)
      lane_fwht<kDim, kE>(acc, lane, 0xffffffffu);
#pragma unroll
      for (int e = 0; e < kE; ++e)
        acc[e] = acc[e] * o.inv_sqrt_d * __ldg(o.signs_v + lane * kE + e);
    }
    const int head = kvh * group + h;
    float r[kE];
#pragma unroll
    for (int e = 0; e < kE; ++e) {
      r[e] = l > 0.0f ? (acc[e] + 0.0f) / l : 0.0f;  // (+ 0: the merge's empty window sum)
      if (o.out_scale) r[e] *= attn_out_scale(o, n_heads, group, kDim, seq, head, lane * kE + e);
    }
    attn_store_out<kE>(o, (static_cast<size_t>(seq) * n_heads + head) * kDim + lane * kE, r);
  }
}

}  // namespace dev

// Diagnostic build (-DTQ_ATTN_TIMELINE, tq_gpu_bench's timeline lines): each CTA stamps
// %globaltimer at its start (0), before pdl_wait (1), after its prologue's barrier (2), at each
// warp's loop end (3..6) and at its end (7), and its SM (8), so a call's time splits into
// launch, prologue, loop, epilogue, tail and merge.
#ifdef TQ_ATTN_TIMELINE
__device__ __forceinline__ unsigned long long tl_now() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
  return t;
}
// This CTA's 10 stamps.
__device__ __forceinline__ unsigned long long* tl_row(unsigned long long* timeline) {
  return timeline +
         ((static_cast<size_t>(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x) * 10;
}
#define TQ_TL(slot)                                                                 \
  do {                                                                              \
    if (a.timeline && (threadIdx.x & 31) == 0) tl_row(a.timeline)[slot] = tl_now(); \
  } while (0)
#else
#define TQ_TL(slot) \
  do {              \
  } while (0)
#endif

__device__ __forceinline__ float fast_exp2(float x) {  // 2^x, ex2.approx.ftz (-inf -> 0)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Values loaded a step ahead as well (after the step's S product). 2-bit values were measured
// slower that way (session 8) while the next step's loads made the current step wait for them
// (one scoreboard for every load); since the loads issue after the step's first use of its
// codes, 1.23x faster at 32k batch 8 (docs/benchmarks.md, session 12).
template <class KF, class VF>
constexpr bool attn_pipeline_values() {
  return attn_pipeline_keys<KF>();
}
// Page-list instances whose full steps load the next step's page unconditionally (no branch
// around the loads, attention_kernel's step): the pairs with 3-bit values, where that measured
// faster in every cell on the H200 (session 21, Llama-3-8B shapes, head dim 128, 4k-128k, batch
// 1-64): tq4/tq3 1.00-1.16x, tq3/tq3 1.01-1.10x. Elsewhere it was not: tq4/tq4 0.97x, tq4/tq2
// 0.93-0.96x (its loop spilled), tq2/tq2 0.97-1.05x (slower at 4k and at batch 1); those, and the
// pairs and head dims not measured, keep the branch.
template <class KF, class VF, int kDim>
constexpr bool attn_load_always() {
  return !KF::kHasQjl && kDim == 128 && VF::kCodeBits == 3 &&
         (KF::kCodeBits == 3 || KF::kCodeBits == 4);
}

template <class KF>
constexpr int attn_min_blocks() {
  return attn_pipeline_keys<KF>() ? (KF::kHasQjl ? 2 : 3) : 1;
}

// kCap: block_tokens known at compile time (0: read a.block_tokens). With kCap == kStep every
// step is exactly one page (slot 0 on), so every address inside it is a base plus an immediate.
// kByLength: the CTAs split the sequences by length (AttnArgs::split_budget); its own kernel, so
// that the other keeps its registers (the sequence and the split's start come from shared
// memory here, not from the block index).
// kShared (never with kByLength): the CTA's queries share the block table of its first
// (AttnArgs::queries), each masked at its own length.
template <class KF, class VF, int kDim, int kCap, bool kByLength, bool kShared = false>
__global__ void __launch_bounds__(kAttnThreads, attn_min_blocks<KF>())
    attention_kernel(const AttnArgs a) {
  static_assert(!(kShared && kByLength));
  using namespace dev;
  constexpr int kStep = attn_step_tokens<KF, VF>();
  constexpr int kNT = kStep / 8;   // token rows per lane and step (tokens 8j + g)
  constexpr int kNH = kStep / 16;  // 16-token tiles per step (S^T m-tiles, PV k-tiles)
  constexpr int kKT = kDim / 16;   // S k-tiles
  constexpr int kKN = kDim / 4;    // dims of the K chunk a thread unpacks (chunk t)
  constexpr int kVN = kDim / 8;    // dims of the V chunk a thread unpacks (chunk g)
  constexpr int kMT = kDim / 16;   // PV m-tiles
  constexpr bool kQjl = KF::kHasQjl;
  extern __shared__ __align__(16) uint8_t smem[];

  // Launched with programmatic dependence, the CTAs start while the K/V write before them runs:
  // lengths, block tables and the codebooks are older than that kernel, so the tables are built
  // before pdl_wait; the cache and the queries are read after it.
  if (threadIdx.x == 0) TQ_TL(0);
  dev::pdl_launch_dependents();
  using Tab = AttnTables<KF, VF>;
  // The code tables (before pdl_wait: codebooks are older than the K/V write): the centroids'
  // loads (load_tables) are apart from the tables' stores (store_tables), so that the kernel cut
  // as the longest requests them with the lengths and its page list, one latency for all three.
  uint8_t* const k_table = smem;
  uint8_t* const v_table = smem + Tab::kVRow * 256;
  uint8_t* const s_table = smem + Tab::kSignRow * 256;
  constexpr bool kKTab = KF::kTableRows > 0, kVTab = VF::kTableRows > 0 && !Tab::kShare;
  // (formats without a table name a 1-bit one, never used)
  [[maybe_unused]] TableFill<kKTab ? KF::kCodeBits : 1, KF::kLookup, kAttnThreads> kfill;
  [[maybe_unused]] TableFill<kVTab ? VF::kCodeBits : 1, VF::kLookup, kAttnThreads,
                             pair_major_values<VF>()>
      vfill;
  [[maybe_unused]] TableFill<1, 4, kAttnThreads> sfill;
  const auto load_tables = [&] {
    if constexpr (kKTab) kfill.load(a.k_centroids);
    if constexpr (kVTab) vfill.load(a.v_centroids);
    if constexpr (kQjl) sfill.load(nullptr);
  };
  const auto store_tables = [&] {
    if constexpr (kKTab) kfill.store(k_table, 0);
    if constexpr (kVTab) vfill.store(v_table, Tab::kVHalf);
    if constexpr (kQjl) sfill.store(s_table, 0);
  };
  const int kvh = blockIdx.y;
  int split = blockIdx.x, seq = blockIdx.z, tokens_per_split = a.tokens_per_split;
  [[maybe_unused]] int* const plan_sh =
      reinterpret_cast<int*>(smem + attn_plan_offset<KF, VF, kDim, kCap, kByLength>());
  // The merge in the kernel, by length: CTA 0 also writes the rows of the sequences that have no
  // split (empty ones; their masks from the plan), with zeros as the merge kernel would.
  [[maybe_unused]] const auto empty_rows = [&] {
    if constexpr (kByLength) {
      if (a.merge_counters && blockIdx.x == 0)
        for (int k = 0; k < kByLengthPerLane; ++k)
          for (unsigned m = static_cast<unsigned>(plan_sh[4 + k]); m != 0u; m &= m - 1u)
            attn_empty_rows<kDim>(a.fin, kByLengthPerLane * (__ffs(m) - 1) + k, kvh, a.group,
                                  a.n_heads);
    }
  };
  if constexpr (kByLength) {
    // Warp 0 finds the CTA's sequence and split while the others fill the tables (a warp's
    // work: every warp of every CTA doing it took issue slots from the loops).
    if (threadIdx.x < 32) {
      ByLength bl;
      bl.plan(a.lengths, a.n_seqs, a.split_budget, a.split_cap);
      int s, j, first = 0, count = 0;
      bl.locate(blockIdx.x, &s, &j);
      if (a.merge_counters) bl.splits_of(s, &first, &count);
      unsigned empty[kByLengthPerLane] = {};
      if (a.merge_counters && blockIdx.x == 0)
#pragma unroll
        for (int k = 0; k < kByLengthPerLane; ++k)
          empty[k] = __ballot_sync(
              0xffffffffu,
              kByLengthPerLane * static_cast<int>(threadIdx.x) + k < a.n_seqs && bl.n[k] == 0);
      if (threadIdx.x == 0) {
        plan_sh[0] = s, plan_sh[1] = j, plan_sh[2] = bl.u * kSplitUnit, plan_sh[3] = count;
#pragma unroll
        for (int k = 0; k < kByLengthPerLane; ++k) plan_sh[4 + k] = static_cast<int>(empty[k]);
      }
    }
    load_tables();
    store_tables();
    __syncthreads();
    seq = plan_sh[0], split = plan_sh[1], tokens_per_split = plan_sh[2];
    if (seq < 0) {  // past the batch's splits: no partial (the merge reads none)
      empty_rows();
      return;
    }
  }
  // The split's tokens [first_tok, first_tok + tokens_per_split) of the sequence. The loop counts
  // tokens from `begin`: first_tok, or 0 by length (the loop then holds no split start of its
  // own; the block-table reads add first_tok back).
  // kShared: this CTA's queries seq .. seq + nq - 1; len the longest, len_min the shortest.
  [[maybe_unused]] int nq = 1;
  if constexpr (kShared) seq = blockIdx.z * a.queries, nq = min(a.queries, a.n_seqs - seq);
  const int first_tok = split * tokens_per_split;
  const int32_t* const table = a.block_tables + static_cast<size_t>(seq) * a.max_blocks;
  constexpr bool kPagePipe = attn_page_list<KF, VF, kCap>();
  constexpr int kPage = kCap > 0 ? kCap : 1;  // (kPagePipe instances only)
  // Cut as the longest, the split's page list is requested with the lengths and the centroids,
  // before its length is known: as many pages as a split of the plan spans (bounded by the block
  // table's row; entries past the sequence's end are stored and never read).
  constexpr int kAheadPages = kPagePipe && !kByLength ? kAttnPages / kAttnThreads : 1;
  [[maybe_unused]] int pages_ahead[kAheadPages];
  [[maybe_unused]] int n_ahead = 0;
  if constexpr (!kByLength) load_tables();
  if constexpr (kPagePipe && !kByLength) {
    n_ahead = min(min(kAttnPages, (tokens_per_split + kPage - 1) / kPage),
                  a.max_blocks - first_tok / kPage);
#pragma unroll
    for (int i = 0; i < kAheadPages; ++i) {
      const int e = static_cast<int>(threadIdx.x) + i * kAttnThreads;
      pages_ahead[i] = e < n_ahead ? __ldg(table + first_tok / kPage + e) : 0;
    }
  }
  int len = __ldg(a.lengths + seq);
  [[maybe_unused]] int len_min = len;
  if constexpr (kShared)
    for (int i = 1; i < nq; ++i) {
      const int l = __ldg(a.lengths + seq + i);
      len = max(len, l);
      len_min = min(len_min, l);
    }
  const int begin = kByLength ? 0 : first_tok;
  const int end = min(len, first_tok + tokens_per_split) - (first_tok - begin);
  // Steps before end_full hold no token past any query's end (kShared: the shortest's).
  const int end_full =
      kShared ? min(len_min, first_tok + tokens_per_split) - (first_tok - begin) : end;
  const int columns = kShared ? nq * a.group : a.group;
  const size_t part =
      kByLength
          ? a.part_base + (static_cast<size_t>(kvh) * a.split_budget + blockIdx.x) * a.group
          : a.part_base + (static_cast<size_t>(seq) * a.n_heads + kvh * a.group) * a.splits_total +
                a.split_offset + split;
  const size_t head_stride = kByLength ? 1 : a.splits_total;  // between the group's partials
  // Column c's partial (kShared: query seq + c / group, head c % group).
  const auto part_of = [&](int c) {
    if constexpr (kShared)
      return part + (static_cast<size_t>(c / a.group) * a.n_heads + c % a.group) * a.splits_total;
    else
      return part + static_cast<size_t>(c) * head_stride;
  };
  // The merge in the kernel (AttnArgs::merge_counters): every CTA arrives once its partial is
  // written, the last of its pair merges the rows. By length the sequence, split and count come
  // back from shared memory (no register holds them through the loop); cut as the longest, the
  // pair's splits with tokens are its first ceil(len / T).
  const auto finish_pair = [&] {
    if constexpr (!kShared) {
      if (a.merge_counters) {
        const int s = kByLength ? plan_sh[0] : seq, j = kByLength ? plan_sh[1] : split;
        const int count =
            kByLength ? plan_sh[3]
                      : min(static_cast<int>(gridDim.x),
                            (__ldg(a.lengths + s) + a.tokens_per_split - 1) / a.tokens_per_split);
        const int stride_s = kByLength ? a.group : 1;
        attn_arrive_and_finish<kDim>(a.fin, a.part_o, a.part_ml,
                                     a.merge_counters + static_cast<size_t>(s) * gridDim.y + kvh,
                                     count, part - static_cast<size_t>(j) * stride_s, stride_s,
                                     static_cast<int>(head_stride), s, kvh, a.group, a.n_heads,
                                     reinterpret_cast<int*>(smem + attn_query_offset<KF, VF>()));
        empty_rows();
      }
    }
  };
  // A CTA that ends without a loop still writes its group's (max, sum): weight 0 (an empty
  // split), or NaN (a layout the kernel cannot serve: the merge's output shows it). With the merge
  // in the kernel an empty split does not arrive (split 0 of an empty sequence writes its rows),
  // and a poisoned one stops the kernel: its pair's rows would never be written.
  const auto end_with_partials = [&](float2 ml) {
    for (int h = threadIdx.x; h < columns; h += blockDim.x) a.part_ml[part_of(h)] = ml;
    if constexpr (!kShared) {
      if (a.merge_counters) {
        if (ml.y != 0.0f) __trap();
        if (!kByLength && split == 0 && len == 0)
          attn_empty_rows<kDim>(a.fin, seq, kvh, a.group, a.n_heads);
      }
    }
  };
  if (begin >= end) {  // an empty split still writes its partial (weight 0)
    dev::pdl_wait();
    end_with_partials(make_float2(-INFINITY, 0.0f));
    return;
  }

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int cap = kCap ? kCap : a.block_tokens;
  const auto block_of = [&](int tok, int* slot0) {
    const int tok0 = tok + (first_tok - begin);  // (the sequence's token)
    if constexpr (kCap == kStep) {               // steps start at multiples of kStep
      *slot0 = 0;
      return __ldg(table + tok0 / kCap);
    } else {
      const int bi = a.block_shift >= 0 ? tok0 >> a.block_shift : tok0 / cap;
      *slot0 = tok0 - bi * cap;
      return __ldg(table + bi);
    }
  };
  constexpr bool kPipe = attn_pipeline_keys<KF>();
  // Full steps load the next step's page unconditionally (see step), so a partial step may hold
  // stale bytes past `end`.
  constexpr bool kStaleTail = kPagePipe && attn_load_always<KF, VF, kDim>();
  constexpr int kStride = kAttnWarps * kStep;
  using KRaw = typename KF::template Raw<kKN>;
  using VRaw = typename VF::template Raw<kVN>;
  // One step's packed operands: the key codes (token 8j + g) and raw fp16 norms, the value codes
  // (the PV fragments' tokens) and raw fp16 norms (token 8j + g). Pipelined formats load a
  // step's keys at the start of the step before it and its values after that step's S product
  // (when the decoded keys' registers are free), so both arrive while a step computes.
  struct Ahead {
    KRaw kr[kNT];
    uint32_t ksr[kNT];
    VRaw vr[kNH][4];
    uint32_t vsr[kNT];
  };
  // The key codes and norms of one step. Slots past `valid` may hold stale bytes (even NaN
  // norms): zeroed.
  const auto k_base = [&](int page) {
    return a.k_pool + static_cast<size_t>(page) * a.k_block_stride +
           static_cast<size_t>(kvh) * a.k_head_stride;
  };
  const auto v_base = [&](int page) {
    return a.v_pool + static_cast<size_t>(page) * a.v_block_stride +
           static_cast<size_t>(kvh) * a.v_head_stride;
  };
  // Pipelined (tq) formats place a token's codes and norm linearly in its slot and chunk
  // (TqFmt::code_offset, scale_raw): with slot0 == 0 (every step one page) a lane folds its own
  // slot and chunk into the pointer and each load is that pointer plus an immediate, where a
  // generic address costs a 64-bit add per load.
  constexpr bool kLinearK = kPagePipe;
  constexpr bool kLinearV = kPagePipe && VF::kTokenScale;
  const auto load_keys = [&](int tok0, const uint8_t* kb, int slot0, auto full_tag, Ahead& keys) {
    constexpr bool kFull = decltype(full_tag)::value;
    const int valid = kFull ? kStep : end - tok0;
    const uint8_t* kl = kb;
    [[maybe_unused]] const uint8_t* nl = kb;
    int ls = slot0 + g, lc = t;  // this lane's slot and chunk, where not in the pointers
    if constexpr (kLinearK) {
      kl = kb + KF::template code_offset<kKN>(g, t);
      nl = kb + 2 * g;
      ls = 0, lc = 0;
    }
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
      if (kFull || 8 * j + g < valid)
        KF::template load<kKN>(keys.kr[j], kl, cap, ls + 8 * j, lc);
      else
        keys.kr[j].zero();
      keys.ksr[j] = 0u;
      if constexpr (KF::kTokenScale)
        if (kFull || 8 * j + g < valid) keys.ksr[j] = KF::scale_raw(nl, cap, ls + 8 * j);
    }
  };
  // The value codes and norms of one step (as load_keys).
  const auto load_vals = [&](int tok0, const uint8_t* vb, int slot0, auto full_tag, Ahead& vals) {
    constexpr bool kFull = decltype(full_tag)::value;
    const int valid = kFull ? kStep : end - tok0;
    const uint8_t* vl = vb;
    [[maybe_unused]] const uint8_t* nl = vb;
    int ls = slot0 + 2 * t, lc = g;  // as in load_keys
    [[maybe_unused]] int ns = slot0 + g;
    if constexpr (kLinearV) {
      vl = vb + VF::template code_offset<kVN>(2 * t, g);
      nl = vb + 2 * g;
      ls = 0, lc = 0, ns = 0;
    }
#pragma unroll
    for (int h = 0; h < kNH; ++h)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int tok = 16 * h + 2 * t + (e & 1) + 8 * (e >> 1);
        if (kFull || tok < valid)
          VF::template load<kVN>(vals.vr[h][e], vl, cap, ls + 16 * h + (e & 1) + 8 * (e >> 1), lc);
        else
          vals.vr[h][e].zero();
      }
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
      vals.vsr[j] = 0u;
      if constexpr (VF::kTokenScale)
        if (kFull || 8 * j + g < valid) vals.vsr[j] = VF::scale_raw(nl, cap, ns + 8 * j);
    }
  };
  if constexpr (!kByLength) store_tables();
  // The split's pages (block tables are older than the K/V write too); read after the
  // __syncthreads below.
  int* pages_sh = reinterpret_cast<int*>(smem + attn_pages_offset<KF, VF, kDim>());
  constexpr int kListed = attn_pages<kByLength>();
  if constexpr (kPagePipe && !kByLength) {
#pragma unroll
    for (int i = 0; i < kAheadPages; ++i) {
      const int e = static_cast<int>(threadIdx.x) + i * kAttnThreads;
      if (e < n_ahead) pages_sh[e] = pages_ahead[i];
    }
  } else if constexpr (kPagePipe) {
    const int pages = (end - begin + kPage - 1) / kPage;
    if (pages > kListed) {  // the plan asks no such split: poison, read nothing
      dev::pdl_wait();
      end_with_partials(make_float2(0.0f, NAN));
      return;
    }
    for (int i = threadIdx.x; i < pages; i += kAttnThreads)
      pages_sh[i] = __ldg(table + first_tok / kPage + i);
  }
  // The page of the warp step at token tok (< end; kPagePipe, where begin is a page boundary).
  [[maybe_unused]] const auto page_at = [&](int tok) {
    const int i = static_cast<int>(static_cast<unsigned>(tok - begin) / kPage);
    if constexpr (kByLength)
      return pages_sh[i];
    else
      return i < kAttnPages ? pages_sh[i] : __ldg(table + first_tok / kPage + i);
  };
  if (threadIdx.x == 0) TQ_TL(1);
  dev::pdl_wait();  // the K/V write (and the queries' RoPE before it) have completed
  // The first step's key codes are requested before the queries are prepared and the block
  // synchronises, so their DRAM latency hides behind that work (at short contexts a split is
  // one or two steps).
  // Values ahead only where every step is one page: the generic-page instances would spill.
  constexpr bool kPipeV = attn_pipeline_values<KF, VF>() && kCap == kStep;
  [[maybe_unused]] Ahead first;
  if constexpr (kPipe) {
    const int tok0 = begin + warp * kStep;
    if (tok0 < end) {
      int slot0;
      const int page = block_of(tok0, &slot0);
      if (end - tok0 >= kStep) {
        load_keys(tok0, k_base(page), slot0, std::true_type{}, first);
        if constexpr (kPipeV) load_vals(tok0, v_base(page), slot0, std::true_type{}, first);
      } else {
        load_keys(tok0, k_base(page), slot0, std::false_type{}, first);
        if constexpr (kPipeV) load_vals(tok0, v_base(page), slot0, std::false_type{}, first);
      }
    }
  }
  __half* q_sh = reinterpret_cast<__half*>(smem + attn_query_offset<KF, VF>());
  if (a.q_raw) prepare_group_query<kDim, kShared>(a, seq, kvh, q_sh, columns);
  __syncthreads();
  if (threadIdx.x == 0) TQ_TL(2);

  // Lookup addresses are relative to dynamic shared memory at 0x400 (an immediate of each load);
  // any difference of the real base lives above bit 16 (a cluster CTA id), carried in the lane
  // offsets. A base that differs below bit 16 would break that: poison the partial instead.
  // The kernels for splits by length (never launched in a cluster) require the base itself: their
  // lane offsets are then a function of the lane alone, which the compiler recomputes where the
  // other kernel holds (or spills) them.
  const uint32_t real_delta = static_cast<uint32_t>(__cvta_generic_to_shared(smem)) - 1024u;
  if ((real_delta & (kByLength ? 0xffffffffu : 0xffffu)) != 0u) {
    end_with_partials(make_float2(0.0f, NAN));
    return;
  }
  const uint32_t base_delta = kByLength ? 0u : real_delta;
  constexpr int kKOff = 1024, kVOff = 1024 + Tab::kVRow * 256, kSOff = 1024 + Tab::kSignRow * 256;
  constexpr int kVLookup = Tab::kShare ? KF::kLookup : VF::kLookup;
  const uint32_t k_off = base_delta + lut_copy<KF::kLookup>(lane) * 2 * KF::kLookup;
  const uint32_t v_off =
      base_delta + (Tab::kShare ? 0 : Tab::kVHalf * 128) + lut_copy<kVLookup>(lane) * 2 * kVLookup;
  const uint32_t s_off = base_delta + lut_copy<4>(lane) * 8;

  // Query B fragments: columns = heads (g < group), k-slots = thread t's K chunk dims.
  uint32_t qa[kKT][2];
  uint32_t qs[kQjl ? kKT : 1][2];
  {
    const bool live = g < columns;
    const int c = live ? g : 0;
    // (kShared: column c is query seq + c / group's head c % group)
    const size_t row =
        (kShared ? static_cast<size_t>(seq + c / a.group) * a.n_heads + kvh * a.group + c % a.group
                 : static_cast<size_t>(seq) * a.n_heads + kvh * a.group + c) *
        kDim;
    const __half* qp = a.q_raw ? q_sh + (live ? g : 0) * kDim : a.q + row;
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

  // kShared: where the lane's columns 2t and 2t + 1 end (counted like `end`; a column past the
  // CTA's queries ends with the longest, its scores never read).
  [[maybe_unused]] int col_end0 = end, col_end1 = end;
  if constexpr (kShared) {
    const auto col_end = [&](int c) {
      const int qi = c / a.group;
      const int l = qi < nq ? __ldg(a.lengths + seq + qi) : len;
      return min(l, first_tok + tokens_per_split) - (first_tok - begin);
    };
    col_end0 = col_end(2 * t);
    col_end1 = col_end(2 * t + 1);
  }

  // Running maxima of heads 2t, 2t + 1 (log2 units; the same in the 8 lanes of column t) and
  // this lane's share of their running sums.
  float m_run0 = -INFINITY, m_run1 = -INFINITY;
  float l_run0 = 0.0f, l_run1 = 0.0f;
  float o[kMT][4];
#pragma unroll
  for (int mm = 0; mm < kMT; ++mm) o[mm][0] = o[mm][1] = o[mm][2] = o[mm][3] = 0.0f;

  // One step of kStep tokens; kFull: all of them exist (no masks, unpredicated loads).
  const auto step = [&](int tok0, auto full_tag, Ahead& cur, Ahead& nxt) {
    constexpr bool kFull = decltype(full_tag)::value;
    [[maybe_unused]] Ahead own;  // the step's own operands where not pipelined
    int slot0;
    const int page = block_of(tok0, &slot0);
    if constexpr (!kPipe) load_keys(tok0, k_base(page), slot0, full_tag, own);
    if constexpr (!kPipeV) load_vals(tok0, v_base(page), slot0, full_tag, own);
    const Ahead& keys = kPipe ? cur : own;
    const Ahead& vals = kPipeV ? cur : own;
    const int valid = kFull ? kStep : end - tok0;
    [[maybe_unused]] const uint8_t* kb = k_base(page);
    [[maybe_unused]] typename dev::SignsOf<KF, kKN>::type sr[kNT];
    [[maybe_unused]] float rs[kNT];
    if constexpr (kQjl) {
#pragma unroll
      for (int j = 0; j < kNT; ++j) {
        const bool live = kFull || 8 * j + g < valid;
        if (live)
          KF::template load_signs<kKN>(sr[j].r, kb, cap, slot0 + 8 * j + g, t);
        else
          sr[j].r.zero();
        rs[j] = live ? KF::residual(kb, cap, slot0 + 8 * j + g) : 0.0f;
      }
    }

    // The next step's loads. Every global load of the loop shares one scoreboard, and a use of
    // a loaded register waits until all loads on it have landed: loads issued before the first
    // use of this step's codes would make that use wait for them, a whole memory latency per
    // step (ncu: a quarter of the warps' stalls). `code & a.zero` (0) ties their addresses to
    // this step's first key word, so they issue after that wait.
    const int next = tok0 + kStride;
    int page_n = 0, slot_n = 0;
    if constexpr (kPagePipe) {
      page_n = page_at(min(next, end - 1)) + static_cast<int>(cur.kr[0].s.w[0] & a.zero);
    } else if (kPipe && next < end) {
      page_n = block_of(next, &slot_n);
    }
    const uint8_t* kb_n = k_base(page_n);
    [[maybe_unused]] const uint8_t* vb_n = v_base(page_n);
    // A full step of a page-list instance loads the next step's whole page unconditionally (the
    // page of min(next, end - 1): always allocated; past `end` the bytes are stale and a partial
    // step masks them), so its loads take no branch and the step stays one basic block.
    constexpr bool kLoadAlways = kStaleTail && kFull;
    if constexpr (kLoadAlways) {
      // (after the S product, below)
    } else if (kPipe && next < end) {
      if (end - next >= kStep)
        load_keys(next, kb_n, slot_n, std::true_type{}, nxt);
      else
        load_keys(next, kb_n, slot_n, std::false_type{}, nxt);
    }

    // S^T = K Q^T, one m16n8k16 per 16-token tile tt and 16 dims: rows (A) are tokens
    // 16tt + g (keys.kr[2tt]; c0, c1) and 16tt + 8 + g (keys.kr[2tt + 1]; c2, c3), columns (B)
    // heads 2t, 2t + 1. The B fragment of head g over k slots 2t.. is exactly qa (same k mapping as
    // the keys' chunk t).
    float s[kNH][4];
#pragma unroll
    for (int tt = 0; tt < kNH; ++tt) {
      s[tt][0] = s[tt][1] = s[tt][2] = s[tt][3] = 0.0f;
      uint32_t k0[kKN / 2], k1[kKN / 2];
      decode_chunk2<KF, kKN, kKOff>(keys.kr[2 * tt], keys.kr[2 * tt + 1], t, k_off, k0, k1);
#pragma unroll
      for (int kk = 0; kk < kKT; ++kk)
        mma_16816(s[tt], k0[2 * kk], k1[2 * kk], k0[2 * kk + 1], k1[2 * kk + 1], qa[kk][0],
                  qa[kk][1]);
      if constexpr (kQjl) {
        float s2[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        uint32_t sp0[kKN / 2], sp1[kKN / 2];
        KF::template decode_signs2<kKN, kSOff>(sr[2 * tt].r, sr[2 * tt + 1].r, s_off, sp0, sp1);
#pragma unroll
        for (int kk = 0; kk < kKT; ++kk)
          mma_16816(s2, sp0[2 * kk], sp1[2 * kk], sp0[2 * kk + 1], sp1[2 * kk + 1], qs[kk][0],
                    qs[kk][1]);
        s[tt][0] += rs[2 * tt] * s2[0];
        s[tt][1] += rs[2 * tt] * s2[1];
        s[tt][2] += rs[2 * tt + 1] * s2[2];
        s[tt][3] += rs[2 * tt + 1] * s2[3];
      }
      if constexpr (KF::kTokenScale) {
        const float k0n =
            __half2float(__ushort_as_half(static_cast<unsigned short>(keys.ksr[2 * tt])));
        const float k1n =
            __half2float(__ushort_as_half(static_cast<unsigned short>(keys.ksr[2 * tt + 1])));
        s[tt][0] *= k0n;
        s[tt][1] *= k0n;
        s[tt][2] *= k1n;
        s[tt][3] *= k1n;
      }
      if constexpr (kShared) {  // each column at its query's end
        if (!kFull) {
          const int r0 = tok0 + 16 * tt + g, r1 = r0 + 8;
          if (r0 >= col_end0) s[tt][0] = -INFINITY;
          if (r0 >= col_end1) s[tt][1] = -INFINITY;
          if (r1 >= col_end0) s[tt][2] = -INFINITY;
          if (r1 >= col_end1) s[tt][3] = -INFINITY;
        }
      } else {
        if (!kFull && 16 * tt + g >= valid) s[tt][0] = s[tt][1] = -INFINITY;
        if (!kFull && 16 * tt + 8 + g >= valid) s[tt][2] = s[tt][3] = -INFINITY;
      }
    }

    // The next step's values, now that the decoded keys' registers are free.
    if constexpr (kLoadAlways) {
      // Keys and values, their addresses tied to the last score (`& a.zero`, 0) so that the
      // compiler cannot hoist them into the key decode (their registers would be live there).
      const uint32_t after_s = __float_as_uint(s[kNH - 1][3]) & a.zero;
      load_keys(next, kb_n + after_s, slot_n, std::true_type{}, nxt);
      if constexpr (kPipeV) load_vals(next, vb_n + after_s, slot_n, std::true_type{}, nxt);
    } else if (kPipeV && next < end) {
      if (end - next >= kStep)
        load_vals(next, vb_n, slot_n, std::true_type{}, nxt);
      else
        load_vals(next, vb_n, slot_n, std::false_type{}, nxt);
    }

    // Online softmax of heads 2t, 2t + 1 over the step. The running maxima change only when some
    // lane holds a score above them: a new record, a few steps of a long split (the first step,
    // then ever more rarely). Only then do the 8 lanes of column t (lanes t, t + 4, ..., t + 28)
    // reduce their maxima and rescale; any other step skips the shuffle chain and the rescale.
    // Bit for bit the eager update: with no score above m_run, max(m_run, step max) is m_run.
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int tt = 0; tt < kNH; ++tt) {
      mx0 = fmaxf(mx0, fmaxf(s[tt][0], s[tt][2]));
      mx1 = fmaxf(mx1, fmaxf(s[tt][1], s[tt][3]));
    }
    float alpha0 = 1.0f, alpha1 = 1.0f;
    if (__any_sync(0xffffffffu, mx0 > m_run0 || mx1 > m_run1)) {
#pragma unroll
      for (int x = 4; x <= 16; x *= 2) {
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, x));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, x));
      }
      const float m_new0 = fmaxf(m_run0, mx0), m_new1 = fmaxf(m_run1, mx1);
      // exp2(-inf - finite) = 0: the first finite maximum zeroes the (empty) state.
      alpha0 = fast_exp2(m_run0 - (m_new0 == -INFINITY ? 0.0f : m_new0));
      alpha1 = fast_exp2(m_run1 - (m_new1 == -INFINITY ? 0.0f : m_new1));
      m_run0 = m_new0;
      m_run1 = m_new1;
      // O^T columns are heads 2t, 2t + 1: this lane's own factors.
#pragma unroll
      for (int mm = 0; mm < kMT; ++mm) {
        o[mm][0] *= alpha0;
        o[mm][1] *= alpha1;
        o[mm][2] *= alpha0;
        o[mm][3] *= alpha1;
      }
    }
    const float m_use0 = m_run0 == -INFINITY ? 0.0f : m_run0;
    const float m_use1 = m_run1 == -INFINITY ? 0.0f : m_run1;
    // P^T B fragments: the 8x8 blocks (tokens 16tt (+8) + g, heads 2t, 2t + 1) transposed.
    uint32_t pb[kNH][2];
    float psum0 = 0.0f, psum1 = 0.0f;
#pragma unroll
    for (int tt = 0; tt < kNH; ++tt) {
      float p00 = fast_exp2(s[tt][0] - m_use0), p01 = fast_exp2(s[tt][1] - m_use1);
      float p10 = fast_exp2(s[tt][2] - m_use0), p11 = fast_exp2(s[tt][3] - m_use1);
      psum0 += p00 + p10;
      psum1 += p01 + p11;
      if constexpr (VF::kTokenScale) {
        float v0n = __half2float(__ushort_as_half(static_cast<unsigned short>(vals.vsr[2 * tt])));
        float v1n =
            __half2float(__ushort_as_half(static_cast<unsigned short>(vals.vsr[2 * tt + 1])));
        // (stale norms past `end`, loaded by a full step's unconditional loads, may be NaN)
        if constexpr (!kFull && kStaleTail) {
          if (16 * tt + g >= valid) v0n = 0.0f;
          if (16 * tt + 8 + g >= valid) v1n = 0.0f;
        }
        p00 *= v0n;
        p01 *= v0n;
        p10 *= v1n;
        p11 *= v1n;
      }
      pb[tt][0] = movmatrix_trans(pack_h2(p00, p01));
      pb[tt][1] = movmatrix_trans(pack_h2(p10, p11));
    }
    l_run0 = l_run0 * alpha0 + psum0;
    l_run1 = l_run1 * alpha1 + psum1;

    // O^T += V^T P^T (A rows g / g+8 of m-tile mm = local V dims 2mm / 2mm+1 of chunk g; each
    // register pairs two tokens).
#pragma unroll
    for (int h = 0; h < kNH; ++h) {
      uint32_t v01[kVN], v23[kVN];
      decode_token_pair<VF, kVN, kVOff>(vals.vr[h][0], vals.vr[h][1], g, v_off, v01);
      decode_token_pair<VF, kVN, kVOff>(vals.vr[h][2], vals.vr[h][3], g, v_off, v23);
#pragma unroll
      for (int mm = 0; mm < kMT; ++mm)
        mma_16816(o[mm], v01[2 * mm], v01[2 * mm + 1], v23[2 * mm], v23[2 * mm + 1], pb[h][0],
                  pb[h][1]);
    }
  };
  {
    int tok0 = begin + warp * kStep;
    if constexpr (kPipe) {
      // Full steps two at a time with the buffers' roles swapped, so the operands in flight are
      // never copied between registers (a move would also wait for the load); only a warp's
      // last step can be partial.
      Ahead ka = first, kb;
      for (;;) {
        if (end_full - tok0 < kStep) break;
        step(tok0, std::true_type{}, ka, kb);
        tok0 += kStride;
        if (end_full - tok0 < kStep) {
          if (tok0 < end) ka = kb;
          break;
        }
        step(tok0, std::true_type{}, kb, ka);
        tok0 += kStride;
      }
      if constexpr (kShared) {  // every step some query ends in (all of a warp's last ones)
        while (tok0 < end) {
          step(tok0, std::false_type{}, ka, kb);
          tok0 += kStride;
          if (tok0 < end) ka = kb;
        }
      } else if (tok0 < end) {
        step(tok0, std::false_type{}, ka, kb);
      }
    } else {
      Ahead unused;
      for (; tok0 < end; tok0 += kStride) {
        if (end_full - tok0 >= kStep)
          step(tok0, std::true_type{}, unused, unused);
        else
          step(tok0, std::false_type{}, unused, unused);
      }
    }
  }

  TQ_TL(3 + warp);
  // Combine the warps of the CTA (shared memory reused: the tables are no longer read).
#pragma unroll
  for (int x = 4; x <= 16; x *= 2) {
    l_run0 += __shfl_xor_sync(0xffffffffu, l_run0, x);
    l_run1 += __shfl_xor_sync(0xffffffffu, l_run1, x);
  }
  __syncthreads();
  constexpr int kRedRow = attn_reduce_row<VF, kDim>();
  float* red_o = reinterpret_cast<float*>(smem);    // [warp][8 heads][kRedRow]
  float* red_m = red_o + kAttnWarps * 8 * kRedRow;  // [warp][8]
  float* red_l = red_m + kAttnWarps * 8;            // [warp][8]
  if (g == 0) {
    red_m[warp * 8 + 2 * t] = m_run0;
    red_m[warp * 8 + 2 * t + 1] = m_run1;
    red_l[warp * 8 + 2 * t] = l_run0;
    red_l[warp * 8 + 2 * t + 1] = l_run1;
  }
#pragma unroll
  for (int mm = 0; mm < kMT; ++mm) {
    const int d0 = VF::local_dim(kVN, g, 2 * mm), d1 = VF::local_dim(kVN, g, 2 * mm + 1);
    float* base = red_o + warp * 8 * kRedRow;
    base[(2 * t) * kRedRow + d0 + d0 / 32] = o[mm][0];
    base[(2 * t + 1) * kRedRow + d0 + d0 / 32] = o[mm][1];
    base[(2 * t) * kRedRow + d1 + d1 / 32] = o[mm][2];
    base[(2 * t + 1) * kRedRow + d1 + d1 / 32] = o[mm][3];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < columns * kDim; i += blockDim.x) {
    const int h = i / kDim, d = i % kDim;
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < kAttnWarps; ++w) m = fmaxf(m, red_m[w * 8 + h]);
    float acc = 0.0f, l = 0.0f;
    if (m != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kAttnWarps; ++w) {
        const float f = exp2f(red_m[w * 8 + h] - m);
        acc += f * red_o[(w * 8 + h) * kRedRow + d + d / 32];
        l += f * red_l[w * 8 + h];
      }
    }
    const size_t p = part_of(h);
    a.part_o[p * kDim + d] = acc;
    if (d == 0) a.part_ml[p] = make_float2(m, l);
  }
  finish_pair();
#ifdef TQ_ATTN_TIMELINE
  if (threadIdx.x == 0 && a.timeline) {
    TQ_TL(7);
    unsigned smid;
    asm volatile("mov.u32 %0, %smid;" : "=r"(smid));
    tl_row(a.timeline)[8] = smid;
  }
#endif
}

}  // namespace tq::backend::cuda
