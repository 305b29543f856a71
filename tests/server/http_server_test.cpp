// The HTTP server in process on a loopback port with a small random model: status codes and
// OpenAI error bodies (404, 400, 401, 413, context length), a chat completion and a stream
// whose usage matches the engine's prompt tokens, the JSON views, metrics, and a shutdown that
// returns from serve().
#include <gtest/gtest.h>
#include <httplib.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "tq/model/gguf_writer.h"
#include "tq/model/random_model.h"
#include "tq/server/engine.h"
#include "tq/server/http_server.h"

namespace tq::server {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

std::unique_ptr<model::Model> tiny_model() {
  model::RandomModelSpec s;
  s.n_layers = 2;
  s.dim = 64;
  s.ffn_dim = 96;
  s.n_heads = 4;
  s.n_kv_heads = 2;
  s.vocab_size = 400;
  s.seed = 3;
  model::GgufWriter w;
  EXPECT_TRUE(model::build_random_model(s, w).ok());
  auto m = model::Model::from_bytes(std::move(w.serialize()).value());
  EXPECT_TRUE(m.ok()) << m.status().to_string();
  return std::move(m).value();
}

class HttpServerTest : public ::testing::Test {
 protected:
  void start(const std::string& api_key = {}) {
    EngineOptions eo;
    eo.threads = 2;
    eo.model_id = "tiny";
    eo.scheduler.context = 96;
    eo.scheduler.max_sessions = 2;
    eo.scheduler.step_tokens = 32;
    eo.scheduler.prefill_chunk = 16;
    auto e = Engine::create(tiny_model(), eo);
    ASSERT_TRUE(e.ok()) << e.status().to_string();
    engine_ = std::move(e).value();
    HttpOptions ho;
    ho.port = 0;
    ho.api_key = api_key;
    ho.max_body_bytes = 4096;
    http_ = std::make_unique<HttpServer>(*engine_, ho);
    ASSERT_TRUE(http_->bind().ok());
    thread_ = std::thread([this] { served_ = http_->serve(); });
    client_ = std::make_unique<httplib::Client>("127.0.0.1", http_->port());
    client_->set_read_timeout(30, 0);
  }
  void TearDown() override {
    if (http_) {
      http_->shutdown(1000ms);
      thread_.join();
      EXPECT_TRUE(served_.ok()) << served_.to_string();
    }
  }
  // POSTs JSON; returns (status, parsed body or null).
  std::pair<int, json> post(const std::string& path, const std::string& body,
                            const httplib::Headers& headers = {}) {
    auto r = client_->Post(path.c_str(), headers, body, "application/json");
    if (!r) return {-1, json()};
    return {r->status, json::parse(r->body, nullptr, false)};
  }

