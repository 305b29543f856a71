// tq bench voice: many short multi-turn sessions sharing a system prompt, as a voice assistant
// sees them, through the real continuous-batching scheduler (the server's Engine, in-process,
// no HTTP). Each of S sessions is T turns: a shared system prompt, then per turn a short user
// utterance (10-30 tokens of seeded pseudo-random words) and R generated tokens (greedy, EOS
// ignored, so every answer is R tokens). Each turn's prompt is the whole conversation so far,
// rendered by the server's chat path (the model's template; plain "User:/Assistant:" text when
// it has none), so the CPU's prefix cache can reuse the system prompt and earlier turns.
// Sessions arrive spread evenly over --ramp seconds; a session submits its next turn as soon as
// its previous answer ends (after --think-ms). Measured per request from the engine's events:
// TTFT (submit -> first token) and time per output token after the first; per K/V pair:
// p50/p95 TTFT, p50 TPOT, generated tokens/s over the whole run, and prompt tokens computed vs
// taken from the prefix cache. Prints Markdown tables and the command that reproduces them.
//   tq bench voice --sessions 16 --turns 4 --tokens 32 --kv f16/f16,tq4/tq3 -t 2
//   tq bench voice --device cuda --sessions 64 --kv f16/f16,tq4/tq3   (no prefix sharing)
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "commands.h"
#include "default_model.h"
#include "device_cli.h"
#include "kv_cli.h"
#include "seed_cli.h"
#include "threads_cli.h"
#include "tq/core/rng.h"
#include "tq/core/thread_pool.h"
#include "tq/kv/kv_bytes.h"
#include "tq/model/llama.h"
#if TQ_HAVE_SERVER
#include "tq/server/engine.h"
#endif

namespace tq::tools {

#if TQ_HAVE_SERVER
namespace {

using Clock = runtime::SteadyClock;

struct BenchVoiceOptions {
  std::string model = default_model_path();
  int sessions = 16;
  int turns = 4;
  int tokens = 32;                   // generated per turn (R)
  int system_tokens = 300;           // the shared system prompt, about
  int user_min = 10, user_max = 30;  // tokens per user utterance
  double ramp = 1.0;                 // seconds over which the sessions arrive
  double think_ms = 0.0;             // pause between an answer and the next turn
  int ctx = 0;                       // 0: the longest conversation, rounded up
  int max_sessions = 0;              // scheduler slots; 0: --sessions
  int threads = default_thread_count();
  int prefill_chunk = 128;
  int step_tokens = 256;
  bool no_prefix_cache = false;
  std::vector<std::string> kv_pairs = {"f16/f16", "tq4/tq3"};
  uint64_t seed = 5;
  KvFlags kv;
  DeviceFlag device;
};

// Exit code 2 for input tq refuses, 1 for a run that failed.
int fail(const Status& s) {
  std::fprintf(stderr, "tq bench voice: %s\n", s.to_string().c_str());
  return s.code() == StatusCode::kInvalidArgument ? 2 : 1;
}

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// Nearest-rank percentile (q in [0, 1]) of unsorted values; NaN when there are none.
double percentile(std::vector<double> v, double q) {
  v.erase(std::remove_if(v.begin(), v.end(), [](double x) { return std::isnan(x); }), v.end());
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  const size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size())));
  return v[std::min(v.size() - 1, rank > 0 ? rank - 1 : 0)];
}

// --- the scenario: texts fixed before the run ---------------------------------------------------

constexpr const char* kSystemSentences[] = {
    "You are Aria, a friendly voice assistant that runs on a small speaker in the kitchen.",
    " Your answers are spoken aloud, so keep them short, plain and easy to follow by ear.",
    " Never use lists, tables, markdown, emoji or links; say numbers the way people say them.",
    " If a request is unclear, ask one short question instead of guessing what was meant.",
    " You can set timers and alarms, read the weather, convert units, and answer questions.",
    " When you set a timer, repeat its length and name so the user knows it was understood.",
    " Be warm but brief, and do not repeat the question back unless it helps to confirm it.",
    " If you do not know something, say so in one sentence and offer what you can do instead.",
    " Keep track of what was said earlier in the conversation and refer back to it naturally.",
    " The household has two adults, two children and a dog called Biscuit who likes walks.",
};

