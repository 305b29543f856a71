// Log-probabilities of generated tokens for the API's `logprobs` option: the log-softmax of the
// model's raw logits (before penalties, temperature and truncation, as OpenAI reports them),
// computed in double so that a vocabulary of 10^5 entries loses no precision in the sum.
#pragma once

#include <cstdint>

#include "tq/runtime/request_channel.h"

namespace tq::runtime {

// log sum_i exp(logits[i]) over [0, n) in double; NaN counts as -inf (as top_logits ranks it).
double log_partition(const float* logits, int n);

// logprob of `token` under softmax(logits[0, n_vocab)) and the `top_k` most likely tokens
// (ties by lower id first), most likely first. top_k is clamped to [0, n_vocab].
TokenLogprob token_logprob(const float* logits, int n_vocab, int32_t token, int top_k);

// The same from what a GPU sends instead of the row: its `count` largest logits in top_logits's
// order (ids, values) and log_z = log_partition of the row. `token` must be among them and
// top_k <= count; else the token's logprob is -inf and the list is cut at count.
TokenLogprob token_logprob_top(const int32_t* ids, const float* values, int count, double log_z,
                               int32_t token, int top_k);

}  // namespace tq::runtime
