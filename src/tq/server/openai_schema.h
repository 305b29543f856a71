// The OpenAI request schema at the server's edge: JSON bodies of /v1/chat/completions and
// /v1/completions are parsed into one typed CompletionParams and validated completely before
// anything runs, so nothing below sees JSON. Every failure is an ApiError in OpenAI's shape
// ({"error": {"message", "type", "param", "code"}}) with its HTTP status.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "tq/model/chat_template.h"
#include "tq/runtime/sampler.h"

namespace tq::server {

struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // the offending field, "" for none (null in JSON)
  std::string code;   // "" for none (null in JSON)

  nlohmann::json to_json() const;
};

ApiError bad_request(std::string message, std::string param = {}, std::string code = {});

enum class Endpoint { kChat, kCompletion };

// role: system ("developer" is mapped to it), user or assistant; content: text parts joined.
using ChatMessage = model::ChatMessage;

struct CompletionParams {
  Endpoint endpoint = Endpoint::kChat;
  std::string model;                   // echoed back; any name is served by the loaded model
  std::vector<ChatMessage> messages;   // kChat
  std::string prompt;                  // kCompletion, text prompt
  std::vector<int32_t> prompt_tokens;  // kCompletion, a prompt given as token ids
  bool prompt_is_tokens = false;

  int n = 1;  // choices: n sequences of one prompt (its pages stored once, prefix cache)
  bool stream = false;
  bool include_usage = false;     // stream_options.include_usage
  std::optional<int> max_tokens;  // max_tokens / max_completion_tokens; none: to the context
  std::vector<std::string> stop;
  // OpenAI's defaults (temperature 1, top_p 1, no top-k, no min-p), the seed drawn per request
  // when the client sends none.
  runtime::SamplerConfig sampler;
  std::optional<uint64_t> seed;
  bool logprobs = false;    // chat: logprobs; completions: logprobs given (an int)
  int top_logprobs = 0;     // chat: top_logprobs; completions: the logprobs int
  bool ignore_eos = false;  // tq extension: generate through end-of-generation tokens
};

// Limits of the schema (OpenAI's, where it states one).
inline constexpr int kMaxStopStrings = 4;
inline constexpr int kMaxChoices = 128;
inline constexpr int kMaxChatTopLogprobs = 20;
inline constexpr int kMaxCompletionLogprobs = 5;

// Any endpoint's body: a JSON object nested at most 64 levels (checked on the text before the
// parse: a deep value would overflow the stack where it is copied, compared or printed).
std::optional<ApiError> parse_json_object(std::string_view body, nlohmann::json& out);
// Parses a request body. On failure returns the error and leaves `out` unspecified.
std::optional<ApiError> parse_completion_request(std::string_view body, Endpoint endpoint,
                                                 CompletionParams& out);
// The same from parsed JSON (tests, fuzzing).
std::optional<ApiError> parse_completion_json(const nlohmann::json& body, Endpoint endpoint,
                                              CompletionParams& out);

}  // namespace tq::server