constexpr const char* kUserWords[] = {
    "please",  "set",   "a",       "timer",   "for",      "ten",     "minutes",    "what",
    "is",      "the",   "weather", "like",    "tomorrow", "morning", "how",        "many",
    "cups",    "in",    "litre",   "remind",  "me",       "to",      "call",       "mum",
    "at",      "six",   "play",    "some",    "music",    "turn",    "down",       "volume",
    "add",     "milk",  "and",     "eggs",    "shopping", "list",    "when",       "does",
    "bakery",  "open",  "today",   "tell",    "joke",     "about",   "dogs",       "walk",
    "Biscuit", "after", "lunch",   "convert", "forty",    "degrees", "fahrenheit", "pasta",
    "boil",    "long",  "should",  "I",       "cancel",   "alarm",   "thanks",     "again"};

// The conversation of one session; answers are appended as they stream back.
struct SessionScript {
  std::vector<std::string> user;  // [turn]
};

struct Plan {
  bool chat = false;  // the model has a chat template (else plain text)
  std::string system;
  int system_tokens = 0;
  std::vector<SessionScript> sessions;
  int longest = 0;  // tokens of the longest conversation: its last prompt + R (estimated)
  int longest_session = 0;
  int ctx = 0;
};

int count_tokens(const model::Model& m, const std::string& text) {
  return static_cast<int>(m.tokenizer().encode(text, false, false).size());
}

// The request of turn `turn` of a session: the system prompt, every earlier user turn and
// answer, and this turn's user utterance; greedy, R tokens, EOS ignored.
server::CompletionParams turn_params(const BenchVoiceOptions& o, const Plan& plan,
                                     const SessionScript& script,
                                     const std::vector<std::string>& answers, int turn) {
  server::CompletionParams p;
  if (plan.chat) {
    p.endpoint = server::Endpoint::kChat;
    p.messages.push_back({"system", plan.system});
    for (int t = 0; t <= turn; ++t) {
      p.messages.push_back({"user", script.user[static_cast<size_t>(t)]});
      if (t < turn) p.messages.push_back({"assistant", answers[static_cast<size_t>(t)]});
    }
  } else {
    p.endpoint = server::Endpoint::kCompletion;
    p.prompt = "System: " + plan.system + "\n\n";
    for (int t = 0; t <= turn; ++t) {
      p.prompt += "User: " + script.user[static_cast<size_t>(t)] + "\nAssistant:";
      if (t < turn) p.prompt += answers[static_cast<size_t>(t)] + "\n";
    }
  }
  p.max_tokens = o.tokens;
  p.ignore_eos = true;
  p.sampler.temperature = 0.0f;
  p.seed = o.seed;
  return p;
}

// The texts of every session, and the length of the longest conversation with R-token
// placeholder answers (the real answers re-encode to about R tokens each).
Expected<Plan> make_plan(const BenchVoiceOptions& o, const model::Model& m) {
  Plan plan;
  plan.chat = !m.tokenizer().chat_template().empty();
  for (size_t i = 0; plan.system_tokens < o.system_tokens; ++i) {
    plan.system += kSystemSentences[i % std::size(kSystemSentences)];
    plan.system_tokens = count_tokens(m, plan.system);
  }
  std::string placeholder = "the";
  for (int i = 1; i < o.tokens; ++i) placeholder += " the";
  const std::vector<std::string> answers(static_cast<size_t>(o.turns), placeholder);
  for (int s = 0; s < o.sessions; ++s) {
    Rng rng(o.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(s));
    SessionScript script;
    for (int t = 0; t < o.turns; ++t) {
      const int target =
          o.user_min +
          static_cast<int>(rng.next_u64() % static_cast<uint64_t>(o.user_max - o.user_min + 1));
      std::string text;
      while (count_tokens(m, text) < target) {
        const char* w = kUserWords[rng.next_u64() % std::size(kUserWords)];
        text += text.empty() ? std::string(1, static_cast<char>(std::toupper(w[0]))) + (w + 1)
                             : std::string(" ") + w;
      }
      script.user.push_back(text + "?");
    }
    TQ_ASSIGN_OR_RETURN(
        const std::vector<int32_t> last,
        server::render_prompt_tokens(m, turn_params(o, plan, script, answers, o.turns - 1)));
    const int total = static_cast<int>(last.size()) + o.tokens;
    if (total > plan.longest) {
      plan.longest = total;
      plan.longest_session = s;
    }
    plan.sessions.push_back(std::move(script));
  }
  return plan;
}

