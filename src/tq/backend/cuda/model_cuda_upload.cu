// CudaModel's one-time setup: weights dequantized to f16 on the host and uploaded, the KV pools
// with their codec tables, block tables and activation buffers (see model_cuda_impl.cuh).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "tq/backend/cuda/cuda_common.cuh"
#include "tq/backend/cuda/model_cuda_impl.cuh"
#include "tq/backend/cuda/top_k.h"
#include "tq/core/fp16.h"
#include "tq/core/thread_pool.h"
#include "tq/quant/codebook.h"
#include "tq/quant/ggml_types.h"
#include "tq/quant/weight_dequant.h"

namespace tq::backend::cuda {
namespace {

// Host rows converted per copy: bounds the staging buffer (32 MiB of f16).
constexpr size_t kStagingElems = size_t{16} << 20;
// The dequant scratch's cap for the output matrix (vocab rows), dequantized in row chunks.
constexpr size_t kOutputScratchElems = size_t{32} << 20;

Status check_view(const cpu::WeightView& w, int64_t rows, int64_t cols, const char* what) {
  if (w.data == nullptr || w.rows != rows || w.cols != cols)
    return invalid_argument(std::string("upload: ") + what + " is [" + std::to_string(w.rows) +
                            "][" + std::to_string(w.cols) + "], expected [" + std::to_string(rows) +
                            "][" + std::to_string(cols) + "]");
  return ok_status();
}

class Uploader {
 public:
  Uploader() : pool_(default_thread_count()) {}

  // Writes w ([rows][cols] in any dequantizable GGUF type) as f16 rows at dst.
  Status matrix(const cpu::WeightView& w, int64_t rows, int64_t cols, __half* dst,
                const char* what) {
    TQ_RETURN_IF_ERROR(check_view(w, rows, cols, what));
    if (!quant::can_dequantize(w.type))
      return unsupported(std::string("upload: cannot dequantize ") + what);
    const size_t row_bytes = quant::ggml_row_bytes(w.type, static_cast<uint64_t>(cols));
    const int64_t chunk_rows = std::max<int64_t>(1, static_cast<int64_t>(kStagingElems / cols));
    staging_.resize(static_cast<size_t>(std::min(chunk_rows, rows) * cols));
    for (int64_t r0 = 0; r0 < rows; r0 += chunk_rows) {
      const int64_t nr = std::min(chunk_rows, rows - r0);
      std::atomic<bool> ok{true};
      pool_.parallel_for(static_cast<size_t>(nr), 16, [&](size_t b, size_t e) {
        std::vector<float> row(static_cast<size_t>(cols));
        for (size_t r = b; r < e; ++r) {
          const uint8_t* src =
              w.data + row_bytes * static_cast<size_t>(r0 + static_cast<int64_t>(r));
          if (!quant::dequantize_row_ref(w.type, src, row.data(), cols).ok()) ok.store(false);
          uint16_t* out = staging_.data() + r * static_cast<size_t>(cols);
          for (int64_t c = 0; c < cols; ++c) out[c] = f32_to_f16(row[static_cast<size_t>(c)]);
        }
      });
      if (!ok.load()) return corrupt(std::string("upload: dequantizing ") + what + " failed");
      TQ_CUDA_TRY(cudaMemcpy(dst + r0 * cols, staging_.data(),
                             static_cast<size_t>(nr * cols) * sizeof(uint16_t),
                             cudaMemcpyHostToDevice));
    }
    return ok_status();
  }

