// Request parsing at the server's edge: valid chat and completion bodies become the expected
// typed parameters (OpenAI's defaults included), and every malformed, mistyped, out-of-range
// or unsupported field is refused with status 400 and the field named in `param`.
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "tq/server/openai_format.h"
#include "tq/server/openai_schema.h"

namespace tq::server {
namespace {

using json = nlohmann::json;

std::optional<ApiError> parse(const std::string& body, Endpoint e, CompletionParams& p) {
  return parse_completion_request(body, e, p);
}

// The error for `body`, which must fail.
ApiError error_of(const std::string& body, Endpoint e = Endpoint::kChat) {
  CompletionParams p;
  auto err = parse(body, e, p);
  EXPECT_TRUE(err.has_value()) << "accepted: " << body;
  return err.value_or(ApiError{});
}

TEST(OpenAiSchema, ChatDefaultsAndFields) {
  CompletionParams p;
  auto err = parse(R"({"model":"m","messages":[{"role":"system","content":"be brief","name":"s"},
      {"role":"user","content":[{"type":"text","text":"hi "},{"type":"text","text":"there"}]}],
      "max_tokens":7,"seed":-3,"stop":"END","stream":true,
      "stream_options":{"include_usage":true},"logprobs":true,"top_logprobs":3,
      "user":"u1","store":true,"metadata":{"k":"v"},"service_tier":null,"top_k":5})",
                   Endpoint::kChat, p);
  ASSERT_FALSE(err) << err->message;
  ASSERT_EQ(p.messages.size(), 2u);
  EXPECT_EQ(p.messages[0].role, "system");
  EXPECT_EQ(p.messages[1].content, "hi there");
  EXPECT_EQ(p.model, "m");
  EXPECT_EQ(p.max_tokens, 7);
  EXPECT_EQ(p.seed, static_cast<uint64_t>(-3));
  EXPECT_EQ(p.stop, std::vector<std::string>{"END"});
  EXPECT_TRUE(p.stream);
  EXPECT_TRUE(p.include_usage);
  EXPECT_TRUE(p.logprobs);
  EXPECT_EQ(p.top_logprobs, 3);
  EXPECT_EQ(p.sampler.top_k, 5);
  // OpenAI's sampling defaults where the body says nothing.
  EXPECT_EQ(p.sampler.temperature, 1.0f);
  EXPECT_EQ(p.sampler.top_p, 1.0f);
  EXPECT_EQ(p.sampler.min_p, 0.0f);
  EXPECT_EQ(p.sampler.presence_penalty, 0.0f);
}

TEST(OpenAiSchema, ChatNullsAndDeveloperRole) {
  CompletionParams p;
  auto err = parse(R"({"messages":[{"role":"developer","content":"x"},{"role":"user","content":"y"},
      {"role":"assistant","content":null}],"temperature":null,"max_tokens":null,"stop":null,
      "tools":[],"response_format":{"type":"text"},"n":1})",
                   Endpoint::kChat, p);
  ASSERT_FALSE(err) << err->message;
  EXPECT_EQ(p.messages[0].role, "system");
  EXPECT_EQ(p.messages[2].content, "");
  EXPECT_FALSE(p.max_tokens.has_value());
  EXPECT_TRUE(p.stop.empty());
}

TEST(OpenAiSchema, MaxCompletionTokensWins) {
  CompletionParams p;
  ASSERT_FALSE(parse(R"({"messages":[{"role":"user","content":"x"}],"max_completion_tokens":9,
      "max_tokens":3})",
                     Endpoint::kChat, p));
  EXPECT_EQ(p.max_tokens, 9);
}

TEST(OpenAiSchema, CompletionPromptForms) {
  CompletionParams p;
  ASSERT_FALSE(
      parse(R"({"prompt":"hello","logprobs":2,"stop":["a","b"]})", Endpoint::kCompletion, p));
  EXPECT_EQ(p.prompt, "hello");
  EXPECT_FALSE(p.prompt_is_tokens);
  EXPECT_TRUE(p.logprobs);
  EXPECT_EQ(p.top_logprobs, 2);
  EXPECT_EQ(p.stop.size(), 2u);

  ASSERT_FALSE(parse(R"({"prompt":["only one"]})", Endpoint::kCompletion, p));
  EXPECT_EQ(p.prompt, "only one");
  ASSERT_FALSE(parse(R"({"prompt":[1,2,300]})", Endpoint::kCompletion, p));
  EXPECT_TRUE(p.prompt_is_tokens);
  EXPECT_EQ(p.prompt_tokens, (std::vector<int32_t>{1, 2, 300}));
  ASSERT_FALSE(parse(R"({"prompt":[[5,6]]})", Endpoint::kCompletion, p));
  EXPECT_EQ(p.prompt_tokens, (std::vector<int32_t>{5, 6}));
}

