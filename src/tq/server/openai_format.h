// OpenAI response bodies: chat.completion / text_completion objects, their streaming chunks,
// usage, and log-probabilities in the chat shape ({"content": [{token, logprob, bytes,
// top_logprobs}]}) and the legacy completions shape (tokens / token_logprobs / top_logprobs /
// text_offset). Token pieces may be partial UTF-8, so every body is serialized with
// dump_json, which replaces invalid bytes instead of throwing.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "tq/kv/kv_config.h"
#include "tq/model/tokenizer.h"
#include "tq/runtime/request_channel.h"
#include "tq/server/openai_schema.h"

namespace tq::server {

// Compact JSON; invalid UTF-8 becomes U+FFFD.
std::string dump_json(const nlohmann::json& j);

struct ResponseMeta {
  Endpoint endpoint = Endpoint::kChat;
  std::string id;       // "chatcmpl-..." / "cmpl-..."
  int64_t created = 0;  // Unix seconds
  std::string model;
  std::string fingerprint;  // system_fingerprint: the cache configuration
};

// "tq-<K>-<V>-<16 hex digits>": the default formats, then a hash of the whole configuration
// (KvConfig::to_string: window, sinks, per-layer formats, scaling), so any change of what the
// cache stores changes the fingerprint a client compares across responses.
std::string system_fingerprint(const kv::KvConfig& kv);

struct UsageCounts {
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_tokens = 0;
};
nlohmann::json usage_json(const UsageCounts& u);

// Collects the log-probabilities of one choice in the endpoint's shape.
class LogprobsBuilder {
 public:
  LogprobsBuilder(Endpoint endpoint, const model::Tokenizer& tokenizer)
      : endpoint_(endpoint), tokenizer_(tokenizer) {}
  // Adds a token; `text_offset` is where its text starts in the choice's text (completions).
  void add(const runtime::TokenLogprob& lp, size_t text_offset);
  // The whole object so far (non-streaming) or what was added since the last take (chunks).
  nlohmann::json take();
  bool empty() const { return count_ == 0; }

 private:
  nlohmann::json chat_entry(int32_t token, float logprob) const;

  Endpoint endpoint_;
  const model::Tokenizer& tokenizer_;
  nlohmann::json content_ = nlohmann::json::array();  // chat
  nlohmann::json tokens_ = nlohmann::json::array();   // completions
  nlohmann::json token_logprobs_ = nlohmann::json::array();
  nlohmann::json top_logprobs_ = nlohmann::json::array();
  nlohmann::json text_offset_ = nlohmann::json::array();
  size_t count_ = 0;
};

// finish_reason of the API: "stop", "length" (cancelled and failed requests never get here).
const char* api_finish_reason(runtime::FinishReason r);

// One streaming chunk of choice `index`. `role` adds "role": "assistant" to a chat delta (a
// choice's first chunk); `finish` null while streaming; `logprobs` null when not asked for;
// `usage_null` adds "usage": null (stream_options.include_usage asks for it on every chunk but
// the last).
nlohmann::json stream_chunk(const ResponseMeta& m, int index, const std::string& text, bool role,
                            const nlohmann::json& logprobs, const nlohmann::json& finish,
                            bool usage_null);
// The last chunk with include_usage: no choices, the usage.
nlohmann::json usage_chunk(const ResponseMeta& m, const UsageCounts& u);

// One finished choice of a non-streaming response.
struct ChoiceOutput {
  std::string text;
  runtime::FinishReason finish = runtime::FinishReason::kStop;
  nlohmann::json logprobs;  // null when not asked for
};

// The non-streaming response: choices in index order.
nlohmann::json final_response(const ResponseMeta& m, std::span<const ChoiceOutput> choices,
                              const UsageCounts& u);

}  // namespace tq::server