// --- one run -----------------------------------------------------------------------------------

struct TurnRecord {
  int session = 0, turn = 0;
  int prompt_tokens = 0, cached_tokens = 0, completion_tokens = 0;
  double ttft_ms = 0.0;
  double tpot_ms = 0.0;  // NaN with fewer than two tokens
  Clock::time_point done;
};

struct RunResult {
  std::vector<TurnRecord> records;
  runtime::SchedulerStats stats;
  double wall_s = 0.0;
  double kv_bytes_per_token = 0.0;
  std::string where;
};

// One session's turns, on its own thread. Returns the first failure.
Status run_session(const BenchVoiceOptions& o, const Plan& plan, server::Engine& engine, int s,
                   Clock::time_point arrival, std::vector<TurnRecord>* out) {
  const SessionScript& script = plan.sessions[static_cast<size_t>(s)];
  std::this_thread::sleep_until(arrival);
  std::vector<std::string> answers;
  std::vector<runtime::StreamEvent> events;
  for (int t = 0; t < o.turns; ++t) {
    const std::string where = "session " + std::to_string(s) + " turn " + std::to_string(t + 1);
    if (t > 0 && o.think_ms > 0)
      std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(o.think_ms));
    const server::CompletionParams p = turn_params(o, plan, script, answers, t);
    TQ_ASSIGN_OR_RETURN(std::vector<int32_t> prompt, engine.prompt_tokens(p));
    const int n_prompt = static_cast<int>(prompt.size());
    if (n_prompt + o.tokens > engine.context())
      return invalid_argument(where + ": prompt of " + std::to_string(n_prompt) + " tokens + " +
                              std::to_string(o.tokens) + " generated exceeds --ctx " +
                              std::to_string(engine.context()) +
                              " (answers re-encoded longer "
                              "than estimated; raise --ctx)");
    runtime::GenerationRequest req = engine.make_request(p, std::move(prompt), o.seed);
    const Clock::time_point submit = Clock::now();
    TQ_ASSIGN_OR_RETURN(auto channel, engine.scheduler().submit(std::move(req), submit));
    TurnRecord r;
    r.session = s;
    r.turn = t;
    Clock::time_point first{}, last{};
    int n = 0;
    std::string answer;
    bool done = false;
    while (!done) {
      events.clear();
      channel->pop_all(events, std::chrono::milliseconds(200));
      for (const runtime::StreamEvent& e : events) {
        if (e.kind == runtime::StreamEvent::Kind::kDelta) {
          if (e.token >= 0) {
            if (n++ == 0) first = e.time;
            last = e.time;
          }
          answer += e.text;
          continue;
        }
        done = true;
        if (e.finish == runtime::FinishReason::kError ||
            e.finish == runtime::FinishReason::kCancelled)
          return internal_error(where + ": " + runtime::finish_reason_name(e.finish) + " " +
                                e.error);
        r.prompt_tokens = e.prompt_tokens;
        r.cached_tokens = e.cached_tokens;
        r.completion_tokens = e.completion_tokens;
        r.done = e.time;
      }
    }
    if (n == 0) return internal_error(where + ": no token was generated");
    r.ttft_ms = ms_between(submit, first);
    r.tpot_ms = n > 1 ? ms_between(first, last) / (n - 1) : std::nan("");
    out->push_back(r);
    answers.push_back(answer);
  }
  return ok_status();
}

