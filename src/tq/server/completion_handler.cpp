// The completion endpoints (see completion_handler.h).
#include "tq/server/completion_handler.h"

#include <chrono>
#include <ctime>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "tq/core/log.h"
#include "tq/server/http_util.h"
#include "tq/server/openai_format.h"
#include "tq/server/sse.h"

namespace tq::server {
namespace {

using json = nlohmann::json;
using runtime::FinishReason;
using runtime::StreamEvent;
using Clock = runtime::SteadyClock;

constexpr auto kPollInterval = std::chrono::milliseconds(100);
// A stream that has sent nothing for this long writes a keep-alive comment, which is also how
// it notices a client that has gone (prefill of a long prompt, or waiting in the queue).
constexpr auto kKeepAlive = std::chrono::seconds(2);

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Time to first token, inter-token gaps and the whole request, from the engine's timestamps.
class LatencyRecorder {
 public:
  LatencyRecorder(ServerMetrics& m, Clock::time_point arrival) : m_(m), arrival_(arrival) {}
  void on_event(const StreamEvent& e) {
    if (e.kind == StreamEvent::Kind::kDone) {
      if (e.finish == FinishReason::kStop || e.finish == FinishReason::kLength)
        m_.observe_request(seconds(e.time - arrival_));
      return;
    }
    if (e.token < 0) return;  // a flush of held-back text, not a token
    if (!have_first_)
      m_.observe_ttft(seconds(e.time - arrival_));
    else
      m_.observe_inter_token(seconds(e.time - last_));
    have_first_ = true;
    last_ = e.time;
  }

 private:
  ServerMetrics& m_;
  Clock::time_point arrival_;
  Clock::time_point last_;
  bool have_first_ = false;
};

ApiError done_error(const StreamEvent& e) {
  if (e.finish == FinishReason::kCancelled)
    return server_error(503, "The request was cancelled: the server is shutting down.",
                        "server_shutting_down");
  return server_error(500, "Generation failed: " + e.error, "internal_error");
}

UsageCounts usage_of(const StreamEvent& done) {
  return UsageCounts{done.prompt_tokens, done.completion_tokens, done.cached_tokens};
}

// What one call of a chunked response's producer gives: text to write (may be empty) and
// whether the response is complete with it.
struct Chunk {
  std::string text;
  bool last = false;
};

// Sends `next`'s chunks (it waits up to kPollInterval for events each call) as a chunked
// response. After kKeepAlive without output `keep_alive` is written, which is also how a
// client that has gone is noticed (cpp-httplib reports it only as a failed write): then, as
// on any error or an unfinished end, the request is cancelled and its sequence freed.
void send_chunks(httplib::Response& res, const char* content_type,
                 std::shared_ptr<runtime::RequestChannel> channel, std::string keep_alive,
                 std::function<Chunk()> next) {
  struct State {
    std::shared_ptr<runtime::RequestChannel> channel;
    std::string keep_alive;
    std::function<Chunk()> next;
    Clock::time_point last_write = Clock::now();
    bool finished = false;
  };
  auto st =
      std::make_shared<State>(State{std::move(channel), std::move(keep_alive), std::move(next)});
  res.set_chunked_content_provider(
      content_type,
      [st](size_t /*offset*/, httplib::DataSink& sink) -> bool {
        try {
          Chunk c = st->next();
          const auto now = Clock::now();
          if (c.text.empty() && !c.last && now - st->last_write > kKeepAlive)
            c.text = st->keep_alive;
          if (!c.text.empty()) {
            if (!sink.is_writable() || !sink.write(c.text.data(), c.text.size())) {
              st->channel->cancel();  // the client has gone: free its sequence
              return false;
            }
            st->last_write = now;
          }
          if (c.last) {
            st->finished = true;
            sink.done();
          }
          return true;
        } catch (const std::exception& e) {
          TQ_LOG(kError, "serve: response failed: %s", e.what());
          st->channel->cancel();
          return false;
        }
      },
      [st](bool success) {
        if (!success || !st->finished) st->channel->cancel();
      });
}

// Everything a streaming response keeps between calls of httplib's content provider.
struct StreamState {
  StreamState(std::shared_ptr<runtime::RequestChannel> c, ResponseMeta m, const CompletionParams& p,
              const model::Tokenizer& tok, ServerMetrics& metrics)
      : channel(std::move(c)),
        meta(std::move(m)),
        include_usage(p.include_usage),
        want_logprobs(p.logprobs),
        logprobs(p.endpoint, tok),
        latency(metrics, channel->arrival()) {}