TEST(OpenAiSchema, MalformedBodies) {
  for (const char* body : {"{", "", "[1,2]", "\"str\"", "{\"messages\": [}", "nul"}) {
    const ApiError e = error_of(body);
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_EQ(e.code, "invalid_json") << body;
  }
  // Nesting deep enough to exhaust a recursive parser's stack is refused before parsing.
  const ApiError deep = error_of(std::string(100000, '['));
  EXPECT_EQ(deep.code, "invalid_json");
  // ... but brackets inside strings do not count.
  CompletionParams p;
  EXPECT_FALSE(
      parse(R"({"prompt":")" + std::string(1000, '[') + R"("})", Endpoint::kCompletion, p));
}

TEST(OpenAiSchema, WrongTypesNameTheField) {
  struct Case {
    const char* body;
    const char* param;
  };
  const Case cases[] = {
      {R"({"messages":"hi"})", "messages"},
      {R"({"messages":[{"role":"user","content":5}]})", "messages[0].content"},
      {R"({"messages":[{"role":7,"content":"x"}]})", "messages[0].role"},
      {R"({"messages":[{"role":"user","content":"x"}],"temperature":"hot"})", "temperature"},
      {R"({"messages":[{"role":"user","content":"x"}],"max_tokens":2.5})", "max_tokens"},
      {R"({"messages":[{"role":"user","content":"x"}],"stream":"yes"})", "stream"},
      {R"({"messages":[{"role":"user","content":"x"}],"stop":[1]})", "stop"},
      {R"({"messages":[{"role":"user","content":"x"}],"logprobs":1})", "logprobs"},
      {R"({"messages":[{"role":"user","content":"x"}],"model":3})", "model"},
      // Fields that change nothing here are still checked against OpenAI's types.
      {R"({"messages":[{"role":"user","content":"x"}],"user":7})", "user"},
      {R"({"messages":[{"role":"user","content":"x"}],"store":"yes"})", "store"},
      {R"({"messages":[{"role":"user","content":"x"}],"metadata":[]})", "metadata"},
      {R"({"messages":[{"role":"user","content":"x"}],"metadata":{"k":1}})", "metadata.k"},
      {R"({"messages":[{"role":"user","content":"x"}],"service_tier":{}})", "service_tier"},
      {R"({"messages":[{"role":"user","content":"x","name":["a"]}]})", "messages[0].name"},
  };
  for (const auto& c : cases) {
    const ApiError e = error_of(c.body);
    EXPECT_EQ(e.status, 400) << c.body;
    EXPECT_EQ(e.param, c.param) << c.body;
    EXPECT_EQ(e.type, "invalid_request_error");
  }
}

TEST(OpenAiSchema, BadValuesAndUnsupported) {
  struct Case {
    const char* body;
    const char* param;
    const char* code;
  };
  const std::string m = R"("messages":[{"role":"user","content":"x"}])";
  const Case cases[] = {
      {R"({"n":0,)", "n", "invalid_value"},
      {R"({"n":129,)", "n", "invalid_value"},
      {R"({"temperature":2.5,)", "temperature", "invalid_value"},
      {R"({"top_p":-0.1,)", "top_p", "invalid_value"},
      {R"({"presence_penalty":3,)", "presence_penalty", "invalid_value"},
      {R"({"max_tokens":0,)", "max_tokens", "invalid_value"},
      {R"({"top_logprobs":21,"logprobs":true,)", "top_logprobs", "invalid_value"},
      {R"({"top_logprobs":2,)", "top_logprobs", "invalid_value"},
      {R"({"stop":["a","b","c","d","e"],)", "stop", "invalid_value"},
      {R"({"stop":"",)", "stop", "invalid_value"},
      {R"({"stream_options":{"include_usage":true},)", "stream_options", "invalid_value"},
      {R"({"frobnicate":1,)", "frobnicate", "unknown_parameter"},
      {R"({"tools":[{"type":"function"}],)", "tools", "unsupported_parameter"},
      {R"({"logit_bias":{"5":1},)", "logit_bias", "unsupported_parameter"},
  };
  for (const auto& c : cases) {
    const std::string body = std::string(c.body) + m + "}";
    const ApiError e = error_of(body);
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_EQ(e.param, c.param) << body;
    EXPECT_EQ(e.code, c.code) << body;
  }
  EXPECT_EQ(error_of(R"({"messages":[]})").param, "messages");
  EXPECT_EQ(error_of(R"({"messages":[{"role":"wizard","content":"x"}]})").param,
            "messages[0].role");
  EXPECT_EQ(error_of(R"({"messages":[{"role":"user"}]})").code, "missing_required_parameter");
  EXPECT_EQ(error_of(R"({"model":"x"})").code, "missing_required_parameter");
  EXPECT_EQ(error_of(R"({"prompt":"x"})").code, "unknown_parameter");  // chat has no prompt
  EXPECT_EQ(error_of(R"({"prompt":["a","b"]})", Endpoint::kCompletion).param, "prompt");
  EXPECT_EQ(error_of(R"({"prompt":"a","logprobs":6})", Endpoint::kCompletion).param, "logprobs");
  EXPECT_EQ(error_of(R"({"prompt":"a","echo":true})", Endpoint::kCompletion).param, "echo");
}

