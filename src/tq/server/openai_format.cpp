// OpenAI response bodies (see openai_format.h).
#include "tq/server/openai_format.h"

#include <cstdio>

namespace tq::server {
namespace {

using json = nlohmann::json;

json bytes_of(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(static_cast<int>(c));
  return b;
}

const char* object_name(Endpoint e, bool chunk) {
  if (e == Endpoint::kCompletion) return "text_completion";
  return chunk ? "chat.completion.chunk" : "chat.completion";
}

json base_object(const ResponseMeta& m, bool chunk) {
  json j;
  j["id"] = m.id;
  j["object"] = object_name(m.endpoint, chunk);
  j["created"] = m.created;
  j["model"] = m.model;
  j["system_fingerprint"] = m.fingerprint;
  return j;
}

}  // namespace

std::string system_fingerprint(const kv::KvConfig& kv) {
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx",
                static_cast<unsigned long long>(kv.hash(0x7471u /* "tq" */)));
  return "tq-" + kv.k_format.name() + "-" + kv.v_format.name() + "-" + hex;
}

std::string dump_json(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

json usage_json(const UsageCounts& u) {
  return json{{"prompt_tokens", u.prompt_tokens},
              {"completion_tokens", u.completion_tokens},
              {"total_tokens", u.prompt_tokens + u.completion_tokens},
              {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}}};
}

json LogprobsBuilder::chat_entry(int32_t token, float logprob) const {
  const std::string piece = tokenizer_.token_to_piece(token);
  return json{{"token", piece}, {"logprob", logprob}, {"bytes", bytes_of(piece)}};
}

void LogprobsBuilder::add(const runtime::TokenLogprob& lp, size_t text_offset) {
  ++count_;
  if (endpoint_ == Endpoint::kChat) {
    json e = chat_entry(lp.token, lp.logprob);
    json top = json::array();
    for (const auto& [id, p] : lp.top) top.push_back(chat_entry(id, p));
    e["top_logprobs"] = std::move(top);
    content_.push_back(std::move(e));
    return;
  }
  std::string piece = tokenizer_.token_to_piece(lp.token);
  json top = json::object();
  for (const auto& [id, p] : lp.top) top[tokenizer_.token_to_piece(id)] = p;
  // As OpenAI's completions do, the sampled token is always among them (up to logprobs + 1
  // entries; `logprobs: 0` gives the sampled token alone).
  top.emplace(piece, lp.logprob);
  tokens_.push_back(std::move(piece));
  token_logprobs_.push_back(lp.logprob);
  top_logprobs_.push_back(std::move(top));
  text_offset_.push_back(text_offset);
}

json LogprobsBuilder::take() {
  json out;
  if (endpoint_ == Endpoint::kChat) {
    out = json{{"content", std::move(content_)}};
    content_ = json::array();
  } else {
    out = json{{"tokens", std::move(tokens_)},
               {"token_logprobs", std::move(token_logprobs_)},
               {"top_logprobs", std::move(top_logprobs_)},
               {"text_offset", std::move(text_offset_)}};
    tokens_ = json::array();
    token_logprobs_ = json::array();
    top_logprobs_ = json::array();
    text_offset_ = json::array();
  }
  return out;
}

const char* api_finish_reason(runtime::FinishReason r) {
  return r == runtime::FinishReason::kLength ? "length" : "stop";
}

json stream_chunk(const ResponseMeta& m, int index, const std::string& text, bool role,
                  const json& logprobs, const json& finish, bool usage_null) {
  json j = base_object(m, true);
  json choice;
  choice["index"] = index;
  if (m.endpoint == Endpoint::kChat) {
    json delta = json::object();
    if (role) delta["role"] = "assistant";
    if (!text.empty() || role) delta["content"] = text;
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] = logprobs;
  choice["finish_reason"] = finish;
  j["choices"] = json::array({std::move(choice)});
  if (usage_null) j["usage"] = nullptr;
  return j;
}

json usage_chunk(const ResponseMeta& m, const UsageCounts& u) {
  json j = base_object(m, true);
  j["choices"] = json::array();
  j["usage"] = usage_json(u);
  return j;
}

json final_response(const ResponseMeta& m, std::span<const ChoiceOutput> choices,
                    const UsageCounts& u) {
  json j = base_object(m, false);
  json list = json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoiceOutput& c = choices[i];
    json choice;
    choice["index"] = i;
    if (m.endpoint == Endpoint::kChat)
      choice["message"] = json{{"role", "assistant"}, {"content", c.text}};
    else
      choice["text"] = c.text;
    choice["logprobs"] = c.logprobs;
    choice["finish_reason"] = api_finish_reason(c.finish);
    list.push_back(std::move(choice));
  }
  j["choices"] = std::move(list);
  j["usage"] = usage_json(u);
  return j;
}

}  // namespace tq::server
