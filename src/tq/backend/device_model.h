// A whole model forward pass on a device (the GPU), as CPU code sees it: no device types. The
// model is uploaded once from a backend::LlamaDesc; the device keeps the weights and a paged
// KV cache of `max_sequences` slots and returns to the host the logits, the greedy token or the
// top candidates of a row, from which the host's sampler draws.
// create_cuda_model (backend/cuda/model_cuda.cu) is the one implementation; builds without
// CUDA get device_model.cpp's answer, a clear Unsupported.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "tq/backend/model_desc.h"
#include "tq/core/status.h"
#include "tq/kv/kv_config.h"

namespace tq::backend {

// How weight matrices live on the device. kF16: every matrix dequantized to f16 at upload
// (tq's GEMV or cuBLAS read 16 bits per weight). kQuantized: Q4_0 and Q8_0 matrices stay
// blocks (4.5 / 8.5 bits per weight); decode and passes of up to 8 rows multiply them as stored,
// longer passes dequantize one matrix at a time for cuBLAS; other types stay f16.
enum class DeviceWeights { kF16, kQuantized };

// Which kernel writes new K/V rows into tq and f16 pages (backend/cuda/kv_cuda.h WriteKernel).
// kAuto: float32 kernels, one warp per vector for decode-sized writes, a team per vector for
// prefill. kLegacy: the float64 kernel whose bytes equal the CPU codec's (A/B runs, checks).
enum class DeviceWriteKernel { kAuto, kLegacy, kTeam, kWarp };

struct DeviceModelOptions {
  kv::KvConfig kv;         // formats per layer, sinks, window, key centering and scaling
  int max_context = 4096;  // tokens per sequence slot
  int max_sequences = 1;   // sequence slots, each with pages of its own
  int max_batch = 512;     // tokens per device pass; longer calls are split into passes
  int device = 0;          // CUDA device index
  // One-token matmuls (decode) through cuBLAS as well; by default tq's GEMV kernel streams
  // them (comparison and tests).
  bool cublas_gemv = false;
  DeviceWeights weights = DeviceWeights::kF16;
  DeviceWriteKernel write_kernel = DeviceWriteKernel::kAuto;
  // Decode passes (one token for each of B slots, forward_batch and one-token forward) replay a
  // CUDA graph of the whole pass, captured once per batch size and attention plan: ~450 kernel
  // launches per token become one. Off: every kernel is launched from the host (A/B runs).
  bool cuda_graphs = true;
  // The quantized-weight GEMVs are launched with programmatic dependence (sm_90): each starts
  // loading its weights while the small kernel before it (RMSNorm, SwiGLU, the attention
  // output's conversion) still runs. Off: plain stream order (A/B runs).
  bool overlap_launches = true;
  // With kQuantized weights, the Q4_0/Q8_0 GEMVs (decode, batches up to 8) quantize their
  // activations to 8 bits per 32 columns (llama.cpp's q8_1, as tq's CPU matmuls do) and sum with
  // integer dot products: about a quarter of the instructions per weight. Off: f16 activations,
  // f32 products (the precise path; --gpu-activations f16, --float-activations).
  bool int8_activations = true;
  // With sinks or a window: attention over the f16 rows runs on a second stream beside the
  // attention over the pages (forked and joined per layer; parallel graph branches). Off: one
  // after the other (A/B runs).
  bool window_stream = true;
  // Batched decode attention shares its CTAs by length among sequences of mixed lengths
  // (backend/cuda/split_plan.h: where it pays, decided per plan). Off: every sequence is cut as
  // the longest (A/B runs).
  bool split_by_length = true;
  // Decode attention's last CTA of each (sequence, KV head) merges that pair's rows (no merge
  // kernel) where the call allows it (no sinks or window; DecodeAttentionParams::merge_counters).
  // Off: the merge kernel (A/B runs).
  bool merge_in_attention = true;
  // With kv.value_scaling: W_o's column norms per layer, [n_layers][n_kv_heads][head_dim]
  // (model::Model::value_output_weights, as kv::PagedKvCacheOptions::value_weights); empty:
  // the value scales come from the values alone.
  std::vector<float> value_weights;

