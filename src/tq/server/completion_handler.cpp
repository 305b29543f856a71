// The completion endpoints (see completion_handler.h).
#include "tq/server/completion_handler.h"

#include <algorithm>
#include <chrono>
#include <ctime>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "tq/core/log.h"
#include "tq/core/rng.h"
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

// What a response keeps of each choice while its events arrive.
struct ChoiceState {
  ChoiceState(Endpoint endpoint, const model::Tokenizer& tok) : logprobs(endpoint, tok) {}
  LogprobsBuilder logprobs;
  std::vector<StreamEvent> events;  // arrived, not yet handled
  bool open = true;                 // still generating: its kDone has not come
  std::string text;                 // non-streaming: the whole text
  size_t text_len = 0;              // streaming: bytes sent so far
  StreamEvent done;
};

std::vector<ChoiceState> choice_states(size_t n, Endpoint endpoint, const model::Tokenizer& tok) {
  std::vector<ChoiceState> v;
  v.reserve(n);
  for (size_t i = 0; i < n; ++i) v.emplace_back(endpoint, tok);
  return v;
}

// The n choices of one request: a channel each, all cancelled together.
struct Choices {
  std::vector<std::shared_ptr<runtime::RequestChannel>> channels;

  void cancel_all() const {
    for (const auto& c : channels) c->cancel();
  }
  // Moves what arrived on the channel of every open choice into its state's events; waits up
  // to `wait` on the first open channel when none of them had anything (the choices step in
  // the same batches, so their events come close together). False when nothing came.
  bool pop(std::vector<ChoiceState>& state, std::chrono::milliseconds wait) const {
    bool any = false;
    for (size_t i = 0; i < channels.size(); ++i)
      if (state[i].open) any |= channels[i]->pop_all(state[i].events, std::chrono::milliseconds(0));
    if (any) return true;
    for (size_t i = 0; i < channels.size(); ++i)
      if (state[i].open) return channels[i]->pop_all(state[i].events, wait);
    return false;
  }
};

bool any_open(const std::vector<ChoiceState>& state) {
  return std::any_of(state.begin(), state.end(), [](const ChoiceState& c) { return c.open; });
}

// The usage of n finished choices of one prompt: the prompt counted once (OpenAI's rule), the
// completions summed.
UsageCounts usage_of(std::span<const ChoiceState> state) {
  UsageCounts u{state[0].done.prompt_tokens, 0, state[0].done.cached_tokens};
  for (const ChoiceState& c : state) u.completion_tokens += c.done.completion_tokens;
  return u;
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
// on any error or an unfinished end, the request's choices are cancelled and their sequences
// freed.
void send_chunks(httplib::Response& res, const char* content_type, std::shared_ptr<Choices> choices,
                 std::string keep_alive, std::function<Chunk()> next) {
  struct State {
    std::shared_ptr<Choices> choices;
    std::string keep_alive;
    std::function<Chunk()> next;
    Clock::time_point last_write = Clock::now();
    bool finished = false;
  };
  auto st =
      std::make_shared<State>(State{std::move(choices), std::move(keep_alive), std::move(next)});
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
              st->choices->cancel_all();  // the client has gone: free its sequences
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
          st->choices->cancel_all();
          return false;
        }
      },
      [st](bool success) {
        if (!success || !st->finished) st->choices->cancel_all();
      });
}

// Everything a streaming response keeps between calls of httplib's content provider. Each
// choice's chunks carry its index; the usage chunk and [DONE] follow the last choice's end.
struct StreamState {
  StreamState(std::shared_ptr<Choices> c, ResponseMeta m, const CompletionParams& p,
              const model::Tokenizer& tok, ServerMetrics& metrics)
      : choices(std::move(c)),
        meta(std::move(m)),
        include_usage(p.include_usage),
        want_logprobs(p.logprobs),
        latency(metrics, choices->channels[0]->arrival()),
        state(choice_states(choices->channels.size(), p.endpoint, tok)) {}

  // SSE text for the events that arrived; sets finished after the last choice's end.
  std::string render() {
    std::string out;
    if (!started) {
      started = true;
      if (meta.endpoint == Endpoint::kChat)
        for (size_t i = 0; i < state.size(); ++i)
          out += sse_data(dump_json(
              stream_chunk(meta, static_cast<int>(i), "", true, nullptr, nullptr, include_usage)));
    }
    for (size_t i = 0; i < state.size() && !finished; ++i) {
      ChoiceState& c = state[i];
      const int index = static_cast<int>(i);
      for (auto& e : c.events) {
        if (i == 0) latency.on_event(e);
        if (e.kind == StreamEvent::Kind::kDelta) {
          json lp = nullptr;
          if (want_logprobs && e.has_logprob) {
            c.logprobs.add(e.logprob, c.text_len);
            lp = c.logprobs.take();
          }
          c.text_len += e.text.size();
          if (e.text.empty() && lp.is_null()) continue;
          out += sse_data(
              dump_json(stream_chunk(meta, index, e.text, false, lp, nullptr, include_usage)));
          continue;
        }
        c.open = false;
        c.done = e;
        if (e.finish != FinishReason::kStop && e.finish != FinishReason::kLength) {
          choices->cancel_all();  // one choice failed: the response ends with its error
          out += sse_data(dump_json(done_error(e).to_json()));
          out += sse_done();
          finished = true;
          break;
        }
        out += sse_data(dump_json(stream_chunk(meta, index, "", false, nullptr,
                                               api_finish_reason(e.finish), include_usage)));
        break;
      }
      c.events.clear();
    }
    if (!finished && !any_open(state)) {
      if (include_usage) out += sse_data(dump_json(usage_chunk(meta, usage_of(state))));
      out += sse_done();
      finished = true;
    }
    return out;
  }

