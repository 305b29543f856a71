// The Llama-family forward pass (see llama.h), over a batch of sequences whose tokens are the
// rows of one pass: every matmul streams its weights once for all rows, and only attention
// runs per sequence (each through its own cache). Conventions follow llama.cpp's
// llm_build_llama and llm_build_qwen2: GGUF llama q/k rows are permuted by the converter so
// RoPE pairs are adjacent (2i, 2i+1); qwen2 keeps HF's layout and uses NEOX pairs (i, i + d/2).
#include "tq/model/llama.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "tq/backend/cpu/matmul.h"
#include "tq/backend/cpu/ops.h"

namespace tq::model {
namespace cpu = backend::cpu;

namespace {

// How many of a sequence's rows (its last ones) get logits.
int logit_rows(const BatchSequence& b) {
  switch (b.logits_mode) {
    case LogitsMode::kNone:
      return 0;
    case LogitsMode::kLast:
      return 1;
    case LogitsMode::kAll:
      return b.n;
  }
  return 0;
}

}  // namespace

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

void Model::compute_rope_tables(int row0, int pos0, int n, ForwardScratch& s) const {
  const int half = config_.rope_dims / 2;
  for (int t = 0; t < n; ++t) {
    const double pos = pos0 + t;
    const size_t row = static_cast<size_t>(row0 + t) * half;
    for (int i = 0; i < half; ++i) {
      // Angle in double: at positions near 10^5 a float product loses the low bits.
      const double a = pos * static_cast<double>(inv_freq_[i]);
      s.cos_[row + i] = static_cast<float>(std::cos(a));
      s.sin_[row + i] = static_cast<float>(std::sin(a));
    }
  }
}

Expected<int> Model::validate_batch(std::span<const BatchSequence> seqs) const {
  const ModelConfig& c = config_;
  if (seqs.empty()) return invalid_argument("forward: no sequences");
  int64_t rows = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const BatchSequence& b = seqs[i];
    // Built only for an error (no allocation per decode step); one sequence (forward()) needs
    // no index.
    const auto at = [&] {
      return seqs.size() == 1 ? std::string("forward: ")
                              : "forward: sequence " + std::to_string(i) + ": ";
    };
    if (b.n < 1) return invalid_argument(at() + "token count must be positive");
    if (b.tokens == nullptr || b.kv == nullptr)
      return invalid_argument(at() + "tokens and kv are required");
    if (b.logits_mode != LogitsMode::kNone && b.logits == nullptr)
      return invalid_argument(at() + "logits buffer is null");
    for (int t = 0; t < b.n; ++t)
      if (b.tokens[t] < 0 || b.tokens[t] >= c.vocab_size)
        return invalid_argument(at() + "token id " + std::to_string(b.tokens[t]) + " at " +
                                std::to_string(t) + " is outside the vocab [0, " +
                                std::to_string(c.vocab_size) + ")");
    const int pos0 = b.kv->length();
    if (b.n > b.kv->capacity() - pos0)
      return resource_exhausted(at() + std::to_string(pos0) + " cached + " + std::to_string(b.n) +
                                " new tokens exceed the context of " +
                                std::to_string(b.kv->capacity()));
    // Two items on one cache would both take positions from the same length().
    for (size_t j = 0; j < i; ++j)
      if (seqs[j].kv == b.kv)
        return invalid_argument(at() + "shares its cache with sequence " + std::to_string(j));
    rows += b.n;
  }
  // The scratch and matmul index rows with int.
  if (rows > (1 << 24)) return invalid_argument("forward: " + std::to_string(rows) + " rows");
  return static_cast<int>(rows);
}

Status Model::run_layer(int l, std::span<const BatchSequence> seqs, int n, ThreadPool& pool,
                        ForwardScratch& s) const {
  const ModelConfig& c = config_;
  const LayerWeights& L = weights_.layers[l];
  const int half = c.rope_dims / 2;
  const bool neox = c.rope_style == RopeStyle::kNeox;

  // Attention block: projections over all rows, attention per sequence over its rows.
  for (int t = 0; t < n; ++t)
    cpu::rmsnorm(&s.x_[static_cast<size_t>(t) * c.dim], L.attn_norm.data(),
                 &s.xn_[static_cast<size_t>(t) * c.dim], c.dim, c.rms_eps);
  TQ_RETURN_IF_ERROR(cpu::matmul(pool, L.wq, s.xn_.data(), n, s.q_.data(), activations_));
  TQ_RETURN_IF_ERROR(cpu::matmul(pool, L.wk, s.xn_.data(), n, s.k_.data(), activations_));
  TQ_RETURN_IF_ERROR(cpu::matmul(pool, L.wv, s.xn_.data(), n, s.v_.data(), activations_));
  if (!L.bq.empty()) cpu::add_bias_rows(s.q_.data(), L.bq.data(), n, c.q_dim());
  if (!L.bk.empty()) cpu::add_bias_rows(s.k_.data(), L.bk.data(), n, c.kv_dim());
  if (!L.bv.empty()) cpu::add_bias_rows(s.v_.data(), L.bv.data(), n, c.kv_dim());
  for (int t = 0; t < n; ++t) {
    const float* ct = &s.cos_[static_cast<size_t>(t) * half];
    const float* st = &s.sin_[static_cast<size_t>(t) * half];
    cpu::rope(&s.q_[static_cast<size_t>(t) * c.q_dim()], c.n_heads, c.head_dim, c.rope_dims, ct, st,
              neox);
    cpu::rope(&s.k_[static_cast<size_t>(t) * c.kv_dim()], c.n_kv_heads, c.head_dim, c.rope_dims, ct,
              st, neox);
  }
  size_t row = 0;
  for (const BatchSequence& b : seqs) {
    b.kv->observe_queries(l, b.n, &s.q_[row * c.q_dim()]);
    TQ_RETURN_IF_ERROR(b.kv->append(l, b.n, &s.k_[row * c.kv_dim()], &s.v_[row * c.kv_dim()]));
    TQ_RETURN_IF_ERROR(
        b.kv->attend(l, b.n, &s.q_[row * c.q_dim()], &s.att_[row * c.q_dim()], pool));
    row += static_cast<size_t>(b.n);
  }
  TQ_RETURN_IF_ERROR(cpu::matmul(pool, L.wo, s.att_.data(), n, s.proj_.data(), activations_));
  cpu::add(s.x_.data(), s.proj_.data(), n * c.dim);

  // Feed-forward block (SwiGLU).
  for (int t = 0; t < n; ++t)
    cpu::rmsnorm(&s.x_[static_cast<size_t>(t) * c.dim], L.ffn_norm.data(),
                 &s.xn_[static_cast<size_t>(t) * c.dim], c.dim, c.rms_eps);
  TQ_RETURN_IF_ERROR(cpu::matmul(pool, L.w_gate, s.xn_.data(), n, s.gate_.data(), activations_));
  TQ_RETURN_IF_ERROR(cpu::matmul(pool, L.w_up, s.xn_.data(), n, s.up_.data(), activations_));
  cpu::silu_mul(s.gate_.data(), s.up_.data(), n * c.ffn_dim);
  TQ_RETURN_IF_ERROR(cpu::matmul(pool, L.w_down, s.gate_.data(), n, s.proj_.data(), activations_));
  cpu::add(s.x_.data(), s.proj_.data(), n * c.dim);
  return ok_status();
}

