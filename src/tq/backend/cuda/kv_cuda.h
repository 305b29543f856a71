// The CUDA KV-cache kernels as CPU code sees them: plain structs of device pointers and an
// opaque stream (a cudaStream_t passed as void*; nullptr is the default stream), no CUDA types.
//
// Layout (docs/formats.md, "Blocks"): a pool holds one layer's keys or values in pool blocks of
// block_tokens tokens; pool block b starts at data + b * block_stride and holds, for each KV
// head h, one codec block of block_tokens slots at + h * head_stride, in the structure-of-arrays
// layout of quant::VectorCodec (codes plane, QJL sign plane, norm plane, residual-norm plane;
// f16 / q8_0 / q4_0 rows slot after slot). The bytes are identical to the CPU cache's.
//
// Tables (codebook, rotation, QJL matrix) come from the host (DeviceCodecTables), built from the
// same quant::Codebook / Rotation / qjl_matrix as the CPU codec: the GPU never re-draws them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "tq/backend/cuda/q8_scale.h"
#include "tq/core/status.h"
#include "tq/quant/format.h"

namespace tq::backend::cuda {

// Device pointers to one codec's tables (all float32).
struct CodecTables {
  const float* centroids = nullptr;       // [2^code_bits], ascending (tq only)
  const float* boundaries = nullptr;      // [2^code_bits - 1] cell boundaries (tq only)
  const float* rotation = nullptr;        // [d][d] row-major P (tq only)
  const float* hadamard_signs = nullptr;  // [d] D of P = H D / sqrt(d); nullptr: P is dense
  const float* qjl = nullptr;             // [d][d] row-major S (tq prod only)
  const float* qjl_t = nullptr;           // [d][d] row-major S^T (tq prod only)
  // S as the QJL team write kernels hold it in shared memory (quantize_write.cuh,
  // qjl_team_images; tq prod at d 64 and 128 only)
  const uint16_t* qjl_smem = nullptr;
  // [quant::CellLut::kImageWords] the uniform-grid cell lookup of the float32 write kernels
  // (tq, code bits <= 4; nullptr: those pools take the CPU-order kernel)
  const uint32_t* cell_lut = nullptr;
};

// One layer's K or V pages on the device.
struct PagedPool {
  quant::Format format = quant::kFormatF16;
  int head_dim = 0;
  int block_tokens = 32;  // slots per codec block; the kernels need a multiple of 32
  int n_kv_heads = 0;
  uint8_t* data = nullptr;       // [pool block][kv head][codec block bytes]
  size_t block_stride = 0;       // bytes between pool blocks (0: n_kv_heads * head_stride)
  size_t head_stride = 0;        // bytes between KV heads (0: codec_block_bytes())
  bool norm_correction = false;  // tq mse: norm / ||C[idx]|| (must match the CPU codec)
  CodecTables tables;

