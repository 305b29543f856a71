// What a KV cache configuration costs in bytes, from the formats alone (docs/kv-cache.md,
// "Bytes per token"). The paged cache allocates exactly this (tests hold it to the formula),
// so `tq ppl`, the capacity planner and the server all quote the same numbers.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "tq/kv/kv_config.h"
#include "tq/kv/sequence_kv.h"

namespace tq::kv {

struct KvBytesPerToken {
  int context = 0;          // the context the exact tokens are amortized over
  int exact_tokens = 0;     // min(context, window + sinks): tokens held in f16
  double compressed = 0.0;  // bytes per token in the layer formats (all layers, K and V)
  double f16 = 0.0;         // bytes per token of an all-f16 cache
  size_t sequence = 0;      // bytes per sequence whatever its length: f32 key means, scales
  double amortized = 0.0;   // bytes per token at `context`, window and sinks included
  // Bytes per token per layer per KV head of K and of V, averaged over layers, in bits per
  // element (quality-method.md's "bits/elt" of the formats alone).
  double k_bits_per_element = 0.0;
  double v_bits_per_element = 0.0;

  double ratio_vs_f16() const { return amortized > 0 ? f16 / amortized : 0.0; }
  double formats_ratio_vs_f16() const { return compressed > 0 ? f16 / compressed : 0.0; }
  // "132.0 B/token at ctx 512 (3.88x vs f16; K 4.12 b/elt, V 3.12 b/elt)"
  std::string to_string() const;
};

// Sum over layers l of n_kv_heads * (bpv(K_l) + bpv(V_l)) for the compressed tokens, plus
// n_layers * n_kv_heads * 2 * 2 * head_dim for each of the min(context, window + sinks) f16
// tokens, plus the per-sequence key means and scales (kv_key_mean_bytes), divided by context.
Expected<KvBytesPerToken> kv_bytes_per_token(const KvConfig& config, const AttentionShape& shape,
                                             int context);

// Bytes of one pool block for each slab (2 * layer + 0 for K, 1 for V): block_tokens *
// n_kv_heads * bytes_per_vector of the slab's format.
Expected<std::vector<size_t>> kv_block_bytes(const KvConfig& config, const AttentionShape& shape);

// Bytes of one sequence's key means (and scales): 4 * n_kv_heads * head_dim per layer that
// centers keys, as much again per layer that scales them, and again per layer that scales its
// values.
size_t kv_key_mean_bytes(const KvConfig& config, const AttentionShape& shape);

// Bytes one exact (f16) token takes over all layers, K and V.
size_t kv_f16_token_bytes(const AttentionShape& shape);

}  // namespace tq::kv
