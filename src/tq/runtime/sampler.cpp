// The sampling chain (see sampler.h). Buffers are sized once per vocab, so sampling a token
// allocates nothing.
#include "tq/runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

namespace tq::runtime {
namespace {

// A logit as the sampler ranks it: NaN never wins and is never drawn.
float rankable(float logit) {
  return std::isnan(logit) ? -std::numeric_limits<float>::infinity() : logit;
}

// A greedy pick: the candidate's id, or -1 when even the largest logit is -inf (NaN ranked as
// -inf): nothing to pick.
int32_t id_or_none(const Candidate& best) {
  return best.logit > -std::numeric_limits<float>::infinity() ? best.id : -1;
}

bool by_logit_desc(const Candidate& a, const Candidate& b) {
  // Ties by id keep the order (and so the draws) independent of the sort algorithm.
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

}  // namespace

Status SamplerConfig::validate() const {
  if (!std::isfinite(temperature) || temperature < 0.0f)
    return invalid_argument("sampler: temperature must be finite and >= 0");
  if (top_k < 0) return invalid_argument("sampler: top_k must be >= 0 (0 = off)");
  if (!(top_p > 0.0f && top_p <= 1.0f)) return invalid_argument("sampler: top_p must be in (0, 1]");
  if (!(min_p >= 0.0f && min_p <= 1.0f))
    return invalid_argument("sampler: min_p must be in [0, 1]");
  if (!(repeat_penalty > 0.0f) || !std::isfinite(repeat_penalty))
    return invalid_argument("sampler: repeat_penalty must be positive (1 = off)");
  if (repeat_last_n < 0) return invalid_argument("sampler: repeat_last_n must be >= 0");
  if (!std::isfinite(presence_penalty) || !std::isfinite(frequency_penalty))
    return invalid_argument("sampler: presence/frequency penalties must be finite");
  return ok_status();
}

std::string SamplerConfig::to_string() const {
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "temp %g, top_k %d, top_p %g, min_p %g, repeat_penalty %g (last %d), "
                "presence %g, frequency %g, seed %llu",
                static_cast<double>(temperature), top_k, static_cast<double>(top_p),
                static_cast<double>(min_p), static_cast<double>(repeat_penalty), repeat_last_n,
                static_cast<double>(presence_penalty), static_cast<double>(frequency_penalty),
                static_cast<unsigned long long>(seed));
  return buf;
}

Expected<Sampler> Sampler::create(const SamplerConfig& cfg) {
  TQ_RETURN_IF_ERROR(cfg.validate());
  Sampler s(cfg);
  s.history_.reserve(static_cast<size_t>(cfg.repeat_last_n));
  return s;
}

void Sampler::accept(int32_t token) {
  const size_t cap = static_cast<size_t>(cfg_.repeat_last_n);
  if (cap == 0) return;
  if (history_.size() < cap) {
    history_.push_back(token);
  } else {
    history_[history_next_] = token;
    history_next_ = (history_next_ + 1) % cap;
  }
}

void Sampler::reset() {
  history_.clear();
  history_next_ = 0;
  rng_ = Rng(cfg_.seed);
  n_kept_ = 0;
}

int32_t greedy_token(const float* logits, int n) {
  int32_t best = -1;
  float best_v = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < n; ++i)
    if (logits[i] > best_v) best = i, best_v = logits[i];  // NaN compares false
  return best;
}

void Sampler::reserve(int n_vocab) {
  if (cands_.size() >= static_cast<size_t>(n_vocab)) return;
  cands_.resize(n_vocab);
  counts_.assign(n_vocab, 0);
}

float Sampler::penalized(float logit, int count) const {
  const float l = logit <= 0.0f ? logit * cfg_.repeat_penalty : logit / cfg_.repeat_penalty;
  return l - (static_cast<float>(count) * cfg_.frequency_penalty + cfg_.presence_penalty);
}

void Sampler::apply_penalties(int n_vocab) {
  if (!cfg_.penalties()) return;
  for (int32_t t : history_)
    if (t >= 0 && t < n_vocab) ++counts_[t];
  for (int32_t t : history_) {
    if (t < 0 || t >= n_vocab || counts_[t] == 0) continue;
    float& l = cands_[t].logit;  // cands_ is still indexed by id here
    l = penalized(l, counts_[t]);
    counts_[t] = 0;  // applied once per distinct token; leaves counts_ all zero again
  }
}

void Sampler::sort_kept(size_t k) {
  k = std::min(k, n_kept_);
  if (k <= n_sorted_) return;
  std::partial_sort(cands_.begin(), cands_.begin() + k, cands_.begin() + n_kept_, by_logit_desc);
  n_sorted_ = k;
}

void Sampler::apply_top_k() {
  const size_t k = static_cast<size_t>(cfg_.top_k);
  if (k == 0 || k >= n_kept_) return;
  std::nth_element(cands_.begin(), cands_.begin() + k - 1, cands_.begin() + n_kept_, by_logit_desc);
  n_kept_ = k;
  n_sorted_ = 0;
  sort_kept(k);
}

void Sampler::apply_top_p() {
  if (cfg_.top_p >= 1.0f || n_kept_ <= 1) return;
  sort_kept(1);
  const float mx = cands_[0].logit;
  double sum = 0.0;
  for (size_t i = 0; i < n_kept_; ++i) sum += std::exp(static_cast<double>(cands_[i].logit - mx));
  // Sort only as far as needed: the nucleus is usually a few dozen tokens of a large vocab.
  double cum = 0.0;
  size_t i = 0;
  for (size_t k = std::min<size_t>(n_kept_, 64);; k = std::min(n_kept_, k * 4)) {
    sort_kept(k);
    for (; i < k; ++i) {
      cum += std::exp(static_cast<double>(cands_[i].logit - mx)) / sum;
      if (cum >= cfg_.top_p) {
        n_kept_ = i + 1;
        return;
      }
    }
    if (k == n_kept_) return;
  }
}