Expected<RunResult> run_config(const BenchVoiceOptions& o, const Plan& plan,
                               std::unique_ptr<model::Model> model, const kv::KvConfig& kv) {
  server::EngineOptions eo;
  eo.device = o.device.cuda() ? server::EngineDevice::kCuda : server::EngineDevice::kCpu;
  eo.kv = kv;
  eo.threads = o.threads;
  eo.prefix_caching = !o.no_prefix_cache;
  eo.model_id = "bench-voice";
  eo.scheduler.max_sessions = o.max_sessions > 0 ? o.max_sessions : o.sessions;
  eo.scheduler.max_queue = std::max(o.sessions, 1);  // every session may wait at once
  eo.scheduler.context = plan.ctx;
  eo.scheduler.prefill_chunk = o.prefill_chunk;
  eo.scheduler.step_tokens = std::max(o.step_tokens, eo.scheduler.max_sessions);
  const kv::AttentionShape shape = model->attention_shape();
  RunResult result;
  TQ_ASSIGN_OR_RETURN(const kv::KvBytesPerToken bytes, kv::kv_bytes_per_token(kv, shape, plan.ctx));
  result.kv_bytes_per_token = bytes.amortized;
  std::unique_ptr<backend::DeviceModel> device;
  if (o.device.cuda()) {
    // The same slots and pass width the server asks for (server::device_model_options).
    TQ_ASSIGN_OR_RETURN(const backend::DeviceModelOptions d,
                        server::device_model_options(eo, shape));
    TQ_ASSIGN_OR_RETURN(device, open_cuda_model(*model, d.kv, d.max_context, d.max_batch,
                                                d.max_sequences, o.device.tuning()));
  }
  TQ_ASSIGN_OR_RETURN(std::unique_ptr<server::Engine> engine,
                      server::Engine::create(std::move(model), eo, std::move(device)));
  result.where = engine->device_description();
  std::fprintf(stderr, "tq bench voice: kv %s on %s, %s\n", kv.to_string().c_str(),
               result.where.c_str(), engine->options().scheduler.to_string().c_str());

  // Warm-up: one short unrelated request pages the weights in and sizes the step buffers, so
  // the first K/V pair is not charged for it; its counts are taken off the totals.
  {
    server::CompletionParams warm;
    warm.endpoint = server::Endpoint::kCompletion;
    warm.prompt = "Warm-up request, not part of the benchmark.";
    warm.max_tokens = 2;
    warm.ignore_eos = true;
    warm.sampler.temperature = 0.0f;
    TQ_ASSIGN_OR_RETURN(std::vector<int32_t> ids, engine->prompt_tokens(warm));
    TQ_ASSIGN_OR_RETURN(auto channel, engine->scheduler().submit(
                                          engine->make_request(warm, std::move(ids), o.seed)));
    std::vector<runtime::StreamEvent> events;
    while (!channel->done()) channel->pop_all(events, std::chrono::milliseconds(100));
  }
  const runtime::SchedulerStats before = engine->scheduler().stats();

  std::vector<std::vector<TurnRecord>> per_session(static_cast<size_t>(o.sessions));
  std::vector<Status> status(static_cast<size_t>(o.sessions));
  const Clock::time_point start = Clock::now();
  std::vector<std::thread> clients;
  for (int s = 0; s < o.sessions; ++s) {
    const double offset = o.sessions > 1 ? o.ramp * s / (o.sessions - 1) : 0.0;
    const auto arrival =
        start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(offset));
    clients.emplace_back([&, s, arrival] {
      const size_t i = static_cast<size_t>(s);
      status[i] = run_session(o, plan, *engine, s, arrival, &per_session[i]);
    });
  }
  for (auto& c : clients) c.join();
  for (const Status& st : status) TQ_RETURN_IF_ERROR(st);
  Clock::time_point end = start;
  for (auto& records : per_session)
    for (const TurnRecord& r : records) {
      end = std::max(end, r.done);
      result.records.push_back(r);
    }
  result.wall_s = std::chrono::duration<double>(end - start).count();
  result.stats = engine->scheduler().stats();
  result.stats.prompt_tokens -= before.prompt_tokens;
  result.stats.prompt_cached_tokens -= before.prompt_cached_tokens;
  result.stats.generated_tokens -= before.generated_tokens;
  return result;
}

