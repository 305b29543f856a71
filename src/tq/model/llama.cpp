// Loading a Llama-family model (see llama.h): file, config, weights, tokenizer, RoPE
// frequencies. The forward pass itself is in llama_forward.cpp.
#include "tq/model/llama.h"

#include <cmath>
#include <string>

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

}  // namespace tq::model
