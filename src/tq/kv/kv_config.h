// How a KV cache stores keys and values: the K and V formats per layer, the exact f16 window
// and sinks, boundary layers, and the block size of the paged pool. One struct, validated once,
// parsed from CLI-style strings at the edge (parse_kv_options) so nothing below compares names.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tq/core/status.h"
#include "tq/quant/format.h"

namespace tq::kv {

// The formats one layer stores its keys and values in.
struct LayerFormats {
  quant::Format k = quant::kFormatF16;
  quant::Format v = quant::kFormatF16;
  bool operator==(const LayerFormats&) const = default;
};

// Layers first..last (inclusive) store their keys and values in `formats` (--kv-layer-types).
struct LayerRangeFormats {
  int first = 0;
  int last = 0;
  LayerFormats formats;
  bool operator==(const LayerRangeFormats&) const = default;
};

struct KvConfig {
  quant::Format k_format = quant::kFormatF16;  // -ctk: keys of the middle layers
  quant::Format v_format = quant::kFormatF16;  // -ctv: values of the middle layers
  // Most recent tokens kept exact in f16; older ones are compressed as they leave (KIVI).
  int window = 0;
  // First tokens of every sequence kept exact in f16 (attention sinks).
  int sinks = 0;
  // The first and the last `boundary_layers` layers store K and V in boundary_format.
  int boundary_layers = 0;
  quant::Format boundary_format = quant::kFormatF16;
  // Per-layer formats over all of the above, in order (a later range wins where ranges overlap):
  // "--kv-layer-types 0-1:q8_0,12:tq4/tq4,29:q8_0/tq4". Layer numbers must exist in the model
  // (validate_for).
  std::vector<LayerRangeFormats> layer_types;
  // tq mse formats store ||x|| / ||C[idx]|| so reconstructions keep the exact norm.
  bool norm_correction = true;
  // Layers with compressed keys store k - mu, mu a per-sequence mean key of each KV head
  // (docs/kv-cache.md, "Key centering"). Softmax is invariant to q.mu, the same for every key
  // of a query, so attention is unchanged while the quantizer sees the smaller residual.
  bool key_centering = true;
  // Centered layers also store (k - mu) / s, s a per-sequence per-channel scale of each KV head
  // (sqrt of the channel's key spread over its geometric mean), and multiply queries by s:
  // exact in full precision, and the quantizer sees channels of more equal spread. Opt-in
  // (docs/kv-cache.md, "Key centering").
  bool key_scaling = false;
  // Layers with compressed values store v / s, s a per-sequence per-channel scale of each KV
  // head with s^2 ~ sigma_v / w (sigma_v the channel's RMS value, w the norm of W_o's columns
  // that read the channel; PagedKvCacheOptions::value_weights), and multiply the attention
  // output by s: exact in full precision, and the quantizer's error lands where W_o weighs it
  // least. Opt-in (docs/quality.md, "Value scaling").
  bool value_scaling = false;
  // Tokens per pool block (one block per layer, K or V, holds this many tokens of every KV head).
  int block_tokens = 32;
  // Rotation / QJL seed; layer l uses derive_seed(seed, l) (docs/formats.md).
  uint64_t seed = 0x7475726271756e74ull;  // "turbqunt"

  Status validate() const;
  // Checks the formats against a model's head dim and layer count as well.
  Status validate_for(int n_layers, int head_dim) const;
  // "k=tq4 v=tq3 window=0 sinks=0 boundary=2:q8_0 layers=0-1:q8_0/q8_0 norm_correction=on ..."
  std::string to_string() const;
  // A hash of to_string() mixed into `seed`: any change of what the cache stores changes it
  // (the prefix cache's root, the server's system_fingerprint).
  uint64_t hash(uint64_t seed) const;

  LayerFormats formats_for(int layer, int n_layers) const;
  // Whether `layer` stores centered keys (key_centering and a compressed K format).
  bool centers_keys(int layer, int n_layers) const;
  // Whether `layer` also scales its keys (key_scaling and centers_keys).
  bool scales_keys(int layer, int n_layers) const;
  // Whether `layer` scales its values (value_scaling and a compressed V format).
  bool scales_values(int layer, int n_layers) const;
  uint64_t layer_seed(int layer) const;
};

// What the CLI and the server start from before their flags: KvConfig{} (the plain method, which
// the library's tests pin) plus the measured improvements that cost next to no memory: 4 exact
// sink tokens and key and value scaling (docs/quality.md, "The defaults"). Exact in full
// precision like key centering; `--kv-sinks 0 --kv-key-scaling off --kv-value-scaling off` gives
// the plain method back.
KvConfig recommended_kv_config();

// One CLI flag that sets a KvConfig field. The CLI adds every row of kv_option_table() as a
// string option and hands what the user gave to parse_kv_options, so flag names, help text and
// parsing live in one place.
struct KvOption {
  std::string_view long_name;   // "--cache-type-k"
  std::string_view short_name;  // "-ctk" (empty when none)
  std::string_view help;
};
std::span<const KvOption> kv_option_table();

// Sets one field from a flag (long or short name, with or without dashes) and its value.
Status apply_kv_option(KvConfig& config, std::string_view name, std::string_view value);

// Applies (flag, value) pairs in order onto `base`, then validates the result.
Expected<KvConfig> parse_kv_options(std::span<const std::pair<std::string, std::string>> options,
                                    const KvConfig& base = {});

// One configuration in CLI words, applied onto `base`: a K/V format pair ("tq4/tq3", or "tq4" for
// both), then any KV flags, each "--flag value" or "--flag=value":
// "tq4/tq3 --kv-sinks 4 --kv-layer-types=0-1:q8_0".
Expected<KvConfig> parse_kv_spec(std::string_view spec, const KvConfig& base = {});

// A list of such configurations: separated by ';', or by ',' when the list has no ';' (so that
// "tq4/tq4,tq4/tq3" keeps working while flag values such as --kv-layer-types' take commas).
// Entries are trimmed; empty ones are dropped.
std::vector<std::string> split_kv_specs(std::string_view list);

}  // namespace tq::kv
