// Host side of decode attention: validation, the split-K plan, the query preparation kernel
// (P q once per head, S P q for QJL keys), the attention instances (attention_inst_*.cu) and the
// log-sum-exp merge that rotates the value sum back (P^T) once per query head.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "tq/backend/cuda/attention_instances.cuh"
#include "tq/backend/cuda/cuda_common.cuh"
#include "tq/backend/cuda/kv_cuda.h"
#include "tq/backend/cuda/q8_act.cuh"
#include "tq/backend/cuda/split_by_length.cuh"
#include "tq/backend/cuda/split_plan.h"
#include "tq/quant/qjl.h"

namespace tq::backend::cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
// Cut as the longest, the most splits of a pair the merge in the attention kernel takes.
constexpr int kFusedMergeMaxSplits = 16;

// Splits are multiples of the tokens a CTA's warps divide evenly (4 warps x 32-token steps).
static_assert(kTqSplitCost.unit == kAttnWarps * 32 && kF16SplitCost.unit == kAttnWarps * 32 &&
              kSplitUnit == kAttnWarps * 32);

// In-place unnormalised Walsh-Hadamard transform of sh[0..d) by the block (d threads, d a
// power of two), the same butterflies as quant::fwht_ref.
__device__ void block_fwht(float* sh, int d) {
  for (int h = 1; h < d; h *= 2) {
    __syncthreads();
    const int j = threadIdx.x;
    if (j < d / 2) {
      const int i = (j / h) * 2 * h + (j % h);
      const float x = sh[i], y = sh[i + h];
      sh[i] = x + y;
      sh[i + h] = x - y;
    }
  }
  __syncthreads();
}

// q_main = c * P q (P = H D / sqrt(d) when `signs`, dense `rot` otherwise, identity when both
// are null), q_sketch = qjl_c * S P q, q_win = c * q. One block of d threads per (head, seq).
__global__ void prepare_query_kernel(const float* q, int n_heads, int d, float c, float inv_sqrt_d,
                                     const float* signs, const float* rot, const float* qjl,
                                     float qjl_c, __half* q_main, __half* q_sketch, __half* q_win) {
  extern __shared__ float sh[];  // [2][d]: q, then P q
  const size_t row = (static_cast<size_t>(blockIdx.y) * n_heads + blockIdx.x) * d;
  const int j = threadIdx.x;
  const float qj = q[row + j];
  if (q_win) q_win[row + j] = __float2half_rn(c * qj);
  float y = qj;
  if (signs) {
    sh[d + j] = qj * __ldg(signs + j);
    block_fwht(sh + d, d);
    y = sh[d + j] * inv_sqrt_d;
  } else if (rot) {
    sh[j] = qj;
    __syncthreads();
    y = 0.0f;
    for (int i = 0; i < d; ++i) y = fmaf(__ldg(rot + static_cast<size_t>(j) * d + i), sh[i], y);
  }
  q_main[row + j] = __float2half_rn(c * y);
  if (!qjl) return;
  __syncthreads();
  sh[d + j] = y;
  __syncthreads();
  float z = 0.0f;
  for (int i = 0; i < d; ++i) z = fmaf(__ldg(qjl + static_cast<size_t>(j) * d + i), sh[d + i], z);
  q_sketch[row + j] = __float2half_rn(qjl_c * z);
}

// out = (P_v^T sum_{main} w_s O_s + sum_{window} w_s O_s) / sum_s w_s l_s, w_s = 2^(m_s - M).
// One block of d threads per (head, seq). The splits' (m, l) pairs are read once, in parallel,
// into shared memory, and the O_s loads are independent of each other (unrolled), so the
// kernel waits on about two memory latencies instead of one per split; the sums keep the split
// order. The rotation back is the Walsh-Hadamard butterflies of block_fwht, in-warp stages by
// lane_fwht's shuffles, the rest through shared memory. The epilogue (DecodeAttentionParams)
// scales the output and writes it as fp16 and 8-bit activations, so the model's output matmul
// follows this kernel directly.
struct MergeArgs {
  const float* part_o;
  const float2* part_ml;
  int splits_main, splits_total, n_heads, d, group;
  // Main partials split by length (AttnArgs::split_budget > 0): this row's are found from the
  // lengths; the window's then start at window_base + row * (splits_total - splits_main).
  const int32_t* lengths;
  int n_seqs, split_budget, split_cap;
  size_t window_base;
  AttnOut fin;
#ifdef TQ_ATTN_TIMELINE
  unsigned long long* timeline;  // [block][2]: start, end
#endif
};