  // Writes w ([rows][cols] of Q4_0/Q8_0 blocks, format f) as the split layout's two parts at
  // qs (device, rows * nb blocks of quants) and scales (device, rows * nb f16).
  Status blocks(const cpu::WeightView& w, int64_t rows, int64_t cols, WeightFormat f, uint8_t* qs,
                uint16_t* scales, const char* what) {
    TQ_RETURN_IF_ERROR(check_view(w, rows, cols, what));
    const size_t row_bytes = quant::ggml_row_bytes(w.type, static_cast<uint64_t>(cols));
    const size_t nb = static_cast<size_t>(cols / 32);
    const size_t qb = static_cast<size_t>(quant_qs_bytes(f));
    if (row_bytes != nb * (qb + sizeof(uint16_t)))
      return internal_error(std::string("upload: ") + what + ": unexpected block size");
    const int64_t chunk_rows =
        std::max<int64_t>(1, static_cast<int64_t>(2 * kStagingElems / row_bytes));
    const size_t chunk = static_cast<size_t>(std::min(chunk_rows, rows));
    block_qs_.resize(chunk * nb * qb);
    block_scales_.resize(chunk * nb);
    for (int64_t r0 = 0; r0 < rows; r0 += chunk_rows) {
      const size_t nr = static_cast<size_t>(std::min(chunk_rows, rows - r0));
      const uint8_t* src = w.data + row_bytes * static_cast<size_t>(r0);
      pool_.parallel_for(nr, 64, [&](size_t b, size_t e) {
        split_blocks(f, src + row_bytes * b, static_cast<int64_t>(e - b), cols,
                     block_qs_.data() + b * nb * qb, block_scales_.data() + b * nb);
      });
      const size_t at = static_cast<size_t>(r0) * nb;
      TQ_CUDA_TRY(cudaMemcpy(qs + at * qb, block_qs_.data(), nr * nb * qb, cudaMemcpyHostToDevice));
      TQ_CUDA_TRY(cudaMemcpy(scales + at, block_scales_.data(), nr * nb * sizeof(uint16_t),
                             cudaMemcpyHostToDevice));
    }
    return ok_status();
  }

