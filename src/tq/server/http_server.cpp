// Routes and HTTP policy of tq serve (see http_server.h).
#include "tq/server/http_server.h"

#include <algorithm>
#include <atomic>
#include <ctime>
#include <exception>
#include <functional>
#include <optional>
#include <string>
#include <utility>

#include "tq/core/log.h"
#include "tq/server/completion_handler.h"
#include "tq/server/http_util.h"
#include "tq/server/metrics.h"
#include "tq/server/openai_format.h"
#include "tq/server/status_json.h"

namespace tq::server {
namespace {

using json = nlohmann::json;
using Handler = std::function<void(const httplib::Request&, httplib::Response&)>;

// No exception leaves a handler: it becomes a 500 in OpenAI's shape.
Handler guarded(Handler h) {
  return [h = std::move(h)](const httplib::Request& req, httplib::Response& res) {
    try {
      h(req, res);
    } catch (const std::exception& e) {
      TQ_LOG(kError, "serve: %s %s: %s", req.method.c_str(), req.path.c_str(), e.what());
      send_error(res, server_error(500, std::string("Internal error: ") + e.what()));
    } catch (...) {
      send_error(res, server_error(500, "Internal error"));
    }
  };
}

// Compares without an early exit, so response time does not reveal how much of a key matched.
bool same_secret(const std::string& a, const std::string& b) {
  unsigned diff = a.size() == b.size() ? 0u : 1u;
  for (size_t i = 0; i < a.size(); ++i)
    diff |= static_cast<unsigned>(a[i]) ^ static_cast<unsigned>(b.empty() ? 0 : b[i % b.size()]);
  return diff == 0;
}

// Framings refused before the body is read. httplib (0.11) holds a chunked body to no limit
// (payload_max_length applies to Content-Length only): 411, as RFC 9112 allows. Content-Length
// headers that disagree leave the body's end ambiguous (what request smuggling plays on): RFC 9112
// has the server refuse them, where httplib would take the first.
std::optional<ApiError> framing_error(const httplib::Request& req) {
  if (req.get_header_value("Transfer-Encoding").find("chunked") != std::string::npos) {
    ApiError e = bad_request(
        "Send the request body with a Content-Length (chunked uploads are not accepted).", {},
        "length_required");
    e.status = 411;
    return e;
  }
  const size_t n = req.get_header_value_count("Content-Length");
  for (size_t i = 1; i < n; ++i)
    if (req.get_header_value("Content-Length", i) != req.get_header_value("Content-Length", 0))
      return bad_request("The request has Content-Length headers that disagree.", {},
                         "invalid_content_length");
  return std::nullopt;
}

}  // namespace

Status HttpOptions::validate() const {
  if (port < 0 || port > 65535) return invalid_argument("serve: port must be in [0, 65535]");
  if (max_body_bytes < 1024) return invalid_argument("serve: the body limit must be >= 1 KiB");
  if (http_threads < 0 || http_threads > kMaxHttpThreads)
    return invalid_argument("serve: http threads must be in [0, " +
                            std::to_string(kMaxHttpThreads) + "]");
  return ok_status();
}

struct HttpServer::Impl {
  Impl(Engine& e, const HttpOptions& o)
      : engine(e), options(o), completions(e, metrics), created(std::time(nullptr)) {}

  void install();
  void tokenize(const httplib::Request& req, httplib::Response& res);
  void detokenize(const httplib::Request& req, httplib::Response& res);