// --- report ------------------------------------------------------------------------------------

std::string command_line(const BenchVoiceOptions& o, const Plan& plan) {
  std::string kv;
  for (const auto& p : o.kv_pairs) kv += (kv.empty() ? "" : ",") + p;
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "tq bench voice -m %s --device %s --sessions %d --turns %d --tokens %d "
                "--system-tokens %d --user-tokens %d,%d --ramp %g --think-ms %g --ctx %d "
                "--max-sessions %d -t %d --prefill-chunk %d --step-tokens %d --seed %llu --kv %s",
                o.model.c_str(), o.device.resolved(), o.sessions, o.turns, o.tokens,
                o.system_tokens, o.user_min, o.user_max, o.ramp, o.think_ms, plan.ctx,
                o.max_sessions > 0 ? o.max_sessions : o.sessions, o.threads, o.prefill_chunk,
                o.step_tokens, static_cast<unsigned long long>(o.seed), kv.c_str());
  std::string s = buf;
  if (o.no_prefix_cache) s += " --no-prefix-cache";
  for (const auto& [name, value] : o.kv.given)
    if (name != "-ctk" && name != "-ctv" && name != "--ctk" && name != "--ctv")
      s += " " + name + " " + value;
  return s;
}

void print_report(const BenchVoiceOptions& o, const Plan& plan,
                  const std::vector<RunResult>& runs) {
  std::printf(
      "\nVoice sessions: %d sessions x %d turns, shared system prompt %d tokens, user turns "
      "%d-%d tokens, %d tokens per answer (greedy, EOS ignored), arrivals over %g s, think %g "
      "ms, ctx %d, %s, prefix cache %s (%s)\n\n",
      o.sessions, o.turns, plan.system_tokens, o.user_min, o.user_max, o.tokens, o.ramp, o.think_ms,
      plan.ctx, plan.chat ? "chat template" : "plain text prompt", o.no_prefix_cache ? "off" : "on",
      runs.front().where.c_str());
  std::printf(
      "| K/V | KV B/token | requests | prompt tokens | cached | computed | TTFT p50 ms | TTFT p95 "
      "ms | TPOT p50 ms | gen tok/s | wall s |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (size_t i = 0; i < runs.size(); ++i) {
    const RunResult& r = runs[i];
    std::vector<double> ttft, tpot;
    for (const TurnRecord& t : r.records) {
      ttft.push_back(t.ttft_ms);
      tpot.push_back(t.tpot_ms);
    }
    const runtime::SchedulerStats& st = r.stats;
    std::printf("| %s | %.0f | %zu | %lld | %lld | %lld | %.1f | %.1f | %.2f | %.1f | %.2f |\n",
                o.kv_pairs[i].c_str(), r.kv_bytes_per_token, r.records.size(),
                static_cast<long long>(st.prompt_tokens),
                static_cast<long long>(st.prompt_cached_tokens),
                static_cast<long long>(st.prompt_tokens - st.prompt_cached_tokens),
                percentile(ttft, 0.5), percentile(ttft, 0.95), percentile(tpot, 0.5),
                r.wall_s > 0 ? static_cast<double>(st.generated_tokens) / r.wall_s : 0.0, r.wall_s);
  }
  std::printf(
      "\nPer turn (prompt tokens per request, mean; cached: taken from the prefix cache)\n\n"
      "| K/V | turn | requests | prompt tokens | cached | TTFT p50 ms | TTFT p95 ms |\n"
      "|---|---|---|---|---|---|---|\n");
  for (size_t i = 0; i < runs.size(); ++i)
    for (int t = 0; t < o.turns; ++t) {
      std::vector<double> ttft;
      double prompt = 0, cached = 0;
      for (const TurnRecord& r : runs[i].records)
        if (r.turn == t) {
          ttft.push_back(r.ttft_ms);
          prompt += r.prompt_tokens;
          cached += r.cached_tokens;
        }
      const double n = static_cast<double>(std::max<size_t>(1, ttft.size()));
      std::printf("| %s | %d | %zu | %.1f | %.1f | %.1f | %.1f |\n", o.kv_pairs[i].c_str(), t + 1,
                  ttft.size(), prompt / n, cached / n, percentile(ttft, 0.5),
                  percentile(ttft, 0.95));
    }
  std::printf(
      "\nTTFT: submit to the first generated token (queueing and prefill included); TPOT: time "
      "per output token after the first; gen tok/s: all generated tokens over the run's wall "
      "time (first arrival to last answer).\n\nCommand: `%s`\n",
      command_line(o, plan).c_str());
}

