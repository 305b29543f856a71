// Log-softmax of one row of logits and its top entries (see logprobs.h).
#include "tq/runtime/logprobs.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace tq::runtime {

double log_partition(const float* logits, int n) {
  float max_logit = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < n; ++i)
    if (logits[i] > max_logit) max_logit = logits[i];  // NaN never wins
  if (max_logit == -std::numeric_limits<float>::infinity()) return max_logit;
  double sum = 0.0;
  for (int i = 0; i < n; ++i)
    if (logits[i] >= -std::numeric_limits<float>::max())  // finite or +inf; not NaN, not -inf
      sum += std::exp(static_cast<double>(logits[i] - max_logit));
  return static_cast<double>(max_logit) + std::log(sum);
}

TokenLogprob token_logprob(const float* logits, int n_vocab, int32_t token, int top_k) {
  TokenLogprob out;
  out.token = token;
  if (n_vocab <= 0) return out;
  const double log_z = log_partition(logits, n_vocab);
  auto lp = [&](int32_t id) { return static_cast<float>(logits[id] - log_z); };
  out.logprob = token >= 0 && token < n_vocab ? lp(token) : -std::numeric_limits<float>::infinity();
  const int k = std::clamp(top_k, 0, n_vocab);
  if (k == 0) return out;
  std::vector<int32_t> ids(static_cast<size_t>(n_vocab));
  for (int i = 0; i < n_vocab; ++i) ids[static_cast<size_t>(i)] = i;
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  out.top.reserve(static_cast<size_t>(k));
  for (int i = 0; i < k; ++i)
    out.top.emplace_back(ids[static_cast<size_t>(i)], lp(ids[static_cast<size_t>(i)]));
  return out;
}

TokenLogprob token_logprob_top(const int32_t* ids, const float* values, int count, double log_z,
                               int32_t token, int top_k) {
  TokenLogprob out;
  out.token = token;
  out.logprob = -std::numeric_limits<float>::infinity();
  auto lp = [&](int i) { return static_cast<float>(values[i] - log_z); };
  for (int i = 0; i < count; ++i)
    if (ids[i] == token) {
      out.logprob = lp(i);
      break;
    }
  const int k = std::clamp(top_k, 0, count);
  out.top.reserve(static_cast<size_t>(k));
  for (int i = 0; i < k; ++i) out.top.emplace_back(ids[i], lp(i));
  return out;
}

}  // namespace tq::runtime