constexpr int kMergeUnroll = 8;
// kByLength: the main partials were split by length (its own kernel, so that the other keeps
// its split counts as kernel parameters: uniform, its loads batched).
template <bool kByLength>
__global__ void merge_kernel(const MergeArgs a) {
  extern __shared__ float
      sh[];  // [d] rotation, [32] reduction, [2] the plan, [splits] m_s, [splits] l_s
  const int d = a.d, head = blockIdx.x, seq = blockIdx.y;
  const int j = threadIdx.x, lane = j & 31, warp = j >> 5, warps = (d + 31) / 32;
#ifdef TQ_ATTN_TIMELINE
  if (j == 0 && a.timeline)
    a.timeline[2 * (static_cast<size_t>(seq) * gridDim.x + head)] = tl_now();
#endif
  dev::pdl_launch_dependents();  // the output matmul may start loading its weights
  // Where this row's partials are: main split s at main_first + s * main_stride (s < n_main),
  // then the window's n_win consecutive ones at win_first. (The lengths are older than the
  // attention kernel: found before the wait.)
  const size_t part_row = static_cast<size_t>(seq) * a.n_heads + head;
  const int n_win = a.splits_total - a.splits_main;
  int n_main = a.splits_main, n_all = a.splits_total;
  size_t main_first = part_row * a.splits_total, main_stride = 1, win_first = main_first + n_main;
  if constexpr (kByLength) {  // warp 0 finds them (a warp's work), the block reads them
    int* plan_sh = reinterpret_cast<int*>(sh + d + 32);
    if (warp == 0) {
      dev::ByLength bl;
      bl.plan(a.lengths, a.n_seqs, a.split_budget, a.split_cap);
      int first = 0, count = 0;
      bl.splits_of(seq, &first, &count);
      if (lane == 0) plan_sh[0] = first, plan_sh[1] = count;
    }
    __syncthreads();
    n_main = plan_sh[1];
    main_first = (static_cast<size_t>(head / a.group) * a.split_budget + plan_sh[0]) * a.group +
                 head % a.group;
    main_stride = a.group;
    win_first = a.window_base + part_row * n_win;
    n_all = n_main + n_win;
  }
  const auto part_at = [&](int s) {  // (selects, no branch: the loads below stay independent)
    if constexpr (!kByLength) return main_first + s;
    const bool m = s < n_main;
    return (m ? main_first : win_first - n_main) + static_cast<size_t>(s) * (m ? main_stride : 1);
  };
  dev::pdl_wait();  // the partials come from the attention kernel before
  // (A slot's first pass sets its output scale in this pass: read after the wait, its load in
  // flight with the partials'.)
  const float t =
      a.fin.out_scale ? dev::attn_out_scale(a.fin, a.n_heads, a.group, d, seq, head, j) : 1.0f;
  float* red = sh + d;
  float* sm = red + 34;  // (2 ints of the plan between)
  float* sl = sm + n_all;
  const unsigned mask = d >= 32 ? 0xffffffffu : (1u << d) - 1u;
  // The first kMergeUnroll partials' outputs are requested before their (max, sum) pairs, so the
  // two L2 round trips overlap (the weights need the maximum first, the loads do not).
  float ov[kMergeUnroll];
#pragma unroll
  for (int i = 0; i < kMergeUnroll; ++i) ov[i] = i < n_all ? a.part_o[part_at(i) * d + j] : 0.0f;
  float m = -INFINITY;
  for (int s = j; s < n_all; s += d) {
    const float2 ml = a.part_ml[part_at(s)];
    sm[s] = ml.x;
    sl[s] = ml.y;
    m = fmaxf(m, ml.x);
  }
  for (int o = 16; o >= 1; o /= 2) m = fmaxf(m, __shfl_xor_sync(mask, m, o));
  if (lane == 0) red[warp] = m;
  __syncthreads();
  m = red[0];
  for (int w = 1; w < warps; ++w) m = fmaxf(m, red[w]);
  float l = 0.0f, acc_main = 0.0f, acc_win = 0.0f;
  if (m != -INFINITY) {
    for (int s0 = 0; s0 < n_all; s0 += kMergeUnroll) {
      if (s0 > 0) {
#pragma unroll
        for (int i = 0; i < kMergeUnroll; ++i)
          ov[i] = s0 + i < n_all ? a.part_o[part_at(s0 + i) * d + j] : 0.0f;
      }
#pragma unroll
      for (int i = 0; i < kMergeUnroll; ++i) {
        const int s = s0 + i;
        if (s >= n_all || sm[s] == -INFINITY) continue;
        const float w = exp2f(sm[s] - m);
        l = fmaf(w, sl[s], l);  // (attn_arrive_and_finish: the same operations)
        if (s < n_main)
          acc_main = fmaf(w, ov[i], acc_main);
        else
          acc_win = fmaf(w, ov[i], acc_win);
      }
    }
  }
  float y = acc_main;
  if (a.fin.signs_v) {  // P^T y = D H y / sqrt(d); d >= 64 (the instances' head dims): full warps
    float yl[1] = {y};
    dev::lane_fwht<32, 1>(yl, lane, 0xffffffffu);  // the in-warp stages, as every kernel's
    y = yl[0];
    for (int h = 32; h < d; h *= 2) {
      __syncthreads();
      sh[j] = y;
      __syncthreads();
      const float o = sh[j ^ h];
      y = (j & h) ? o - y : y + o;
    }
    y = y * a.fin.inv_sqrt_d * __ldg(a.fin.signs_v + j);
  } else if (a.fin.rot_v) {  // x_j = sum_i P_ij y_i
    sh[j] = acc_main;
    __syncthreads();
    y = 0.0f;
    for (int i = 0; i < d; ++i)
      y = fmaf(__ldg(a.fin.rot_v + static_cast<size_t>(i) * d + j), sh[i], y);
  }
  float r[1] = {l > 0.0f ? (y + acc_win) / l : 0.0f};
  if (a.fin.out_scale) r[0] *= t;
  // (d % 32 == 0: a warp's 32 lanes are one 32-column block of the row)
  dev::attn_store_out<1>(a.fin, (static_cast<size_t>(seq) * a.n_heads + head) * d + j, r);
#ifdef TQ_ATTN_TIMELINE
  __syncthreads();
  if (j == 0 && a.timeline)
    a.timeline[2 * (static_cast<size_t>(seq) * gridDim.x + head) + 1] = tl_now();
#endif
}