Status Model::compute_logits(std::span<const BatchSequence> seqs, ThreadPool& pool,
                             ForwardScratch& s) const {
  const ModelConfig& c = config_;
  const size_t vocab = static_cast<size_t>(c.vocab_size);
  // Gather the final-normed rows that want logits: the LM head is the largest matmul of a
  // small model, and rows of prefill chunks mid-prompt never need it.
  int gathered = 0;
  size_t row = 0;
  float* first_dst = nullptr;
  const float* next_dst = nullptr;
  bool contiguous = true;  // every sequence's logits directly after the previous one's
  for (const BatchSequence& b : seqs) {
    const int want = logit_rows(b);
    for (int t = b.n - want; t < b.n; ++t)
      cpu::rmsnorm(&s.x_[(row + static_cast<size_t>(t)) * c.dim], weights_.output_norm.data(),
                   &s.xn_[static_cast<size_t>(gathered++) * c.dim], c.dim, c.rms_eps);
    if (want > 0) {
      if (first_dst == nullptr)
        first_dst = b.logits;
      else if (b.logits != next_dst)
        contiguous = false;
      next_dst = b.logits + static_cast<size_t>(want) * vocab;
    }
    row += static_cast<size_t>(b.n);
  }
  if (gathered == 0) return ok_status();
  if (contiguous)
    return cpu::matmul(pool, weights_.output, s.xn_.data(), gathered, first_dst, activations_);

  // Scattered buffers: one matmul into the scratch, then a copy per sequence (cheap next to
  // the matmul, which reads vocab x dim weights).
  const size_t need = static_cast<size_t>(gathered) * vocab;
  if (s.logits_.size() < need) s.logits_.resize(need);
  TQ_RETURN_IF_ERROR(
      cpu::matmul(pool, weights_.output, s.xn_.data(), gathered, s.logits_.data(), activations_));
  const float* src = s.logits_.data();
  for (const BatchSequence& b : seqs) {
    const size_t count = static_cast<size_t>(logit_rows(b)) * vocab;
    if (count == 0) continue;
    std::memcpy(b.logits, src, count * sizeof(float));
    src += count;
  }
  return ok_status();
}

Status Model::forward_batch(std::span<const BatchSequence> seqs, ThreadPool& pool,
                            ForwardScratch& s) const {
  const ModelConfig& c = config_;
  TQ_ASSIGN_OR_RETURN(const int n, validate_batch(seqs));

  s.reserve(c, n);
  const size_t emb_row = quant::ggml_row_bytes(weights_.token_embd.type, c.dim);
  int row = 0;
  for (const BatchSequence& b : seqs) {
    for (int t = 0; t < b.n; ++t)
      cpu::dequantize_row(weights_.token_embd.type,
                          weights_.token_embd.data + emb_row * static_cast<size_t>(b.tokens[t]),
                          &s.x_[static_cast<size_t>(row + t) * c.dim], c.dim);
    compute_rope_tables(row, b.kv->length(), b.n, s);
    row += b.n;
  }

  for (int l = 0; l < c.n_layers; ++l) {
    const Status st = run_layer(l, seqs, n, pool, s);
    if (!st.ok()) return st.with_context("layer " + std::to_string(l));
  }
  for (const BatchSequence& b : seqs) TQ_RETURN_IF_ERROR(b.kv->commit(b.n));
  return compute_logits(seqs, pool, s);
}

Status Model::forward(const ForwardArgs& a) const {
  if (a.pool == nullptr || a.scratch == nullptr)
    return invalid_argument("forward: pool and scratch are required");
  const BatchSequence one{a.tokens, a.n, a.kv, a.logits_mode, a.logits};
  return forward_batch(std::span<const BatchSequence>(&one, 1), *a.pool, *a.scratch);
}

}  // namespace tq::model