  // SSE text for the events that arrived; sets finished at the final one.
  std::string render(std::vector<StreamEvent>& events) {
    std::string out;
    if (!started) {
      started = true;
      if (meta.endpoint == Endpoint::kChat)
        out += sse_data(dump_json(stream_chunk(meta, "", true, nullptr, nullptr, include_usage)));
    }
    for (auto& e : events) {
      latency.on_event(e);
      if (e.kind == StreamEvent::Kind::kDelta) {
        json lp = nullptr;
        if (want_logprobs && e.has_logprob) {
          logprobs.add(e.logprob, text_len);
          lp = logprobs.take();
        }
        text_len += e.text.size();
        if (e.text.empty() && lp.is_null()) continue;
        out += sse_data(dump_json(stream_chunk(meta, e.text, false, lp, nullptr, include_usage)));
        continue;
      }
      finished = true;
      if (e.finish == FinishReason::kStop || e.finish == FinishReason::kLength) {
        out += sse_data(dump_json(
            stream_chunk(meta, "", false, nullptr, api_finish_reason(e.finish), include_usage)));
        if (include_usage) out += sse_data(dump_json(usage_chunk(meta, usage_of(e))));
      } else {
        out += sse_data(dump_json(done_error(e).to_json()));
      }
      out += sse_done();
      break;
    }
    return out;
  }

  std::shared_ptr<runtime::RequestChannel> channel;
  ResponseMeta meta;
  bool include_usage;
  bool want_logprobs;
  LogprobsBuilder logprobs;
  LatencyRecorder latency;
  size_t text_len = 0;
  bool started = false;
  bool finished = false;
  std::vector<StreamEvent> events;
};

void stream_response(httplib::Response& res, std::shared_ptr<StreamState> st) {
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  send_chunks(res, "text/event-stream", st->channel, sse_comment("keep-alive"), [st] {
    st->events.clear();
    st->channel->pop_all(st->events, kPollInterval);
    Chunk c;
    c.text = st->render(st->events);
    c.last = st->finished;
    return c;
  });
}

// A non-streaming response, built from the events as they arrive.
struct WholeResponse {
  WholeResponse(std::shared_ptr<runtime::RequestChannel> c, ResponseMeta m,
                const CompletionParams& p, const model::Tokenizer& tok, ServerMetrics& metrics)
      : channel(std::move(c)),
        meta(std::move(m)),
        want_logprobs(p.logprobs),
        logprobs(p.endpoint, tok),
        latency(metrics, channel->arrival()) {}

  // Takes what arrived within `wait`; true once the final event came (status, body set).
  bool poll(std::chrono::milliseconds wait) {
    events.clear();
    channel->pop_all(events, wait);
    for (auto& e : events) {
      latency.on_event(e);
      if (e.kind == StreamEvent::Kind::kDelta) {
        if (want_logprobs && e.has_logprob) logprobs.add(e.logprob, text.size());
        text += e.text;
        continue;
      }
      if (e.finish != FinishReason::kStop && e.finish != FinishReason::kLength) {
        const ApiError err = done_error(e);
        status = err.status;
        body = err.to_json();
      } else {
        status = 200;
        body = final_response(meta, text, e.finish, want_logprobs ? logprobs.take() : json(nullptr),
                              usage_of(e));
      }
      return true;
    }
    return false;
  }