  Status validate() const;
  // DeviceModel::truncate's bounds: whether slot `seq`, holding `current` tokens, may be cut
  // to `length`.
  Status check_truncate(int seq, int current, int length) const;
  std::string to_string() const;
};

struct DeviceForwardArgs {
  int seq = 0;                      // slot in [0, max_sequences)
  const int32_t* tokens = nullptr;  // host [n], each in [0, vocab)
  int n = 0;                        // tokens at positions length(seq) .. +n-1
  DeviceLogits logits_mode = DeviceLogits::kLast;
  float* logits = nullptr;  // host: [vocab] (kLast) or [n][vocab] (kAll); may be null with greedy
  // host [1]: the greedy token of the last row, computed on the device (the largest logit, NaN
  // never winning, the lowest id among equals: runtime::Sampler's greedy without penalties).
  // With logits == nullptr only this token crosses to the host. Needs a logits_mode.
  int32_t* greedy = nullptr;
  // host [top_k] each: the last row's top_k largest logits, most likely first, equal values by
  // lower id, NaN as -inf (runtime::top_logits's order; runtime::Sampler::sample_top draws from
  // them what it would draw from the whole row). top_k in [0, kMaxTopK]; needs a logits_mode.
  static constexpr int kMaxTopK = 1024;
  int top_k = 0;
  int32_t* top_ids = nullptr;
  float* top_logits = nullptr;
  // host [1] or null: log sum exp of the last row's logits in double, NaN as -inf
  // (runtime::log_partition; with the top candidates, logprobs without the row). Needs a
  // logits_mode.
  double* log_z = nullptr;
};

// Counters of a device model's passes (tests, benchmarks, describe()).
struct DeviceModelStats {
  int64_t graph_captures = 0;  // decode passes captured into a new CUDA graph (and run)
  int64_t graph_replays = 0;   // decode passes that replayed a captured graph
  int64_t eager_passes = 0;    // passes launched kernel by kernel (prefill, graphs off)
};

class DeviceModel {
 public:
  virtual ~DeviceModel() = default;
  // Runs the tokens through the model, appending their K/V to the slot's cache, and copies the
  // logits asked for to the host (the call returns when they are there). Validates before it
  // touches the cache.
  virtual Status forward(const DeviceForwardArgs& args) = 0;
  // Batched decode: one new token for each of B distinct slots (every item has n == 1; each slot
  // at its own length), run through the model as one pass of B rows: the weight matmuls are one
  // GEMM over the B rows, attention one call over the B slots' pages. Each item's logits (kLast
  // and kAll alike: its one row) go to its own buffer. The same numbers as B forward() calls,
  // up to the GEMM's summation order. B <= max_batch. Validates every item before it touches
  // any cache. Prefill stays per sequence (forward()).
  virtual Status forward_batch(std::span<const DeviceForwardArgs> items) = 0;
  // Makes slot `dst` a copy of slot `src` (its length, key means and cached K/V bytes; as
  // gemma.cpp's KVCache::Copy, an explicit device copy): several continuations of one prompt,
  // or many long sequences for a benchmark without prefilling each.
  virtual Status copy_sequence(int src, int dst) = 0;
  virtual int length(int seq) const = 0;
  // Keeps the first `length` positions of slot `seq` (with the key means and scales of its
  // first pass), as if the later ones had never been appended: the next forward() continues
  // from there (prefix reuse); 0 empties the slot as reset() does. With an f16 window
  // (kv.window > 0) the ring holds only the last window rows, so after a cut below the length
  // the positions before the cut are read compressed, as a CPU sequence that took them from
  // the prefix cache reads them, until `window` more tokens have come: until then the slot's
  // tokens go through forward() (forward_batch refuses it; refill_until() says when).
  virtual Status truncate(int seq, int length) = 0;
  // The length from which slot `seq` decodes in forward_batch again after a truncation (0: it
  // does now).
  virtual int refill_until(int seq) const = 0;
  // Empties a slot's cache (its pages are reused).
  virtual Status reset(int seq) = 0;
  // What slot `seq` stores for positions [p0, p0 + n) of `layer`, keys (value false) or values,
  // decoded on the host: out [n][n_kv_heads][head_dim] floats, with the key mean added back
  // where the layer centers its keys, as kv::PagedKv::read_stored (tq verify's per-layer K/V
  // cosine, tests). Slow: copies the slot's pages to the host. The default: Unsupported.
  virtual Status read_stored(int seq, int layer, bool value, int p0, int n, float* out) const;
  virtual const DeviceModelOptions& options() const = 0;
  virtual DeviceModelStats stats() const { return {}; }
  // "NVIDIA H200 (sm_90): weights f16 14.96 GiB, kv 4.00 GiB (k=tq4 v=tq3 ...)"
  virtual std::string describe() const = 0;
};

// Uploads the model to CUDA device options.device. Unsupported when built without CUDA or
// when the KV configuration asks for something the CUDA kernels lack (a K/V format pair or
// head dim with no instance).
Expected<std::unique_ptr<DeviceModel>> create_cuda_model(const LlamaDesc& desc,
                                                         const DeviceModelOptions& options);

}  // namespace tq::backend