// The instance for (k, v, dim), preferring one specialised for `cap` (block_tokens).
const AttnInstance* find_instance(quant::Format k, quant::Format v, int dim, int cap) {
  const AttnInstanceList lists[] = {attention_instances_baseline(), attention_instances_k_tq2(),
                                    attention_instances_k_tq3(),    attention_instances_k_tq4(),
                                    attention_instances_k_tq3j(),   attention_instances_k_tq4j()};
  const AttnInstance* any = nullptr;
  for (const AttnInstanceList& l : lists)
    for (int i = 0; i < l.n; ++i) {
      const AttnInstance& in = l.items[i];
      if (!(in.k == k) || !(in.v == v) || in.dim != dim) continue;
      if (in.cap == cap) return &in;
      if (in.cap == 0) any = &in;
    }
  return any;
}

Status check_segment(const AttentionSegment& s, const char* name) {
  TQ_RETURN_IF_ERROR(s.k.validate().with_context(std::string(name) + ".k"));
  TQ_RETURN_IF_ERROR(s.v.validate().with_context(std::string(name) + ".v"));
  if (s.k.head_dim != s.v.head_dim || s.k.n_kv_heads != s.v.n_kv_heads ||
      s.k.block_tokens != s.v.block_tokens)
    return invalid_argument(std::string(name) +
                            ": K and V pools differ in head dim, KV heads or block size");
  if (!s.block_tables || !s.lengths || s.max_blocks <= 0)
    return invalid_argument(std::string(name) + ": block tables and lengths are required");
  if (s.max_length > s.max_blocks * s.k.block_tokens)
    return invalid_argument(std::string(name) + ": max_length exceeds max_blocks * block_tokens");
  return ok_status();
}

