// What a client hands the scheduler (GenerationRequest) and how the answer comes back: a
// RequestChannel per request, written by the engine thread (text deltas with their token's
// log-probabilities, then one final event) and read by the thread serving the client, which
// may also cancel it. The engine never blocks on a slow reader: events queue up in memory.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "tq/core/status.h"
#include "tq/runtime/sampler.h"

namespace tq::runtime {

using SteadyClock = std::chrono::steady_clock;

struct GenerationRequest {
  std::vector<int32_t> prompt;            // non-empty, each id in [0, vocab)
  int max_tokens = 16;                    // generated tokens at most (>= 1)
  std::vector<std::string> stop_strings;  // generation ends before the first match
  bool stop_at_eog = true;                // end at the tokenizer's end-of-generation tokens
  SamplerConfig sampler;
  // -1: no log-probabilities; k >= 0: each token's log-probability and the k most likely
  // alternatives (at most kMaxTopLogprobs).
  int logprobs = -1;

  Status validate() const;
};

inline constexpr int kMaxTopLogprobs = 20;

enum class FinishReason {
  kStop,       // end-of-generation token or a stop string
  kLength,     // max_tokens reached, or the context is full
  kCancelled,  // the client went away or the server shut down
  kError,      // the engine failed (message in the event)
};
const char* finish_reason_name(FinishReason r);  // "stop", "length", "cancelled", "error"

// The model's log-probability of one generated token (log-softmax of the raw logits, before
// penalties and temperature, as OpenAI reports them) and its most likely alternatives.
struct TokenLogprob {
  int32_t token = -1;
  float logprob = 0.0f;
  std::vector<std::pair<int32_t, float>> top;  // most likely first
};

struct StreamEvent {
  enum class Kind { kDelta, kDone };
  Kind kind = Kind::kDelta;
  SteadyClock::time_point time;  // when the engine produced it
  // kDelta: one generated token. `text` is what it completed (may be empty while UTF-8 or a
  // possible stop string is held back). token == -1 for a final flush of held-back text.
  int32_t token = -1;
  std::string text;
  bool has_logprob = false;
  TokenLogprob logprob;
  // kDone
  FinishReason finish = FinishReason::kStop;
  std::string error;          // kError: what went wrong
  int prompt_tokens = 0;      // the prompt's length
  int cached_tokens = 0;      // prompt tokens taken from the prefix cache
  int completion_tokens = 0;  // generated tokens, the end-of-generation token excluded
};

class RequestChannel {
 public:
  explicit RequestChannel(SteadyClock::time_point arrival = SteadyClock::now())
      : arrival_(arrival) {}

  // Engine side.
  void push(StreamEvent event);
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }

  // Client side. Waits up to `timeout` for events and moves every pending one into `out`
  // (appended). False when none came.
  bool pop_all(std::vector<StreamEvent>& out, std::chrono::milliseconds timeout);
  // Asks the engine to stop this request and free its cache; a kDone event follows.
  void cancel() { cancelled_.store(true, std::memory_order_release); }
  // True once the kDone event was pushed (it may not have been popped yet).
  bool done() const;
  SteadyClock::time_point arrival() const { return arrival_; }

 private:
  const SteadyClock::time_point arrival_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<StreamEvent> events_;  // guarded by mu_
  bool done_ = false;               // guarded by mu_
  std::atomic<bool> cancelled_{false};
};

}  // namespace tq::runtime
