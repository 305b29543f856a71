// Log-probabilities of generated tokens for the API's `logprobs` option: the log-softmax of the
// model's raw logits (before penalties, temperature and truncation, as OpenAI reports them),
// computed in double so that a vocabulary of 10^5 entries loses no precision in the sum.
#pragma once

#include <cstdint>

#include "tq/runtime/request_channel.h"

namespace tq::runtime {

// logprob of `token` under softmax(logits[0, n_vocab)) and the `top_k` most likely tokens
// (ties by lower id first), most likely first. top_k is clamped to [0, n_vocab].
TokenLogprob token_logprob(const float* logits, int n_vocab, int32_t token, int top_k);

}  // namespace tq::runtime