  std::unique_ptr<Engine> engine_;
  std::unique_ptr<HttpServer> http_;
  std::unique_ptr<httplib::Client> client_;
  std::thread thread_;
  Status served_;
};

void expect_error_shape(const json& j, const std::string& code) {
  ASSERT_TRUE(j.is_object() && j.contains("error")) << j.dump();
  for (const char* k : {"message", "type", "param", "code"})
    EXPECT_TRUE(j["error"].contains(k)) << k << " missing in " << j.dump();
  if (!code.empty()) EXPECT_EQ(j["error"]["code"], code) << j.dump();
}

TEST_F(HttpServerTest, ErrorsHaveOpenAiShapeAndStatus) {
  start();
  auto r = client_->Get("/v1/nope");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  expect_error_shape(json::parse(r->body, nullptr, false), "not_found");

  auto [s1, j1] = post("/v1/chat/completions", "{not json");
  EXPECT_EQ(s1, 400);
  expect_error_shape(j1, "invalid_json");
  auto [s2, j2] =
      post("/v1/chat/completions", R"({"messages":[{"role":"user","content":"x"}],"n":0})");
  EXPECT_EQ(s2, 400);
  EXPECT_EQ(j2["error"]["param"], "n");
  // More choices than the queue takes can never run: refused, not queued.
  auto [sn, jn] =
      post("/v1/chat/completions", R"({"messages":[{"role":"user","content":"x"}],"n":100})");
  EXPECT_EQ(sn, 400);
  EXPECT_EQ(jn["error"]["param"], "n");
  EXPECT_NE(jn["error"]["message"].get<std::string>().find("--queue 64"), std::string::npos);
  // A prompt of 96 token ids leaves no room in a 96-token context.
  std::vector<int> ids(96, 7);
  auto [s3, j3] = post("/v1/completions", json{{"prompt", ids}}.dump());
  EXPECT_EQ(s3, 400);
  expect_error_shape(j3, "context_length_exceeded");
  auto [s4, j4] = post("/v1/completions", json{{"prompt", std::string(5000, 'a')}}.dump());
  EXPECT_EQ(s4, 413);
  expect_error_shape(j4, "request_too_large");
  auto [s5, j5] = post("/v1/completions", json{{"prompt", std::vector<int>{1, 400}}}.dump());
  EXPECT_EQ(s5, 400);
  expect_error_shape(j5, "");
}

TEST_F(HttpServerTest, ApiKeyIsRequired) {
  start("sekret");
  const std::string body = R"({"prompt":"hi","max_tokens":2})";
  auto [s1, j1] = post("/v1/completions", body);
  EXPECT_EQ(s1, 401);
  expect_error_shape(j1, "invalid_api_key");
  auto [s2, j2] = post("/v1/completions", body, {{"Authorization", "Bearer wrong"}});
  EXPECT_EQ(s2, 401);
  auto [s3, j3] = post("/v1/completions", body, {{"Authorization", "Bearer sekret"}});
  EXPECT_EQ(s3, 200) << j3.dump();
  auto h = client_->Get("/health");  // open, for load balancers
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
}

TEST_F(HttpServerTest, ChatCompletionAndUsage) {
  start();
  const std::string body =
      R"({"model":"x","messages":[{"role":"user","content":"hello there"}],"max_tokens":5,
          "temperature":0,"ignore_eos":true,"logprobs":true,"top_logprobs":2})";
  auto [s, j] = post("/v1/chat/completions", body);
  ASSERT_EQ(s, 200) << j.dump();
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["model"], "tiny");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["completion_tokens"], 5);
  EXPECT_EQ(j["choices"][0]["logprobs"]["content"].size(), 5u);
  CompletionParams p;
  ASSERT_FALSE(parse_completion_request(body, Endpoint::kChat, p));
  auto ids = engine_->prompt_tokens(p);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(j["usage"]["prompt_tokens"], static_cast<int>(ids->size()));
  EXPECT_EQ(j["usage"]["total_tokens"], static_cast<int>(ids->size()) + 5);
}

// Parses "data: " events up to [DONE]; `done` says whether it came.
std::vector<json> sse_events(const std::string& b, bool& done) {
  std::vector<json> chunks;
  done = false;
  size_t pos = 0;
  while ((pos = b.find("data: ", pos)) != std::string::npos) {
    const size_t end = b.find("\n\n", pos);
    const std::string payload = b.substr(pos + 6, end - pos - 6);
    pos = end;
    if (payload == "[DONE]") {
      done = true;
      break;
    }
    chunks.push_back(json::parse(payload, nullptr, false));
  }
  return chunks;
}

TEST_F(HttpServerTest, StreamEndsWithUsageAndDone) {
  start();
  auto r = client_->Post("/v1/completions",
                         R"({"prompt":"abc","max_tokens":6,"temperature":0,"ignore_eos":true,
                             "stream":true,"stream_options":{"include_usage":true}})",
                         "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  EXPECT_NE(r->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
  bool done = false;
  const std::vector<json> chunks = sse_events(r->body, done);
  EXPECT_TRUE(done);
  ASSERT_GE(chunks.size(), 2u);
  const json& usage = chunks.back();
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 6);
  EXPECT_EQ(chunks[chunks.size() - 2]["choices"][0]["finish_reason"], "length");
  std::string text;
  for (size_t i = 0; i + 1 < chunks.size(); ++i) text += chunks[i]["choices"][0]["text"];
  EXPECT_FALSE(text.empty());
}

