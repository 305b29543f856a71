// Parsing and validation of OpenAI completion requests (see openai_schema.h). One table maps
// each accepted field to its reader; anything else is refused as OpenAI refuses it.
#include "tq/server/openai_schema.h"

#include <cmath>
#include <functional>
#include <limits>
#include <utility>

namespace tq::server {
namespace {

using json = nlohmann::json;
using Err = std::optional<ApiError>;

// nlohmann's parser recurses per nesting level; a body of 10^6 '[' must not reach it.
constexpr int kMaxJsonDepth = 64;

bool nesting_within(std::string_view s, int max_depth) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '"')
      in_string = true;
    else if (c == '[' || c == '{') {
      if (++depth > max_depth) return false;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return true;
}

const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::string:
      return "a string";
    case json::value_t::array:
      return "an array";
    case json::value_t::object:
      return "an object";
    case json::value_t::number_float:
      return "a number";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return "an integer";
    default:
      return "invalid";
  }
}

ApiError wrong_type(const std::string& field, const char* want, const json& v) {
  return bad_request(
      "Invalid type for '" + field + "': expected " + want + ", but got " + type_name(v) + ".",
      field, "invalid_type");
}

ApiError out_of_range_error(const std::string& field, const std::string& range) {
  return bad_request("Invalid value for '" + field + "': must be " + range + ".", field,
                     "invalid_value");
}

Err read_bool(const json& v, const std::string& field, bool& out) {
  if (!v.is_boolean()) return wrong_type(field, "a boolean", v);
  out = v.get<bool>();
  return std::nullopt;
}

Err read_int(const json& v, const std::string& field, int64_t lo, int64_t hi, int64_t& out) {
  if (!v.is_number_integer()) return wrong_type(field, "an integer", v);
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi))
    return out_of_range_error(
        field, "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi)
    return out_of_range_error(
        field, "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  out = x;
  return std::nullopt;
}

Err read_float(const json& v, const std::string& field, double lo, double hi, float& out) {
  if (!v.is_number()) return wrong_type(field, "a number", v);
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < lo || x > hi) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "a number in [%g, %g]", lo, hi);
    return out_of_range_error(field, buf);
  }
  out = static_cast<float>(x);
  return std::nullopt;
}

Err read_stop(const json& v, std::vector<std::string>& out) {
  out.clear();
  if (v.is_string()) {
    out.push_back(v.get<std::string>());
  } else if (v.is_array()) {
    if (v.size() > static_cast<size_t>(kMaxStopStrings))
      return bad_request("Invalid value for 'stop': at most " + std::to_string(kMaxStopStrings) +
                             " stop sequences are allowed.",
                         "stop", "invalid_value");
    for (const auto& s : v) {
      if (!s.is_string()) return wrong_type("stop", "a string or an array of strings", s);
      out.push_back(s.get<std::string>());
    }
  } else {
    return wrong_type("stop", "a string or an array of strings", v);
  }
  for (const auto& s : out)
    if (s.empty())
      return bad_request("Invalid value for 'stop': stop sequences must not be empty.", "stop",
                         "invalid_value");
  return std::nullopt;
}

// Text of a message's content: a string, or an array of {"type": "text", "text": ...} parts.
Err read_content(const json& v, const std::string& field, std::string& out) {
  out.clear();
  if (v.is_string()) {
    out = v.get<std::string>();
    return std::nullopt;
  }
  if (!v.is_array()) return wrong_type(field, "a string or an array of content parts", v);
  for (const auto& part : v) {
    if (!part.is_object()) return wrong_type(field, "an array of content parts", part);
    const auto type = part.find("type");
    if (type == part.end() || !type->is_string() || *type != "text")
      return bad_request(
          "Invalid content part in '" + field + "': only parts of type 'text' are supported.",
          field, "invalid_value");
    const auto text = part.find("text");
    if (text == part.end() || !text->is_string())
      return wrong_type(field + ".text", "a string", text == part.end() ? json() : *text);
    out += text->get<std::string>();
  }
  return std::nullopt;
}