void Sampler::apply_min_p() {
  if (cfg_.min_p <= 0.0f || n_kept_ <= 1) return;
  float mx = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < n_kept_; ++i) mx = std::max(mx, cands_[i].logit);
  // p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p)
  const float threshold = mx + std::log(cfg_.min_p);
  auto end = std::stable_partition(cands_.begin(), cands_.begin() + n_kept_,
                                   [&](const Candidate& c) { return c.logit >= threshold; });
  n_kept_ = std::max<size_t>(1, static_cast<size_t>(end - cands_.begin()));
  n_sorted_ = std::min(n_sorted_, n_kept_);
}

void Sampler::softmax_kept() {
  // No sort: the draw below is correct in any order, and sorting a whole vocabulary (temperature
  // alone keeps all 49k tokens of SmolLM2) cost ~20% of a server's decode cycles. No max either:
  // draw_kept made the logits relative to the largest (which is 0).
  double sum = 0.0;
  for (size_t i = 0; i < n_kept_; ++i) {
    cands_[i].p = std::exp(cands_[i].logit);
    sum += cands_[i].p;
  }
  for (size_t i = 0; i < n_kept_; ++i) cands_[i].p = static_cast<float>(cands_[i].p / sum);
}

int32_t Sampler::sample(const float* logits, int n_vocab) {
  if (n_vocab <= 0) return -1;
  reserve(n_vocab);
  for (int i = 0; i < n_vocab; ++i) cands_[i] = {i, rankable(logits[i]), 0.0f};
  n_kept_ = static_cast<size_t>(n_vocab);
  n_sorted_ = 0;
  apply_penalties(n_vocab);

  if (cfg_.greedy()) {
    size_t best = 0;
    for (size_t i = 1; i < n_kept_; ++i)
      if (cands_[i].logit > cands_[best].logit) best = i;
    n_kept_ = 0;
    return id_or_none(cands_[best]);
  }

  apply_top_k();
  return draw_kept();
}

int32_t Sampler::draw_kept() {
  apply_top_p();
  apply_min_p();
  // Relative to the largest first: logit / T itself overflows for T near FLT_MIN (1e-38 gave
  // inf - inf = NaN in the softmax, and the draw fell through to the last candidate).
  float mx = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < n_kept_; ++i) mx = std::max(mx, cands_[i].logit);
  if (!std::isfinite(mx)) {  // all NaN or -inf, or an infinite logit: no distribution to draw
    n_kept_ = 0;
    return -1;
  }
  for (size_t i = 0; i < n_kept_; ++i) cands_[i].logit = (cands_[i].logit - mx) / cfg_.temperature;
  softmax_kept();

  const double u = rng_.uniform();
  double cum = 0.0;
  for (size_t i = 0; i < n_kept_; ++i) {
    cum += cands_[i].p;
    if (u < cum) return cands_[i].id;
  }
  return cands_[n_kept_ - 1].id;  // u within rounding of 1
}

int SamplerConfig::top_candidates(int n_vocab) const {
  const int k = greedy() ? 1 : top_k;
  if (k <= 0 || k >= n_vocab) return 0;
  if (repeat_penalty < 1.0f || presence_penalty < 0.0f || frequency_penalty < 0.0f) return 0;
  const long long need = static_cast<long long>(k) + (penalties() ? repeat_last_n : 0);
  return need <= kMaxTopCandidates ? static_cast<int>(std::min<long long>(need, n_vocab)) : 0;
}

void top_logits(const float* logits, int n, int k, int32_t* ids, float* values) {
  static thread_local std::vector<Candidate> c;
  c.resize(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) c[i] = {i, rankable(logits[i]), 0.0f};
  k = std::clamp(k, 0, n);
  std::partial_sort(c.begin(), c.begin() + k, c.end(), by_logit_desc);
  for (int i = 0; i < k; ++i) {
    ids[i] = c[i].id;
    values[i] = c[i].logit;
  }
}

int32_t Sampler::sample_top(const int32_t* ids, const float* logits, int count, int n_vocab) {
  const int need = cfg_.top_candidates(n_vocab);
  if (need == 0 || count < need) return -1;
  reserve(n_vocab);
  for (int i = 0; i < count; ++i) cands_[i] = {ids[i], rankable(logits[i]), 0.0f};
  // The penalties of sample(), on the candidates in the history (the others stay below them).
  if (cfg_.penalties()) {
    for (int32_t t : history_)
      if (t >= 0 && t < n_vocab) ++counts_[t];
    for (int i = 0; i < count; ++i) {
      const int32_t t = cands_[i].id;
      if (t >= 0 && t < n_vocab && counts_[t] > 0)
        cands_[i].logit = penalized(cands_[i].logit, counts_[t]);
    }
    for (int32_t t : history_)
      if (t >= 0 && t < n_vocab) counts_[t] = 0;
  }
  // sample()'s top-k: the k first by (logit, id), sorted.
  std::sort(cands_.begin(), cands_.begin() + count, by_logit_desc);
  if (cfg_.greedy()) {
    n_kept_ = 0;
    return id_or_none(cands_[0]);
  }
  n_kept_ = static_cast<size_t>(cfg_.top_k);
  n_sorted_ = n_kept_;
  return draw_kept();
}

}  // namespace tq::runtime
