// The device state of a CudaModel (model_cuda.h), shared by its two translation units:
// model_cuda_upload.cu (weights, KV pools) and model_cuda.cu (the forward pass). CUDA-only.
#pragma once

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "tq/backend/cuda/device_tables.h"
#include "tq/backend/cuda/gemv_q.h"
#include "tq/backend/cuda/kv_cuda.h"
#include "tq/backend/cuda/model_cuda.h"
#include "tq/kv/kv_config.h"
#include "tq/quant/codec.h"

namespace tq::backend::cuda {

// One device allocation, freed on destruction.
class DeviceMem {
 public:
  DeviceMem() = default;
  DeviceMem(const DeviceMem&) = delete;
  DeviceMem& operator=(const DeviceMem&) = delete;
  DeviceMem(DeviceMem&& o) noexcept : p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr, o.bytes_ = 0; }
  DeviceMem& operator=(DeviceMem&& o) noexcept;
  ~DeviceMem();

  // Frees what it held and allocates `bytes` (at least 1), uninitialised.
  [[nodiscard]] Status alloc(size_t bytes, const char* what);
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }
  size_t bytes() const { return bytes_; }
  bool empty() const { return p_ == nullptr; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

Status cublas_status(cublasStatus_t st, const char* what);

// A weight matrix on the device: f16 rows, or Q4_0/Q8_0 blocks in gemv_q.h's split layout
// (DeviceWeights::kQuantized).
struct DeviceMatrix {
  DeviceMem mem;
  WeightFormat format = WeightFormat::kF16;
  int rows = 0, cols = 0;

  bool empty() const { return mem.empty(); }
  size_t bytes() const { return mem.bytes(); }
  MatrixView view() const { return {format, mem.as<void>(), rows, cols}; }
};

struct DeviceLayer {
  DeviceMem attn_norm;     // f32 [dim]
  DeviceMem ffn_norm;      // f32 [dim]
  DeviceMatrix w_qkv;      // [q_dim + 2 kv_dim][dim]: wq | wk | wv rows, one GEMM
  DeviceMem b_qkv;         // f32 [q_dim + 2 kv_dim], empty when the model has no biases
  DeviceMatrix w_o;        // [dim][q_dim]
  DeviceMatrix w_gate_up;  // [2 ffn][dim]: gate | up rows, one GEMM
  DeviceMatrix w_down;     // [dim][ffn]
  kv::LayerFormats formats;
  DeviceCodecTables k_tables, v_tables;
  bool centered = false;      // stores k - mu (KvConfig::centers_keys)
  bool key_scaled = false;    // stores (k - mu) / s, queries times s (KvConfig::scales_keys)
  bool value_scaled = false;  // stores v / t, outputs times t (KvConfig::scales_values)
  DeviceMem k_mean;           // f32 [max_sequences][kv_dim]: mu of each slot, when centered
  DeviceMem k_scale;          // f32 [max_sequences][kv_dim]: s of each slot, when key_scaled
  DeviceMem v_scale;          // f32 [max_sequences][kv_dim]: t of each slot, when value_scaled
  DeviceMem v_weights;        // f32 [kv_dim]: W_o's column norms (value scaling), may be empty
  DeviceMem k_mem, v_mem;     // [page][kv_head][codec block]
  PagedPool k, v;             // views of k_mem / v_mem with the tables
  // The sinks and the window (KvConfig::sinks / window) in f16: per slot, exact_blocks pages of
  // [sinks | ring of window rows], then exact_blocks scratch pages (ops_cuda.cuh ExactRowsParams).
  DeviceMem ek_mem, ev_mem;
  PagedPool ek, ev;  // data == nullptr when sinks + window == 0
};

struct CudaModel::Impl {
  ~Impl();

  LlamaDesc shape;  // the numbers and inv_freq only: the weight views are dropped after upload
  DeviceModelOptions opt;
  int device = 0;
  std::string device_name;
  int cc_major = 0, cc_minor = 0;
  int num_sms = 0;
  cudaStream_t stream = nullptr;
  // The window segment's attention beside the main one (DecodeAttentionParams::side_stream):
  // created with the exact rows (sinks + window > 0) and DeviceModelOptions::window_stream.
  cudaStream_t side_stream = nullptr;
  cudaEvent_t fork_event = nullptr, join_event = nullptr;
  cublasHandle_t blas = nullptr;

  DeviceMem embd;      // f16 [vocab][dim]
  DeviceMatrix out_w;  // [vocab][dim]; empty when tied to embd and kept f16 (then embd is read)
  DeviceMem out_norm;  // f32 [dim]
  DeviceMem inv_freq;  // f32 [rope_dims/2]
  std::vector<DeviceLayer> layers;
  size_t weight_bytes = 0;
  int quant_matrices = 0, matrices = 0;  // uploaded as Q4_0/Q8_0 blocks, of all
  // f16 rows of a quantized matrix for cuBLAS (passes of more than kGemvMaxTokens rows, or
  // cublas_gemv): the largest layer matrix, so each GEMM dequantizes once; empty when unused.
  DeviceMem dequant_scratch;
  size_t kv_bytes = 0;

  int pages_per_seq = 0;
  DeviceMem block_tables;    // int32 [max_sequences][pages_per_seq]
  std::vector<int> lengths;  // [max_sequences] tokens cached per slot
  // [max_sequences][n_layers]: the slot's first-pass statistics (key mean, key and value scales)
  // are set
  std::vector<uint8_t> mean_ready;
  // [slot]: after a truncation below the length with a window, the cut (positions below it
  // are read compressed until the ring holds window rows at or above it again); else 0.
  std::vector<int> exact_from;
  std::vector<float> ones;  // [kv_dim] 1.0f: the scales of a slot whose first pass is one token
  // Exact rows (sinks + window > 0): pages per slot of each layer's ek / ev, and their tables:
  // slot s owns [s * exact_blocks, (s + 1) * exact_blocks), the gather's scratch the last range.
  int exact_blocks = 0;
  DeviceMem exact_tables;  // int32 [max_sequences + 1][exact_blocks]

  // Activations of one pass of up to max_batch tokens.
  DeviceMem tokens;   // int32 [B]
  DeviceMem x;        // f32 [B][dim] residual stream
  DeviceMem xn;       // f16 [B][max(dim, q_dim)] normalised rows / attention output
  DeviceMem qkv;      // f32 [B][q_dim + 2 kv_dim]
  DeviceMem q, k, v;  // f32 [B][q_dim], [B][kv_dim] x2
  DeviceMem gu;       // f32 [B][2 ffn]
  DeviceMem h;        // f16 [B][ffn]
  // xn / h again as 8-bit activations (gemv_q8) for passes of up to kGemvMaxTokens rows, with
  // quantized weights and DeviceModelOptions::int8_activations; empty otherwise.
  DeviceMem q8;                      // int8 [kGemvMaxTokens][max(dim, q_dim, ffn)]
  DeviceMem q8_scales;               // Q8Scale [kGemvMaxTokens][max(dim, q_dim, ffn) / 32]
  DeviceMem logits;                  // f32 [B][vocab]
  DeviceMem cs;                      // float2 [B][rope_dims/2]
  DeviceMem slots;                   // int32 [B]
  DeviceMem seq_lengths;             // int32 [B]
  DeviceMem merge_counters;          // int32 [B][n_kv_heads], zero between calls (attention)
  DeviceMem step_tables;             // int32 [B][pages_per_seq]
  DeviceMem row_seqs;                // int32 [B]: slot of each row (batched decode)
  DeviceMem row_pos;                 // int32 [B]: position of each row (batched decode)
  DeviceMem greedy;                  // int32 [B]: argmax of each logits row
  DeviceMem exact_slots;             // int32 [B]: exact-pool slot of each row (-1: none)
  DeviceMem exact_lengths;           // int32 [B]: exact rows each row's query sees
  DeviceMem exact_step_tables;       // int32 [B][exact_blocks]
  DeviceMem gather_src, gather_dst;  // int32 [sinks + window]: a multi-row pass's gather
  std::vector<int32_t> host_greedy;  // [B] staging of greedy
  DeviceMem top_ids, top_values;     // int32 / f32 [B][kTopRowsMax]: top candidates of each row
  DeviceMem top_ws;                  // top_k_rows's workspace (a row per slot of the vocab)
  DeviceMem log_z;                   // f64 [B]: log_partition_rows of each logits row
  std::vector<int32_t> host_rows;    // [2][B] staging of row_seqs | row_pos
  DeviceMem attn_ws;                 // decode attention workspace, grown on demand

  struct CachedPlan {
    kv::LayerFormats formats;
    int n_seqs = 0;
    bool shared = false;  // DecodeAttentionParams::queries_share_table
    DecodeAttentionPlan plan;
  };
  std::vector<CachedPlan> plans;

  // cuBLAS's workspace, set once, so that GEMMs captured into a graph never allocate.
  DeviceMem blas_ws;
  // Decode passes as CUDA graphs (DeviceModelOptions::cuda_graphs). A graph holds every launch
  // of one pass of `rows` slots (block tables, embedding, the layers, the logits when asked),
  // each reading its per-step inputs (tokens, slots, positions, lengths) from device buffers
  // the host fills before the launch. Its attention launches were planned for lengths up to
  // `capacity` with the workspace it was captured with; longer sequences or a new workspace
  // capture it again.
  struct DecodeGraph {
    int rows = 0;
    bool logits = false;
    int capacity = 0;
    const void* workspace = nullptr;
    cudaGraphExec_t exec = nullptr;
  };
  std::vector<DecodeGraph> graphs;
  bool graphs_failed = false;  // a capture failed: eager launches from then on (logged once)
  DeviceModelStats stats;

  // read_stored's CPU codecs of every layer's K and V (model_cuda_read.cu), built on first use;
  // the codecs point into host_books, declared first so it dies after them.
  std::unique_ptr<quant::CodebookCache> host_books;
  std::vector<std::unique_ptr<quant::VectorCodec>> host_codecs;  // [2 * layer + (V ? 1 : 0)]
};

// Dequantizes every weight matrix to f16 on the host (all cores) and uploads it, with the
// norms, biases and the rope table; fills m.weight_bytes. With DeviceWeights::kQuantized,
// Q4_0/Q8_0 matrices (a fused one: every part of that one type) stay blocks.
Status upload_weights(const LlamaDesc& desc, CudaModel::Impl& m);
// Allocates every layer's K and V pools (max_sequences x max_context tokens) with the codec
// tables of the layer's formats, the block tables and the activation buffers.
Status allocate_cache(CudaModel::Impl& m);

}  // namespace tq::backend::cuda