Status validate_params(const DecodeAttentionParams& p) {
  if (p.n_seqs <= 0 || p.n_heads <= 0)
    return invalid_argument("decode attention: no sequences or heads");
  if (!p.q || (!p.out && !p.out_f16))
    return invalid_argument("decode attention: q and out (f32 or fp16) are required");
  if ((p.out_q8 == nullptr) != (p.out_q8_scales == nullptr) || (p.out_q8 && !p.out_f16))
    return invalid_argument(
        "decode attention: 8-bit output needs its quants, its scales and the fp16 output");
  if (p.out_q8 && p.main.k.head_dim % 32 != 0)
    return invalid_argument("decode attention: 8-bit output needs head_dim % 32 == 0");
  TQ_RETURN_IF_ERROR(check_segment(p.main, "main"));
  if (p.n_heads % p.main.k.n_kv_heads != 0)
    return invalid_argument("decode attention: n_heads must be a multiple of n_kv_heads");
  if (p.n_heads / p.main.k.n_kv_heads > 8)
    return unsupported("decode attention: more than 8 query heads per KV head");
  const quant::Format f16 = quant::kFormatF16;
  if (p.window.present()) {
    TQ_RETURN_IF_ERROR(check_segment(p.window, "window"));
    if (!(p.window.k.format == f16) || !(p.window.v.format == f16) ||
        p.window.k.head_dim != p.main.k.head_dim || p.window.k.n_kv_heads != p.main.k.n_kv_heads)
      return invalid_argument("decode attention: the window must be f16 K/V of the same shape");
  }
  const bool k_rot = p.main.k.format.is_tq(), v_rot = p.main.v.format.is_tq();
  if (k_rot && (!p.main.k.tables.rotation || !p.main.k.tables.centroids))
    return invalid_argument("decode attention: tq keys need rotation and codebook tables");
  if (p.main.k.format.has_qjl() && !p.main.k.tables.qjl)
    return invalid_argument("decode attention: tq prod keys need a QJL table");
  if (v_rot && (!p.main.v.tables.rotation || !p.main.v.tables.centroids))
    return invalid_argument("decode attention: tq values need rotation and codebook tables");
  return ok_status();
}

