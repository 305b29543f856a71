// Loading a Llama-family model (see llama.h): file, config, weights, tokenizer, RoPE
// frequencies. The forward pass itself is in llama_forward.cpp.
#include "tq/model/llama.h"

#include <cmath>
#include <string>

#include "tq/quant/weight_dequant.h"

namespace tq::model {

Expected<std::unique_ptr<Model>> Model::load(const std::string& path) {
  auto file = GgufFile::open(path);
  if (!file.ok()) return file.status().with_context("loading model '" + path + "'");
  auto model = from_gguf(std::move(file).value());
  if (!model.ok()) return model.status().with_context("loading model '" + path + "'");
  return model;
}

Expected<std::unique_ptr<Model>> Model::from_gguf(std::unique_ptr<GgufFile> file) {
  if (!file) return invalid_argument("no GGUF file");
  std::unique_ptr<Model> m(new Model());
  m->file_ = std::move(file);
  TQ_ASSIGN_OR_RETURN(m->config_, read_model_config(*m->file_));
  TQ_ASSIGN_OR_RETURN(m->weights_, bind_weights(*m->file_, m->config_));
  TQ_ASSIGN_OR_RETURN(m->tokenizer_, load_tokenizer(*m->file_));
  if (m->tokenizer_->vocab_size() > m->config_.vocab_size)
    return invalid_argument("tokenizer has " + std::to_string(m->tokenizer_->vocab_size()) +
                            " tokens but the model's vocab is " +
                            std::to_string(m->config_.vocab_size));
  m->inv_freq_ = rope_inv_freqs(m->config_, m->weights_.rope_freqs);
  return m;
}

Expected<std::unique_ptr<Model>> Model::from_bytes(std::vector<uint8_t> bytes) {
  // The vector's heap buffer does not move when the vector is moved into the model.
  auto file = GgufFile::parse(bytes.data(), bytes.size());
  if (!file.ok()) return file.status();
  TQ_ASSIGN_OR_RETURN(auto model, from_gguf(std::move(file).value()));
  model->bytes_ = std::move(bytes);
  return model;
}

kv::AttentionShape Model::attention_shape() const {
  kv::AttentionShape s;
  s.n_layers = config_.n_layers;
  s.n_heads = config_.n_heads;
  s.n_kv_heads = config_.n_kv_heads;
  s.head_dim = config_.head_dim;
  s.scale = 1.0f / std::sqrt(static_cast<float>(config_.head_dim));
  return s;
}

Expected<std::vector<float>> Model::value_output_weights() const {
  const ModelConfig& c = config_;
  const int group = c.n_heads / c.n_kv_heads;
  const size_t hd = static_cast<size_t>(c.head_dim);
  std::vector<float> out;
  out.reserve(static_cast<size_t>(c.n_layers) * static_cast<size_t>(c.n_kv_heads) * hd);
  std::vector<float> row;
  std::vector<double> col2;  // [q_dim] squared column norms
  for (int l = 0; l < c.n_layers; ++l) {
    const backend::cpu::WeightView& wo = weights_.layers[static_cast<size_t>(l)].wo;
    if (wo.cols != static_cast<int64_t>(c.n_heads) * c.head_dim)
      return internal_error("layer " + std::to_string(l) + " attn_output: " +
                            std::to_string(wo.cols) + " columns, expected n_heads * head_dim");
    const size_t row_bytes = quant::ggml_row_bytes(wo.type, static_cast<uint64_t>(wo.cols));
    row.resize(static_cast<size_t>(wo.cols));
    col2.assign(row.size(), 0.0);
    for (int64_t r = 0; r < wo.rows; ++r) {
      TQ_RETURN_IF_ERROR(quant::dequantize_row_ref(wo.type,
                                                   wo.data + static_cast<size_t>(r) * row_bytes,
                                                   row.data(), wo.cols)
                             .with_context("layer " + std::to_string(l) + " attn_output"));
      for (size_t e = 0; e < row.size(); ++e) col2[e] += static_cast<double>(row[e]) * row[e];
    }
    for (int g = 0; g < c.n_kv_heads; ++g)
      for (size_t j = 0; j < hd; ++j) {
        double sum = 0.0;
        for (int m = 0; m < group; ++m) sum += col2[static_cast<size_t>(g * group + m) * hd + j];
        out.push_back(static_cast<float>(std::sqrt(sum)));
      }
  }
  return out;
}

}  // namespace tq::model
