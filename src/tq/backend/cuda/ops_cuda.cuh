// The small kernels of the Llama forward pass on the GPU (embedding gather, RMSNorm, RoPE with
// the q/k/v bias, SwiGLU, f32 -> f16, the per-pass slot map), each a launcher over device
// pointers and a stream. They follow backend/cpu/ops.h: same conventions, float32 math; the
// matmuls between them are cuBLAS's (model_cuda.cu). CUDA-only header.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "tq/backend/cuda/gemv_q.h"
#include "tq/backend/cuda/kv_cuda.h"
#include "tq/core/status.h"

namespace tq::backend::cuda {

// Where a kernel also writes its f16 output as 8-bit activations for gemv_q8 (q8_act.cuh's
// rounding of the f16 values, so the GEMV sees what gemv_q's kQ8 path would make of them):
// quants [rows][row length], scales [rows][row length / 32]. q == nullptr: not written. Needs
// row lengths that are multiples of 32.
struct Q8Out {
  int8_t* q = nullptr;
  Q8Scale* s = nullptr;
};

// x[t][:] = float(table[tokens[t]][:]) for t < n; table [vocab][dim] in f16.
Status embed_rows(const __half* table, const int32_t* tokens, int n, int dim, float* x,
                  cudaStream_t s);

// out[r] = the greedy token of row r of x [rows][n]: the largest value, NaN never winning, the
// lowest index among equals, 0 when every value is NaN or -inf (runtime::Sampler's greedy).
Status argmax_rows(const float* x, int rows, int n, int32_t* out, cudaStream_t s);

// y[t] = f16(x[t] / sqrt(mean(x[t]^2) + eps) * w), rows of `dim` (cpu::rmsnorm).
Status rmsnorm_rows(const float* x, const float* w, int n, int dim, float eps, __half* y,
                    cudaStream_t s, Q8Out q8 = {});

// cs[t][i] = (cos, sin)(pos0 + t) * inv_freq[i]) for i < half, the angle in double as the CPU
// computes it (positions near 10^5 lose the low bits in float).
Status rope_table(const float* inv_freq, int half, int pos0, int n, float2* cs, cudaStream_t s);
// The same for rows at their own positions (device [n]): one token of each of n sequences.
Status rope_table_at(const float* inv_freq, int half, const int32_t* positions, int n, float2* cs,
                     cudaStream_t s);

struct RopeSplitParams {
  const float* qkv = nullptr;   // [n][q_dim + 2 kv_dim]: q | k | v rows of one matmul
  const float* bias = nullptr;  // [q_dim + 2 kv_dim] or null (qwen2's q/k/v biases)
  const float2* cs = nullptr;   // [n][rope_dims/2] from rope_table
  float* q = nullptr;           // [n][q_dim] out, rotated
  float* k = nullptr;           // [n][kv_dim] out, rotated
  // A slot's statistics (kv::PagedKv, FirstPassStatsParams), each [kv_dim] or null: k is stored
  // (k - k_mean) / k_scale, v as v / v_scale, and q is multiplied by its KV head's k_scale.
  const float* k_mean = nullptr;
  const float* k_scale = nullptr;
  const float* v_scale = nullptr;
  // Row t reads them at + stat_rows[t] * kv_dim instead (device [n]; a batch of sequences, each
  // with its own statistics).
  const int32_t* stat_rows = nullptr;
  float* v = nullptr;  // [n][kv_dim] out
  int n = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, rope_dims = 0;
  bool neox = false;  // pairs (i, i + rope_dims/2); else (2i, 2i+1)
  // Launched with programmatic dependence (sm_90): RoPE's table, the bias and the key mean are
  // read while the QKV matmul before it still runs; qkv after it completes.
  bool overlap = false;
};
// Adds the bias, rotates q and k (cpu::rope), applies the slot's statistics when given, and
// splits the rows into q, k and v.
Status rope_split(const RopeSplitParams& p, cudaStream_t s);

// A slot's first pass (kv::PagedKv::set_key_mean / set_value_scale) over rows [from, to) of its
// n rows, per KV head h and channel e (float32 where the CPU sums in double):
// - mu = the mean of k (zeros when the range is empty);
// - s (key scaling, at least 2 rows): r_e = (rms of k - mu + 1e-6) / (rms of the group's q +
//   1e-6), s_e = sqrt(r_e / geomean_e(r)); else 1;
// - t (value scaling, at least 2 rows): r_e = (rms of v + 1e-6) / (w_e + 1e-6) (w: W_o's column
//   norms, Model::value_output_weights; null: no division), t_e = sqrt(r_e / geomean(r)); else 1;
// then every row becomes k = (k - mu) / s, v = v / t, q = q * s (the later passes get the same
// from rope_split). Null outputs are not computed (and not applied).
struct FirstPassStatsParams {
  float* q = nullptr;  // [n][n_heads][head_dim]
  float* k = nullptr;  // [n][n_kv_heads][head_dim]
  float* v = nullptr;  // [n][n_kv_heads][head_dim]
  int n = 0, from = 0, to = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  float* mu = nullptr;       // [kv_dim] out (key centering)
  float* s = nullptr;        // [kv_dim] out (key scaling; needs mu)
  float* t = nullptr;        // [kv_dim] out (value scaling)
  const float* w = nullptr;  // [kv_dim] W_o's column norms of the layer, or null
};
Status first_pass_stats(const FirstPassStatsParams& p, cudaStream_t s);

// h[t][i] = f16(silu(gu[t][i]) * gu[t][ffn + i]): gate | up rows of one matmul (cpu::silu_mul).
Status silu_mul_rows(const float* gu, int n, int ffn, __half* h, cudaStream_t s, Q8Out q8 = {});

// y[r] = beta * y[r] + sum_c w[r][c] x[c]: the one-token matmul of decode (w [rows][cols] f16
// row-major, x [cols] f16, y [rows] f32, f32 accumulation), one warp per row with 16-byte
// loads, so it streams the weights at close to memory bandwidth. cols % 8 == 0, w and x
// 16-byte aligned. Checked against cuBLAS's GEMM through the whole model (model_cuda_test).
Status gemv_f16(const __half* w, int rows, int cols, const __half* x, float* y, float beta,
                cudaStream_t s);

// The rows kept exact in f16 (kv::KvConfig's sinks and window) on the device: per slot, pages of
// an f16 pool of their own holding `sinks + window` rows, [sinks | ring of window rows], the
// token at position p >= sinks in ring row sinks + (p - sinks) % window. A pass of n tokens
// ending at `end` keeps positions >= keep_from = max(sinks, end - window) exact, as
// kv::PagedKv::append: every query of the pass sees the compressed tokens before keep_from and
// the exact ones from there (its own causal prefix of each).
// - one-token rows (decode, batched decode): the query sees the slot's region as stored, its
//   first min(pos + 1, sinks + window) rows (every ring row it has written holds a window
//   position), so a decode graph needs nothing more;
// - a pass of several tokens: the ring is not in position order, so gather_src / gather_dst
//   copy the sinks and the window rows [keep_from, end) in position order into scratch pages
//   (copy_exact_rows, after the pass's rows are written), and row t sees its prefix of them.
// After a truncation (DeviceModel::truncate) the ring holds rows of cut positions: a pass with
// exact_from > 0 reads positions below it compressed (keep_from = max(sinks, end - window,
// exact_from)) and gathers even a single token's rows, until the ring holds the last window
// rows again.
struct ExactRowsParams {
  int sinks = 0, window = 0;
  int exact_from = 0;
  const int32_t* table = nullptr;          // [blocks] the slot's pages ([seqs][blocks] batched)
  const int32_t* scratch_table = nullptr;  // [blocks] the gather's pages
  int blocks = 0;                          // pages per slot: ceil((sinks + window) / bt)
  int32_t* slots = nullptr;                // [n] the exact-pool slot each row writes, -1: none
  int32_t* lengths = nullptr;              // [n] exact rows each row's query sees
  int32_t* tables = nullptr;               // [n][blocks] the pages it sees them in
  int32_t* gather_src = nullptr;           // [sinks + window] pool slots (multi-row passes)
  int32_t* gather_dst = nullptr;           // [sinks + window], -1: nothing to copy
};

// The per-pass tables of n new tokens of one sequence at positions pos0 .. pos0+n-1 (or, with
// seqs and positions given, one token of each of n sequences: row t is sequence seqs[t] at
// positions[t], and `table` holds every sequence's table, [seq][max_blocks]).
// Compressed tokens are numbered from the sinks on (c = p - sinks, as kv::PagedKv): slots[t] =
// table[c / bt] * bt + c % bt (-1 for a sink), lengths[t] = the compressed tokens its query sees
// (pos + 1 without sinks and window), and `n` copies of the sequence's block table (one per
// query "sequence" of decode attention): tables[t][j] = table[j] for j < max_blocks. With
// exact.slots set, the exact rows' tables as ExactRowsParams says.
struct StepTablesParams {
  const int32_t* table = nullptr;  // [max_blocks] the sequence's pool blocks ([seqs][..] batched)
  int max_blocks = 0;
  int block_tokens = 0;
  int pos0 = 0;
  int n = 0;
  const int32_t* seqs = nullptr;       // device [n] or null
  const int32_t* positions = nullptr;  // device [n] or null
  int32_t* slots = nullptr;            // [n]
  int32_t* lengths = nullptr;          // [n]
  int32_t* tables = nullptr;           // [n][max_blocks]
  ExactRowsParams exact;               // sinks and window; exact.slots == nullptr: none
};
Status step_tables(const StepTablesParams& p, cudaStream_t s);

// For j < rows with src[j] >= 0: row dst[j] of f16 pools k and v (pool slots: block * bt + slot,
// every KV head) = row src[j]. The exact rows' gather of a multi-row pass.
Status copy_exact_rows(const PagedPool& k, const PagedPool& v, const int32_t* src,
                       const int32_t* dst, int rows, cudaStream_t s);

}  // namespace tq::backend::cuda
