#include "tq/kv/kv_config.h"

#include <cctype>
#include <charconv>
#include <cinttypes>
#include <cstdio>

#include "tq/core/rng.h"

namespace tq::kv {
namespace {

constexpr int kMaxBlockTokens = 4096;
constexpr int kMaxTokens = 1 << 24;  // window / sinks beyond this are certainly a typo
constexpr int kMaxLayers = 4096;

// The flags, in the order `tq --help` lists them.
constexpr KvOption kOptions[] = {
    {"--cache-type-k", "-ctk", "KV cache format of keys: f16, q8_0, q4_0, tq1..tq8, tq2j..tq8j"},
    {"--cache-type-v", "-ctv", "KV cache format of values (same names as -ctk)"},
    {"--kv-window", "", "most recent tokens kept exact in f16 (compressed as they leave)"},
    {"--kv-sinks", "", "first tokens of a sequence kept exact in f16 (default 4)"},
    {"--kv-boundary-layers", "", "first and last N layers store K and V in --kv-boundary-type"},
    {"--kv-boundary-type", "", "format of the boundary layers' K and V (default f16)"},
    {"--kv-layer-types", "",
     "per-layer K/V formats over the others: RANGE:K/V or RANGE:F, comma-separated, RANGE = N "
     "or N-M (layers from 0; a later range wins), e.g. 0-1:q8_0,29:q8_0/tq4"},
    {"--kv-norm-correction", "", "tq formats store norm/||C[idx]|| (on/off, default on)"},
    {"--kv-key-centering", "",
     "compressed keys store k - (per-sequence mean key): exact for attention (on/off, default on)"},
    {"--kv-key-scaling", "",
     "centered keys are also divided per channel by their spread, queries multiplied (on/off, "
     "default on)"},
    {"--kv-value-scaling", "",
     "compressed values are divided per channel by sqrt(spread / W_o column norm), attention "
     "outputs multiplied (on/off, default on)"},
    {"--kv-block-tokens", "", "tokens per KV pool block (default 32)"},
    {"--kv-seed", "", "rotation seed of the compressed cache"},
};

std::string_view strip_dashes(std::string_view s) {
  while (!s.empty() && s.front() == '-') s.remove_prefix(1);
  return s;
}

Expected<int64_t> parse_int(std::string_view flag, std::string_view v, int64_t lo, int64_t hi) {
  int64_t x = 0;
  const auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
  if (ec != std::errc() || ptr != v.data() + v.size() || v.empty())
    return invalid_argument(std::string(flag) + ": '" + std::string(v) + "' is not an integer");
  if (x < lo || x > hi)
    return invalid_argument(std::string(flag) + ": " + std::to_string(x) + " out of range [" +
                            std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return x;
}

Expected<bool> parse_bool(std::string_view flag, std::string_view v) {
  if (v == "1" || v == "on" || v == "true" || v == "yes") return true;
  if (v == "0" || v == "off" || v == "false" || v == "no") return false;
  return invalid_argument(std::string(flag) + ": '" + std::string(v) +
                          "' is not a boolean (on/off, 1/0, true/false)");
}

Expected<quant::Format> parse_named_format(std::string_view flag, std::string_view v) {
  auto f = quant::parse_format(v);
  if (!f.ok()) return f.status().with_context(std::string(flag));
  return f;
}

// "0-1:q8_0,12:tq4/tq3" -> ranges. Layer numbers are checked against a model in validate_for.
Expected<std::vector<LayerRangeFormats>> parse_layer_types(std::string_view flag,
                                                           std::string_view value) {
  std::vector<LayerRangeFormats> out;
  if (value == "none") return out;
  const std::string f(flag);
  size_t pos = 0;
  while (true) {
    const size_t comma = value.find(',', pos);
    const std::string_view item =
        value.substr(pos, comma == std::string_view::npos ? std::string_view::npos : comma - pos);
    const size_t colon = item.find(':');
    if (item.empty() || colon == std::string_view::npos || colon == 0)
      return invalid_argument(f + ": '" + std::string(item) +
                              "' is not RANGE:FORMAT (e.g. 0-1:q8_0 or 12:tq4/tq3)");
    const std::string_view range = item.substr(0, colon), fmt = item.substr(colon + 1);
    const size_t dash = range.find('-');
    if (dash == 0)
      return invalid_argument(f + ": '" + std::string(range) +
                              "' is not a layer or a range of layers (they count from 0)");
    LayerRangeFormats r;
    TQ_ASSIGN_OR_RETURN(const int64_t first,
                        parse_int(f + " layer", range.substr(0, dash), 0, kMaxLayers - 1));
    int64_t last = first;
    if (dash != std::string_view::npos) {
      TQ_ASSIGN_OR_RETURN(last, parse_int(f + " layer", range.substr(dash + 1), 0, kMaxLayers - 1));
    }
    if (last < first)
      return invalid_argument(f + ": layer range '" + std::string(range) + "' is empty");
    r.first = static_cast<int>(first);
    r.last = static_cast<int>(last);
    const size_t slash = fmt.find('/');
    TQ_ASSIGN_OR_RETURN(r.formats.k, parse_named_format(f, fmt.substr(0, slash)));
    r.formats.v = r.formats.k;
    if (slash != std::string_view::npos) {
      TQ_ASSIGN_OR_RETURN(r.formats.v, parse_named_format(f, fmt.substr(slash + 1)));
    }
    out.push_back(r);
    if (comma == std::string_view::npos) break;
    pos = comma + 1;
  }
  return out;
}

}  // namespace

Status KvConfig::validate() const {
  const auto check_format = [](const char* what, const quant::Format& f) -> Status {
    if (f.is_tq() && (f.code_bits() < 1 || f.code_bits() > 8))
      return invalid_argument(std::string(what) + " " + f.name() + ": code bits must be 1..8");
    return ok_status();
  };
  TQ_RETURN_IF_ERROR(check_format("k format", k_format));
  TQ_RETURN_IF_ERROR(check_format("v format", v_format));
  TQ_RETURN_IF_ERROR(check_format("boundary format", boundary_format));
  for (const LayerRangeFormats& r : layer_types) {
    if (r.first < 0 || r.last < r.first || r.last >= kMaxLayers)
      return invalid_argument("kv layer types: bad layer range " + std::to_string(r.first) + "-" +
                              std::to_string(r.last));
    TQ_RETURN_IF_ERROR(check_format("layer types K format", r.formats.k));
    TQ_RETURN_IF_ERROR(check_format("layer types V format", r.formats.v));
  }
  if (window < 0 || window > kMaxTokens)
    return invalid_argument("kv window " + std::to_string(window) + " out of range");
  if (sinks < 0 || sinks > kMaxTokens)
    return invalid_argument("kv sinks " + std::to_string(sinks) + " out of range");
  if (boundary_layers < 0 || boundary_layers > kMaxLayers)
    return invalid_argument("kv boundary layers " + std::to_string(boundary_layers) +
                            " out of range");
  if (block_tokens < 1 || block_tokens > kMaxBlockTokens)
    return invalid_argument("kv block tokens " + std::to_string(block_tokens) +
                            " out of range [1, " + std::to_string(kMaxBlockTokens) + "]");
  return ok_status();
}

Status KvConfig::validate_for(int n_layers, int head_dim) const {
  TQ_RETURN_IF_ERROR(validate());
  if (n_layers <= 0) return invalid_argument("kv cache needs at least one layer");
  // N counts from each end, so any N up to n_layers covers the model (2N > n_layers overlaps);
  // past that it is a typo rather than a choice.
  if (boundary_layers > n_layers)
    return invalid_argument("--kv-boundary-layers " + std::to_string(boundary_layers) +
                            ": the model has " + std::to_string(n_layers) + " layers");
  for (const LayerRangeFormats& r : layer_types)
    if (r.last >= n_layers)
      return invalid_argument("--kv-layer-types: layer " + std::to_string(r.last) +
                              " does not exist (the model has " + std::to_string(n_layers) +
                              " layers, 0-" + std::to_string(n_layers - 1) + ")");
  for (int l = 0; l < n_layers; ++l) {
    const LayerFormats f = formats_for(l, n_layers);
    TQ_RETURN_IF_ERROR(f.k.validate(head_dim).with_context("layer " + std::to_string(l) + " K"));
    TQ_RETURN_IF_ERROR(f.v.validate(head_dim).with_context("layer " + std::to_string(l) + " V"));
  }
  return ok_status();
}

uint64_t KvConfig::hash(uint64_t seed) const {
  for (char ch : to_string()) seed = derive_seed(seed, static_cast<uint8_t>(ch));
  return seed;
}

std::string KvConfig::to_string() const {
  char seed_hex[32];
  std::snprintf(seed_hex, sizeof seed_hex, "0x%016" PRIx64, seed);
  std::string s = "k=" + k_format.name() + " v=" + v_format.name() +
                  " window=" + std::to_string(window) + " sinks=" + std::to_string(sinks);
  if (boundary_layers > 0)
    s += " boundary=" + std::to_string(boundary_layers) + ":" + boundary_format.name();
  for (size_t i = 0; i < layer_types.size(); ++i) {
    const LayerRangeFormats& r = layer_types[i];
    s += i == 0 ? " layers=" : ",";
    s += std::to_string(r.first);
    if (r.last != r.first) s.append("-").append(std::to_string(r.last));
    s.append(":").append(r.formats.k.name()).append("/").append(r.formats.v.name());
  }
  s += " norm_correction=" + std::string(norm_correction ? "on" : "off") +
       " key_centering=" + std::string(key_centering ? "on" : "off") +
       (key_scaling ? " key_scaling=on" : "") + (value_scaling ? " value_scaling=on" : "") +
       " block=" + std::to_string(block_tokens) + " seed=" + seed_hex;
  return s;
}

LayerFormats KvConfig::formats_for(int layer, int n_layers) const {
  const bool boundary = layer < boundary_layers || layer >= n_layers - boundary_layers;
  LayerFormats f =
      boundary ? LayerFormats{boundary_format, boundary_format} : LayerFormats{k_format, v_format};
  for (const LayerRangeFormats& r : layer_types)
    if (layer >= r.first && layer <= r.last) f = r.formats;
  return f;
}

bool KvConfig::centers_keys(int layer, int n_layers) const {
  return key_centering && formats_for(layer, n_layers).k != quant::kFormatF16;
}

bool KvConfig::scales_keys(int layer, int n_layers) const {
  return key_scaling && centers_keys(layer, n_layers);
}

bool KvConfig::scales_values(int layer, int n_layers) const {
  return value_scaling && formats_for(layer, n_layers).v != quant::kFormatF16;
}

uint64_t KvConfig::layer_seed(int layer) const {
  return derive_seed(seed, static_cast<uint64_t>(layer));
}

std::span<const KvOption> kv_option_table() { return kOptions; }

KvConfig recommended_kv_config() {
  KvConfig c;
  c.sinks = 4;
  c.key_scaling = true;
  c.value_scaling = true;
  return c;
}

Status apply_kv_option(KvConfig& c, std::string_view name, std::string_view value) {
  const std::string_view n = strip_dashes(name);
  const std::string flag = "--" + std::string(n);
  if (n == "cache-type-k" || n == "ctk") {
    TQ_ASSIGN_OR_RETURN(c.k_format, parse_named_format("-ctk", value));
  } else if (n == "cache-type-v" || n == "ctv") {
    TQ_ASSIGN_OR_RETURN(c.v_format, parse_named_format("-ctv", value));
  } else if (n == "kv-window") {
    TQ_ASSIGN_OR_RETURN(const int64_t w, parse_int(flag, value, 0, kMaxTokens));
    c.window = static_cast<int>(w);
  } else if (n == "kv-sinks") {
    TQ_ASSIGN_OR_RETURN(const int64_t s, parse_int(flag, value, 0, kMaxTokens));
    c.sinks = static_cast<int>(s);
  } else if (n == "kv-boundary-layers") {
    TQ_ASSIGN_OR_RETURN(const int64_t b, parse_int(flag, value, 0, kMaxLayers));
    c.boundary_layers = static_cast<int>(b);
  } else if (n == "kv-boundary-type") {
    TQ_ASSIGN_OR_RETURN(c.boundary_format, parse_named_format(flag, value));
  } else if (n == "kv-layer-types") {
    TQ_ASSIGN_OR_RETURN(c.layer_types, parse_layer_types(flag, value));
  } else if (n == "kv-norm-correction") {
    TQ_ASSIGN_OR_RETURN(c.norm_correction, parse_bool(flag, value));
  } else if (n == "kv-key-centering") {
    TQ_ASSIGN_OR_RETURN(c.key_centering, parse_bool(flag, value));
  } else if (n == "kv-key-scaling") {
    TQ_ASSIGN_OR_RETURN(c.key_scaling, parse_bool(flag, value));
  } else if (n == "kv-value-scaling") {
    TQ_ASSIGN_OR_RETURN(c.value_scaling, parse_bool(flag, value));
  } else if (n == "kv-block-tokens") {
    TQ_ASSIGN_OR_RETURN(const int64_t b, parse_int(flag, value, 1, kMaxBlockTokens));
    c.block_tokens = static_cast<int>(b);
  } else if (n == "kv-seed") {
    uint64_t s = 0;
    const bool hex = value.size() > 2 && value[0] == '0' && (value[1] == 'x' || value[1] == 'X');
    const std::string_view digits = hex ? value.substr(2) : value;
    const auto [ptr, ec] =
        std::from_chars(digits.data(), digits.data() + digits.size(), s, hex ? 16 : 10);
    if (digits.empty() || ec != std::errc() || ptr != digits.data() + digits.size())
      return invalid_argument(flag + ": '" + std::string(value) + "' is not a 64-bit integer");
    c.seed = s;
  } else {
    std::string known;
    for (const KvOption& o : kOptions)
      known += (known.empty() ? "" : ", ") + std::string(o.long_name);
    return invalid_argument("unknown KV cache option '" + std::string(name) + "' (known: " + known +
                            ", -ctk, -ctv)");
  }
  return ok_status();
}

Expected<KvConfig> parse_kv_options(std::span<const std::pair<std::string, std::string>> options,
                                    const KvConfig& base) {
  KvConfig c = base;
  for (const auto& [name, value] : options) TQ_RETURN_IF_ERROR(apply_kv_option(c, name, value));
  TQ_RETURN_IF_ERROR(c.validate());
  return c;
}

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

std::vector<std::string_view> split_words(std::string_view s) {
  std::vector<std::string_view> words;
  for (size_t i = 0; i < s.size();) {
    if (std::isspace(static_cast<unsigned char>(s[i]))) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < s.size() && !std::isspace(static_cast<unsigned char>(s[j]))) ++j;
    words.push_back(s.substr(i, j - i));
    i = j;
  }
  return words;
}

}  // namespace