#ifdef TQ_ATTN_TIMELINE
}  // namespace
// Diagnostic build: where the main segment's CTAs stamp their timeline (see TQ_TL), then the
// merge's blocks (start, end); null: no stamps.
unsigned long long* g_attn_timeline = nullptr;
namespace {
#endif

AttnArgs segment_args(const AttentionSegment& s, const DecodeAttentionParams& p,
                      const DecodeAttentionPlan& plan, uint8_t* ws, const __half* q,
                      const __half* q_sketch, int split_offset) {
  AttnArgs a{};
  a.k_pool = s.k.data;
  a.k_block_stride = s.k.block_stride_or_default();
  a.k_head_stride = s.k.head_stride_or_default();
  a.v_pool = s.v.data;
  a.v_block_stride = s.v.block_stride_or_default();
  a.v_head_stride = s.v.head_stride_or_default();
  a.k_centroids = s.k.tables.centroids;
  a.v_centroids = s.v.tables.centroids;
  a.block_tables = s.block_tables;
  a.max_blocks = s.max_blocks;
  a.lengths = s.lengths;
  a.block_tokens = s.k.block_tokens;
  a.block_shift = -1;
  for (int b = 0; b < 31; ++b)
    if ((1 << b) == a.block_tokens) a.block_shift = b;
  a.group = plan.group;
  a.n_heads = p.n_heads;
  a.q = q;
  a.q_sketch = q_sketch;
  a.part_o = reinterpret_cast<float*>(ws + plan.part_o);
  a.part_ml = reinterpret_cast<float2*>(ws + plan.part_ml);
  a.split_offset = split_offset;
  a.splits_total = plan.main_splits + plan.window_splits;
  a.n_seqs = p.n_seqs;
  a.queries = plan.queries;
  return a;
}

// The merge's shared memory for a row of `splits` partials: the rotation, the reduction and two
// floats a split.
size_t merge_smem_bytes(int d, int splits) {
  return (static_cast<size_t>(d) + 34 + 2 * static_cast<size_t>(splits)) * sizeof(float);
}

// The most partials the merge keeps for one row: split by length, a sequence takes at most the
// cap of the budget's splits; otherwise every row has all of them.
int merge_row_splits(const DecodeAttentionPlan& plan) {
  return (plan.main_split_budget > 0 ? std::min(plan.main_split_budget, plan.main_split_cap)
                                     : plan.main_splits) +
         plan.window_splits;
}

// Split by length, the main partials are n_kv_heads x budget x group rows; the window's follow.
size_t window_part_base(const DecodeAttentionPlan& plan) {
  return static_cast<size_t>(plan.n_kv_heads) * plan.main_split_budget * plan.group;
}

// Queries a CTA: 8 / group where they share a block table (the mma's columns; group 4: 2,
// group 1: 8), else 1.
int queries_a_cta(const DecodeAttentionParams& p, int group) {
  return p.queries_share_table ? std::max(8 / group, 1) : 1;
}
// CTAs a (split, KV head) for this call's sequences.
int query_blocks(const DecodeAttentionParams& p, const DecodeAttentionPlan& plan) {
  return (p.n_seqs + plan.queries - 1) / plan.queries;
}

}  // namespace

bool decode_attention_supported(quant::Format k, quant::Format v, int head_dim) {
  return find_instance(k, v, head_dim, 0) != nullptr;
}