  std::shared_ptr<Choices> choices;
  ResponseMeta meta;
  bool include_usage;
  bool want_logprobs;
  LatencyRecorder latency;  // the first choice's: one request's TTFT and gaps
  std::vector<ChoiceState> state;
  bool started = false;
  bool finished = false;
};

void stream_response(httplib::Response& res, std::shared_ptr<StreamState> st) {
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  send_chunks(res, "text/event-stream", st->choices, sse_comment("keep-alive"), [st] {
    st->choices->pop(st->state, kPollInterval);
    Chunk c;
    c.text = st->render();
    c.last = st->finished;
    return c;
  });
}

// A non-streaming response, built from the events as they arrive.
struct WholeResponse {
  WholeResponse(std::shared_ptr<Choices> c, ResponseMeta m, const CompletionParams& p,
                const model::Tokenizer& tok, ServerMetrics& metrics)
      : choices(std::move(c)),
        meta(std::move(m)),
        want_logprobs(p.logprobs),
        latency(metrics, choices->channels[0]->arrival()),
        state(choice_states(choices->channels.size(), p.endpoint, tok)) {}

  // Takes what arrived within `wait`; true once every choice ended or one failed (status and
  // body set).
  bool poll(std::chrono::milliseconds wait) {
    choices->pop(state, wait);
    for (size_t i = 0; i < state.size(); ++i) {
      ChoiceState& c = state[i];
      for (auto& e : c.events) {
        if (i == 0) latency.on_event(e);
        if (e.kind == StreamEvent::Kind::kDelta) {
          if (want_logprobs && e.has_logprob) c.logprobs.add(e.logprob, c.text.size());
          c.text += e.text;
          continue;
        }
        c.open = false;
        c.done = e;
        if (e.finish != FinishReason::kStop && e.finish != FinishReason::kLength) {
          choices->cancel_all();
          const ApiError err = done_error(e);
          status = err.status;
          body = err.to_json();
          return true;
        }
        break;
      }
      c.events.clear();
    }
    if (any_open(state)) return false;
    std::vector<ChoiceOutput> outputs;
    for (ChoiceState& c : state)
      outputs.push_back(ChoiceOutput{std::move(c.text), c.done.finish,
                                     want_logprobs ? c.logprobs.take() : json(nullptr)});
    status = 200;
    body = final_response(meta, outputs, usage_of(state));
    return true;
  }

  std::shared_ptr<Choices> choices;
  ResponseMeta meta;
  bool want_logprobs;
  LatencyRecorder latency;
  std::vector<ChoiceState> state;
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
  send_chunks(res, "application/json", st->choices, " ", [st] {
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

  // One sequence per choice, each with its own seed (seed + i when the client gave one). The
  // later ones wait for the first one's prompt pages and reuse them
  // (Scheduler::prefix_in_flight), so the prompt is computed and stored once.
  const int max_queue = engine_.scheduler().options().max_queue;
  if (p.n > max_queue)
    return send_error(res, bad_request("n = " + std::to_string(p.n) +
                                           " is more choices than this server queues (--queue " +
                                           std::to_string(max_queue) + ").",
                                       "n", "invalid_value"));
  auto choices = std::make_shared<Choices>();
  for (int i = 0; i < p.n; ++i) {
    const uint64_t seed = random_seed();
    auto channel = engine_.scheduler().submit(engine_.make_request(p, *prompt, seed, i), arrival);
    if (!channel.ok()) {
      choices->cancel_all();  // the choices already queued end unseen
      const Status& st = channel.status();
      if (st.code() == StatusCode::kResourceExhausted)
        return send_error(
            res, server_error(
                     503, "The server is overloaded: " + st.message() + ". Retry after a moment.",
                     "server_overloaded"));
      return send_error(res,
                        bad_request(st.message(), chat ? "messages" : "prompt", "invalid_value"));
    }
    choices->channels.push_back(std::move(channel).value());
  }

  ResponseMeta meta;
  meta.endpoint = endpoint;
  meta.id = random_id(chat ? "chatcmpl-" : "cmpl-");
  meta.created = static_cast<int64_t>(std::time(nullptr));
  meta.model = engine_.model_id();
  meta.fingerprint = system_fingerprint(engine_.step_model().kv_config());
  const model::Tokenizer& tok = engine_.model().tokenizer();
  if (p.stream)
    return stream_response(res, std::make_shared<StreamState>(choices, meta, p, tok, metrics_));
  auto st = std::make_shared<WholeResponse>(choices, meta, p, tok, metrics_);
  // Whatever way this handler leaves (an exception included) without handing the request to
  // a content provider, the request stops with it.
  struct CancelUnlessProvided {
    const Choices& choices;
    bool provided = false;
    ~CancelUnlessProvided() {
      if (!provided) choices.cancel_all();
    }
  } guard{*choices};
  guard.provided = whole_response(res, st);
}

}  // namespace tq::server
