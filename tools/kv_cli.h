// The KV cache flags every tq subcommand shares (-ctk, -ctv, --kv-window, ...), added to a
// CLI11 subcommand from kv::kv_option_table() so names and help live in one place, and a
// helper that builds the paged cache for a model with the CPU's fused kernels.
#pragma once

#include <CLI/CLI.hpp>

#include <algorithm>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tq/backend/cpu/tq_kernels.h"
#include "tq/kv/kv_bytes.h"
#include "tq/kv/kv_config.h"
#include "tq/kv/paged_kv.h"
#include "tq/model/llama.h"

namespace tq::tools {

// Values given on the command line, by long flag name; only those the user set.
// CLI11 (2.1) only knows one-letter single-dash names, so llama.cpp's -ctk/-ctv are taken
// from the subcommand's leftover arguments (the subcommand allows extras; anything else left
// over is an error). --ctk/--ctv work as ordinary options too. Do not give the subcommand a
// -c short option: CLI11 would read "-ctk" as "-c tk".
struct KvFlags {
  std::vector<std::pair<std::string, std::string>> given;
  std::vector<std::string> storage;  // one slot per table row (CLI11 writes into it)
  std::vector<CLI::Option*> options;
  CLI::App* cmd = nullptr;

  void add_to(CLI::App* c) {
    cmd = c;
    const auto table = kv::kv_option_table();
    storage.resize(table.size());
    for (size_t i = 0; i < table.size(); ++i) {
      std::string names = std::string(table[i].long_name);
      if (!table[i].short_name.empty()) names += ",-" + std::string(table[i].short_name);
      options.push_back(cmd->add_option(names, storage[i], std::string(table[i].help)));
    }
    cmd->allow_extras();
  }
  // The user's values applied onto `base` (validated); by default onto the recommended settings.
  Expected<kv::KvConfig> config(const kv::KvConfig& base = kv::recommended_kv_config()) {
    given.clear();
    const auto table = kv::kv_option_table();
    for (size_t i = 0; i < table.size(); ++i)
      if (options[i]->count() > 0) given.emplace_back(std::string(table[i].long_name), storage[i]);
    const std::vector<std::string> rest = cmd->remaining();
    for (size_t i = 0; i < rest.size(); ++i) {
      const std::string& a = rest[i];
      const size_t eq = a.find('=');
      const std::string name = a.substr(0, eq);
      if (name != "-ctk" && name != "-ctv")
        return invalid_argument("unexpected argument '" + a + "'");
      if (eq != std::string::npos) {
        given.emplace_back(name, a.substr(eq + 1));
      } else if (i + 1 < rest.size()) {
        given.emplace_back(name, rest[++i]);
      } else {
        return invalid_argument(name + " needs a value");
      }
    }
    return kv::parse_kv_options(given, base);
  }
  // Whether the last config() saw this flag (long name, "--kv-sinks").
  bool was_given(std::string_view long_name) const {
    return std::any_of(given.begin(), given.end(),
                       [&](const auto& g) { return g.first == long_name; });
  }
  // One entry of a bench's --kv list ("tq4/tq3": K and V formats) over the other cache flags.
  Expected<kv::KvConfig> pair_config(const std::string& pair) {
    const size_t slash = pair.find('/');
    if (slash == std::string::npos)
      return invalid_argument("--kv entries are K/V, e.g. tq4/tq3, got '" + pair + "'");
    TQ_ASSIGN_OR_RETURN(kv::KvConfig base, config());
    const std::vector<std::pair<std::string, std::string>> kv = {{"-ctk", pair.substr(0, slash)},
                                                                 {"-ctv", pair.substr(slash + 1)}};
    return kv::parse_kv_options(kv, base);
  }
};

// A paged cache for `n_sequences` sequences of up to `max_tokens` tokens each, using the CPU's
// fused kernels; prefix caching off unless asked (quality runs use fresh sequences).
inline Expected<std::unique_ptr<kv::PagedKvCache>> make_paged_cache(
    const kv::AttentionShape& shape, const kv::KvConfig& config, int max_tokens, int n_sequences,
    bool prefix_caching = false, std::vector<float> value_weights = {}) {
  TQ_ASSIGN_OR_RETURN(const std::vector<size_t> blocks, kv::kv_block_bytes(config, shape));
  size_t page = 0;
  for (size_t b : blocks) page += b;
  const size_t pages_per_seq =
      static_cast<size_t>((max_tokens + config.block_tokens - 1) / config.block_tokens) + 1;
  kv::PagedKvCacheOptions o;
  o.shape = shape;
  o.config = config;
  o.pool_bytes = page * pages_per_seq * static_cast<size_t>(std::max(1, n_sequences));
  o.prefix_caching = prefix_caching;
  o.kernels = &backend::cpu::cpu_kernel_table();
  o.value_weights = std::move(value_weights);
  return kv::PagedKvCache::create(o);
}

// The same for model m's attention; with value scaling the cache gets m's output-projection
// weights (Model::value_output_weights).
inline Expected<std::unique_ptr<kv::PagedKvCache>> make_paged_cache(const model::Model& m,
                                                                    const kv::KvConfig& config,
                                                                    int max_tokens, int n_sequences,
                                                                    bool prefix_caching = false) {
  std::vector<float> value_weights;
  if (config.value_scaling) {
    TQ_ASSIGN_OR_RETURN(value_weights, m.value_output_weights());
  }
  return make_paged_cache(m.attention_shape(), config, max_tokens, n_sequences, prefix_caching,
                          std::move(value_weights));
}

}  // namespace tq::tools
