// libFuzzer target for the OpenAI request schema at the server's edge: any body sent to
// /v1/chat/completions or /v1/completions must parse into CompletionParams or fail with an
// ApiError (a 4xx status, a message, OpenAI's JSON shape), never crash, hang or exhaust memory;
// and what parses must be within the schema's limits, since nothing below the edge checks again.
//   cmake -S . -B build-fuzz -DTQ_FUZZ=ON -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
//     -DTQ_BUILD_BENCH=OFF -DTQ_BUILD_TESTS=OFF -DTQ_BUILD_TOOLS=OFF -DTQ_BUILD_SERVER=OFF
//   cmake --build build-fuzz --target openai_request_fuzz
//   build-fuzz/openai_request_fuzz -max_total_time=60 -max_len=8192 CORPUS fuzz/corpus/openai
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "tq/server/openai_schema.h"

namespace {

using tq::server::CompletionParams;
using tq::server::Endpoint;

void check_error(const tq::server::ApiError& e) {
  if (e.status < 400 || e.status > 499 || e.message.empty()) __builtin_trap();
  const nlohmann::json j = e.to_json();
  if (!j.contains("error") || !j["error"].contains("message")) __builtin_trap();
  (void)j.dump();  // the error's own text must serialise (it may quote the input's bytes)
}

bool in(double v, double lo, double hi) { return std::isfinite(v) && v >= lo && v <= hi; }

// What the engine takes for granted of parsed parameters.
void check_params(const CompletionParams& p, Endpoint endpoint) {
  if (endpoint == Endpoint::kChat) {
    if (p.messages.empty()) __builtin_trap();
    for (const auto& m : p.messages)
      if (m.role != "system" && m.role != "user" && m.role != "assistant") __builtin_trap();
    if (p.top_logprobs < 0 || p.top_logprobs > tq::server::kMaxChatTopLogprobs) __builtin_trap();
  } else {
    for (int32_t t : p.prompt_tokens)
      if (t < 0) __builtin_trap();
    if (p.top_logprobs < 0 || p.top_logprobs > tq::server::kMaxCompletionLogprobs) __builtin_trap();
  }
  if (p.top_logprobs > 0 && !p.logprobs) __builtin_trap();
  if (p.n < 1 || p.n > tq::server::kMaxChoices) __builtin_trap();
  if (p.max_tokens && *p.max_tokens < 1) __builtin_trap();
  if (p.stop.size() > static_cast<size_t>(tq::server::kMaxStopStrings)) __builtin_trap();
  for (const auto& s : p.stop)
    if (s.empty()) __builtin_trap();
  const auto& s = p.sampler;
  if (!in(s.temperature, 0.0, 2.0) || !in(s.top_p, 0.0, 1.0) || s.top_p <= 0.0f ||
      !in(s.min_p, 0.0, 1.0) || s.top_k < 0 || !in(s.presence_penalty, -2.0, 2.0) ||
      !in(s.frequency_penalty, -2.0, 2.0) || !in(s.repeat_penalty, 0.01, 10.0))
    __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  for (Endpoint endpoint : {Endpoint::kChat, Endpoint::kCompletion}) {
    CompletionParams p;
    if (auto e = tq::server::parse_completion_request(body, endpoint, p))
      check_error(*e);
    else
      check_params(p, endpoint);
  }
  return 0;
}