  Engine& engine;
  HttpOptions options;
  ServerMetrics metrics;
  CompletionHandler completions;
  httplib::Server svr;
  int64_t created;
  int port = -1;
  std::atomic<bool> shutting_down{false};
};

void HttpServer::Impl::install() {
  const int sched_load =
      engine.scheduler().options().max_sessions + engine.scheduler().options().max_queue;
  // Each streaming request holds a worker for its whole life, and each idle keep-alive
  // connection holds one until its timeout: size the pool for both.
  const int threads = options.http_threads > 0 ? options.http_threads : sched_load + 32;
  svr.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  svr.set_payload_max_length(options.max_body_bytes);
  svr.set_tcp_nodelay(true);

  svr.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (auto e = framing_error(req)) {
      send_error(res, *e);
      return httplib::Server::HandlerResponse::Handled;
    }
    // Every answer here is generated, not a file: a Range header is ignored (RFC 9110 lets a
    // server do so), where httplib would cut the JSON to the range and keep status 200. The
    // request object is httplib's own, not const; the handler only sees it as const.
    const_cast<httplib::Request&>(req).ranges.clear();
    if (options.api_key.empty() || req.path == "/health" || req.path == "/metrics")
      return httplib::Server::HandlerResponse::Unhandled;
    const std::string auth = req.get_header_value("Authorization");
    const std::string prefix = "Bearer ";
    const bool ok = auth.size() > prefix.size() && auth.compare(0, prefix.size(), prefix) == 0 &&
                    same_secret(auth.substr(prefix.size()), options.api_key);
    if (ok) return httplib::Server::HandlerResponse::Unhandled;
    ApiError e;
    e.status = 401;
    e.message = auth.empty() ? "You didn't provide an API key. Provide it in the Authorization "
                               "header as 'Bearer YOUR_KEY'."
                             : "Incorrect API key provided.";
    e.code = "invalid_api_key";
    send_error(res, e);
    return httplib::Server::HandlerResponse::Handled;
  });

  svr.set_error_handler(httplib::Server::HandlerWithResponse(
      [this](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        ApiError e;
        e.status = res.status;
        if (res.status == 404) {
          e.message = "Invalid URL (" + req.method + " " + req.path + ")";
          e.code = "not_found";
        } else if (res.status == 413) {
          // httplib also answers 413 to form-encoded bodies over 8 KiB (send JSON).
          e.message = "The request body is too large (the limit is " +
                      std::to_string(options.max_body_bytes) + " bytes of JSON).";
          e.code = "request_too_large";
        } else {
          // httplib's own refusals (a malformed request line or chunk size, an unknown method, a
          // header or path too long): no parameter to name, but a code like every other error.
          e.message = "HTTP error " + std::to_string(res.status);
          e.code = "http_" + std::to_string(res.status);
          if (res.status >= 500) e.type = "server_error";
        }
        send_json(res, res.status, e.to_json());
        return httplib::Server::HandlerResponse::Handled;
      }));

  svr.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
        send_error(res, server_error(500, "Internal error"));
      });

  svr.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    metrics.count_request(req.path, res.status);
  });

  svr.Post("/v1/chat/completions", guarded([this](const auto& req, auto& res) {
             completions.handle(req, res, Endpoint::kChat);
           }));
  svr.Post("/v1/completions", guarded([this](const auto& req, auto& res) {
             completions.handle(req, res, Endpoint::kCompletion);
           }));
  svr.Get("/v1/models", guarded([this](const auto&, auto& res) {
            send_json(res, 200, models_json(engine, created));
          }));
  svr.Get(R"(/v1/models/(.+))", guarded([this](const auto& req, auto& res) {
            if (req.matches.size() > 1 && req.matches[1].str() == engine.model_id())
              return send_json(res, 200, model_json(engine, created));
            ApiError e;
            e.status = 404;
            e.message = "The model '" + (req.matches.size() > 1 ? req.matches[1].str() : "") +
                        "' does not exist.";
            e.param = "model";
            e.code = "model_not_found";
            send_error(res, e);
          }));
  svr.Get("/health", guarded([this](const auto&, auto& res) {
            if (shutting_down.load() || engine.scheduler().draining())
              return send_json(res, 503, json{{"status", "shutting_down"}});
            send_json(res, 200, json{{"status", "ok"}});
          }));
  svr.Get("/v1/capacity",
          guarded([this](const auto&, auto& res) { send_json(res, 200, capacity_json(engine)); }));
  svr.Get("/v1/kv-stats",
          guarded([this](const auto&, auto& res) { send_json(res, 200, kv_stats_json(engine)); }));
  svr.Get("/metrics", guarded([this](const auto&, auto& res) {
            res.set_content(
                metrics.render(engine.scheduler().stats(), engine.step_model().kv_stats()),
                "text/plain; version=0.0.4; charset=utf-8");
          }));
  svr.Post("/tokenize", guarded([this](const auto& req, auto& res) { tokenize(req, res); }));
  svr.Post("/detokenize", guarded([this](const auto& req, auto& res) { detokenize(req, res); }));
}

