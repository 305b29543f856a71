// The CUDA forward pass (see model_cuda.h). One pass of n tokens of one sequence slot:
//   embed -> per layer [RMSNorm -> one QKV GEMM -> bias + RoPE + split -> quantize-on-write of
//   K and V into the slot's pages -> decode attention -> Wo GEMM accumulated into x -> RMSNorm
//   -> one gate|up GEMM -> SwiGLU -> down GEMM accumulated into x] -> final RMSNorm and the
//   logits GEMM for the rows asked for, copied to the host.
// Attention, first version: a pass of n tokens runs decode attention with n query "sequences"
// that share the slot's block table and have lengths pos+1, so token t sees exactly the
// positions up to its own (causal). Every token's K/V is written before attention runs, so,
// as the CPU paged cache with window 0, every query reads compressed K/V, its own included.
// Correct and simple; prefill re-reads the prefix once per query (a tiled prefill kernel is
// the follow-up).
// Batched decode (forward_batch) is the same pass over B rows that are one token each of B
// slots: per-row positions (RoPE, slot mapping, attention lengths), per-row key means, and
// attention's n query "sequences" get their own slots' block tables.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "tq/backend/cuda/cuda_common.cuh"
#include "tq/backend/cuda/gemv_q.h"
#include "tq/backend/cuda/model_cuda_impl.cuh"
#include "tq/backend/cuda/ops_cuda.cuh"
#include "tq/backend/cuda/top_k.h"

#define TQ_CUBLAS_TRY(expr) TQ_RETURN_IF_ERROR(::tq::backend::cuda::cublas_status((expr), #expr))