Expected<DecodeAttentionPlan> plan_decode_attention(const DecodeAttentionParams& p) {
  TQ_RETURN_IF_ERROR(validate_params(p));
  DecodeAttentionPlan plan;
  plan.dim = p.main.k.head_dim;
  plan.n_kv_heads = p.main.k.n_kv_heads;
  plan.group = p.n_heads / plan.n_kv_heads;
  const AttnInstance* main =
      find_instance(p.main.k.format, p.main.v.format, plan.dim, p.main.k.block_tokens);
  if (!main)
    return unsupported("decode attention: no CUDA instance for K " + p.main.k.format.name() +
                       ", V " + p.main.v.format.name() + ", head dim " + std::to_string(plan.dim));
  const AttnInstance* window = nullptr;
  if (p.window.present()) {
    window = find_instance(quant::kFormatF16, quant::kFormatF16, plan.dim, p.window.k.block_tokens);
    if (!window) return unsupported("decode attention: no f16 window instance for this head dim");
  }
  plan.main_instance = main;
  plan.window_instance = window;
  int num_sms = p.num_sms;
  if (num_sms <= 0) {
    int dev = 0;
    TQ_CUDA_TRY(cudaGetDevice(&dev));
    TQ_CUDA_TRY(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, dev));
  }
  // Queries sharing a table: each CTA of queries_a_cta of them counts as one "pair".
  plan.queries = queries_a_cta(p, plan.group);
  const int pairs = query_blocks(p, plan) * plan.n_kv_heads;
  const int slots = num_sms * std::max(main->occupancy(), 1);  // resident CTAs: one wave
  const SplitPlan mp =
      plan_splits(p.main.max_length, pairs, slots,
                  p.main.k.format.is_tq() ? kTqSplitCost : kF16SplitCost, p.max_splits);
  plan.main_tokens_per_split = mp.tokens_per_split;
  plan.main_splits = mp.splits;
  if (p.split_by_length && main->launch_by_length && plan.queries == 1) {  // (split_plan.h)
    const ByLengthPlan b =
        plan_by_length(mp, p.n_seqs, pairs, slots, p.max_splits, main->by_length_max_tokens);
    plan.main_split_budget = b.budget;
    plan.main_split_cap = b.cap;
  }
  if (window) {
    const SplitPlan wp =
        plan_splits(p.window.max_length, pairs, num_sms * std::max(window->occupancy(), 1),
                    kF16SplitCost, p.max_splits);
    plan.window_tokens_per_split = wp.tokens_per_split;
    plan.window_splits = wp.splits;
  }
  // The merge in the attention kernel: one segment, one query a CTA, values rotated by a
  // Hadamard transform or not at all (the dense rotation stays with the merge kernel), and, cut
  // as the longest, at most kFusedMergeMaxSplits a pair (one CTA would read a short batch's tens
  // of splits in turn, where the merge kernel spreads its rows over blocks: batch 1 lost up to
  // 5% without this bound, docs/benchmarks.md, session 34).
  plan.fused_merge = p.merge_counters && !window && plan.queries == 1 && plan.main_splits > 0 &&
                     (plan.main_split_budget > 0 || plan.main_splits <= kFusedMergeMaxSplits) &&
                     (!p.main.v.format.is_tq() || p.main.v.tables.hadamard_signs);
  const size_t rows = static_cast<size_t>(p.n_seqs) * p.n_heads;
  const size_t splits =
      std::max<size_t>(static_cast<size_t>(plan.main_splits + plan.window_splits), 1);
  // Split by length, one sequence may take up to the cap of the budget's splits (the merge
  // keeps two floats each): a batch whose budget would not fit is cut by its longest.
  if (plan.main_split_budget > 0 && merge_smem_bytes(plan.dim, merge_row_splits(plan)) > 48 * 1024)
    plan.main_split_budget = plan.main_split_cap = 0;
  if (merge_smem_bytes(plan.dim, static_cast<int>(splits)) > 48 * 1024)
    return unsupported("decode attention: " + std::to_string(splits) +
                       " splits exceed the merge's shared memory");
  const auto take = [&](size_t bytes) {
    const size_t off = plan.workspace_bytes;
    plan.workspace_bytes += (bytes + 255) / 256 * 256;
    return off;
  };
  plan.q_main = take(rows * plan.dim * 2);
  plan.q_sketch = take(p.main.k.format.has_qjl() ? rows * plan.dim * 2 : 0);
  plan.q_win = take(window ? rows * plan.dim * 2 : 0);
  plan.part_o = take(rows * splits * plan.dim * 4);
  plan.part_ml = take(rows * splits * 8);
  return plan;
}

Expected<size_t> decode_attention_workspace_bytes(const DecodeAttentionParams& p) {
  TQ_ASSIGN_OR_RETURN(DecodeAttentionPlan plan, plan_decode_attention(p));
  return plan.workspace_bytes;
}

Status decode_attention(const DecodeAttentionParams& p, void* stream) {
  TQ_ASSIGN_OR_RETURN(DecodeAttentionPlan plan, plan_decode_attention(p));
  return decode_attention(p, plan, stream);
}