TEST(OpenAiSchema, ErrorJsonShape) {
  ApiError e = bad_request("nope", "temperature", "invalid_value");
  const json j = e.to_json();
  ASSERT_TRUE(j.contains("error"));
  EXPECT_EQ(j["error"]["message"], "nope");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["param"], "temperature");
  EXPECT_EQ(j["error"]["code"], "invalid_value");
  const json none = bad_request("x").to_json();
  EXPECT_TRUE(none["error"]["param"].is_null());
  EXPECT_TRUE(none["error"]["code"].is_null());
}

TEST(OpenAiFormat, InvalidUtf8IsReplacedNotThrown) {
  const json j = {{"token", std::string("\xe4\xbd", 2)}};
  const std::string s = dump_json(j);
  EXPECT_NE(s.find("\xef\xbf\xbd"), std::string::npos) << s;  // U+FFFD in UTF-8
}

TEST(OpenAiFormat, ChunksAndUsage) {
  ResponseMeta m;
  m.endpoint = Endpoint::kChat;
  m.id = "chatcmpl-1";
  m.created = 5;
  m.model = "tiny";
  const json first = stream_chunk(m, 0, "", true, nullptr, nullptr, true);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(first["usage"].is_null());
  const json last = stream_chunk(m, 2, "", false, nullptr, "length", false);
  EXPECT_EQ(last["choices"][0]["index"], 2);
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(last["choices"][0]["delta"].empty());
  EXPECT_FALSE(last.contains("usage"));
  const json u = usage_chunk(m, UsageCounts{10, 4, 8});
  EXPECT_TRUE(u["choices"].empty());
  EXPECT_EQ(u["usage"]["total_tokens"], 14);
  EXPECT_EQ(u["usage"]["prompt_tokens_details"]["cached_tokens"], 8);
  m.endpoint = Endpoint::kCompletion;
  const ChoiceOutput outs[] = {{"abc", runtime::FinishReason::kStop, nullptr},
                               {"de", runtime::FinishReason::kLength, nullptr}};
  const json full = final_response(m, outs, UsageCounts{3, 2, 0});
  EXPECT_EQ(full["object"], "text_completion");
  ASSERT_EQ(full["choices"].size(), 2u);
  EXPECT_EQ(full["choices"][0]["text"], "abc");
  EXPECT_EQ(full["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(full["choices"][1]["index"], 1);
  EXPECT_EQ(full["choices"][1]["text"], "de");
  EXPECT_EQ(full["choices"][1]["finish_reason"], "length");
  EXPECT_EQ(full["usage"]["completion_tokens"], 2);
}

// system_fingerprint names the default K/V formats and changes with anything else the cache
// stores differently (per-layer formats, the window), and only then.
TEST(OpenAiFormat, SystemFingerprintFollowsTheWholeCacheConfig) {
  const auto config = [](std::vector<std::pair<std::string, std::string>> opts) {
    auto c = kv::parse_kv_options(opts);
    EXPECT_TRUE(c.ok()) << c.status().message();
    return *c;
  };
  const kv::KvConfig base = config({{"-ctk", "tq4"}, {"-ctv", "tq3"}});
  const std::string fp = system_fingerprint(base);
  EXPECT_EQ(fp.rfind("tq-tq4-tq3-", 0), 0u) << fp;
  EXPECT_EQ(fp.size(), std::string("tq-tq4-tq3-").size() + 16) << fp;
  EXPECT_EQ(system_fingerprint(config({{"-ctk", "tq4"}, {"-ctv", "tq3"}})), fp);
  const std::string layers = system_fingerprint(
      config({{"-ctk", "tq4"}, {"-ctv", "tq3"}, {"--kv-layer-types", "0:q8_0"}}));
  const std::string window =
      system_fingerprint(config({{"-ctk", "tq4"}, {"-ctv", "tq3"}, {"--kv-window", "128"}}));
  EXPECT_EQ(layers.rfind("tq-tq4-tq3-", 0), 0u) << layers;
  EXPECT_NE(layers, fp);
  EXPECT_NE(window, fp);
  EXPECT_NE(window, layers);
}

}  // namespace
}  // namespace tq::server
