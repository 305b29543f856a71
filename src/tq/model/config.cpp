// Reading and validating Llama-family hyperparameters (llama.cpp's key names, llama-arch.cpp).
#include "tq/model/config.h"

#include <cmath>
#include <cstdio>
#include <limits>

#include "tq/model/gguf.h"

namespace tq::model {
namespace {

constexpr int kMaxLayers = 1024;
constexpr int kMaxDim = 1 << 17;
constexpr int kMaxHeads = 1024;
constexpr int kMaxHeadDim = 512;  // dense_kv keeps one head's accumulator on the stack
constexpr int kMaxVocab = 1 << 24;

const char* arch_label(Arch a) { return a == Arch::kQwen2 ? "qwen2" : "llama"; }

// An integer key that must fit in [lo, hi]; absent -> `def` when def >= 0, else NotFound.
Expected<int> read_int(const GgufFile& f, const std::string& key, int64_t def, int64_t lo,
                       int64_t hi) {
  Expected<int64_t> v = def >= 0 ? f.get_int_or(key, def) : f.get_int(key);
  if (!v.ok()) return v.status().with_context("metadata key '" + key + "'");
  if (*v < lo || *v > hi)
    return invalid_argument("metadata key '" + key + "' = " + std::to_string(*v) + " is outside [" +
                            std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return static_cast<int>(*v);
}

Expected<float> read_float(const GgufFile& f, const std::string& key, double def) {
  Expected<double> v = f.get_float_or(key, def);
  if (!v.ok()) return v.status().with_context("metadata key '" + key + "'");
  if (!std::isfinite(*v) || std::fabs(*v) > std::numeric_limits<float>::max())
    return invalid_argument("metadata key '" + key + "' is not a finite float");
  return static_cast<float>(*v);
}

Expected<Arch> parse_arch(const std::string& name) {
  if (name == "llama" || name == "mistral" || name == "smollm") return Arch::kLlama;
  if (name == "qwen2") return Arch::kQwen2;
  return unsupported("architecture '" + name +
                     "' is not supported (supported: llama, mistral, smollm, qwen2)");
}

Expected<int> read_vocab_size(const GgufFile& f, const std::string& prefix) {
  if (f.find(prefix + "vocab_size")) return read_int(f, prefix + "vocab_size", -1, 1, kMaxVocab);
  if (const GgufValue* toks = f.find("tokenizer.ggml.tokens");
      toks && toks->type == GgufValueType::kArray && !toks->array.empty()) {
    if (toks->array.size() > static_cast<size_t>(kMaxVocab))
      return invalid_argument("tokenizer.ggml.tokens has too many entries");
    return static_cast<int>(toks->array.size());
  }
  if (const GgufTensor* t = f.find_tensor("token_embd.weight"); t && t->shape.size() == 2) {
    if (t->shape[1] < 1 || t->shape[1] > static_cast<uint64_t>(kMaxVocab))
      return invalid_argument("token_embd.weight has an out-of-range row count");
    return static_cast<int>(t->shape[1]);
  }
  return not_found("vocab size: no " + prefix + "vocab_size, tokenizer.ggml.tokens or token_embd");
}

Status read_rope_scaling(const GgufFile& f, const std::string& prefix, ModelConfig& c) {
  // Llama 3.x GGUFs carry the per-frequency factors as a tensor and often no scaling keys.
  const bool has_freqs_tensor = f.find_tensor("rope_freqs.weight") != nullptr;
  std::string type = has_freqs_tensor ? "llama3" : "none";
  if (f.find(prefix + "rope.scaling.type")) {
    auto t = f.get_string(prefix + "rope.scaling.type");
    if (!t.ok()) return t.status().with_context("metadata key '" + prefix + "rope.scaling.type'");
    type = *t;
  }
  TQ_ASSIGN_OR_RETURN(c.rope_scale_factor, read_float(f, prefix + "rope.scaling.factor", 1.0));
  if (type == "none" || (type == "linear" && c.rope_scale_factor == 1.0f)) {
    c.rope_scaling = RopeScaling::kNone;
  } else if (type == "linear") {
    c.rope_scaling = RopeScaling::kLinear;
  } else if (type == "llama3") {
    c.rope_scaling = RopeScaling::kLlama3;
    // Keys written by some converters; llama.cpp itself stores only the rope_freqs tensor.
    TQ_ASSIGN_OR_RETURN(c.rope_low_freq_factor,
                        read_float(f, prefix + "rope.scaling.low_freq_factor", 1.0));
    TQ_ASSIGN_OR_RETURN(c.rope_high_freq_factor,
                        read_float(f, prefix + "rope.scaling.high_freq_factor", 4.0));
    TQ_ASSIGN_OR_RETURN(
        c.rope_original_context,
        read_int(f, prefix + "rope.scaling.original_context_length", 8192, 1, 1 << 24));
    if (!has_freqs_tensor && !f.find(prefix + "rope.scaling.factor"))
      return invalid_argument("llama3 rope scaling needs rope_freqs.weight or " + prefix +
                              "rope.scaling.factor");
  } else {
    return unsupported("rope scaling type '" + type + "' (supported: none, linear, llama3)");
  }
  return ok_status();
}

}  // namespace

Status ModelConfig::validate() const {
  auto bad = [](const std::string& m) { return invalid_argument("model config: " + m); };
  if (n_layers < 1 || n_layers > kMaxLayers) return bad("block_count out of range");
  if (dim < 1 || dim > kMaxDim) return bad("embedding_length out of range");
  if (ffn_dim < 1 || ffn_dim > 8 * kMaxDim) return bad("feed_forward_length out of range");
  if (n_heads < 1 || n_heads > kMaxHeads) return bad("head_count out of range");
  if (n_kv_heads < 1 || n_kv_heads > n_heads || n_heads % n_kv_heads != 0)
    return bad("head_count_kv " + std::to_string(n_kv_heads) + " must divide head_count " +
               std::to_string(n_heads));
  if (head_dim < 2 || head_dim > kMaxHeadDim || head_dim % 2 != 0)
    return bad("head dim " + std::to_string(head_dim) + " must be even and at most " +
               std::to_string(kMaxHeadDim));
  if (rope_dims < 2 || rope_dims > head_dim || rope_dims % 2 != 0)
    return bad("rope.dimension_count " + std::to_string(rope_dims) +
               " must be even and at most the head dim " + std::to_string(head_dim));
  if (vocab_size < 1 || vocab_size > kMaxVocab) return bad("vocab size out of range");
  if (context_length < 1) return bad("context_length must be positive");
  if (!(rms_eps > 0.0f) || !(rms_eps < 1.0f))
    return bad("layer_norm_rms_epsilon must be in (0, 1)");
  if (!(rope_freq_base > 1.0f) || !std::isfinite(rope_freq_base))
    return bad("rope.freq_base must be > 1");
  if (!(rope_scale_factor > 0.0f)) return bad("rope.scaling.factor must be positive");
  if (rope_scaling == RopeScaling::kLlama3 &&
      !(rope_high_freq_factor > rope_low_freq_factor && rope_low_freq_factor > 0.0f))
    return bad("llama3 rope needs 0 < low_freq_factor < high_freq_factor");
  return ok_status();
}

std::string ModelConfig::to_string() const {
  char buf[512];
  const char* scaling = rope_scaling == RopeScaling::kNone     ? "none"
                        : rope_scaling == RopeScaling::kLinear ? "linear"
                                                               : "llama3";
  std::snprintf(
      buf, sizeof buf,
      "%s (%s): %d layers, dim %d, ffn %d, heads %d/%d x %d, vocab %d, ctx %d, "
      "rope %s dims %d base %g scaling %s x%g, eps %g%s",
      arch_name.c_str(), arch_label(arch), n_layers, dim, ffn_dim, n_heads, n_kv_heads, head_dim,
      vocab_size, context_length, rope_style == RopeStyle::kNeox ? "neox" : "normal", rope_dims,
      static_cast<double>(rope_freq_base), scaling, static_cast<double>(rope_scale_factor),
      static_cast<double>(rms_eps), qkv_bias ? ", qkv bias" : "");
  return buf;
}

Expected<ModelConfig> read_model_config(const GgufFile& f) {
  ModelConfig c;
  auto arch_name = f.get_string("general.architecture");
  if (!arch_name.ok())
    return arch_name.status().with_context("metadata key 'general.architecture'");
  c.arch_name = *arch_name;
  TQ_ASSIGN_OR_RETURN(c.arch, parse_arch(c.arch_name));
  const std::string p = c.arch_name + ".";

  TQ_ASSIGN_OR_RETURN(c.n_layers, read_int(f, p + "block_count", -1, 1, kMaxLayers));
  TQ_ASSIGN_OR_RETURN(c.dim, read_int(f, p + "embedding_length", -1, 1, kMaxDim));
  TQ_ASSIGN_OR_RETURN(c.ffn_dim, read_int(f, p + "feed_forward_length", -1, 1, 8 * kMaxDim));
  TQ_ASSIGN_OR_RETURN(c.n_heads, read_int(f, p + "attention.head_count", -1, 1, kMaxHeads));
  TQ_ASSIGN_OR_RETURN(c.n_kv_heads,
                      read_int(f, p + "attention.head_count_kv", c.n_heads, 1, kMaxHeads));
  if (c.dim % c.n_heads != 0 && !f.find(p + "attention.key_length"))
    return invalid_argument("embedding_length " + std::to_string(c.dim) +
                            " is not a multiple of head_count " + std::to_string(c.n_heads));
  TQ_ASSIGN_OR_RETURN(c.head_dim,
                      read_int(f, p + "attention.key_length", c.dim / c.n_heads, 1, kMaxHeadDim));
  TQ_ASSIGN_OR_RETURN(const int value_length,
                      read_int(f, p + "attention.value_length", c.head_dim, 1, kMaxHeadDim));
  if (value_length != c.head_dim)
    return unsupported("attention.value_length != key_length (" + std::to_string(value_length) +
                       " vs " + std::to_string(c.head_dim) + ")");
  TQ_ASSIGN_OR_RETURN(c.context_length, read_int(f, p + "context_length", -1, 1, 1 << 24));
  TQ_ASSIGN_OR_RETURN(c.rms_eps, read_float(f, p + "attention.layer_norm_rms_epsilon", 1e-5));
  TQ_ASSIGN_OR_RETURN(c.rope_freq_base, read_float(f, p + "rope.freq_base", 10000.0));
  TQ_ASSIGN_OR_RETURN(c.rope_dims,
                      read_int(f, p + "rope.dimension_count", c.head_dim, 1, kMaxHeadDim));
  TQ_ASSIGN_OR_RETURN(c.vocab_size, read_vocab_size(f, p));
  TQ_RETURN_IF_ERROR(read_rope_scaling(f, p, c));

  c.rope_style = c.arch == Arch::kQwen2 ? RopeStyle::kNeox : RopeStyle::kNormal;
  c.qkv_bias = c.arch == Arch::kQwen2;
  TQ_RETURN_IF_ERROR(c.validate());
  return c;
}

std::vector<float> rope_inv_freqs(const ModelConfig& cfg, const std::vector<float>& freq_factors) {
  const int n_pairs = cfg.rope_dims / 2;
  std::vector<float> out(n_pairs);
  for (int i = 0; i < n_pairs; ++i) {
    double inv = std::pow(static_cast<double>(cfg.rope_freq_base),
                          -2.0 * i / static_cast<double>(cfg.rope_dims));
    if (cfg.rope_scaling == RopeScaling::kLinear) inv /= cfg.rope_scale_factor;
    if (cfg.rope_scaling == RopeScaling::kLlama3) {
      double factor;
      if (static_cast<int>(freq_factors.size()) == n_pairs) {
        factor = freq_factors[i];
      } else {
        // Meta's llama3 scaling (HF _compute_llama3_parameters): long wavelengths are slowed
        // by `factor`, short ones kept, the band between interpolated smoothly.
        const double old_ctx = cfg.rope_original_context;
        const double wavelen = 2.0 * M_PI / inv;
        const double low_wavelen = old_ctx / cfg.rope_low_freq_factor;
        const double high_wavelen = old_ctx / cfg.rope_high_freq_factor;
        if (wavelen < high_wavelen) {
          factor = 1.0;
        } else if (wavelen > low_wavelen) {
          factor = cfg.rope_scale_factor;
        } else {
          const double smooth = (old_ctx / wavelen - cfg.rope_low_freq_factor) /
                                (cfg.rope_high_freq_factor - cfg.rope_low_freq_factor);
          factor = 1.0 / ((1.0 - smooth) / cfg.rope_scale_factor + smooth);
        }
      }
      inv /= factor;
    }
    out[i] = static_cast<float>(inv);
  }
  return out;
}

}  // namespace tq::model