int bench_voice(BenchVoiceOptions& o) {
  if (o.sessions < 1) return fail(invalid_argument("--sessions must be >= 1"));
  if (o.turns < 1) return fail(invalid_argument("--turns must be >= 1"));
  if (o.tokens < 1) return fail(invalid_argument("--tokens must be >= 1"));
  if (o.system_tokens < 0) return fail(invalid_argument("--system-tokens must be >= 0"));
  if (o.user_min < 1 || o.user_max < o.user_min)
    return fail(invalid_argument("--user-tokens MIN,MAX needs 1 <= MIN <= MAX"));
  if (o.ramp < 0 || o.think_ms < 0)
    return fail(invalid_argument("--ramp and --think-ms must be >= 0"));
  if (o.ctx < 0 || o.max_sessions < 0 || o.threads < 1 || o.prefill_chunk < 1 || o.step_tokens < 1)
    return fail(invalid_argument(
        "need --ctx >= 0, --max-sessions >= 0, -t >= 1, --prefill-chunk >= 1, --step-tokens >= 1"));
  if (o.kv_pairs.empty()) return fail(invalid_argument("--kv needs at least one K/V pair"));
  auto base = o.kv.config();
  if (!base.ok()) return fail(base.status());  // unknown arguments
  o.device.settle(*base);
  std::vector<kv::KvConfig> configs;
  for (const std::string& pair : o.kv_pairs) {
    auto c = o.kv.pair_config(pair);
    if (!c.ok()) return fail(c.status().with_context("--kv " + pair));
    configs.push_back(*c);
  }

  auto loaded = model::Model::load(o.model);
  if (!loaded.ok()) return fail(loaded.status());
  std::unique_ptr<model::Model> model = std::move(*loaded);
  std::fprintf(stderr, "tq bench voice: %s\n", model->config().to_string().c_str());
  auto plan = make_plan(o, *model);
  if (!plan.ok()) return fail(plan.status());
  // Refuse before anything runs: a conversation that cannot fit would fail half-way.
  const int longest = plan->longest;
  if (o.ctx > 0 && longest > o.ctx)
    return fail(invalid_argument(
        "the longest conversation (session " + std::to_string(plan->longest_session) +
        ") would be about " + std::to_string(longest) + " tokens (system prompt " +
        std::to_string(plan->system_tokens) + ", " + std::to_string(o.turns) +
        " turns of a user utterance, " + std::to_string(o.tokens) +
        " answer tokens and the template), more than --ctx " + std::to_string(o.ctx) +
        "; raise --ctx or lower --turns, --tokens or --system-tokens"));
  // Auto: room for answers that re-encode a few tokens longer, in whole 64-token steps.
  plan->ctx = o.ctx > 0 ? o.ctx : (longest + 8 * o.turns + 63) / 64 * 64;
  std::fprintf(stderr,
               "tq bench voice: %d sessions x %d turns, longest conversation ~%d tokens, ctx %d, "
               "%s\n",
               o.sessions, o.turns, longest, plan->ctx,
               plan->chat ? "chat template" : "no chat template: plain text prompts");

  std::vector<RunResult> runs;
  for (size_t i = 0; i < configs.size(); ++i) {
    if (!model) {
      auto again = model::Model::load(o.model);  // the engine owns (and frees) each one
      if (!again.ok()) return fail(again.status());
      model = std::move(*again);
    }
    auto run = run_config(o, *plan, std::move(model), configs[i]);
    if (!run.ok()) return fail(run.status().with_context("--kv " + o.kv_pairs[i]));
    runs.push_back(std::move(*run));
  }
  print_report(o, *plan, runs);
  return 0;
}

}  // namespace