// POST /tokenize {"content": "...", "add_special": false, "parse_special": true} or
// {"messages": [...]} (the chat prompt the completions endpoint would run) -> {"tokens": [...]}.
void HttpServer::Impl::tokenize(const httplib::Request& req, httplib::Response& res) {
  json body;
  if (auto e = parse_json_object(req.body, body)) return send_error(res, *e);
  const model::Tokenizer& tok = engine.model().tokenizer();
  if (body.contains("messages")) {
    json chat{{"messages", body["messages"]}};
    CompletionParams p;
    if (auto e = parse_completion_json(chat, Endpoint::kChat, p)) return send_error(res, *e);
    auto ids = engine.prompt_tokens(p);
    if (!ids.ok())
      return send_error(res, bad_request(ids.status().message(), "messages", "invalid_prompt"));
    return send_json(res, 200, json{{"tokens", *ids}});
  }
  const auto content = body.find("content");
  if (content == body.end() || !content->is_string())
    return send_error(res, bad_request("'content' must be a string.", "content", "invalid_type"));
  const auto flag = [&](const char* name, bool dflt) {
    const auto it = body.find(name);
    return it != body.end() && it->is_boolean() ? it->template get<bool>() : dflt;
  };
  const bool add_special = flag("add_special", false);
  const bool parse_special = flag("parse_special", true);
  send_json(res, 200,
            json{{"tokens", tok.encode(content->get<std::string>(),
                                       add_special && tok.add_bos_default(), parse_special)}});
}

// POST /detokenize {"tokens": [...]} -> {"content": "..."}.
void HttpServer::Impl::detokenize(const httplib::Request& req, httplib::Response& res) {
  json body;
  if (auto e = parse_json_object(req.body, body)) return send_error(res, *e);
  const auto tokens = body.find("tokens");
  if (tokens == body.end() || !tokens->is_array())
    return send_error(
        res, bad_request("'tokens' must be an array of token ids.", "tokens", "invalid_type"));
  std::vector<int32_t> ids;
  for (const auto& t : *tokens) {
    if (!t.is_number_integer() || t.get<int64_t>() < 0 ||
        t.get<int64_t>() >= engine.model().config().vocab_size)
      return send_error(
          res, bad_request("token ids must be integers in the vocab.", "tokens", "invalid_value"));
    ids.push_back(static_cast<int32_t>(t.get<int64_t>()));
  }
  send_json(res, 200, json{{"content", engine.model().tokenizer().decode(ids)}});
}

HttpServer::HttpServer(Engine& engine, const HttpOptions& options)
    : impl_(std::make_unique<Impl>(engine, options)) {
  impl_->install();
}

HttpServer::~HttpServer() = default;

Status HttpServer::bind() {
  TQ_RETURN_IF_ERROR(impl_->options.validate());
  const auto& o = impl_->options;
  if (o.port == 0) {
    impl_->port = impl_->svr.bind_to_any_port(o.host);
    if (impl_->port <= 0) return io_error("serve: cannot bind " + o.host + " to any port");
    return ok_status();
  }
  if (!impl_->svr.bind_to_port(o.host, o.port))
    return io_error("serve: cannot bind " + o.host + ":" + std::to_string(o.port) +
                    " (in use, or not a local address)");
  impl_->port = o.port;
  return ok_status();
}

int HttpServer::port() const { return impl_->port; }

Status HttpServer::serve() {
  if (impl_->port <= 0) return invalid_argument("serve: bind() first");
  if (!impl_->svr.listen_after_bind() && !impl_->shutting_down.load())
    return io_error("serve: the listening socket failed");
  return ok_status();
}

void HttpServer::shutdown(std::chrono::milliseconds grace) {
  if (impl_->shutting_down.exchange(true)) return;
  const int cancelled = impl_->engine.scheduler().drain(grace);
  if (cancelled > 0)
    TQ_LOG(kWarn, "serve: cancelled %d requests still running after %lld ms", cancelled,
           static_cast<long long>(grace.count()));
  // Give streams a moment to write their last events before the socket closes.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  impl_->svr.stop();
}

}  // namespace tq::server