Err read_messages(const json& v, std::vector<ChatMessage>& out) {
  if (!v.is_array()) return wrong_type("messages", "an array", v);
  if (v.empty())
    return bad_request("Invalid value for 'messages': at least one message is required.",
                       "messages", "invalid_value");
  out.clear();
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string at = "messages[" + std::to_string(i) + "]";
    const json& m = v[i];
    if (!m.is_object()) return wrong_type(at, "an object", m);
    ChatMessage msg;
    const auto role = m.find("role");
    if (role == m.end())
      return bad_request("Missing required parameter: '" + at + ".role'.", at + ".role",
                         "missing_required_parameter");
    if (!role->is_string()) return wrong_type(at + ".role", "a string", *role);
    msg.role = role->get<std::string>();
    if (msg.role == "developer") msg.role = "system";  // the newer name of the same thing
    if (msg.role != "system" && msg.role != "user" && msg.role != "assistant")
      return bad_request("Invalid value for '" + at + ".role': '" + role->get<std::string>() +
                             "'. Supported values are: 'system', 'developer', 'user' and "
                             "'assistant'.",
                         at + ".role", "invalid_value");
    const auto content = m.find("content");
    if (content == m.end() || content->is_null()) {
      if (msg.role != "assistant")
        return bad_request("Missing required parameter: '" + at + ".content'.", at + ".content",
                           "missing_required_parameter");
    } else if (auto e = read_content(*content, at + ".content", msg.content)) {
      return e;
    }
    for (auto it = m.begin(); it != m.end(); ++it) {
      if (it.key() == "name") {
        if (!it->is_string() && !it->is_null()) return wrong_type(at + ".name", "a string", *it);
      } else if (it.key() != "role" && it.key() != "content") {
        return bad_request("Unrecognized field '" + at + "." + it.key() + "'.", at + "." + it.key(),
                           "unknown_parameter");
      }
    }
    out.push_back(std::move(msg));
  }
  return std::nullopt;
}

Err read_prompt(const json& v, CompletionParams& p) {
  const json* one = &v;
  if (v.is_array() && !v.empty() && (v[0].is_string() || v[0].is_array())) {
    if (v.size() != 1)
      return bad_request("Invalid value for 'prompt': only one prompt per request is supported.",
                         "prompt", "invalid_value");
    one = &v[0];
  }
  if (one->is_string()) {
    p.prompt = one->get<std::string>();
    p.prompt_is_tokens = false;
    return std::nullopt;
  }
  if (one->is_array()) {
    p.prompt_tokens.clear();
    for (const auto& t : *one) {
      if (!t.is_number_integer() || t.get<int64_t>() < 0 ||
          t.get<int64_t>() > std::numeric_limits<int32_t>::max())
        return bad_request("Invalid value for 'prompt': token ids must be non-negative integers.",
                           "prompt", "invalid_value");
      p.prompt_tokens.push_back(static_cast<int32_t>(t.get<int64_t>()));
    }
    p.prompt_is_tokens = true;
    return std::nullopt;
  }
  return wrong_type("prompt", "a string, an array of token ids or an array of one of those", v);
}

// Fields a client may send that change nothing here, with OpenAI's types (null or that type),
// checked all the same: a wrong type is the client's bug, and OpenAI answers it with a 400.
bool ignored_field(const std::string& k) {
  return k == "user" || k == "metadata" || k == "store" || k == "service_tier";
}

Err check_ignored_field(const std::string& k, const json& v) {
  if (v.is_null()) return std::nullopt;
  if (k == "store") return v.is_boolean() ? Err{} : wrong_type(k, "a boolean", v);
  if (k == "metadata") {
    if (!v.is_object()) return wrong_type(k, "an object", v);
    for (auto it = v.begin(); it != v.end(); ++it)
      if (!it->is_string()) return wrong_type(k + "." + it.key(), "a string", *it);
    return std::nullopt;
  }
  return v.is_string() ? Err{} : wrong_type(k, "a string", v);  // user, service_tier
}