  std::shared_ptr<runtime::RequestChannel> channel;
  ResponseMeta meta;
  bool want_logprobs;
  LogprobsBuilder logprobs;
  LatencyRecorder latency;
  std::string text;
  std::vector<StreamEvent> events;
  int status = 0;
  json body;
};

// Waits for the whole answer. One that comes within kKeepAlive is sent with its own status. A
// longer one goes out as a chunked 200 whose body starts with a space every kKeepAlive (JSON
// allows leading whitespace): the only way httplib lets a handler notice that its client has
// gone is a failed write, and a client that has gone must not hold a sequence to max_tokens.
// An error after that point is sent as the OpenAI error object in the 200 body.
// Returns whether a content provider now owns the request.
bool whole_response(httplib::Response& res, std::shared_ptr<WholeResponse> st) {
  const auto start = Clock::now();
  while (Clock::now() - start < kKeepAlive) {
    if (st->poll(kPollInterval)) {
      send_json(res, st->status, st->body);
      return false;
    }
  }
  send_chunks(res, "application/json", st->channel, " ", [st] {
    Chunk c;
    c.last = st->poll(kPollInterval);
    if (c.last) {
      if (st->status != 200)
        TQ_LOG(kWarn, "serve: request failed after its 200 went out: %s",
               dump_json(st->body).c_str());
      c.text = dump_json(st->body);
    }
    return c;
  });
  return true;
}

}  // namespace

void CompletionHandler::handle(const httplib::Request& req, httplib::Response& res,
                               Endpoint endpoint) {
  const auto arrival = Clock::now();
  CompletionParams p;
  if (auto err = parse_completion_request(req.body, endpoint, p)) return send_error(res, *err);

  const bool chat = endpoint == Endpoint::kChat;
  auto prompt = engine_.prompt_tokens(p);
  if (!prompt.ok())
    return send_error(res, bad_request("Could not build the prompt: " + prompt.status().message(),
                                       chat ? "messages" : "prompt", "invalid_prompt"));
  if (prompt->empty())
    return send_error(res, bad_request("The prompt is empty (it has no tokens).",
                                       chat ? "messages" : "prompt", "invalid_value"));
  const int n_prompt = static_cast<int>(prompt->size());
  if (n_prompt + 1 > engine_.context())
    return send_error(
        res,
        bad_request("This model's maximum context length is " + std::to_string(engine_.context()) +
                        " tokens. However, your " + (chat ? "messages" : "prompt") +
                        " resulted in " + std::to_string(n_prompt) +
                        " tokens, leaving no room for the completion. Please reduce the "
                        "length of the " +
                        (chat ? "messages." : "prompt."),
                    chat ? "messages" : "prompt", "context_length_exceeded"));

  std::random_device rd;
  const uint64_t seed = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  auto channel =
      engine_.scheduler().submit(engine_.make_request(p, std::move(prompt).value(), seed), arrival);
  if (!channel.ok()) {
    const Status& st = channel.status();
    if (st.code() == StatusCode::kResourceExhausted)
      return send_error(
          res,
          server_error(503, "The server is overloaded: " + st.message() + ". Retry after a moment.",
                       "server_overloaded"));
    return send_error(res,
                      bad_request(st.message(), chat ? "messages" : "prompt", "invalid_value"));
  }

  ResponseMeta meta;
  meta.endpoint = endpoint;
  meta.id = random_id(chat ? "chatcmpl-" : "cmpl-");
  meta.created = static_cast<int64_t>(std::time(nullptr));
  meta.model = engine_.model_id();
  meta.fingerprint = system_fingerprint(engine_.step_model().kv_config());
  const model::Tokenizer& tok = engine_.model().tokenizer();
  if (p.stream)
    return stream_response(
        res, std::make_shared<StreamState>(std::move(channel).value(), meta, p, tok, metrics_));
  auto st = std::make_shared<WholeResponse>(std::move(channel).value(), meta, p, tok, metrics_);
  // Whatever way this handler leaves (an exception included) without handing the request to
  // a content provider, the request stops with it.
  struct CancelUnlessProvided {
    runtime::RequestChannel& ch;
    bool provided = false;
    ~CancelUnlessProvided() {
      if (!provided) ch.cancel();
    }
  } guard{*st->channel};
  guard.provided = whole_response(res, st);
}

}  // namespace tq::server