 private:
  ThreadPool pool_;
  std::vector<uint16_t> staging_;
  std::vector<uint8_t> block_qs_;
  std::vector<uint16_t> block_scales_;
};

// One source matrix of a (possibly fused) device matrix: its rows are stacked in order.
struct Part {
  const cpu::WeightView* w;
  int64_t rows;
  const char* what;
};

WeightFormat block_format(quant::GgmlType t) {
  if (t == quant::GgmlType::kQ4_0) return WeightFormat::kQ4_0;
  if (t == quant::GgmlType::kQ8_0) return WeightFormat::kQ8_0;
  return WeightFormat::kF16;
}

// Blocks when asked and every part is the same Q4_0/Q8_0 type with whole blocks per row (a
// fused matrix is one launch, so one format); f16 otherwise.
WeightFormat format_for(std::initializer_list<Part> parts, int64_t cols, DeviceWeights mode) {
  if (mode != DeviceWeights::kQuantized || cols % 32 != 0) return WeightFormat::kF16;
  const WeightFormat f = block_format(parts.begin()->w->type);
  for (const Part& p : parts)
    if (block_format(p.w->type) != f) return WeightFormat::kF16;
  return f;
}

// Allocates `out` for the parts stacked ([sum rows][cols]) and uploads them in its format.
Status upload_matrix(Uploader& up, CudaModel::Impl& m, DeviceMatrix& out,
                     std::initializer_list<Part> parts, int64_t cols, const char* what) {
  int64_t rows = 0;
  for (const Part& p : parts) rows += p.rows;
  out.format = format_for(parts, cols, m.opt.weights);
  out.rows = static_cast<int>(rows);
  out.cols = static_cast<int>(cols);
  TQ_RETURN_IF_ERROR(out.mem.alloc(weight_matrix_bytes(out.format, rows, cols), what));
  const size_t nb = static_cast<size_t>(cols / 32);
  const size_t qb = static_cast<size_t>(quant_qs_bytes(out.format));
  uint8_t* qs = out.mem.as<uint8_t>();
  uint16_t* scales = reinterpret_cast<uint16_t*>(qs + static_cast<size_t>(rows) * nb * qb);
  int64_t r0 = 0;
  for (const Part& p : parts) {
    if (out.format == WeightFormat::kF16) {
      TQ_RETURN_IF_ERROR(up.matrix(*p.w, p.rows, cols, out.mem.as<__half>() + r0 * cols, p.what));
    } else {
      const size_t at = static_cast<size_t>(r0) * nb;
      TQ_RETURN_IF_ERROR(
          up.blocks(*p.w, p.rows, cols, out.format, qs + at * qb, scales + at, p.what));
    }
    r0 += p.rows;
  }
  ++m.matrices;
  m.quant_matrices += out.format != WeightFormat::kF16;
  return ok_status();
}

Status upload_floats(DeviceMem& m, const std::vector<float>& v, const char* what) {
  TQ_RETURN_IF_ERROR(m.alloc(v.size() * sizeof(float), what));
  TQ_CUDA_TRY(cudaMemcpy(m.as<void>(), v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice));
  return ok_status();
}

Status upload_vector(DeviceMem& m, const float* v, int n, const char* what) {
  if (v == nullptr) return invalid_argument(std::string("upload: ") + what + " is missing");
  return upload_floats(m, std::vector<float>(v, v + n), what);
}

size_t half_bytes(int64_t rows, int64_t cols) {
  return static_cast<size_t>(rows * cols) * sizeof(__half);
}

}  // namespace

DeviceMem& DeviceMem::operator=(DeviceMem&& o) noexcept {
  if (this != &o) {
    if (p_) cudaFree(p_);
    p_ = o.p_;
    bytes_ = o.bytes_;
    o.p_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

DeviceMem::~DeviceMem() {
  if (p_) cudaFree(p_);
}

Status DeviceMem::alloc(size_t bytes, const char* what) {
  if (p_) cudaFree(p_);
  p_ = nullptr;
  bytes_ = 0;
  const cudaError_t err = cudaMalloc(&p_, std::max<size_t>(bytes, 1));
  if (err != cudaSuccess) {
    p_ = nullptr;
    return resource_exhausted(std::string("cudaMalloc of ") + std::to_string(bytes) +
                              " bytes for " + what + " failed: " + cudaGetErrorString(err));
  }
  bytes_ = bytes;
  return ok_status();
}

Status cublas_status(cublasStatus_t st, const char* what) {
  if (st == CUBLAS_STATUS_SUCCESS) return ok_status();
  return internal_error(std::string(what) + ": " + cublasGetStatusName(st) + " (" +
                        cublasGetStatusString(st) + ")");
}

Status upload_weights(const LlamaDesc& d, CudaModel::Impl& m) {
  const int64_t dim = d.dim, q_dim = d.q_dim(), kv_dim = d.kv_dim(), ffn = d.ffn_dim,
                vocab = d.vocab_size;
  Uploader up;
  size_t bytes = 0;
  m.matrices = m.quant_matrices = 0;
  size_t scratch_elems = 0;  // the largest quantized layer matrix
  const auto note_scratch = [&](const DeviceMatrix& w, size_t cap) {
    if (w.format == WeightFormat::kF16) return;
    const size_t elems = static_cast<size_t>(w.rows) * static_cast<size_t>(w.cols);
    scratch_elems = std::max(scratch_elems, std::max(std::min(elems, cap), size_t(w.cols)));
  };
  TQ_RETURN_IF_ERROR(m.embd.alloc(half_bytes(vocab, dim), "token_embd"));
  TQ_RETURN_IF_ERROR(up.matrix(d.token_embd, vocab, dim, m.embd.as<__half>(), "token_embd"));
  bytes += m.embd.bytes();
  // Tied output (same GGUF bytes): the logits GEMM reads the embedding table, unless the table
  // stays blocks for the logits (the gather above needs f16 rows).
  const bool tied = d.output.data == d.token_embd.data;
  if (!tied ||
      format_for({{&d.output, vocab, "output"}}, dim, m.opt.weights) != WeightFormat::kF16) {
    TQ_RETURN_IF_ERROR(
        upload_matrix(up, m, m.out_w, {{&d.output, vocab, "output"}}, dim, "output"));
    bytes += m.out_w.bytes();
    note_scratch(m.out_w, kOutputScratchElems);
  }
  TQ_RETURN_IF_ERROR(upload_vector(m.out_norm, d.output_norm, d.dim, "output_norm"));
  if (static_cast<int>(d.rope_inv_freq.size()) != d.rope_dims / 2)
    return invalid_argument("upload: rope_inv_freq needs rope_dims / 2 entries");
  TQ_RETURN_IF_ERROR(upload_floats(m.inv_freq, d.rope_inv_freq, "rope inv_freq"));

  m.layers.resize(d.layers.size());
  for (size_t l = 0; l < d.layers.size(); ++l) {
    const LlamaLayerDesc& L = d.layers[l];
    DeviceLayer& D = m.layers[l];
    const std::string at = "layer " + std::to_string(l);
    TQ_RETURN_IF_ERROR(
        upload_vector(D.attn_norm, L.attn_norm, d.dim, "attn_norm").with_context(at));
    TQ_RETURN_IF_ERROR(upload_vector(D.ffn_norm, L.ffn_norm, d.dim, "ffn_norm").with_context(at));
    TQ_RETURN_IF_ERROR(
        upload_matrix(
            up, m, D.w_qkv,
            {{&L.wq, q_dim, "attn_q"}, {&L.wk, kv_dim, "attn_k"}, {&L.wv, kv_dim, "attn_v"}}, dim,
            "wqkv")
            .with_context(at));
    if (L.bq || L.bk || L.bv) {
      std::vector<float> b(static_cast<size_t>(q_dim + 2 * kv_dim), 0.0f);
      if (L.bq) std::copy(L.bq, L.bq + q_dim, b.begin());
      if (L.bk) std::copy(L.bk, L.bk + kv_dim, b.begin() + q_dim);
      if (L.bv) std::copy(L.bv, L.bv + kv_dim, b.begin() + q_dim + kv_dim);
      TQ_RETURN_IF_ERROR(upload_floats(D.b_qkv, b, "qkv bias"));
    }
    TQ_RETURN_IF_ERROR(
        upload_matrix(up, m, D.w_o, {{&L.wo, dim, "attn_output"}}, q_dim, "wo").with_context(at));
    TQ_RETURN_IF_ERROR(upload_matrix(up, m, D.w_gate_up,
                                     {{&L.w_gate, ffn, "ffn_gate"}, {&L.w_up, ffn, "ffn_up"}}, dim,
                                     "w_gate_up")
                           .with_context(at));
    TQ_RETURN_IF_ERROR(upload_matrix(up, m, D.w_down, {{&L.w_down, dim, "ffn_down"}}, ffn, "w_down")
                           .with_context(at));
    for (const DeviceMatrix* w : {&D.w_qkv, &D.w_o, &D.w_gate_up, &D.w_down})
      note_scratch(*w, SIZE_MAX);
    bytes += D.attn_norm.bytes() + D.ffn_norm.bytes() + D.w_qkv.bytes() + D.b_qkv.bytes() +
             D.w_o.bytes() + D.w_gate_up.bytes() + D.w_down.bytes();
  }
  m.weight_bytes = bytes + m.out_norm.bytes();
  // cuBLAS needs f16 rows of a quantized matrix only for passes longer than the GEMV takes.
  if (scratch_elems > 0 && (m.opt.max_batch > kGemvMaxTokens || m.opt.cublas_gemv))
    TQ_RETURN_IF_ERROR(
        m.dequant_scratch.alloc(scratch_elems * sizeof(__half), "dequantized weight scratch"));
  return ok_status();
}

namespace {

// `pages` zeroed pool blocks for pool p (its format and shape set), counted in m.kv_bytes.
Status allocate_pool(CudaModel::Impl& m, PagedPool& p, DeviceMem& mem, size_t pages,
                     const std::string& what) {
  const size_t bytes = pages * p.block_stride_or_default();
  TQ_RETURN_IF_ERROR(mem.alloc(bytes, what.c_str()));
  TQ_CUDA_TRY(cudaMemset(mem.as<void>(), 0, bytes));
  p.data = mem.as<uint8_t>();
  TQ_RETURN_IF_ERROR(p.validate().with_context(what));
  m.kv_bytes += bytes;
  return ok_status();
}

// The block table of pages [0, n) in order: slot s owns a fixed range of them, read by the
// kernels through the same indirection a shared pool would use.
Status upload_identity_table(DeviceMem& table, size_t n, const char* what) {
  std::vector<int32_t> ids(n);
  for (size_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>(i);
  TQ_RETURN_IF_ERROR(table.alloc(n * sizeof(int32_t), what));
  TQ_CUDA_TRY(
      cudaMemcpy(table.as<void>(), ids.data(), n * sizeof(int32_t), cudaMemcpyHostToDevice));
  return ok_status();
}

}  // namespace

Status allocate_cache(CudaModel::Impl& m) {
  const LlamaDesc& d = m.shape;
  const kv::KvConfig& kc = m.opt.kv;
  TQ_RETURN_IF_ERROR(kc.validate_for(d.n_layers, d.head_dim));
  const int bt = kc.block_tokens;
  m.pages_per_seq = (m.opt.max_context + bt - 1) / bt;
  const size_t n_pages = static_cast<size_t>(m.pages_per_seq) * m.opt.max_sequences;
  quant::CodebookCache books;
  m.kv_bytes = 0;
  const size_t kv_dim = static_cast<size_t>(d.kv_dim());
  if (kc.value_scaling && !m.opt.value_weights.empty() &&
      m.opt.value_weights.size() != kv_dim * d.n_layers)
    return invalid_argument(
        "value weights: " + std::to_string(m.opt.value_weights.size()) +
        " floats, expected n_layers * kv_dim = " + std::to_string(kv_dim * d.n_layers));
  for (int l = 0; l < d.n_layers; ++l) {
    DeviceLayer& D = m.layers[static_cast<size_t>(l)];
    D.formats = kc.formats_for(l, d.n_layers);
    if (!decode_attention_supported(D.formats.k, D.formats.v, d.head_dim))
      return unsupported("layer " + std::to_string(l) + ": no CUDA attention instance for K " +
                         D.formats.k.name() + ", V " + D.formats.v.name() + " at head dim " +
                         std::to_string(d.head_dim));
    D.centered = kc.centers_keys(l, d.n_layers);
    D.key_scaled = kc.scales_keys(l, d.n_layers);
    D.value_scaled = kc.scales_values(l, d.n_layers);
    const size_t stat_bytes = static_cast<size_t>(m.opt.max_sequences) * kv_dim * sizeof(float);
    if (D.centered) {
      TQ_RETURN_IF_ERROR(D.k_mean.alloc(stat_bytes, "key means"));
      TQ_CUDA_TRY(cudaMemset(D.k_mean.as<void>(), 0, stat_bytes));
    }
    if (D.key_scaled) TQ_RETURN_IF_ERROR(D.k_scale.alloc(stat_bytes, "key scales"));
    if (D.value_scaled) {
      TQ_RETURN_IF_ERROR(D.v_scale.alloc(stat_bytes, "value scales"));
      if (!m.opt.value_weights.empty()) {
        TQ_RETURN_IF_ERROR(upload_floats(
            D.v_weights,
            std::vector<float>(
                m.opt.value_weights.begin() + static_cast<std::ptrdiff_t>(l * kv_dim),
                m.opt.value_weights.begin() + static_cast<std::ptrdiff_t>((l + 1) * kv_dim)),
            "value weights"));
      }
    }
    const uint64_t seed = kc.layer_seed(l);  // the CPU codec's seed: the same rotation and codebook
    TQ_ASSIGN_OR_RETURN(D.k_tables,
                        DeviceCodecTables::create(D.formats.k, d.head_dim, seed, books));
    TQ_ASSIGN_OR_RETURN(D.v_tables,
                        DeviceCodecTables::create(D.formats.v, d.head_dim, seed, books));
    for (const bool value : {false, true}) {
      PagedPool& p = value ? D.v : D.k;
      DeviceMem& mem = value ? D.v_mem : D.k_mem;
      p.format = value ? D.formats.v : D.formats.k;
      p.head_dim = d.head_dim;
      p.block_tokens = bt;
      p.n_kv_heads = d.n_kv_heads;
      p.norm_correction = kc.norm_correction;
      p.tables = value ? D.v_tables.view() : D.k_tables.view();
      TQ_RETURN_IF_ERROR(allocate_pool(
          m, p, mem, n_pages, "layer " + std::to_string(l) + (value ? " V pool" : " K pool")));
    }
  }
  // Sinks and window: f16 rows of their own (ops_cuda.cuh ExactRowsParams), with the scratch
  // pages of a multi-row pass's gather after the slots' pages.
  const int exact_rows = kc.sinks + kc.window;
  m.exact_blocks = exact_rows > 0 ? (exact_rows + bt - 1) / bt : 0;
  if (m.exact_blocks > 0) {
    if (!decode_attention_supported(quant::kFormatF16, quant::kFormatF16, d.head_dim))
      return unsupported("no CUDA attention instance for the f16 sinks and window at head dim " +
                         std::to_string(d.head_dim));
    const size_t e_pages = static_cast<size_t>(m.exact_blocks) * (m.opt.max_sequences + 1);
    for (int l = 0; l < d.n_layers; ++l) {
      DeviceLayer& D = m.layers[static_cast<size_t>(l)];
      for (const bool value : {false, true}) {
        PagedPool& p = value ? D.ev : D.ek;
        DeviceMem& mem = value ? D.ev_mem : D.ek_mem;
        p.format = quant::kFormatF16;
        p.head_dim = d.head_dim;
        p.block_tokens = bt;
        p.n_kv_heads = d.n_kv_heads;
        TQ_RETURN_IF_ERROR(allocate_pool(
            m, p, mem, e_pages,
            "layer " + std::to_string(l) + (value ? " V exact rows" : " K exact rows")));
      }
    }
    TQ_RETURN_IF_ERROR(upload_identity_table(m.exact_tables, e_pages, "exact row tables"));
  }
  // Slot s owns pages [s * pages_per_seq, (s + 1) * pages_per_seq).
  TQ_RETURN_IF_ERROR(upload_identity_table(m.block_tables, n_pages, "block tables"));
  m.lengths.assign(static_cast<size_t>(m.opt.max_sequences), 0);
  m.mean_ready.assign(static_cast<size_t>(m.opt.max_sequences) * d.n_layers, 0);
  m.exact_from.assign(static_cast<size_t>(m.opt.max_sequences), 0);
  m.ones.assign(kv_dim, 1.0f);

  const size_t B = static_cast<size_t>(m.opt.max_batch);
  const size_t dim = d.dim, q_dim = d.q_dim(), ffn = d.ffn_dim;
  TQ_RETURN_IF_ERROR(m.tokens.alloc(B * sizeof(int32_t), "tokens"));
  TQ_RETURN_IF_ERROR(m.x.alloc(B * dim * sizeof(float), "x"));
  TQ_RETURN_IF_ERROR(m.xn.alloc(B * std::max(dim, std::max(q_dim, ffn)) * sizeof(__half), "xn"));
  TQ_RETURN_IF_ERROR(m.qkv.alloc(B * (q_dim + 2 * kv_dim) * sizeof(float), "qkv"));
  TQ_RETURN_IF_ERROR(m.q.alloc(B * q_dim * sizeof(float), "q"));
  TQ_RETURN_IF_ERROR(m.k.alloc(B * kv_dim * sizeof(float), "k"));
  TQ_RETURN_IF_ERROR(m.v.alloc(B * kv_dim * sizeof(float), "v"));
  TQ_RETURN_IF_ERROR(m.gu.alloc(B * 2 * ffn * sizeof(float), "gate_up"));
  TQ_RETURN_IF_ERROR(m.h.alloc(B * ffn * sizeof(__half), "h"));
  const size_t widest = std::max(dim, std::max(q_dim, ffn));
  if (m.opt.weights == DeviceWeights::kQuantized && m.opt.int8_activations && widest % 32 == 0) {
    const size_t rows = std::min<size_t>(B, kGemvMaxTokens);
    TQ_RETURN_IF_ERROR(m.q8.alloc(rows * widest, "8-bit activations"));
    TQ_RETURN_IF_ERROR(m.q8_scales.alloc(rows * widest / 32 * sizeof(Q8Scale), "8-bit scales"));
  }
  TQ_RETURN_IF_ERROR(
      m.logits.alloc(B * static_cast<size_t>(d.vocab_size) * sizeof(float), "logits"));
  TQ_RETURN_IF_ERROR(
      m.cs.alloc(B * static_cast<size_t>(std::max(d.rope_dims / 2, 1)) * sizeof(float2), "rope"));
  TQ_RETURN_IF_ERROR(m.slots.alloc(B * sizeof(int32_t), "slots"));
  TQ_RETURN_IF_ERROR(m.seq_lengths.alloc(B * sizeof(int32_t), "lengths"));
  if (m.opt.merge_in_attention) {  // (every attention call leaves them zero)
    const size_t bytes = B * static_cast<size_t>(d.n_kv_heads) * sizeof(int32_t);
    TQ_RETURN_IF_ERROR(m.merge_counters.alloc(bytes, "attention merge counters"));
    TQ_CUDA_TRY(cudaMemset(m.merge_counters.as<void>(), 0, bytes));
  }
  TQ_RETURN_IF_ERROR(m.step_tables.alloc(B * m.pages_per_seq * sizeof(int32_t), "step tables"));
  TQ_RETURN_IF_ERROR(m.row_seqs.alloc(B * sizeof(int32_t), "row slots"));
  TQ_RETURN_IF_ERROR(m.row_pos.alloc(B * sizeof(int32_t), "row positions"));
  TQ_RETURN_IF_ERROR(m.greedy.alloc(B * sizeof(int32_t), "greedy tokens"));
  TQ_RETURN_IF_ERROR(m.log_z.alloc(B * sizeof(double), "log partitions"));
  TQ_RETURN_IF_ERROR(
      m.top_ids.alloc(B * DeviceForwardArgs::kMaxTopK * sizeof(int32_t), "top candidates"));
  TQ_RETURN_IF_ERROR(
      m.top_values.alloc(B * DeviceForwardArgs::kMaxTopK * sizeof(float), "top candidates"));
  // Rows asking for candidates: one per slot at most (forward_batch's items are distinct slots).
  if (const size_t ws = top_k_workspace_bytes(std::min(m.opt.max_sequences, m.opt.max_batch),
                                              d.vocab_size, DeviceForwardArgs::kMaxTopK);
      ws > 0)
    TQ_RETURN_IF_ERROR(m.top_ws.alloc(ws, "top candidates workspace"));
  if (m.exact_blocks > 0) {
    TQ_RETURN_IF_ERROR(m.exact_slots.alloc(B * sizeof(int32_t), "exact row slots"));
    TQ_RETURN_IF_ERROR(m.exact_lengths.alloc(B * sizeof(int32_t), "exact row lengths"));
    TQ_RETURN_IF_ERROR(
        m.exact_step_tables.alloc(B * m.exact_blocks * sizeof(int32_t), "exact row step tables"));
    const size_t rows = static_cast<size_t>(exact_rows);
    TQ_RETURN_IF_ERROR(m.gather_src.alloc(rows * sizeof(int32_t), "exact row gather"));
    TQ_RETURN_IF_ERROR(m.gather_dst.alloc(rows * sizeof(int32_t), "exact row gather"));
  }
  return ok_status();
}

}  // namespace tq::backend::cuda