Expected<KvConfig> parse_kv_spec(std::string_view spec, const KvConfig& base) {
  const std::vector<std::string_view> words = split_words(spec);
  // Appended, not "'" + std::string(...) + "'": g++ 12's -Wrestrict warns falsely on
  // operator+(const char*, std::string&&) once inlined at -O2 (the CI build's one warning).
  std::string quoted(1, '\'');
  quoted.append(trim(spec)).push_back('\'');
  if (words.empty() || words[0].front() == '-')
    return invalid_argument("KV configuration " + quoted +
                            " must start with a K/V format pair such as tq4/tq3");
  std::vector<std::pair<std::string, std::string>> options;
  const std::string_view pair = words[0];
  const size_t slash = pair.find('/');
  options.emplace_back("-ctk", std::string(pair.substr(0, slash)));
  options.emplace_back(
      "-ctv", std::string(slash == std::string_view::npos ? pair : pair.substr(slash + 1)));
  for (size_t i = 1; i < words.size(); ++i) {
    const std::string_view w = words[i];
    if (w.size() < 2 || w.front() != '-')
      return invalid_argument("KV configuration " + quoted + ": expected a flag, got '" +
                              std::string(w) + "'");
    const size_t eq = w.find('=');
    if (eq != std::string_view::npos) {
      options.emplace_back(std::string(w.substr(0, eq)), std::string(w.substr(eq + 1)));
    } else if (i + 1 < words.size()) {
      options.emplace_back(std::string(w), std::string(words[++i]));
    } else {
      return invalid_argument("KV configuration " + quoted + ": " + std::string(w) +
                              " needs a value");
    }
  }
  auto c = parse_kv_options(options, base);
  if (!c.ok()) return c.status().with_context("KV configuration " + quoted);
  return c;
}

std::vector<std::string> split_kv_specs(std::string_view list) {
  const char sep = list.find(';') != std::string_view::npos ? ';' : ',';
  std::vector<std::string> specs;
  for (size_t i = 0; i <= list.size();) {
    size_t j = list.find(sep, i);
    if (j == std::string_view::npos) j = list.size();
    const std::string_view item = trim(list.substr(i, j - i));
    if (!item.empty()) specs.emplace_back(item);
    i = j + 1;
  }
  return specs;
}

}  // namespace tq::kv