  size_t codec_block_bytes() const;  // block_tokens * bytes_per_vector
  size_t head_stride_or_default() const;
  size_t block_stride_or_default() const;
  Status validate() const;
};

// Which kernel quantize_write runs for tq mse and f16 pools, and for tq prod (QJL) pools of head
// dim 64 or 128 (kTeam: the mse part as for mse pools, the sign sketch on the tensor cores; kWarp
// and small kAuto writes take kLegacy); q8_0, q4_0 and other tq prod pools always take kLegacy.
// kAuto: kWarp for small writes (decode), kTeam for bulk ones (prefill).
enum class WriteKernel : uint8_t {
  kAuto,
  kLegacy,  // CPU-order float64 arithmetic: byte-identical to quant::VectorCodec::encode
  kTeam,    // float32, d/32 lanes per vector, grid-stride with the next vector prefetched
  kWarp,    // float32, one warp per vector; quantize_write_kv writes K and V in one launch
};

// Quantize-on-write: x [tokens][n_kv_heads][head_dim] (device, fp32 or fp16) is encoded into
// the slots slot_mapping[token] = pool_block * block_tokens + slot (negative: skipped).
// The float32 kernels (kTeam, kWarp) match the CPU codec's codes except where a rotated
// coordinate lies within float32 rounding of a cell boundary, and its norms to float32 rounding
// (tests/cuda/quantize_write_test.cpp states the bounds); kTeam's QJL signs match the float64
// sketch's except where |(S r)_i| is within fp16 rounding of 0 (about 3e-4 of them).
struct QuantizeWriteParams {
  PagedPool pool;
  const void* x = nullptr;
  bool x_is_f16 = false;
  size_t x_token_stride = 0;              // elements between tokens; 0: n_kv_heads * head_dim
  const int32_t* slot_mapping = nullptr;  // device [tokens]
  int tokens = 0;
  WriteKernel kernel = WriteKernel::kAuto;
  // The warp kernel launched with programmatic dependence (sm_90; quantize_write_kv: k's flag
  // decides for both): it starts while the kernel before it runs and reads x after it ends.
  bool overlap = false;
};
Status quantize_write(const QuantizeWriteParams& p, void* stream);
// One layer's K and V: one launch when both take the warp kernel (same head dim and input
// type), two otherwise. k.kernel decides for both.
Status quantize_write_kv(const QuantizeWriteParams& k, const QuantizeWriteParams& v, void* stream);
// Up to 4 writes (a layer's K and V into its pages and into the f16 sink/window rows): those
// that take the warp kernel with the first one's head dim and input type share one launch, the
// others launch alone. writes[0].kernel decides for all.
Status quantize_write_group(std::span<const QuantizeWriteParams> writes, void* stream);

// A paged source of keys and values: the compressed cache, or the f16 window / sinks.
struct AttentionSegment {
  PagedPool k;
  PagedPool v;
  const int32_t* block_tables = nullptr;  // device [n_seqs][max_blocks]: pool block ids
  int max_blocks = 0;
  const int32_t* lengths = nullptr;  // device [n_seqs]: tokens of this segment
  int max_length = 0;                // host: an upper bound of lengths (plans split-K)
  bool present() const { return k.data != nullptr; }
};

// Decode attention of one query token per sequence over `main` and, when present, `window`
// (softmax over the union; the order of tokens does not matter). GQA: query head i uses KV head
// i / (n_heads / n_kv_heads); up to 8 query heads per KV head.
struct DecodeAttentionParams {
  int n_seqs = 0;
  int n_heads = 0;
  const float* q = nullptr;  // device [n_seqs][n_heads][head_dim]
  float* out = nullptr;      // device [n_seqs][n_heads][head_dim] f32 (or null: out_f16 only)
  float scale = 0.0f;        // softmax scale, usually 1/sqrt(head_dim)
  // The merge's epilogue, for a model whose next matmul takes the output (no kernel of its own
  // between attention and the matmul). out_scale multiplies the output of query head i by row
  // out_scale_rows[seq] (row 0 when null) of [rows][n_kv_heads * head_dim] at KV head i / group:
  // value scaling (the cache holds v / t). out_f16 receives the (scaled) output as fp16 bits,
  // out_q8 / out_q8_scales that fp16 value as 8-bit activations (q8_act.cuh's rounding, blocks
  // of 32 columns; head_dim % 32 == 0).
  const float* out_scale = nullptr;
  const int32_t* out_scale_rows = nullptr;
  uint16_t* out_f16 = nullptr;
  int8_t* out_q8 = nullptr;
  Q8Scale* out_q8_scales = nullptr;
  AttentionSegment main;
  AttentionSegment window;  // f16 pools, or k.data == nullptr for none
  int num_sms = 0;          // 0: ask the current device
  int max_splits = 0;       // split-K cap per sequence; 0: planned from the device
  // Batches of 2..128 sequences share their CTAs by length (a short sequence takes fewer, every
  // CTA about as many tokens; split_plan.h), the cut found on the device from the lengths, where
  // the plan judges it pays (plan_decode_attention: long enough splits, at most two waves of
  // CTAs, formats with such a kernel). false: every sequence is cut as the longest (max_length).
  bool split_by_length = true;
  // The n_seqs queries read one block table (each row's table equal to the first's) with
  // lengths of their own: a pass of one sequence's tokens. Its kernels take 8 / group queries a
  // CTA as the tensor-core columns GQA leaves empty, reading each page once for all of them
  // (every row still gets its own output). Not with splits by length.
  bool queries_share_table = false;
  // The attention and merge kernels launched with programmatic dependence (sm_90): attention
  // CTAs build their code tables while the kernel before them (the K/V write) still runs.
  bool overlap_launches = false;
  // With a window: a second stream and two events (cudaStream_t / cudaEvent_t as void*, all or
  // none) on which the window segment's kernel runs beside the main one, forked from `stream`
  // after the work before the call and joined before the merge (parallel branches when
  // captured into a graph). None: one after the other on `stream`.
  void* side_stream = nullptr;
  void* fork_event = nullptr;
  void* join_event = nullptr;
  void* workspace = nullptr;  // device, decode_attention_workspace_bytes(p) bytes
  size_t workspace_bytes = 0;
  // n_seqs x n_kv_heads device ints, zero before the first call (every call leaves them zero),
  // or null. Set, the attention CTA that ends last among a (sequence, KV head)'s splits merges
  // that pair's rows itself (an arrival counter each): no merge kernel, the same floats as its,
  // where the plan takes it (DecodeAttentionPlan::fused_merge: no window, one query a CTA,
  // Hadamard-rotated or plain values, at most 16 splits a pair when cut as the longest).
  int32_t* merge_counters = nullptr;
};

// The host-side plan of one decode attention shape (instances, split-K, workspace layout):
// make it once per batch shape (it queries the device), then run it every step. It stays valid
// while the formats, n_seqs, n_heads and the segments' max_length / max_blocks do not grow.
struct DecodeAttentionPlan {
  const void* main_instance = nullptr;  // internal: the compiled kernel of each segment
  const void* window_instance = nullptr;
  int main_tokens_per_split = 0, main_splits = 0;
  // Split by length when main_split_budget > 0: CTAs a KV head (n_seqs x main_splits), at most
  // main_split_cap of them for one sequence.
  int main_split_budget = 0, main_split_cap = 0;
  int window_tokens_per_split = 0, window_splits = 0;
  int dim = 0, n_kv_heads = 0, group = 0;
  int queries = 1;           // queries a CTA (queries_share_table)
  bool fused_merge = false;  // the last CTA of a pair merges its rows (merge_counters)
  size_t q_main = 0, q_sketch = 0, q_win = 0, part_o = 0, part_ml = 0;  // workspace offsets
  size_t workspace_bytes = 0;
};
Expected<DecodeAttentionPlan> plan_decode_attention(const DecodeAttentionParams& p);
Status decode_attention(const DecodeAttentionParams& p, const DecodeAttentionPlan& plan,
                        void* stream);

// Plans and runs in one call (convenient; plans every time).
Expected<size_t> decode_attention_workspace_bytes(const DecodeAttentionParams& p);
Status decode_attention(const DecodeAttentionParams& p, void* stream);

// Whether a (K format, V format, head dim) combination has a compiled attention instance.
bool decode_attention_supported(quant::Format k, quant::Format v, int head_dim);

}  // namespace tq::backend::cuda