namespace tq::backend::cuda {
namespace {

// Y[t][r] = beta * Y[t][r] + sum_c W[r][c] X[t][c] for t < n: W [rows][cols] and X [n][cols]
// row-major f16, Y [n][ldy] row-major f32, accumulated in f32. In cuBLAS's column-major terms
// Y^T (rows x n) = W^T' (W read as a cols x rows matrix, transposed) x X^T (cols x n).
Status gemm(cublasHandle_t h, const __half* w, int rows, int cols, const __half* x, int n, float* y,
            int ldy, float beta) {
  const float alpha = 1.0f;
  TQ_CUBLAS_TRY(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, rows, n, cols, &alpha, w, CUDA_R_16F,
                             cols, x, CUDA_R_16F, cols, &beta, y, CUDA_R_32F, ldy,
                             CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return ok_status();
}

// The matmuls of a pass, Y [n][rows] (+)= X [n][cols] W^T. f16 weights: one token (decode)
// streams them through gemv_f16 unless the options ask for cuBLAS; more tokens are a cuBLAS
// GEMM. Quantized weights: up to kGemvMaxTokens rows through gemv_q (each block read once for
// all rows); longer passes (prefill, batches over 8) dequantize the matrix into the scratch, in
// chunks of rows when it is larger (the output matrix), each chunk one GEMM. Prefill's GEMMs
// are compute-bound, so the extra pass over the weights costs little there; decode batches over
// 8 pay it every step (docs/benchmarks.md: calling the GEMV 8 rows at a time was slower still).
Status matmul(const CudaModel::Impl& m, const MatrixView& w, const __half* x, int n, float* y,
              float beta, bool x_q8 = false) {
  const int rows = w.rows, cols = w.cols;
  if (x_q8 && w.format != WeightFormat::kF16 && n <= kGemvMaxTokens && !m.opt.cublas_gemv) {
    const Q8Activations xq{m.q8.as<int8_t>(), m.q8_scales.as<Q8Scale>(), cols};
    return gemv_q8(w, xq, n, y, rows, beta, m.stream, m.opt.overlap_launches && m.cc_major >= 9);
  }
  if (w.format == WeightFormat::kF16) {
    const __half* wh = static_cast<const __half*>(w.data);
    if (n == 1 && !m.opt.cublas_gemv && cols % 8 == 0)
      return gemv_f16(wh, rows, cols, x, y, beta, m.stream);
    return gemm(m.blas, wh, rows, cols, x, n, y, rows, beta);
  }
  if (n <= kGemvMaxTokens && !m.opt.cublas_gemv)
    return gemv_q(w, x, n, cols, y, rows, beta, m.stream, m.opt.overlap_launches && m.cc_major >= 9,
                  m.opt.int8_activations ? GemvActivations::kQ8 : GemvActivations::kExact);
  const size_t scratch_rows = m.dequant_scratch.bytes() / (sizeof(__half) * cols);
  if (scratch_rows == 0) return internal_error("matmul: no dequant scratch for quantized weights");
  __half* scratch = m.dequant_scratch.as<__half>();
  for (int r0 = 0; r0 < rows;) {
    const int nr = static_cast<int>(std::min<size_t>(scratch_rows, static_cast<size_t>(rows - r0)));
    TQ_RETURN_IF_ERROR(dequant_rows(w, r0, nr, scratch, m.stream));
    TQ_RETURN_IF_ERROR(gemm(m.blas, scratch, nr, cols, x, n, y + r0, rows, beta));
    r0 += nr;
  }
  return ok_status();
}

double gib(size_t b) { return static_cast<double>(b) / (1u << 30); }

WriteKernel write_kernel(DeviceWriteKernel k) {
  switch (k) {
    case DeviceWriteKernel::kLegacy:
      return WriteKernel::kLegacy;
    case DeviceWriteKernel::kTeam:
      return WriteKernel::kTeam;
    case DeviceWriteKernel::kWarp:
      return WriteKernel::kWarp;
    case DeviceWriteKernel::kAuto:
      break;
  }
  return WriteKernel::kAuto;
}

}  // namespace

CudaModel::Impl::~Impl() {
  for (DecodeGraph& g : graphs)
    if (g.exec) cudaGraphExecDestroy(g.exec);
  if (blas) cublasDestroy(blas);
  if (fork_event) cudaEventDestroy(fork_event);
  if (join_event) cudaEventDestroy(join_event);
  if (side_stream) cudaStreamDestroy(side_stream);
  if (stream) cudaStreamDestroy(stream);
}

namespace {

// The rows of one pass: n tokens of one slot (seq >= 0, positions pos0 ..), or one token of
// each of n slots (seq < 0; row t is slot row_seqs[t] at row_pos[t]).
struct PassRows {
  int n = 0;
  int seq = -1;
  int max_length = 0;   // the longest prefix a row's query sees, its own token included
  bool gather = false;  // the exact rows in position order (a multi-row pass, or a stale ring)
};

// Whether slot seq's ring still holds rows of positions cut by a truncation, among the last
// window positions (ExactRowsParams::exact_from).
bool ring_stale(const CudaModel::Impl& m, int seq) {
  const int from = m.exact_from[static_cast<size_t>(seq)];
  return from > 0 &&
         from > std::max(m.opt.kv.sinks, m.lengths[static_cast<size_t>(seq)] - m.opt.kv.window);
}

// The exact rows' part of a pass's tables (none without sinks and window): slot seq's pages, or
// every slot's (seq < 0, a batch of one-token rows).
ExactRowsParams exact_rows(CudaModel::Impl& m, int seq) {
  ExactRowsParams e;
  if (m.exact_blocks == 0) return e;
  const int32_t* tables = m.exact_tables.as<int32_t>();
  const size_t per_slot = static_cast<size_t>(m.exact_blocks);
  e.sinks = m.opt.kv.sinks;
  e.window = m.opt.kv.window;
  e.table = seq < 0 ? tables : tables + static_cast<size_t>(seq) * per_slot;
  e.scratch_table = tables + static_cast<size_t>(m.opt.max_sequences) * per_slot;
  e.blocks = m.exact_blocks;
  e.slots = m.exact_slots.as<int32_t>();
  e.lengths = m.exact_lengths.as<int32_t>();
  e.tables = m.exact_step_tables.as<int32_t>();
  e.gather_src = m.gather_src.as<int32_t>();
  e.gather_dst = m.gather_dst.as<int32_t>();
  return e;
}

// Decode attention's parameters for the pass's n queries over layer D's pools; `shared`: the
// queries are one slot's rows (one block table).
DecodeAttentionParams attention_params(CudaModel::Impl& m, DeviceLayer& D, int n, int max_length,
                                       bool shared) {
  const LlamaDesc& d = m.shape;
  DecodeAttentionParams p;
  p.n_seqs = n;
  p.queries_share_table = shared;
  p.n_heads = d.n_heads;
  p.q = m.q.as<float>();
  p.out_f16 = reinterpret_cast<uint16_t*>(m.xn.as<__half>());  // for the output matmul
  p.scale = 1.0f / std::sqrt(static_cast<float>(d.head_dim));
  p.main.k = D.k;
  p.main.v = D.v;
  p.main.block_tables = m.step_tables.as<int32_t>();
  p.main.max_blocks = m.pages_per_seq;
  p.main.lengths = m.seq_lengths.as<int32_t>();
  p.main.max_length = max_length;
  if (m.exact_blocks > 0) {  // sinks and window: f16 rows, their own tables and lengths
    p.window.k = D.ek;
    p.window.v = D.ev;
    p.window.block_tables = m.exact_step_tables.as<int32_t>();
    p.window.max_blocks = m.exact_blocks;
    p.window.lengths = m.exact_lengths.as<int32_t>();
    p.window.max_length = std::min(max_length, m.opt.kv.sinks + m.opt.kv.window);
    p.side_stream = m.side_stream;
    p.fork_event = m.fork_event;
    p.join_event = m.join_event;
  }
  p.num_sms = m.num_sms;
  p.overlap_launches = m.opt.overlap_launches && m.cc_major >= 9;
  p.split_by_length = m.opt.split_by_length;
  if (m.opt.merge_in_attention) p.merge_counters = m.merge_counters.as<int32_t>();
  return p;
}

// The cached plan of layer D's formats for n queries, made for `plan_length` tokens when the
// cached one does not cover max_length (planning queries kernel occupancy), with the attention
// workspace grown to fit it.
Expected<const DecodeAttentionPlan*> attention_plan(CudaModel::Impl& m, DeviceLayer& D, int n,
                                                    int max_length, int plan_length,
                                                    bool shared = false) {
  CudaModel::Impl::CachedPlan* cached = nullptr;
  for (auto& c : m.plans)
    if (c.formats == D.formats && c.n_seqs == n && c.shared == shared) cached = &c;
  const int exact = std::min(max_length, m.opt.kv.sinks + m.opt.kv.window);
  if (cached == nullptr ||
      max_length > cached->plan.main_tokens_per_split * cached->plan.main_splits ||
      (m.exact_blocks > 0 &&
       exact > cached->plan.window_tokens_per_split * cached->plan.window_splits)) {
    TQ_ASSIGN_OR_RETURN(DecodeAttentionPlan plan,
                        plan_decode_attention(attention_params(m, D, n, plan_length, shared)));
    if (cached == nullptr) {
      m.plans.push_back({D.formats, n, shared, plan});
      cached = &m.plans.back();
    } else {
      cached->plan = plan;
    }
  }
  if (m.attn_ws.bytes() < cached->plan.workspace_bytes) {
    // Grown rarely (cudaFree waits for the device); doubled so a growing context reallocates
    // a logarithmic number of times.
    TQ_CUDA_TRY(cudaStreamSynchronize(m.stream));
    TQ_RETURN_IF_ERROR(m.attn_ws.alloc(
        std::max(cached->plan.workspace_bytes, 2 * m.attn_ws.bytes()), "attention workspace"));
  }
  return &cached->plan;
}

// The attention's merge writes its output to xn as fp16 rows for the output matmul (and their
// 8-bit activations), times the slots' value scales t when the layer's values are stored as v / t.
struct AttendOutput {
  Q8Out q8;
  const float* scale = nullptr;
  const int32_t* scale_rows = nullptr;
};

// Decode attention of the pass's n queries over layer D's pools.
Status attend(CudaModel::Impl& m, DeviceLayer& D, int n, int max_length, bool shared,
              const AttendOutput& out) {
  TQ_ASSIGN_OR_RETURN(const DecodeAttentionPlan* plan,
                      attention_plan(m, D, n, max_length, max_length, shared));
  DecodeAttentionParams p = attention_params(m, D, n, max_length, shared);
  p.out_q8 = out.q8.q;
  p.out_q8_scales = out.q8.s;
  p.out_scale = out.scale;
  p.out_scale_rows = out.scale_rows;
  p.workspace = m.attn_ws.as<void>();
  p.workspace_bytes = m.attn_ws.bytes();
  return decode_attention(p, *plan, m.stream);
}

// The kernels before a decode-sized pass's GEMVs also write their output as 8-bit activations
// (gemv_q8) when the model has the buffers for them.
Q8Out q8_out(const CudaModel::Impl& m, int n) {
  if (m.q8.empty() || n > kGemvMaxTokens || m.opt.cublas_gemv) return {};
  return Q8Out{m.q8.as<int8_t>(), m.q8_scales.as<Q8Scale>()};
}

Status run_layer(CudaModel::Impl& m, int l, const PassRows& rows) {
  const int n = rows.n, seq = rows.seq;
  DeviceLayer& D = m.layers[static_cast<size_t>(l)];
  const LlamaDesc& d = m.shape;
  const int q_dim = d.q_dim(), kv_dim = d.kv_dim();
  const cudaStream_t s = m.stream;
  float* x = m.x.as<float>();
  __half* xn = m.xn.as<__half>();
  const Q8Out q8 = q8_out(m, n);
  const bool x_q8 = q8.q != nullptr;

  TQ_RETURN_IF_ERROR(rmsnorm_rows(x, D.attn_norm.as<float>(), n, d.dim, d.rms_eps, xn, s, q8));
  TQ_RETURN_IF_ERROR(matmul(m, D.w_qkv.view(), xn, n, m.qkv.as<float>(), 0.0f, x_q8));
  RopeSplitParams rp;
  rp.qkv = m.qkv.as<float>();
  rp.bias = D.b_qkv.empty() ? nullptr : D.b_qkv.as<float>();
  rp.cs = m.cs.as<float2>();
  rp.q = m.q.as<float>();
  rp.k = m.k.as<float>();
  rp.v = m.v.as<float>();
  rp.n = n;
  rp.n_heads = d.n_heads;
  rp.n_kv_heads = d.n_kv_heads;
  rp.head_dim = d.head_dim;
  rp.rope_dims = d.rope_dims;
  rp.neox = d.rope_neox;
  // Key centering and key / value scaling (kv::PagedKv): the slot's first pass sets mu, s and t
  // from its own rows, later passes apply them as they are split. Attention is unchanged:
  // softmax ignores q.mu, (q s).(k / s) = q.k, and the outputs are multiplied back by t.
  // A batch's slots all have theirs (forward_batch sets them first): row t uses its own.
  const bool batch = seq < 0;
  const bool stats = D.centered || D.value_scaled;
  const size_t stat0 = batch ? 0 : static_cast<size_t>(seq) * kv_dim;
  const auto stat = [&](DeviceMem& b) { return b.empty() ? nullptr : b.as<float>() + stat0; };
  uint8_t dummy = 1;
  uint8_t& ready =
      batch || !stats ? dummy : m.mean_ready[static_cast<size_t>(seq) * d.n_layers + l];
  if (ready) {
    rp.k_mean = stat(D.k_mean);
    rp.k_scale = stat(D.k_scale);
    rp.v_scale = stat(D.v_scale);
  }
  rp.stat_rows = batch ? m.row_seqs.as<int32_t>() : nullptr;
  rp.overlap = m.opt.overlap_launches && m.cc_major >= 9;
  TQ_RETURN_IF_ERROR(rope_split(rp, s));
  if (!ready) {
    // As PagedKv::set_key_mean: every token of the slot's first pass (its first max_batch
    // tokens) but position 0 and the sinks, failing those all but position 0; a lone token:
    // mu = 0, s = t = 1.
    FirstPassStatsParams fp;
    fp.q = m.q.as<float>();
    fp.k = m.k.as<float>();
    fp.v = m.v.as<float>();
    fp.n = n;
    fp.from = std::max(1, m.opt.kv.sinks);
    if (fp.from >= n) fp.from = 1;
    fp.to = n;
    fp.n_heads = d.n_heads;
    fp.n_kv_heads = d.n_kv_heads;
    fp.head_dim = d.head_dim;
    fp.mu = stat(D.k_mean);
    fp.s = stat(D.k_scale);
    fp.t = stat(D.v_scale);
    fp.w = D.v_weights.empty() ? nullptr : D.v_weights.as<float>();
    TQ_RETURN_IF_ERROR(first_pass_stats(fp, s));
    ready = 1;
  }

  QuantizeWriteParams wk, wv;  // K and V in one launch for decode-sized passes
  wk.pool = D.k;
  wv.pool = D.v;
  wk.x = m.k.as<void>();
  wv.x = m.v.as<void>();
  wk.slot_mapping = wv.slot_mapping = m.slots.as<int32_t>();
  wk.tokens = wv.tokens = n;
  wk.kernel = wv.kernel = write_kernel(m.opt.write_kernel);
  wk.overlap = wv.overlap = m.opt.overlap_launches && m.cc_major >= 9;
  if (m.exact_blocks == 0) {
    TQ_RETURN_IF_ERROR(quantize_write_kv(wk, wv, s));
  } else {
    // Sinks and window rows in f16 as well, in the same launch for decode-sized passes (every
    // token from the sinks on is also compressed, at c = p - sinks, and read from there once
    // it leaves the window).
    QuantizeWriteParams w[4] = {wk, wv, wk, wv};
    w[2].pool = D.ek;
    w[3].pool = D.ev;
    w[2].slot_mapping = w[3].slot_mapping = m.exact_slots.as<int32_t>();
    TQ_RETURN_IF_ERROR(quantize_write_group(w, s));
    if (!batch && rows.gather)
      TQ_RETURN_IF_ERROR(copy_exact_rows(D.ek, D.ev, m.gather_src.as<int32_t>(),
                                         m.gather_dst.as<int32_t>(),
                                         m.opt.kv.sinks + m.opt.kv.window, s));
  }
  AttendOutput out;  // into xn
  out.q8 = q8;
  if (D.value_scaled) {  // the rows hold v / t
    out.scale = stat(D.v_scale);
    out.scale_rows = batch ? m.row_seqs.as<int32_t>() : nullptr;
  }
  // A pass of one slot's tokens: its queries share the slot's pages.
  const bool shared = seq >= 0 && n > 1;
  TQ_RETURN_IF_ERROR(attend(m, D, n, rows.max_length, shared, out).with_context("attention"));
  TQ_RETURN_IF_ERROR(matmul(m, D.w_o.view(), xn, n, x, 1.0f, x_q8));  // x += Wo att

  TQ_RETURN_IF_ERROR(rmsnorm_rows(x, D.ffn_norm.as<float>(), n, d.dim, d.rms_eps, xn, s, q8));
  TQ_RETURN_IF_ERROR(matmul(m, D.w_gate_up.view(), xn, n, m.gu.as<float>(), 0.0f, x_q8));
  TQ_RETURN_IF_ERROR(silu_mul_rows(m.gu.as<float>(), n, d.ffn_dim, m.h.as<__half>(), s, q8));
  return matmul(m, D.w_down.view(), m.h.as<__half>(), n, x, 1.0f, x_q8);  // x += down
}

Status run_layers(CudaModel::Impl& m, const PassRows& rows) {
  for (size_t l = 0; l < m.layers.size(); ++l)
    TQ_RETURN_IF_ERROR(
        run_layer(m, static_cast<int>(l), rows).with_context("layer " + std::to_string(l)));
  return ok_status();
}

// The final RMSNorm and the logits GEMM of residual rows [first, first + rows) into m.logits.
Status logits_rows(CudaModel::Impl& m, int first, int rows) {
  const LlamaDesc& d = m.shape;
  const MatrixView out_w =
      m.out_w.empty() ? MatrixView{WeightFormat::kF16, m.embd.as<void>(), d.vocab_size, d.dim}
                      : m.out_w.view();
  const Q8Out q8 = q8_out(m, rows);
  TQ_RETURN_IF_ERROR(rmsnorm_rows(m.x.as<float>() + static_cast<size_t>(first) * d.dim,
                                  m.out_norm.as<float>(), rows, d.dim, d.rms_eps, m.xn.as<__half>(),
                                  m.stream, q8));
  return matmul(m, out_w, m.xn.as<__half>(), rows, m.logits.as<float>(), 0.0f, q8.q != nullptr);
}

// The launches of one decode pass of B rows (one token of each of B slots): the host has put
// the tokens, slots and positions in m.tokens / m.row_seqs / m.row_pos.
Status decode_launches(CudaModel::Impl& m, int B, int max_length, bool logits) {
  const LlamaDesc& d = m.shape;
  const cudaStream_t s = m.stream;
  StepTablesParams st;
  st.table = m.block_tables.as<int32_t>();
  st.max_blocks = m.pages_per_seq;
  st.block_tokens = m.opt.kv.block_tokens;
  st.n = B;
  st.seqs = m.row_seqs.as<int32_t>();
  st.positions = m.row_pos.as<int32_t>();
  st.slots = m.slots.as<int32_t>();
  st.lengths = m.seq_lengths.as<int32_t>();
  st.tables = m.step_tables.as<int32_t>();
  st.exact = exact_rows(m, -1);
  TQ_RETURN_IF_ERROR(step_tables(st, s));
  TQ_RETURN_IF_ERROR(
      embed_rows(m.embd.as<__half>(), m.tokens.as<int32_t>(), B, d.dim, m.x.as<float>(), s));
  TQ_RETURN_IF_ERROR(rope_table_at(m.inv_freq.as<float>(), d.rope_dims / 2, m.row_pos.as<int32_t>(),
                                   B, m.cs.as<float2>(), s));
  TQ_RETURN_IF_ERROR(run_layers(m, {B, -1, max_length}));
  if (logits) {
    TQ_RETURN_IF_ERROR(logits_rows(m, 0, B));
    TQ_RETURN_IF_ERROR(
        argmax_rows(m.logits.as<float>(), B, d.vocab_size, m.greedy.as<int32_t>(), s));
  }
  return ok_status();
}

// The lengths a decode graph captured at max_length serves: rounded up to the next eighth of
// the power of two above it (at least 128), so a growing sequence is captured again about eight
// times per doubling and each capture's split plan stays close to the exact length's.
int graph_capacity(int max_length, int limit) {
  int p2 = 128;
  while (p2 < max_length) p2 *= 2;
  const int step = p2 / 8;
  return std::min((max_length + step - 1) / step * step, limit);
}

// Captures decode_launches into a graph (nothing runs) and instantiates it.
Expected<cudaGraphExec_t> capture_decode(CudaModel::Impl& m, int B, int max_length, bool logits) {
  const cudaStream_t s = m.stream;
  TQ_CUDA_TRY(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  const Status body = decode_launches(m, B, max_length, logits);
  cudaGraph_t graph = nullptr;
  const cudaError_t end = cudaStreamEndCapture(s, &graph);
  if (!body.ok() || end != cudaSuccess) {
    if (graph) cudaGraphDestroy(graph);
    (void)cudaGetLastError();  // clear the capture's error so later calls start clean
    if (!body.ok()) return body.with_context("capturing a decode graph");
    TQ_CUDA_TRY(end);
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  TQ_CUDA_TRY(inst);
  return exec;
}

// One decode pass of B rows: a captured graph replayed, or the launches one by one when graphs
// are off (or after a capture failed: then with a warning on stderr, once).
Status run_decode(CudaModel::Impl& m, int B, int max_length, bool logits) {
  if (!m.opt.cuda_graphs || m.graphs_failed) {
    ++m.stats.eager_passes;
    return decode_launches(m, B, max_length, logits);
  }
  CudaModel::Impl::DecodeGraph* g = nullptr;
  for (auto& c : m.graphs)
    if (c.rows == B && c.logits == logits) g = &c;
  if (g != nullptr && g->capacity >= max_length && g->workspace == m.attn_ws.as<void>()) {
    ++m.stats.graph_replays;
    TQ_CUDA_TRY(cudaGraphLaunch(g->exec, m.stream));
    return ok_status();
  }
  // Every layer's plan is made (and the workspace sized) for the capacity first: nothing inside
  // the capture may plan, allocate or synchronise.
  const int capacity = graph_capacity(max_length, m.pages_per_seq * m.opt.kv.block_tokens);
  for (DeviceLayer& D : m.layers)
    TQ_RETURN_IF_ERROR(attention_plan(m, D, B, capacity, capacity).status());
  Expected<cudaGraphExec_t> exec = capture_decode(m, B, max_length, logits);
  if (!exec.ok()) {
    std::fprintf(stderr, "tq: CUDA graph capture failed, launching kernels one by one: %s\n",
                 exec.status().to_string().c_str());
    m.graphs_failed = true;
    ++m.stats.eager_passes;
    return decode_launches(m, B, max_length, logits);
  }
  if (g == nullptr) {
    m.graphs.push_back({});
    g = &m.graphs.back();
  } else if (g->exec) {
    cudaGraphExecDestroy(g->exec);
  }
  *g = {B, logits, capacity, m.attn_ws.as<void>(), *exec};
  ++m.stats.graph_captures;
  TQ_CUDA_TRY(cudaGraphLaunch(g->exec, m.stream));
  return ok_status();
}

// Row b's first a.top_k candidates of the last top_k_rows call (k per row) to a's buffers.
Status copy_top(CudaModel::Impl& m, int b, int k, const DeviceForwardArgs& a) {
  const size_t at = static_cast<size_t>(b) * k, n = static_cast<size_t>(a.top_k);
  TQ_CUDA_TRY(cudaMemcpyAsync(a.top_ids, m.top_ids.as<int32_t>() + at, n * sizeof(int32_t),
                              cudaMemcpyDeviceToHost, m.stream));
  TQ_CUDA_TRY(cudaMemcpyAsync(a.top_logits, m.top_values.as<float>() + at, n * sizeof(float),
                              cudaMemcpyDeviceToHost, m.stream));
  return ok_status();
}

// One pass of n <= max_batch tokens of slot `seq`. `last`: the call's arguments on its last
// pass (the greedy token and top candidates come from its last row), null before.
Status run_pass(CudaModel::Impl& m, int seq, const int32_t* tokens, int n, DeviceLogits mode,
                float* logits, const DeviceForwardArgs* last) {
  const LlamaDesc& d = m.shape;
  const cudaStream_t s = m.stream;
  const int pos0 = m.lengths[static_cast<size_t>(seq)];
  TQ_CUDA_TRY(cudaMemcpyAsync(m.tokens.as<void>(), tokens, static_cast<size_t>(n) * sizeof(int32_t),
                              cudaMemcpyHostToDevice, s));
  StepTablesParams st;
  st.table = m.block_tables.as<int32_t>() + static_cast<size_t>(seq) * m.pages_per_seq;
  st.max_blocks = m.pages_per_seq;
  st.block_tokens = m.opt.kv.block_tokens;
  st.pos0 = pos0;
  st.n = n;
  st.slots = m.slots.as<int32_t>();
  st.lengths = m.seq_lengths.as<int32_t>();
  st.tables = m.step_tables.as<int32_t>();
  st.exact = exact_rows(m, seq);
  const bool stale = m.exact_blocks > 0 && ring_stale(m, seq);
  if (stale) st.exact.exact_from = m.exact_from[static_cast<size_t>(seq)];
  TQ_RETURN_IF_ERROR(step_tables(st, s));
  TQ_RETURN_IF_ERROR(
      embed_rows(m.embd.as<__half>(), m.tokens.as<int32_t>(), n, d.dim, m.x.as<float>(), s));
  TQ_RETURN_IF_ERROR(
      rope_table(m.inv_freq.as<float>(), d.rope_dims / 2, pos0, n, m.cs.as<float2>(), s));
  TQ_RETURN_IF_ERROR(run_layers(m, {n, seq, pos0 + n, n > 1 || stale}));
  ++m.stats.eager_passes;
  m.lengths[static_cast<size_t>(seq)] = pos0 + n;
  if (!ring_stale(m, seq)) m.exact_from[static_cast<size_t>(seq)] = 0;

  if (mode != DeviceLogits::kNone) {
    const int first = mode == DeviceLogits::kAll ? 0 : n - 1;
    const int rows = n - first;
    TQ_RETURN_IF_ERROR(logits_rows(m, first, rows));
    if (logits != nullptr)
      TQ_CUDA_TRY(cudaMemcpyAsync(logits, m.logits.as<void>(),
                                  static_cast<size_t>(rows) * d.vocab_size * sizeof(float),
                                  cudaMemcpyDeviceToHost, s));
    const float* row = m.logits.as<float>() + static_cast<size_t>(rows - 1) * d.vocab_size;
    if (last != nullptr && last->greedy != nullptr) {
      TQ_RETURN_IF_ERROR(argmax_rows(row, 1, d.vocab_size, m.greedy.as<int32_t>(), s));
      TQ_CUDA_TRY(cudaMemcpyAsync(last->greedy, m.greedy.as<void>(), sizeof(int32_t),
                                  cudaMemcpyDeviceToHost, s));
    }
    if (last != nullptr && last->top_k > 0) {
      TQ_RETURN_IF_ERROR(top_k_rows(row, 1, d.vocab_size, last->top_k, m.top_ids.as<int32_t>(),
                                    m.top_values.as<float>(), s, m.top_ws.as<void>(),
                                    m.top_ws.bytes()));
      TQ_RETURN_IF_ERROR(copy_top(m, 0, last->top_k, *last));
    }
    if (last != nullptr && last->log_z != nullptr) {
      TQ_RETURN_IF_ERROR(log_partition_rows(row, 1, d.vocab_size, m.log_z.as<double>(), s));
      TQ_CUDA_TRY(cudaMemcpyAsync(last->log_z, m.log_z.as<void>(), sizeof(double),
                                  cudaMemcpyDeviceToHost, s));
    }
  }
  TQ_CUDA_TRY(cudaStreamSynchronize(s));
  return ok_status();
}

static_assert(DeviceForwardArgs::kMaxTopK == kTopRowsMax, "one bound for the top candidates");

// What a call (or batch item) asks back: a logits buffer, a greedy token, top candidates.
Status check_outputs(const DeviceForwardArgs& a, int vocab, const std::string& at) {
  if (a.logits_mode != DeviceLogits::kNone && a.logits == nullptr && a.greedy == nullptr &&
      a.top_k == 0 && a.log_z == nullptr)
    return invalid_argument(at + "logits buffer is null");
  if (a.log_z != nullptr && a.logits_mode == DeviceLogits::kNone)
    return invalid_argument(at + "log_z needs a logits mode");
  if (a.greedy != nullptr && a.logits_mode == DeviceLogits::kNone)
    return invalid_argument(at + "a greedy token needs a logits mode");
  if (a.top_k == 0) return ok_status();
  if (a.top_k < 0 || a.top_k > DeviceForwardArgs::kMaxTopK || a.top_k > vocab)
    return invalid_argument(at + "top_k " + std::to_string(a.top_k) + " outside [0, min(" +
                            std::to_string(DeviceForwardArgs::kMaxTopK) + ", vocab)]");
  if (a.top_ids == nullptr || a.top_logits == nullptr)
    return invalid_argument(at + "top candidates need both output buffers");
  if (a.logits_mode == DeviceLogits::kNone)
    return invalid_argument(at + "top candidates need a logits mode");
  return ok_status();
}

Status validate_desc(const LlamaDesc& d) {
  if (d.n_layers <= 0 || d.dim <= 0 || d.ffn_dim <= 0 || d.n_heads <= 0 || d.n_kv_heads <= 0 ||
      d.head_dim <= 0 || d.vocab_size <= 0)
    return invalid_argument("cuda model: every dimension must be positive");
  if (d.n_heads % d.n_kv_heads != 0)
    return invalid_argument("cuda model: n_heads must be a multiple of n_kv_heads");
  if (static_cast<int>(d.layers.size()) != d.n_layers)
    return invalid_argument("cuda model: layer count mismatch");
  if (d.rope_dims % 2 != 0 || d.rope_dims > d.head_dim)
    return invalid_argument("cuda model: rope_dims must be even and at most head_dim");
  if (d.head_dim % 8 != 0) return unsupported("cuda model: head_dim must be a multiple of 8");
  return ok_status();
}

}  // namespace

CudaModel::CudaModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaModel::~CudaModel() = default;

Expected<std::unique_ptr<CudaModel>> CudaModel::create(const LlamaDesc& desc,
                                                       const DeviceModelOptions& o) {
  TQ_RETURN_IF_ERROR(o.validate());
  TQ_RETURN_IF_ERROR(validate_desc(desc));
  int n_dev = 0;
  const cudaError_t derr = cudaGetDeviceCount(&n_dev);
  if (derr != cudaSuccess || n_dev == 0)
    return unsupported(std::string("no CUDA device: ") +
                       (derr != cudaSuccess ? cudaGetErrorString(derr) : "none visible"));
  if (o.device >= n_dev)
    return invalid_argument("CUDA device " + std::to_string(o.device) + " requested, " +
                            std::to_string(n_dev) + " visible");
  auto m = std::make_unique<Impl>();
  m->opt = o;
  m->device = o.device;
  TQ_CUDA_TRY(cudaSetDevice(o.device));
  cudaDeviceProp prop{};
  TQ_CUDA_TRY(cudaGetDeviceProperties(&prop, o.device));
  m->device_name = prop.name;
  m->cc_major = prop.major;
  m->cc_minor = prop.minor;
  m->num_sms = prop.multiProcessorCount;
  if (prop.major < 8)
    return unsupported("the CUDA kernels need sm_80 or newer, device is " + m->device_name);
  TQ_CUDA_TRY(cudaStreamCreateWithFlags(&m->stream, cudaStreamNonBlocking));
  TQ_CUBLAS_TRY(cublasCreate(&m->blas));
  TQ_CUBLAS_TRY(cublasSetStream(m->blas, m->stream));
  // A fixed workspace (32 MiB, cuBLAS's advice for Hopper): GEMMs captured into decode graphs
  // must not allocate.
  TQ_RETURN_IF_ERROR(m->blas_ws.alloc(size_t{32} << 20, "cuBLAS workspace"));
  TQ_CUBLAS_TRY(cublasSetWorkspace(m->blas, m->blas_ws.as<void>(), m->blas_ws.bytes()));

  m->shape = desc;
  m->shape.layers.clear();  // borrowed host views: not kept past the upload
  m->shape.token_embd = {};
  m->shape.output = {};
  m->shape.output_norm = nullptr;
  m->layers.reserve(desc.layers.size());
  TQ_RETURN_IF_ERROR(upload_weights(desc, *m));
  TQ_RETURN_IF_ERROR(allocate_cache(*m));
  if (m->exact_blocks > 0 && o.window_stream) {
    TQ_CUDA_TRY(cudaStreamCreateWithFlags(&m->side_stream, cudaStreamNonBlocking));
    TQ_CUDA_TRY(cudaEventCreateWithFlags(&m->fork_event, cudaEventDisableTiming));
    TQ_CUDA_TRY(cudaEventCreateWithFlags(&m->join_event, cudaEventDisableTiming));
  }
  return std::unique_ptr<CudaModel>(new CudaModel(std::move(m)));
}

Status CudaModel::forward(const DeviceForwardArgs& a) {
  Impl& m = *impl_;
  const LlamaDesc& d = m.shape;
  if (a.seq < 0 || a.seq >= m.opt.max_sequences)
    return invalid_argument("forward: sequence slot " + std::to_string(a.seq) + " outside [0, " +
                            std::to_string(m.opt.max_sequences) + ")");
  if (a.n < 1 || a.tokens == nullptr) return invalid_argument("forward: no tokens");
  TQ_RETURN_IF_ERROR(check_outputs(a, d.vocab_size, "forward: "));
  for (int t = 0; t < a.n; ++t)
    if (a.tokens[t] < 0 || a.tokens[t] >= d.vocab_size)
      return invalid_argument("forward: token id " + std::to_string(a.tokens[t]) + " at " +
                              std::to_string(t) + " is outside the vocab [0, " +
                              std::to_string(d.vocab_size) + ")");
  const int pos0 = m.lengths[static_cast<size_t>(a.seq)];
  if (a.n > m.opt.max_context - pos0)
    return resource_exhausted("forward: " + std::to_string(pos0) + " cached + " +
                              std::to_string(a.n) + " new tokens exceed the context of " +
                              std::to_string(m.opt.max_context));
  // One token is a decode pass of one row: the batch path, whose launches read the slot and
  // position from device buffers and so replay a captured graph (the same kernels and numbers);
  // not while a truncation's stale ring rows need the gather.
  if (a.n == 1 && !ring_stale(m, a.seq))
    return forward_batch(std::span<const DeviceForwardArgs>(&a, 1));
  TQ_CUDA_TRY(cudaSetDevice(m.device));
  for (int done = 0; done < a.n;) {
    const int n = std::min(m.opt.max_batch, a.n - done);
    const bool last = done + n == a.n;
    DeviceLogits mode = a.logits_mode;
    float* out = a.logits;
    if (mode == DeviceLogits::kAll) {
      if (out != nullptr) out += static_cast<size_t>(done) * d.vocab_size;
    } else if (!last) {
      mode = DeviceLogits::kNone;
    }
    TQ_RETURN_IF_ERROR(run_pass(m, a.seq, a.tokens + done, n, mode, out, last ? &a : nullptr));
    done += n;
  }
  return ok_status();
}

Status CudaModel::forward_batch(std::span<const DeviceForwardArgs> items) {
  Impl& m = *impl_;
  const LlamaDesc& d = m.shape;
  const int B = static_cast<int>(items.size());
  if (B < 1) return invalid_argument("forward_batch: no items");
  if (B > m.opt.max_batch)
    return invalid_argument("forward_batch: " + std::to_string(B) + " items exceed max_batch " +
                            std::to_string(m.opt.max_batch));
  std::vector<uint8_t> seen(static_cast<size_t>(m.opt.max_sequences), 0);
  for (int b = 0; b < B; ++b) {
    const DeviceForwardArgs& a = items[static_cast<size_t>(b)];
    const std::string at = "forward_batch: item " + std::to_string(b) + ": ";
    if (a.seq < 0 || a.seq >= m.opt.max_sequences)
      return invalid_argument(at + "sequence slot " + std::to_string(a.seq) + " outside [0, " +
                              std::to_string(m.opt.max_sequences) + ")");
    if (seen[static_cast<size_t>(a.seq)]++)
      return invalid_argument(at + "slot " + std::to_string(a.seq) + " appears twice");
    if (a.n != 1 || a.tokens == nullptr)
      return invalid_argument(at + "needs exactly one token (prefill goes through forward())");
    if (ring_stale(m, a.seq))
      return invalid_argument(at + "slot " + std::to_string(a.seq) +
                              " was truncated and its window is not refilled yet: its next " +
                              std::to_string(m.opt.kv.window) + " tokens go through forward()");
    if (a.tokens[0] < 0 || a.tokens[0] >= d.vocab_size)
      return invalid_argument(at + "token id " + std::to_string(a.tokens[0]) +
                              " is outside the vocab [0, " + std::to_string(d.vocab_size) + ")");
    TQ_RETURN_IF_ERROR(check_outputs(a, d.vocab_size, at));
    if (m.lengths[static_cast<size_t>(a.seq)] >= m.opt.max_context)
      return resource_exhausted(at + "slot " + std::to_string(a.seq) + " is full (" +
                                std::to_string(m.opt.max_context) + " tokens)");
  }
  TQ_CUDA_TRY(cudaSetDevice(m.device));
  const cudaStream_t s = m.stream;
  const int kv_dim = d.kv_dim();
  std::vector<int32_t> tokens(static_cast<size_t>(B));
  m.host_rows.resize(2 * static_cast<size_t>(B));
  int max_length = 0;
  bool any_logits = false;
  for (int b = 0; b < B; ++b) {
    const DeviceForwardArgs& a = items[static_cast<size_t>(b)];
    const int pos = m.lengths[static_cast<size_t>(a.seq)];
    tokens[static_cast<size_t>(b)] = a.tokens[0];
    m.host_rows[static_cast<size_t>(b)] = a.seq;
    m.host_rows[static_cast<size_t>(B + b)] = pos;
    max_length = std::max(max_length, pos + 1);
    any_logits = any_logits || a.logits_mode != DeviceLogits::kNone;
    if (pos > 0) continue;
    // An empty slot's first pass of one token: mu = 0, s = t = 1, as forward()'s lone-token
    // case.
    for (size_t l = 0; l < m.layers.size(); ++l) {
      DeviceLayer& D = m.layers[l];
      uint8_t& ready = m.mean_ready[static_cast<size_t>(a.seq) * d.n_layers + l];
      if (!(D.centered || D.value_scaled) || ready) continue;
      const size_t at = static_cast<size_t>(a.seq) * kv_dim, bytes = kv_dim * sizeof(float);
      if (D.centered) TQ_CUDA_TRY(cudaMemsetAsync(D.k_mean.as<float>() + at, 0, bytes, s));
      for (DeviceMem* sc : {&D.k_scale, &D.v_scale})
        if (!sc->empty())
          TQ_CUDA_TRY(cudaMemcpyAsync(sc->as<float>() + at, m.ones.data(), bytes,
                                      cudaMemcpyHostToDevice, s));
      ready = 1;
    }
  }
  const size_t ib = static_cast<size_t>(B) * sizeof(int32_t);
  TQ_CUDA_TRY(cudaMemcpyAsync(m.tokens.as<void>(), tokens.data(), ib, cudaMemcpyHostToDevice, s));
  TQ_CUDA_TRY(
      cudaMemcpyAsync(m.row_seqs.as<void>(), m.host_rows.data(), ib, cudaMemcpyHostToDevice, s));
  TQ_CUDA_TRY(
      cudaMemcpyAsync(m.row_pos.as<void>(), m.host_rows.data() + B, ib, cudaMemcpyHostToDevice, s));
  TQ_RETURN_IF_ERROR(run_decode(m, B, max_length, any_logits).with_context("forward_batch"));
  for (const DeviceForwardArgs& a : items) ++m.lengths[static_cast<size_t>(a.seq)];
  if (any_logits) {
    const size_t row = static_cast<size_t>(d.vocab_size);
    // The top candidates of every row, at the largest k asked (each row's first k of them are
    // its own top k), outside the graph.
    int top_k = 0;
    for (const DeviceForwardArgs& a : items)
      if (a.logits_mode != DeviceLogits::kNone) top_k = std::max(top_k, a.top_k);
    if (top_k > 0) {
      TQ_RETURN_IF_ERROR(top_k_rows(m.logits.as<float>(), B, d.vocab_size, top_k,
                                    m.top_ids.as<int32_t>(), m.top_values.as<float>(), s,
                                    m.top_ws.as<void>(), m.top_ws.bytes()));
      for (int b = 0; b < B; ++b) {
        const DeviceForwardArgs& a = items[static_cast<size_t>(b)];
        if (a.logits_mode != DeviceLogits::kNone && a.top_k > 0)
          TQ_RETURN_IF_ERROR(copy_top(m, b, top_k, a));
      }
    }
    bool any_log_z = false;
    for (const DeviceForwardArgs& a : items)
      any_log_z = any_log_z || (a.logits_mode != DeviceLogits::kNone && a.log_z != nullptr);
    if (any_log_z) {
      TQ_RETURN_IF_ERROR(
          log_partition_rows(m.logits.as<float>(), B, d.vocab_size, m.log_z.as<double>(), s));
      for (int b = 0; b < B; ++b) {
        const DeviceForwardArgs& a = items[static_cast<size_t>(b)];
        if (a.logits_mode != DeviceLogits::kNone && a.log_z != nullptr)
          TQ_CUDA_TRY(cudaMemcpyAsync(a.log_z, m.log_z.as<double>() + b, sizeof(double),
                                      cudaMemcpyDeviceToHost, s));
      }
    }
    bool any_greedy = false;
    for (int b = 0; b < B; ++b) {
      const DeviceForwardArgs& a = items[static_cast<size_t>(b)];
      if (a.logits_mode == DeviceLogits::kNone) continue;
      any_greedy = any_greedy || a.greedy != nullptr;
      if (a.logits != nullptr)
        TQ_CUDA_TRY(cudaMemcpyAsync(a.logits, m.logits.as<float>() + b * row, row * sizeof(float),
                                    cudaMemcpyDeviceToHost, s));
    }
    if (any_greedy) {
      m.host_greedy.resize(static_cast<size_t>(B));
      TQ_CUDA_TRY(cudaMemcpyAsync(m.host_greedy.data(), m.greedy.as<void>(), ib,
                                  cudaMemcpyDeviceToHost, s));
    }
    TQ_CUDA_TRY(cudaStreamSynchronize(s));
    for (int b = 0; b < B && any_greedy; ++b) {
      const DeviceForwardArgs& a = items[static_cast<size_t>(b)];
      if (a.greedy != nullptr) *a.greedy = m.host_greedy[static_cast<size_t>(b)];  // validated
    }
    return ok_status();
  }
  TQ_CUDA_TRY(cudaStreamSynchronize(s));
  return ok_status();
}

Status CudaModel::copy_sequence(int src, int dst) {
  Impl& m = *impl_;
  const int S = m.opt.max_sequences;
  if (src < 0 || src >= S || dst < 0 || dst >= S)
    return invalid_argument("copy_sequence: slots " + std::to_string(src) + " -> " +
                            std::to_string(dst) + " outside [0, " + std::to_string(S) + ")");
  if (src == dst) return ok_status();
  TQ_CUDA_TRY(cudaSetDevice(m.device));
  const int bt = m.opt.kv.block_tokens;
  const size_t len = static_cast<size_t>(m.lengths[static_cast<size_t>(src)]);
  const size_t pages = (len + bt - 1) / bt;
  const size_t pps = static_cast<size_t>(m.pages_per_seq);
  const size_t kv_dim = static_cast<size_t>(m.shape.kv_dim());
  const size_t L = m.layers.size();
  for (DeviceLayer& D : m.layers) {
    // Slot s owns pool blocks [s * pps, (s + 1) * pps) (allocate_cache): one copy per pool.
    for (const PagedPool* p : {&D.k, &D.v}) {
      const size_t stride = p->block_stride_or_default();
      TQ_CUDA_TRY(cudaMemcpyAsync(p->data + dst * pps * stride, p->data + src * pps * stride,
                                  pages * stride, cudaMemcpyDeviceToDevice, m.stream));
    }
    if (m.exact_blocks > 0)
      for (const PagedPool* p : {&D.ek, &D.ev}) {
        const size_t bytes = static_cast<size_t>(m.exact_blocks) * p->block_stride_or_default();
        TQ_CUDA_TRY(cudaMemcpyAsync(p->data + dst * bytes, p->data + src * bytes, bytes,
                                    cudaMemcpyDeviceToDevice, m.stream));
      }
    for (DeviceMem* st : {&D.k_mean, &D.k_scale, &D.v_scale})
      if (!st->empty())
        TQ_CUDA_TRY(cudaMemcpyAsync(st->as<float>() + dst * kv_dim, st->as<float>() + src * kv_dim,
                                    kv_dim * sizeof(float), cudaMemcpyDeviceToDevice, m.stream));
  }
  TQ_CUDA_TRY(cudaStreamSynchronize(m.stream));
  m.lengths[static_cast<size_t>(dst)] = static_cast<int>(len);
  m.exact_from[static_cast<size_t>(dst)] = m.exact_from[static_cast<size_t>(src)];
  std::copy(m.mean_ready.begin() + static_cast<std::ptrdiff_t>(src * L),
            m.mean_ready.begin() + static_cast<std::ptrdiff_t>((src + 1) * L),
            m.mean_ready.begin() + static_cast<std::ptrdiff_t>(dst * L));
  return ok_status();
}

int CudaModel::length(int seq) const {
  if (seq < 0 || seq >= impl_->opt.max_sequences) return 0;
  return impl_->lengths[static_cast<size_t>(seq)];
}

int CudaModel::refill_until(int seq) const {
  if (seq < 0 || seq >= impl_->opt.max_sequences || !ring_stale(*impl_, seq)) return 0;
  return impl_->exact_from[static_cast<size_t>(seq)] + impl_->opt.kv.window;
}

Status CudaModel::truncate(int seq, int length) {
  const int current =
      seq >= 0 && seq < impl_->opt.max_sequences ? impl_->lengths[static_cast<size_t>(seq)] : 0;
  TQ_RETURN_IF_ERROR(impl_->opt.check_truncate(seq, current, length));
  if (length == 0) return reset(seq);
  // Positions past `length` are rewritten as they are appended again; the pages, sink rows and
  // the first pass's key means and scales stay. The ring keeps the last window rows before the
  // cut no more: positions below it are read compressed until it is refilled.
  Impl& m = *impl_;
  int& from = m.exact_from[static_cast<size_t>(seq)];
  if (m.opt.kv.window > 0 && length < current && length > m.opt.kv.sinks)
    from = from > 0 ? std::min(from, length) : length;
  m.lengths[static_cast<size_t>(seq)] = length;
  if (!ring_stale(m, seq)) from = 0;
  return ok_status();
}

Status CudaModel::reset(int seq) {
  if (seq < 0 || seq >= impl_->opt.max_sequences)
    return invalid_argument("reset: sequence slot " + std::to_string(seq) + " out of range");
  impl_->lengths[static_cast<size_t>(seq)] = 0;
  impl_->exact_from[static_cast<size_t>(seq)] = 0;
  const size_t L = impl_->layers.size();
  std::fill(impl_->mean_ready.begin() + static_cast<std::ptrdiff_t>(seq * L),
            impl_->mean_ready.begin() + static_cast<std::ptrdiff_t>((seq + 1) * L), 0);
  return ok_status();
}

const DeviceModelOptions& CudaModel::options() const { return impl_->opt; }
DeviceModelStats CudaModel::stats() const { return impl_->stats; }
size_t CudaModel::weight_bytes() const { return impl_->weight_bytes; }
size_t CudaModel::kv_bytes() const { return impl_->kv_bytes; }

std::string CudaModel::describe() const {
  const Impl& m = *impl_;
  char buf[320];
  char weights[96] = "f16";
  if (m.opt.weights == DeviceWeights::kQuantized)
    std::snprintf(weights, sizeof weights, "quantized (%d of %d matrices as blocks)",
                  m.quant_matrices, m.matrices);
  std::snprintf(buf, sizeof buf, "%s (sm_%d%d, %d SMs): weights %s %.2f GiB, kv pools %.2f GiB",
                m.device_name.c_str(), m.cc_major, m.cc_minor, m.num_sms, weights,
                gib(m.weight_bytes), gib(m.kv_bytes));
  return std::string(buf) + " (" + m.opt.to_string() + ")";
}

}  // namespace tq::backend::cuda

namespace tq::backend {
// The backend-level factory (device_model.h) is the CUDA model in CUDA builds.
Expected<std::unique_ptr<DeviceModel>> create_cuda_model(const LlamaDesc& desc,
                                                         const DeviceModelOptions& options) {
  TQ_ASSIGN_OR_RETURN(std::unique_ptr<cuda::CudaModel> m, cuda::CudaModel::create(desc, options));
  return std::unique_ptr<DeviceModel>(std::move(m));
}
}  // namespace tq::backend
