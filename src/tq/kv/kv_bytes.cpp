#include "tq/kv/kv_bytes.h"

#include <algorithm>
#include <cstdio>

namespace tq::kv {
namespace {

Status check_shape(const AttentionShape& s) {
  if (s.n_layers < 1 || s.n_heads < 1 || s.n_kv_heads < 1 || s.head_dim < 1)
    return invalid_argument("attention shape needs positive layer, head and dim counts");
  if (s.n_heads % s.n_kv_heads != 0)
    return invalid_argument("n_heads " + std::to_string(s.n_heads) +
                            " is not a multiple of n_kv_heads " + std::to_string(s.n_kv_heads));
  return ok_status();
}

}  // namespace

std::string KvBytesPerToken::to_string() const {
  char buf[200];
  std::snprintf(buf, sizeof buf,
                "%.1f B/token at ctx %d (%.2fx vs f16; K %.3f b/elt, V %.3f b/elt)", amortized,
                context, ratio_vs_f16(), k_bits_per_element, v_bits_per_element);
  return buf;
}

size_t kv_f16_token_bytes(const AttentionShape& s) {
  return static_cast<size_t>(s.n_layers) * static_cast<size_t>(s.n_kv_heads) * 2 * 2 *
         static_cast<size_t>(s.head_dim);
}

size_t kv_key_mean_bytes(const KvConfig& config, const AttentionShape& s) {
  size_t layers = 0;
  for (int l = 0; l < s.n_layers; ++l)
    layers += (config.centers_keys(l, s.n_layers) ? 1 : 0) +
              (config.scales_keys(l, s.n_layers) ? 1 : 0) +
              (config.scales_values(l, s.n_layers) ? 1 : 0);
  return layers * static_cast<size_t>(s.n_kv_heads) * static_cast<size_t>(s.head_dim) *
         sizeof(float);
}

Expected<std::vector<size_t>> kv_block_bytes(const KvConfig& config, const AttentionShape& shape) {
  TQ_RETURN_IF_ERROR(check_shape(shape));
  TQ_RETURN_IF_ERROR(config.validate_for(shape.n_layers, shape.head_dim));
  std::vector<size_t> bytes;
  bytes.reserve(static_cast<size_t>(shape.n_layers) * 2);
  const size_t per_block =
      static_cast<size_t>(config.block_tokens) * static_cast<size_t>(shape.n_kv_heads);
  for (int l = 0; l < shape.n_layers; ++l) {
    const LayerFormats f = config.formats_for(l, shape.n_layers);
    bytes.push_back(per_block * f.k.bytes_per_vector(shape.head_dim));
    bytes.push_back(per_block * f.v.bytes_per_vector(shape.head_dim));
  }
  return bytes;
}

Expected<KvBytesPerToken> kv_bytes_per_token(const KvConfig& config, const AttentionShape& shape,
                                             int context) {
  TQ_RETURN_IF_ERROR(check_shape(shape));
  TQ_RETURN_IF_ERROR(config.validate_for(shape.n_layers, shape.head_dim));
  if (context < 1) return invalid_argument("context must be positive for bytes per token");
  KvBytesPerToken r;
  r.context = context;
  const double exact = std::min<double>(context, static_cast<double>(config.window) + config.sinks);
  r.exact_tokens = static_cast<int>(exact);
  double k_bytes = 0, v_bytes = 0;  // per token per KV head, summed over layers
  for (int l = 0; l < shape.n_layers; ++l) {
    const LayerFormats f = config.formats_for(l, shape.n_layers);
    k_bytes += static_cast<double>(f.k.bytes_per_vector(shape.head_dim));
    v_bytes += static_cast<double>(f.v.bytes_per_vector(shape.head_dim));
  }
  r.compressed = shape.n_kv_heads * (k_bytes + v_bytes);
  r.f16 = static_cast<double>(kv_f16_token_bytes(shape));
  r.sequence = kv_key_mean_bytes(config, shape);
  r.amortized =
      ((context - exact) * r.compressed + exact * r.f16 + static_cast<double>(r.sequence)) /
      context;
  const double per_elt = 8.0 / (static_cast<double>(shape.n_layers) * shape.head_dim);
  r.k_bits_per_element = k_bytes * per_elt;
  r.v_bits_per_element = v_bytes * per_elt;
  return r;
}

}  // namespace tq::kv