void add_bench_voice_command(CLI::App* bench) {
  auto o = std::make_shared<BenchVoiceOptions>();
  auto* cmd = bench->add_subcommand(
      "voice",
      "Many short multi-turn sessions sharing a system prompt through the scheduler: TTFT, "
      "TPOT, tokens/s, prefix-cache reuse");
  cmd->add_option("-m,--model", o->model, "GGUF model file")->capture_default_str();
  cmd->add_option("--sessions", o->sessions, "Conversations (S)")->capture_default_str();
  cmd->add_option("--turns", o->turns, "User turns per conversation (T)")->capture_default_str();
  cmd->add_option("--tokens", o->tokens, "Tokens generated per turn (R; greedy, EOS ignored)")
      ->capture_default_str();
  cmd->add_option("--system-tokens", o->system_tokens, "Length of the shared system prompt, about")
      ->capture_default_str();
  cmd->add_option_function<std::vector<int>>(
         "--user-tokens",
         [o](const std::vector<int>& v) {
           o->user_min = v.front();
           o->user_max = v.back();
         },
         "Tokens per user utterance, MIN,MAX (default 10,30)")
      ->delimiter(',')
      ->expected(1, 2);
  cmd->add_option("--ramp", o->ramp, "Seconds over which the sessions arrive (evenly)")
      ->capture_default_str();
  cmd->add_option("--think-ms", o->think_ms, "Pause between an answer and the next turn")
      ->capture_default_str();
  cmd->add_option("--ctx", o->ctx, "Tokens per sequence (0: the longest conversation, rounded)")
      ->capture_default_str();
  cmd->add_option("--max-sessions", o->max_sessions,
                  "Sequences in the scheduler's running batch (0: --sessions)")
      ->capture_default_str();
  add_threads_option(cmd, o->threads, "CPU threads");
  cmd->add_option("--prefill-chunk", o->prefill_chunk, "Prompt tokens per sequence per step")
      ->capture_default_str();
  cmd->add_option("--step-tokens", o->step_tokens, "Tokens per batched step at most")
      ->capture_default_str();
  cmd->add_flag("--no-prefix-cache", o->no_prefix_cache, "Do not share cached prompt prefixes");
  cmd->add_option("--kv", o->kv_pairs, "K/V format pairs, e.g. f16/f16,tq4/tq3 (comma separated)")
      ->delimiter(',')
      ->capture_default_str();
  add_seed_option(cmd, o->seed, "Seed of the user utterances");
  o->kv.add_to(cmd);
  o->device.add_to(cmd);
  o->device.add_weights_to(cmd);
  o->device.add_tuning_to(cmd);
  cmd->callback([o] {
    const int rc = bench_voice(*o);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

#else  // a tq built without the server (no cpp-httplib): the scheduler's Engine lives there

void add_bench_voice_command(CLI::App* bench) {
  auto* cmd = bench->add_subcommand("voice", "Multi-turn voice sessions (needs the server build)");
  cmd->allow_extras();
  cmd->callback([] {
    std::fprintf(stderr, "tq bench voice: this tq was built without the server (cpp-httplib)\n");
    throw CLI::RuntimeError(2);
  });
}

#endif

}  // namespace tq::tools
