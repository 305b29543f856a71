// What the scheduler tests (tests/server/scheduler_test.cpp on the CPU path,
// tests/runtime/device_scheduler_test.cpp on the device path) share: deterministic prompts,
// greedy requests, collecting a request's events, and waiting for a condition.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tq/runtime/request_channel.h"

namespace tq::test {

using runtime::GenerationRequest;
using runtime::RequestChannel;
using runtime::StreamEvent;

// n token ids in [5, 5 + span): different salts give different prompts.
inline std::vector<int32_t> prompt_of(int n, int salt, int span) {
  std::vector<int32_t> p;
  for (int i = 0; i < n; ++i) p.push_back((i * 37 + salt * 101 + 3) % span + 5);
  return p;
}

inline GenerationRequest greedy_request(std::vector<int32_t> prompt, int max_tokens) {
  GenerationRequest r;
  r.prompt = std::move(prompt);
  r.max_tokens = max_tokens;
  r.sampler.temperature = 0.0f;
  r.stop_at_eog = false;  // random weights: an EOG token may come any time
  return r;
}

struct Result {
  std::vector<int32_t> tokens;
  std::string text;
  StreamEvent done;
  std::vector<runtime::TokenLogprob> logprobs;  // of the tokens that had one
};

// Every event of the request until its final one.
inline Result collect(RequestChannel& ch) {
  Result r;
  std::vector<StreamEvent> ev;
  for (;;) {
    ev.clear();
    ch.pop_all(ev, std::chrono::milliseconds(50));
    for (auto& e : ev) {
      if (e.kind == StreamEvent::Kind::kDone) {
        r.done = e;
        return r;
      }
      if (e.token >= 0) r.tokens.push_back(e.token);
      if (e.has_logprob) r.logprobs.push_back(e.logprob);
      r.text += e.text;
    }
  }
}

// Waits until `pred` holds, up to 10 s.
template <typename Pred>
bool eventually(Pred pred) {
  for (int i = 0; i < 1000; ++i) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return pred();
}

}  // namespace tq::test