Status decode_attention(const DecodeAttentionParams& p, const DecodeAttentionPlan& plan,
                        void* stream_ptr) {
  TQ_RETURN_IF_ERROR(validate_params(p));
  const auto* main = static_cast<const AttnInstance*>(plan.main_instance);
  const auto* window = static_cast<const AttnInstance*>(plan.window_instance);
  if (!main || plan.dim != p.main.k.head_dim || (p.window.present() && !window) ||
      plan.queries != queries_a_cta(p, plan.group))
    return invalid_argument("decode attention: the plan was made for other parameters");
  if (p.main.max_length > plan.main_tokens_per_split * plan.main_splits ||
      (window && p.window.max_length > plan.window_tokens_per_split * plan.window_splits))
    return invalid_argument("decode attention: sequences grew past the plan; plan again");
  if (!p.workspace || p.workspace_bytes < plan.workspace_bytes)
    return invalid_argument("decode attention: workspace of " +
                            std::to_string(plan.workspace_bytes) + " bytes needed, got " +
                            std::to_string(p.workspace_bytes));
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  uint8_t* ws = static_cast<uint8_t*>(p.workspace);
  const int d = plan.dim;
  auto* q_main = reinterpret_cast<__half*>(ws + plan.q_main);
  auto* q_sketch = reinterpret_cast<__half*>(ws + plan.q_sketch);
  auto* q_win = reinterpret_cast<__half*>(ws + plan.q_win);
  const bool k_rot = p.main.k.format.is_tq();
  const bool qjl = p.main.k.format.has_qjl();
  const bool v_rot = p.main.v.format.is_tq();
  const float c = p.scale * kLog2e;
  const float inv_sqrt_d = 1.0f / std::sqrt(static_cast<float>(d));
  const CodecTables& kt = p.main.k.tables;
  const CodecTables& vt = p.main.v.tables;
  // The attention CTAs prepare their own queries unless K needs the sketch or a dense rotation.
  const bool fused_query = !qjl && (!k_rot || kt.hadamard_signs);
  if (!fused_query) {
    prepare_query_kernel<<<dim3(p.n_heads, p.n_seqs), d, 2 * d * sizeof(float), stream>>>(
        p.q, p.n_heads, d, c, inv_sqrt_d, k_rot ? kt.hadamard_signs : nullptr,
        k_rot ? kt.rotation : nullptr, qjl ? kt.qjl : nullptr,
        c * static_cast<float>(quant::qjl_scale(d)), q_main, q_sketch, window ? q_win : nullptr);
    TQ_CUDA_CHECK_LAUNCH(stream);
  }
  const auto raw_query = [&](AttnArgs& a, const float* signs) {
    if (!fused_query) return;
    a.q_raw = p.q;
    a.q_signs = signs;
    a.q_scale = c;
    a.q_rot_scale = inv_sqrt_d;
  };
  // The window's kernel on the side stream, forked after everything before it on `stream` (the
  // K/V write, the query preparation), so it runs beside the main segment's.
  const bool fork =
      window && plan.window_splits > 0 && p.side_stream && p.fork_event && p.join_event;
  const cudaStream_t side = fork ? static_cast<cudaStream_t>(p.side_stream) : stream;
  if (fork) {
    TQ_CUDA_TRY(cudaEventRecord(static_cast<cudaEvent_t>(p.fork_event), stream));
    TQ_CUDA_TRY(cudaStreamWaitEvent(side, static_cast<cudaEvent_t>(p.fork_event), 0));
  }
  AttnOut fin{};
  fin.signs_v = v_rot ? vt.hadamard_signs : nullptr;
  fin.rot_v = v_rot ? vt.rotation : nullptr;
  fin.inv_sqrt_d = inv_sqrt_d;
  fin.out = p.out;
  fin.out_scale = p.out_scale;
  fin.out_scale_rows = p.out_scale_rows;
  fin.out_f16 = reinterpret_cast<__half*>(p.out_f16);
  fin.out_q8 = p.out_q8;
  fin.out_q8_scales = p.out_q8_scales;
  if (plan.main_splits > 0) {
    AttnArgs a = segment_args(p.main, p, plan, ws, q_main, q_sketch, 0);
    a.tokens_per_split = plan.main_tokens_per_split;
    a.split_budget = plan.main_split_budget;
    a.split_cap = plan.main_split_cap;
#ifdef TQ_ATTN_TIMELINE
    a.timeline = g_attn_timeline;
#endif
    raw_query(a, k_rot ? kt.hadamard_signs : nullptr);
    if (plan.fused_merge) a.merge_counters = p.merge_counters, a.fin = fin;
    const bool pdl = p.overlap_launches && fused_query;
    if (plan.main_split_budget > 0)
      TQ_RETURN_IF_ERROR(main->launch_by_length(a, plan.main_split_budget, plan.n_kv_heads,
                                                p.n_seqs, stream, pdl));
    else if (plan.queries > 1)
      TQ_RETURN_IF_ERROR(main->launch_shared(a, plan.main_splits, plan.n_kv_heads,
                                             query_blocks(p, plan), stream, pdl));
    else
      TQ_RETURN_IF_ERROR(main->launch(a, plan.main_splits, plan.n_kv_heads, p.n_seqs, stream, pdl));
  }
  if (plan.fused_merge) return ok_status();  // the attention CTAs wrote the rows
  if (window && plan.window_splits > 0) {
    AttnArgs a = segment_args(p.window, p, plan, ws, q_win, nullptr, plan.main_splits);
    a.tokens_per_split = plan.window_tokens_per_split;
    if (plan.main_split_budget > 0) {  // the window's partials after the main ones
      a.part_base = window_part_base(plan);
      a.splits_total = plan.window_splits;
      a.split_offset = 0;
    }
    raw_query(a, nullptr);
    const bool window_pdl = !fork && p.overlap_launches && fused_query;
    if (plan.queries > 1)
      TQ_RETURN_IF_ERROR(window->launch_shared(a, plan.window_splits, plan.n_kv_heads,
                                               query_blocks(p, plan), side, window_pdl));
    else
      TQ_RETURN_IF_ERROR(
          window->launch(a, plan.window_splits, plan.n_kv_heads, p.n_seqs, side, window_pdl));
  }
  if (fork) {
    TQ_CUDA_TRY(cudaEventRecord(static_cast<cudaEvent_t>(p.join_event), side));
    TQ_CUDA_TRY(cudaStreamWaitEvent(stream, static_cast<cudaEvent_t>(p.join_event), 0));
  }
  const int splits_total = plan.main_splits + plan.window_splits;
  const size_t merge_smem = merge_smem_bytes(d, merge_row_splits(plan));
  MergeArgs ma{};
  ma.part_o = reinterpret_cast<const float*>(ws + plan.part_o);
  ma.part_ml = reinterpret_cast<const float2*>(ws + plan.part_ml);
  ma.splits_main = plan.main_splits;
  ma.splits_total = splits_total;
  ma.n_heads = p.n_heads;
  ma.d = d;
  ma.group = plan.group;
  ma.lengths = p.main.lengths;
  ma.n_seqs = p.n_seqs;
  ma.split_budget = plan.main_split_budget;
  ma.split_cap = plan.main_split_cap;
  ma.window_base = window_part_base(plan);
  ma.fin = fin;
#ifdef TQ_ATTN_TIMELINE
  ma.timeline = g_attn_timeline ? g_attn_timeline + static_cast<size_t>(plan.main_splits) *
                                                        plan.n_kv_heads * p.n_seqs * 10
                                : nullptr;
#endif
  TQ_CUDA_TRY(launch_maybe_pdl(
      plan.main_split_budget > 0 ? merge_kernel<true> : merge_kernel<false>,
      dim3(p.n_heads, p.n_seqs), dim3(d), merge_smem, stream, p.overlap_launches, ma));
  TQ_CUDA_CHECK_LAUNCH(stream);
  return ok_status();
}

}  // namespace tq::backend::cuda