// n choices: n sequences of one prompt (more than the 2 sessions: one waits in the queue), each
// with the client's seed + its index, so choice 1 is the same draw as a request with seed + 1
// alone; usage counts the prompt once and sums the completions.
TEST_F(HttpServerTest, SeveralChoicesOfOnePrompt) {
  start();
  const std::string body =
      R"({"prompt":"abc def","max_tokens":6,"temperature":1,"seed":7,"ignore_eos":true,"n":3})";
  auto [s, j] = post("/v1/completions", body);
  ASSERT_EQ(s, 200) << j.dump();
  ASSERT_EQ(j["choices"].size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(j["choices"][i]["index"], i);
    EXPECT_EQ(j["choices"][i]["finish_reason"], "length");
  }
  CompletionParams p;
  ASSERT_FALSE(parse_completion_request(body, Endpoint::kCompletion, p));
  auto ids = engine_->prompt_tokens(p);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(j["usage"]["prompt_tokens"], static_cast<int>(ids->size()));
  EXPECT_EQ(j["usage"]["completion_tokens"], 18);
  auto [s1, one] = post("/v1/completions", R"({"prompt":"abc def","max_tokens":6,"temperature":1,
                                              "seed":8,"ignore_eos":true})");
  ASSERT_EQ(s1, 200) << one.dump();
  EXPECT_EQ(one["choices"][0]["text"], j["choices"][1]["text"]);
  // Sampled at temperature 1 over a random 400-token vocabulary, three draws of 6 tokens are
  // not all the same.
  EXPECT_FALSE(j["choices"][0]["text"] == j["choices"][1]["text"] &&
               j["choices"][1]["text"] == j["choices"][2]["text"])
      << j.dump();

  auto r = client_->Post("/v1/chat/completions",
                         R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":4,
                             "temperature":0,"ignore_eos":true,"n":2,"stream":true,
                             "stream_options":{"include_usage":true}})",
                         "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  bool done = false;
  const std::vector<json> chunks = sse_events(r->body, done);
  EXPECT_TRUE(done);
  ASSERT_FALSE(chunks.empty());
  std::string text[2];
  int roles[2] = {0, 0}, finishes[2] = {0, 0};
  for (size_t k = 0; k + 1 < chunks.size(); ++k) {
    const json& c = chunks[k]["choices"][0];
    const int i = c["index"].get<int>();
    ASSERT_TRUE(i == 0 || i == 1) << chunks[k].dump();
    if (c["delta"].contains("role")) ++roles[i];
    if (c["delta"].contains("content")) text[i] += c["delta"]["content"].get<std::string>();
    if (!c["finish_reason"].is_null()) ++finishes[i];
  }
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(roles[i], 1);
    EXPECT_EQ(finishes[i], 1);
  }
  EXPECT_EQ(text[0], text[1]);  // greedy: the same answer twice
  EXPECT_TRUE(chunks.back()["choices"].empty());
  EXPECT_EQ(chunks.back()["usage"]["completion_tokens"], 8);
}

TEST_F(HttpServerTest, ViewsAndMetrics) {
  start();
  auto [s, j] = post("/v1/completions", R"({"prompt":"abc","max_tokens":3,"ignore_eos":true})");
  ASSERT_EQ(s, 200);
  auto kv = client_->Get("/v1/kv-stats");
  ASSERT_TRUE(kv);
  const json k = json::parse(kv->body, nullptr, false);
  EXPECT_GT(k["pages_total"].get<int>(), 0);
  EXPECT_EQ(k["pages_used"], 0);
  EXPECT_TRUE(k["per_format"].is_array());
  auto cap = client_->Get("/v1/capacity");
  ASSERT_TRUE(cap);
  const json c = json::parse(cap->body, nullptr, false);
  EXPECT_EQ(c["context"], 96);
  EXPECT_EQ(c["sessions_fit_now"], 2);
  auto models = client_->Get("/v1/models");
  ASSERT_TRUE(models);
  EXPECT_EQ(json::parse(models->body)["data"][0]["id"], "tiny");
  // httplib logs (and so counts) a request after its response is written: a client can read
  // /metrics before its own last request is counted, so wait for the count (up to 5 s).
  const std::string counted = "tq_requests_total{route=\"/v1/completions\",status=\"200\"} 1";
  std::string body;
  for (int i = 0; i < 500; ++i) {
    auto metrics = client_->Get("/metrics");
    ASSERT_TRUE(metrics);
    body = metrics->body;
    if (body.find(counted) != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_NE(body.find(counted), std::string::npos) << body;
  EXPECT_NE(body.find("tq_generated_tokens_total 3"), std::string::npos);
}

}  // namespace
}  // namespace tq::server