// Fields OpenAI defines that tq accepts only at their default: null, or the value below.
Err check_default_only(const std::string& k, const json& v, bool& handled) {
  handled = true;
  if (v.is_null()) return std::nullopt;
  const bool is_default =
      ((k == "tools" || k == "functions") && v.is_array() && v.empty()) ||
      ((k == "tool_choice" || k == "function_call") && v == "none") ||
      (k == "response_format" && v.is_object() && v.value("type", "") == "text" && v.size() == 1) ||
      (k == "logit_bias" && v.is_object() && v.empty()) || (k == "echo" && v == false) ||
      (k == "best_of" && v == 1) ||
      (k == "suffix" && v.is_string() && v.get<std::string>().empty()) ||
      (k == "parallel_tool_calls" && v.is_boolean());
  if (k == "tools" || k == "functions" || k == "tool_choice" || k == "function_call" ||
      k == "response_format" || k == "logit_bias" || k == "echo" || k == "best_of" ||
      k == "suffix" || k == "parallel_tool_calls") {
    if (is_default) return std::nullopt;
    return bad_request("'" + k + "' is not supported by this server.", k, "unsupported_parameter");
  }
  handled = false;
  return std::nullopt;
}

}  // namespace

nlohmann::json ApiError::to_json() const {
  json e;
  e["message"] = message;
  e["type"] = type;
  e["param"] = param.empty() ? json() : json(param);
  e["code"] = code.empty() ? json() : json(code);
  return json{{"error", e}};
}

ApiError bad_request(std::string message, std::string param, std::string code) {
  ApiError e;
  e.status = 400;
  e.message = std::move(message);
  e.param = std::move(param);
  e.code = std::move(code);
  return e;
}

std::optional<ApiError> parse_json_object(std::string_view body, nlohmann::json& out) {
  if (!nesting_within(body, kMaxJsonDepth))
    return bad_request(
        "The request body nests deeper than " + std::to_string(kMaxJsonDepth) + " levels.", "",
        "invalid_json");
  out = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (out.is_discarded())
    return bad_request(
        "We could not parse the JSON body of your request. The body must be valid JSON.", "",
        "invalid_json");
  if (!out.is_object())
    return bad_request("The request body must be a JSON object.", "", "invalid_json");
  return std::nullopt;
}

std::optional<ApiError> parse_completion_request(std::string_view body, Endpoint endpoint,
                                                 CompletionParams& out) {
  json j;
  if (auto err = parse_json_object(body, j)) return err;
  return parse_completion_json(j, endpoint, out);
}

