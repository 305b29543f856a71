// The Llama-family forward pass (see llama.h). Conventions follow llama.cpp's llm_build_llama
// and llm_build_qwen2: GGUF llama q/k rows are permuted by the converter so RoPE pairs are
// adjacent (2i, 2i+1); qwen2 keeps HF's layout and uses NEOX pairs (i, i + d/2).
#include "tq/model/llama.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "tq/backend/cpu/matmul.h"
#include "tq/backend/cpu/ops.h"

namespace tq::model {
namespace cpu = backend::cpu;

void ForwardScratch::reserve(const ModelConfig& c, int n) {
  if (n <= n_tokens_) return;
  n_tokens_ = n;
  const size_t sn = static_cast<size_t>(n);
  x_.resize(sn * c.dim);
  xn_.resize(sn * c.dim);
  q_.resize(sn * c.q_dim());
  k_.resize(sn * c.kv_dim());
  v_.resize(sn * c.kv_dim());
  att_.resize(sn * c.q_dim());
  proj_.resize(sn * c.dim);
  gate_.resize(sn * c.ffn_dim);
  up_.resize(sn * c.ffn_dim);
  cos_.resize(sn * (c.rope_dims / 2));
  sin_.resize(sn * (c.rope_dims / 2));
}

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

void Model::compute_rope_tables(int pos0, int n, ForwardScratch& s) const {
  const int half = config_.rope_dims / 2;
  for (int t = 0; t < n; ++t) {
    const double pos = pos0 + t;
    for (int i = 0; i < half; ++i) {
      // Angle in double: at positions near 10^5 a float product loses the low bits.
      const double a = pos * static_cast<double>(inv_freq_[i]);
      s.cos_[static_cast<size_t>(t) * half + i] = static_cast<float>(std::cos(a));
      s.sin_[static_cast<size_t>(t) * half + i] = static_cast<float>(std::sin(a));
    }
  }
}

Status Model::run_layer(int l, const ForwardArgs& a) const {
  const ModelConfig& c = config_;
  const LayerWeights& L = weights_.layers[l];
  ForwardScratch& s = *a.scratch;
  ThreadPool& pool = *a.pool;
  const int n = a.n;
  const int half = c.rope_dims / 2;
  const bool neox = c.rope_style == RopeStyle::kNeox;

  // Attention block.
  for (int t = 0; t < n; ++t)
    cpu::rmsnorm(&s.x_[static_cast<size_t>(t) * c.dim], L.attn_norm.data(),
                 &s.xn_[static_cast<size_t>(t) * c.dim], c.dim, c.rms_eps);
  TQ_RETURN_IF_ERROR(cpu::matmul(pool, L.wq, s.xn_.data(), n, s.q_.data()));
  TQ_RETURN_IF_ERROR(cpu::matmul(pool, L.wk, s.xn_.data(), n, s.k_.data()));
  TQ_RETURN_IF_ERROR(cpu::matmul(pool, L.wv, s.xn_.data(), n, s.v_.data()));
  if (!L.bq.empty()) cpu::add_bias_rows(s.q_.data(), L.bq.data(), n, c.q_dim());
  if (!L.bk.empty()) cpu::add_bias_rows(s.k_.data(), L.bk.data(), n, c.kv_dim());
  if (!L.bv.empty()) cpu::add_bias_rows(s.v_.data(), L.bv.data(), n, c.kv_dim());
  for (int t = 0; t < n; ++t) {
    const float* ct = &s.cos_[static_cast<size_t>(t) * half];
    const float* st = &s.sin_[static_cast<size_t>(t) * half];
    cpu::rope(&s.q_[static_cast<size_t>(t) * c.q_dim()], c.n_heads, c.head_dim, c.rope_dims, ct,
              st, neox);
    cpu::rope(&s.k_[static_cast<size_t>(t) * c.kv_dim()], c.n_kv_heads, c.head_dim, c.rope_dims,
              ct, st, neox);
  }
  TQ_RETURN_IF_ERROR(a.kv->append(l, n, s.k_.data(), s.v_.data()));
  TQ_RETURN_IF_ERROR(a.kv->attend(l, n, s.q_.data(), s.att_.data(), pool));
  TQ_RETURN_IF_ERROR(cpu::matmul(pool, L.wo, s.att_.data(), n, s.proj_.data()));
  cpu::add(s.x_.data(), s.proj_.data(), n * c.dim);

  // Feed-forward block (SwiGLU).
  for (int t = 0; t < n; ++t)
    cpu::rmsnorm(&s.x_[static_cast<size_t>(t) * c.dim], L.ffn_norm.data(),
                 &s.xn_[static_cast<size_t>(t) * c.dim], c.dim, c.rms_eps);
  TQ_RETURN_IF_ERROR(cpu::matmul(pool, L.w_gate, s.xn_.data(), n, s.gate_.data()));
  TQ_RETURN_IF_ERROR(cpu::matmul(pool, L.w_up, s.xn_.data(), n, s.up_.data()));
  cpu::silu_mul(s.gate_.data(), s.up_.data(), n * c.ffn_dim);
  TQ_RETURN_IF_ERROR(cpu::matmul(pool, L.w_down, s.gate_.data(), n, s.proj_.data()));
  cpu::add(s.x_.data(), s.proj_.data(), n * c.dim);
  return ok_status();
}

Status Model::forward(const ForwardArgs& a) const {
  const ModelConfig& c = config_;
  if (a.n < 1) return invalid_argument("forward: token count must be positive");
  if (a.tokens == nullptr || a.kv == nullptr || a.pool == nullptr || a.scratch == nullptr)
    return invalid_argument("forward: tokens, kv, pool and scratch are required");
  if (a.logits_mode != LogitsMode::kNone && a.logits == nullptr)
    return invalid_argument("forward: logits buffer is null");
  for (int t = 0; t < a.n; ++t)
    if (a.tokens[t] < 0 || a.tokens[t] >= c.vocab_size)
      return invalid_argument("forward: token id " + std::to_string(a.tokens[t]) + " at " +
                              std::to_string(t) + " is outside the vocab [0, " +
                              std::to_string(c.vocab_size) + ")");
  const int pos0 = a.kv->length();
  if (a.n > a.kv->capacity() - pos0)
    return resource_exhausted("forward: " + std::to_string(pos0) + " cached + " +
                              std::to_string(a.n) + " new tokens exceed the context of " +
                              std::to_string(a.kv->capacity()));

  ForwardScratch& s = *a.scratch;
  s.reserve(c, a.n);
  const size_t emb_row = quant::ggml_row_bytes(weights_.token_embd.type, c.dim);
  for (int t = 0; t < a.n; ++t)
    cpu::dequantize_row(weights_.token_embd.type,
                        weights_.token_embd.data + emb_row * static_cast<size_t>(a.tokens[t]),
                        &s.x_[static_cast<size_t>(t) * c.dim], c.dim);
  compute_rope_tables(pos0, a.n, s);

  for (int l = 0; l < c.n_layers; ++l) {
    const Status st = run_layer(l, a);
    if (!st.ok()) return st.with_context("layer " + std::to_string(l));
  }
  TQ_RETURN_IF_ERROR(a.kv->commit(a.n));

  if (a.logits_mode == LogitsMode::kNone) return ok_status();
  const int first = a.logits_mode == LogitsMode::kAll ? 0 : a.n - 1;
  const int rows = a.n - first;
  for (int t = 0; t < rows; ++t)
    cpu::rmsnorm(&s.x_[static_cast<size_t>(first + t) * c.dim], weights_.output_norm.data(),
                 &s.xn_[static_cast<size_t>(t) * c.dim], c.dim, c.rms_eps);
  return cpu::matmul(*a.pool, weights_.output, s.xn_.data(), rows, a.logits);
}

}  // namespace tq::model