std::optional<ApiError> parse_completion_json(const nlohmann::json& j, Endpoint endpoint,
                                              CompletionParams& p) {
  if (!j.is_object())
    return bad_request("The request body must be a JSON object.", "", "invalid_json");
  const bool chat = endpoint == Endpoint::kChat;
  p = CompletionParams{};
  p.endpoint = endpoint;
  p.sampler.temperature = 1.0f;
  p.sampler.top_k = 0;
  p.sampler.top_p = 1.0f;
  p.sampler.min_p = 0.0f;
  bool have_input = false;
  bool have_stream_options = false;
  std::optional<int64_t> top_logprobs;
  std::optional<int64_t> max_completion_tokens;

  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    const json& v = it.value();
    Err e;
    int64_t i = 0;
    bool handled = false;
    if (auto d = check_default_only(k, v, handled); handled) {
      e = d;
    } else if (ignored_field(k)) {
      e = check_ignored_field(k, v);
    } else if (k == "model") {
      if (!v.is_string())
        e = wrong_type(k, "a string", v);
      else
        p.model = v.get<std::string>();
    } else if (chat && k == "messages") {
      e = read_messages(v, p.messages);
      have_input = true;
    } else if (!chat && k == "prompt") {
      e = read_prompt(v, p);
      have_input = true;
    } else if (v.is_null()) {
      continue;  // every remaining field is optional, and null means "not given"
    } else if (k == "stream") {
      e = read_bool(v, k, p.stream);
    } else if (k == "stream_options") {
      if (!v.is_object()) {
        e = wrong_type(k, "an object", v);
      } else {
        have_stream_options = true;
        for (auto s = v.begin(); s != v.end() && !e; ++s) {
          if (s.key() == "include_usage")
            e = read_bool(s.value(), "stream_options.include_usage", p.include_usage);
          else
            e = bad_request("Unrecognized field 'stream_options." + s.key() + "'.",
                            "stream_options." + s.key(), "unknown_parameter");
        }
      }
    } else if (k == "max_tokens" || k == "max_completion_tokens") {
      e = read_int(v, k, 1, std::numeric_limits<int32_t>::max(), i);
      if (!e && k == "max_completion_tokens") max_completion_tokens = i;
      if (!e && k == "max_tokens" && !p.max_tokens) p.max_tokens = static_cast<int>(i);
    } else if (k == "n") {
      e = read_int(v, k, 1, kMaxChoices, i);
      if (!e) p.n = static_cast<int>(i);
    } else if (k == "temperature") {
      e = read_float(v, k, 0.0, 2.0, p.sampler.temperature);
    } else if (k == "top_p") {
      e = read_float(v, k, 0.0, 1.0, p.sampler.top_p);
      // top_p 0 keeps only the most likely token, as the smallest positive value does.
      if (!e && p.sampler.top_p == 0.0f) p.sampler.top_p = std::numeric_limits<float>::min();
    } else if (k == "top_k") {
      e = read_int(v, k, 0, std::numeric_limits<int32_t>::max(), i);
      if (!e) p.sampler.top_k = static_cast<int>(i);
    } else if (k == "min_p") {
      e = read_float(v, k, 0.0, 1.0, p.sampler.min_p);
    } else if (k == "presence_penalty") {
      e = read_float(v, k, -2.0, 2.0, p.sampler.presence_penalty);
    } else if (k == "frequency_penalty") {
      e = read_float(v, k, -2.0, 2.0, p.sampler.frequency_penalty);
    } else if (k == "repetition_penalty") {
      e = read_float(v, k, 0.01, 10.0, p.sampler.repeat_penalty);
    } else if (k == "seed") {
      e = read_int(v, k, std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max(),
                   i);
      if (!e) p.seed = static_cast<uint64_t>(i);
    } else if (k == "stop") {
      e = read_stop(v, p.stop);
    } else if (k == "ignore_eos") {
      e = read_bool(v, k, p.ignore_eos);
    } else if (chat && k == "logprobs") {
      e = read_bool(v, k, p.logprobs);
    } else if (chat && k == "top_logprobs") {
      e = read_int(v, k, 0, kMaxChatTopLogprobs, i);
      if (!e) top_logprobs = i;
    } else if (!chat && k == "logprobs") {
      e = read_int(v, k, 0, kMaxCompletionLogprobs, i);
      if (!e) {
        p.logprobs = true;
        p.top_logprobs = static_cast<int>(i);
      }
    } else {
      e = bad_request("Unrecognized request argument supplied: " + k, k, "unknown_parameter");
    }
    if (e) return e;
  }

  if (!have_input) {
    const char* field = chat ? "messages" : "prompt";
    return bad_request(std::string("Missing required parameter: '") + field + "'.", field,
                       "missing_required_parameter");
  }
  if (max_completion_tokens) p.max_tokens = static_cast<int>(*max_completion_tokens);
  if (have_stream_options && !p.stream)
    return bad_request("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                       "stream_options", "invalid_value");
  if (top_logprobs) {
    if (!p.logprobs && *top_logprobs > 0)
      return bad_request(
          "Invalid value for 'top_logprobs': 'logprobs' must be true when "
          "'top_logprobs' is given.",
          "top_logprobs", "invalid_value");
    p.top_logprobs = static_cast<int>(*top_logprobs);
  }
  return std::nullopt;
}

}  // namespace tq::server
