// The continuous-batching engine (see scheduler.h).
#include "tq/runtime/scheduler.h"

#include <algorithm>
#include <cstdio>
#include <span>
#include <utility>

#include "tq/core/log.h"
#include "tq/kv/kv_bytes.h"
#include "tq/runtime/cpu_step_model.h"
#include "tq/runtime/generator.h"
#include "tq/runtime/logprobs.h"

namespace tq::runtime {

// One admitted request: its cache, sampler and text state. Never moved (the stop filter keeps
// a reference to request.stop_strings).
struct Scheduler::Active {
  Active(Pending p, std::unique_ptr<StepSequence> s_seq, Sampler s, const model::Tokenizer& tok)
      : request(std::move(p.request)),
        channel(std::move(p.channel)),
        seq(std::move(s_seq)),
        sampler(std::move(s)),
        decoder(tok),
        filter(request.stop_strings) {}

  GenerationRequest request;
  std::shared_ptr<RequestChannel> channel;
  std::unique_ptr<StepSequence> seq;
  Sampler sampler;
  model::TokenStreamDecoder decoder;
  StopStringFilter filter;
  int total_max = 0;        // prompt + max_tokens, clipped to the context
  int prefilled = 0;        // prompt tokens in the cache
  int cached = 0;           // of those, taken from the prefix cache
  int32_t next_token = -1;  // sampled and streamed, not yet in the cache
  int generated = 0;        // sampled tokens, end-of-generation excluded
  bool finished = false;

  int prompt_len() const { return static_cast<int>(request.prompt.size()); }
  bool prefilling() const { return prefilled < prompt_len(); }
};

// The tokens one sequence runs this step.
struct Scheduler::BatchItem {
  Active* seq = nullptr;
  const int32_t* tokens = nullptr;
  int n = 0;
  bool want_logits = false;
  int logits_row = -1;
  // Plain greedy and no logprobs: the model picks the token (runtime::greedy_token) where its
  // logits are, and only the id comes back (a GPU sends 4 bytes instead of the vocabulary).
  bool greedy = false;
  int32_t picked = -1;
  // Sampled (or with logprobs) on a model whose logits are remote: the top_count largest logits
  // come back (Sampler::sample_top draws what sample() would from the whole row), candidates
  // row top_row of top_ids_ / top_logits_; with logprobs also the row's log_partition, and at
  // least as many candidates as top logprobs asked (token_logprob_top).
  int top_count = 0;
  int top_row = -1;
  bool want_log_z = false;
  double log_z = 0.0;
};

Status SchedulerOptions::validate() const {
  if (max_sessions < 1 || max_sessions > kMaxSessions)
    return invalid_argument("scheduler: max_sessions must be in [1, " +
                            std::to_string(kMaxSessions) + "], got " +
                            std::to_string(max_sessions));
  if (max_queue < 0 || max_queue > kMaxQueue)
    return invalid_argument("scheduler: the queue size must be in [0, " +
                            std::to_string(kMaxQueue) + "], got " + std::to_string(max_queue));
  if (context < 2) return invalid_argument("scheduler: context must be >= 2 tokens");
  if (prefill_chunk < 1) return invalid_argument("scheduler: prefill_chunk must be >= 1");
  if (step_tokens < max_sessions)
    return invalid_argument("scheduler: step_tokens (" + std::to_string(step_tokens) +
                            ") must be >= max_sessions (" + std::to_string(max_sessions) +
                            ") so every running sequence decodes each step");
  return ok_status();
}

std::string SchedulerOptions::to_string() const {
  char buf[200];
  std::snprintf(buf, sizeof buf,
                "max_sessions=%d queue=%d context=%d prefill_chunk=%d step_tokens=%d", max_sessions,
                max_queue, context, prefill_chunk, step_tokens);
  return buf;
}

Expected<std::unique_ptr<Scheduler>> Scheduler::create(const model::Model& model,
                                                       kv::PagedKvCache& cache, ThreadPool& pool,
                                                       const SchedulerOptions& options) {
  TQ_RETURN_IF_ERROR(options.validate());
  auto step = std::make_unique<CpuStepModel>(model, cache, pool);
  StepModel& ref = *step;
  std::unique_ptr<Scheduler> s(new Scheduler(ref, std::move(step), options));
  TQ_RETURN_IF_ERROR(s->start());
  return s;
}

Expected<std::unique_ptr<Scheduler>> Scheduler::create(StepModel& step,
                                                       const SchedulerOptions& options) {
  TQ_RETURN_IF_ERROR(options.validate());
  std::unique_ptr<Scheduler> s(new Scheduler(step, nullptr, options));
  TQ_RETURN_IF_ERROR(s->start());
  return s;
}

Scheduler::Scheduler(StepModel& step, std::unique_ptr<StepModel> owned,
                     const SchedulerOptions& options)
    : owned_(std::move(owned)), step_(step), options_(options), vocab_(step.vocab()) {}

Status Scheduler::start() {
  const StepLimits lim = step_.limits();
  if (lim.sequences > 0 && options_.max_sessions > lim.sequences)
    return invalid_argument("scheduler: max_sessions " + std::to_string(options_.max_sessions) +
                            " exceeds the model's " + std::to_string(lim.sequences) +
                            " sequence slots");
  if (lim.context > 0 && options_.context > lim.context)
    return invalid_argument("scheduler: context " + std::to_string(options_.context) +
                            " exceeds the model's sequence slots of " +
                            std::to_string(lim.context) + " tokens");
  const int need = pages_for(options_.context);
  const int total = step_.kv_stats().pages_total;
  if (need > total)
    return invalid_argument("scheduler: one sequence of " + std::to_string(options_.context) +
                            " tokens needs " + std::to_string(need) +
                            " KV pages but the pool has " + std::to_string(total) +
                            " (raise the KV memory or lower the context)");
  engine_ = std::thread([this] { engine_loop(); });
  return ok_status();
}

Scheduler::~Scheduler() {
  cancel_all_.store(true);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  if (engine_.joinable()) engine_.join();
}

int Scheduler::pages_for(int tokens) const {
  const kv::KvConfig& c = step_.kv_config();
  const int compressed = std::max(0, tokens - c.sinks);
  return (compressed + c.block_tokens - 1) / c.block_tokens;
}

int Scheduler::future_pages(const Active& a) const {
  return std::max(0, pages_for(a.total_max) - a.seq->pages_held());
}

Expected<std::shared_ptr<RequestChannel>> Scheduler::submit(GenerationRequest request,
                                                            SteadyClock::time_point arrival) {
  TQ_RETURN_IF_ERROR(request.validate());
  const int n = static_cast<int>(request.prompt.size());
  if (n + 1 > options_.context)
    return invalid_argument("the prompt has " + std::to_string(n) + " tokens but the context is " +
                            std::to_string(options_.context) +
                            " tokens (one more is needed to generate)");
  for (int32_t id : request.prompt)
    if (id < 0 || id >= vocab_)
      return invalid_argument("token id " + std::to_string(id) + " is outside the vocab [0, " +
                              std::to_string(vocab_) + ")");
  auto channel = std::make_shared<RequestChannel>(arrival);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (draining_.load() || stop_) {
      rejected_.fetch_add(1);
      return resource_exhausted("the server is shutting down");
    }
    // Free session slots take requests at once; beyond them max_queue may wait.
    const int slots = std::max(0, options_.max_sessions - running_.load());
    if (static_cast<int>(queue_.size()) >= options_.max_queue + slots) {
      rejected_.fetch_add(1);
      return resource_exhausted("the request queue is full (" + std::to_string(options_.max_queue) +
                                " waiting)");
    }
    queue_.push_back(Pending{std::move(request), channel});
    queued_.store(static_cast<int>(queue_.size()));
    ++in_flight_;
  }
  work_cv_.notify_one();
  return channel;
}

int Scheduler::drain(std::chrono::milliseconds timeout) {
  draining_.store(true);
  std::unique_lock<std::mutex> lock(mu_);
  if (idle_cv_.wait_for(lock, timeout, [&] { return in_flight_ == 0; })) return 0;
  const int left = in_flight_;
  cancel_all_.store(true);
  work_cv_.notify_all();
  // The engine cancels everything at its next step; a step is bounded (one batch).
  idle_cv_.wait(lock, [&] { return in_flight_ == 0 || stop_; });
  return left;
}

void Scheduler::engine_loop() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [&] { return stop_ || !queue_.empty() || !active_.empty(); });
      if (stop_) break;
    }
    step();
  }
  // Shutting down: everything still here ends as cancelled.
  std::deque<Pending> left;
  {
    std::lock_guard<std::mutex> lock(mu_);
    left.swap(queue_);
    queued_.store(0);
  }
  for (auto& p : left) end_pending(p, FinishReason::kCancelled);
  for (auto& a : active_) finish(*a, FinishReason::kCancelled);
  remove_finished();
  publish_counts();
}

void Scheduler::count_done(FinishReason reason) {
  finished_[static_cast<int>(reason)].fetch_add(1);
  bool idle = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    idle = --in_flight_ == 0;
  }
  if (idle) idle_cv_.notify_all();
}

void Scheduler::end_pending(Pending& p, FinishReason reason, const std::string& error) {
  StreamEvent e;
  e.kind = StreamEvent::Kind::kDone;
  e.time = SteadyClock::now();
  e.finish = reason;
  e.error = error;
  e.prompt_tokens = static_cast<int>(p.request.prompt.size());
  count_done(reason);  // first: a client that sees the event also sees the count
  p.channel->push(std::move(e));
}

void Scheduler::publish_counts() {
  int running = 0;
  int64_t reserved = 0;
  for (const auto& a : active_) {
    if (a->finished) continue;
    ++running;
    reserved += future_pages(*a);
  }
  running_.store(running);
  reserved_pages_.store(reserved);
}

void Scheduler::step() {
  reap_cancelled();
  admit();
  publish_counts();
  if (active_.empty()) {
    // Nothing admissible (the queue head waits for pages that only a cancel can free): poll.
    std::unique_lock<std::mutex> lock(mu_);
    work_cv_.wait_for(lock, std::chrono::milliseconds(20), [&] { return stop_; });
    return;
  }

  // Every decoding sequence advances one token; prompts fill the rest of the budget in
  // admission order, one chunk each.
  std::vector<BatchItem> items;
  int budget = options_.step_tokens;
  for (auto& a : active_) {
    if (a->prefilling()) continue;
    items.push_back(BatchItem{a.get(), &a->next_token, 1, true, -1});
    --budget;
  }
  // A sequence's first chunk fixes its compressed keys' mean (kv::PagedKv, key centering), so
  // it has the same size for the same prompt whatever else runs: one that does not fit waits
  // for the next step (later prompts with it, keeping their order). Otherwise a greedy answer
  // would change with the server's load. The cap is what a step always has free for it.
  const int first_cap = options_.step_tokens - options_.max_sessions + 1;
  for (auto& a : active_) {
    if (!a->prefilling()) continue;
    const bool first = a->prefilled == 0;
    const int want =
        std::min(first ? std::min(options_.prefill_chunk, first_cap) : options_.prefill_chunk,
                 a->prompt_len() - a->prefilled);
    if (budget <= 0 || (first && budget < want)) break;
    const int n = std::min(want, budget);
    items.push_back(BatchItem{a.get(), a->request.prompt.data() + a->prefilled, n,
                              a->prefilled + n == a->prompt_len(), -1});
    budget -= n;
  }
  int rows = 0, top_rows = 0;
  int64_t tokens = 0;
  const bool remote = step_.remote_logits();
  for (auto& it : items) {
    const SamplerConfig& sc = it.seq->request.sampler;
    const int logprobs = it.seq->request.logprobs;  // top logprobs asked; -1: none
    it.greedy = it.want_logits && sc.plain_greedy() && logprobs < 0;
    const int need = it.want_logits && !it.greedy && remote ? sc.top_candidates(vocab_) : 0;
    if (need > 0 && logprobs <= static_cast<int>(SamplerConfig::kMaxTopCandidates)) {
      it.top_count = std::max(need, std::min(logprobs, vocab_));
      it.want_log_z = logprobs >= 0;
    }
    if (it.top_count > 0)
      it.top_row = top_rows++;
    else if (it.want_logits && !it.greedy)
      it.logits_row = rows++;
    tokens += it.n;
  }
  logits_.resize(static_cast<size_t>(std::max(rows, 1)) * static_cast<size_t>(vocab_));
  constexpr size_t kTop = SamplerConfig::kMaxTopCandidates;
  top_ids_.resize(static_cast<size_t>(std::max(top_rows, 1)) * kTop);
  top_logits_.resize(top_ids_.size());
  const Status st = run_batch(items);
  steps_.fetch_add(1);
  step_tokens_.fetch_add(tokens);
  if (!st.ok()) {
    TQ_LOG(kError, "scheduler: batch of %zu sequences failed: %s", items.size(),
           st.to_string().c_str());
    for (auto& it : items) finish(*it.seq, FinishReason::kError, st.to_string());
  } else {
    for (auto& it : items) {
      if (it.seq->prefilling()) {
        it.seq->prefilled += it.n;
        prompt_tokens_.fetch_add(it.n);
      }
      if (it.greedy) {
        after_logits(*it.seq, nullptr, it.picked);
      } else if (it.top_count > 0) {
        const size_t at = static_cast<size_t>(it.top_row) * kTop;
        const int32_t id = it.seq->sampler.sample_top(top_ids_.data() + at, top_logits_.data() + at,
                                                      it.top_count, vocab_);
        if (id < 0)
          finish(*it.seq, FinishReason::kError, kNoTokenToPick);
        else
          after_logits(*it.seq, nullptr, id, it.want_log_z ? &it : nullptr);
      } else if (it.want_logits)
        after_logits(*it.seq, logits_.data() + static_cast<size_t>(it.logits_row) * vocab_);
    }
  }
  remove_finished();
  publish_counts();
}

Status Scheduler::run_batch(std::vector<BatchItem>& items) {
  // One step for all of them. The logits rows were numbered in item order, so they form one
  // run in logits_ (no copy).
  rows_.clear();
  constexpr size_t kTop = SamplerConfig::kMaxTopCandidates;
  for (auto& it : items) {
    StepRow r{
        it.seq->seq.get(), it.tokens, it.n,
        it.logits_row >= 0 ? logits_.data() + static_cast<size_t>(it.logits_row) * vocab_ : nullptr,
        it.greedy ? &it.picked : nullptr};
    if (it.top_count > 0) {
      r.top_count = it.top_count;
      r.top_ids = top_ids_.data() + static_cast<size_t>(it.top_row) * kTop;
      r.top_logits = top_logits_.data() + static_cast<size_t>(it.top_row) * kTop;
      if (it.want_log_z) r.log_z = &it.log_z;
    }
    rows_.push_back(r);
  }
  return step_.forward(rows_);
}

void Scheduler::after_logits(Active& a, const float* logits, int32_t picked, const BatchItem* top) {
  if (a.finished) return;
  const model::Tokenizer& tok = step_.tokenizer();
  const int32_t id = logits != nullptr ? a.sampler.sample(logits, vocab_) : picked;
  if (id < 0) {
    finish(a, FinishReason::kError, kNoTokenToPick);
    return;
  }
  a.sampler.accept(id);
  StreamEvent e;
  e.kind = StreamEvent::Kind::kDelta;
  e.token = id;
  if (a.request.logprobs >= 0 && logits != nullptr) {
    e.has_logprob = true;
    e.logprob = token_logprob(logits, vocab_, id, a.request.logprobs);
  } else if (a.request.logprobs >= 0 && top != nullptr) {
    constexpr size_t kTop = SamplerConfig::kMaxTopCandidates;
    const size_t at = static_cast<size_t>(top->top_row) * kTop;
    e.has_logprob = true;
    e.logprob = token_logprob_top(top_ids_.data() + at, top_logits_.data() + at, top->top_count,
                                  top->log_z, id, a.request.logprobs);
  }
  if (a.request.stop_at_eog && tok.is_eog(id)) {
    std::string tail = a.filter.push(a.decoder.flush());
    tail += a.filter.flush();
    if (!tail.empty()) {
      StreamEvent t;
      t.time = SteadyClock::now();
      t.text = std::move(tail);
      a.channel->push(std::move(t));
    }
    finish(a, FinishReason::kStop);
    return;
  }
  ++a.generated;
  generated_tokens_.fetch_add(1);
  e.text = a.filter.push(a.decoder.push(id));
  const bool stopped = a.filter.stopped();
  const bool at_max = a.generated >= a.request.max_tokens;
  const bool full = a.seq->length() + 1 > a.seq->capacity();
  if (!stopped && (at_max || full)) {
    e.text += a.filter.push(a.decoder.flush());
    e.text += a.filter.flush();
  }
  e.time = SteadyClock::now();
  a.channel->push(std::move(e));
  if (stopped) return finish(a, FinishReason::kStop);
  if (at_max || full) return finish(a, FinishReason::kLength);
  a.next_token = id;
}

void Scheduler::finish(Active& a, FinishReason reason, const std::string& error) {
  if (a.finished) return;
  a.finished = true;
  StreamEvent e;
  e.kind = StreamEvent::Kind::kDone;
  e.time = SteadyClock::now();
  e.finish = reason;
  e.error = error;
  e.prompt_tokens = a.prompt_len();
  e.cached_tokens = a.cached;
  e.completion_tokens = a.generated;
  a.seq.reset();       // pages back to the pool (full prompt pages stay in the prefix cache)
  count_done(reason);  // first: a client that sees the event also sees the count
  publish_counts();    // and /v1/capacity without this sequence's slot and reserved pages
  a.channel->push(std::move(e));
}

void Scheduler::remove_finished() {
  active_.erase(std::remove_if(active_.begin(), active_.end(),
                               [](const std::unique_ptr<Active>& a) { return a->finished; }),
                active_.end());
}

void Scheduler::reap_cancelled() {
  const bool all = cancel_all_.load();
  for (auto& a : active_)
    if (all || a->channel->cancelled()) finish(*a, FinishReason::kCancelled);
  remove_finished();
  std::deque<Pending> dropped;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = queue_.begin(); it != queue_.end();) {
      if (all || it->channel->cancelled()) {
        dropped.push_back(std::move(*it));
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
    queued_.store(static_cast<int>(queue_.size()));
  }
  for (auto& p : dropped) end_pending(p, FinishReason::kCancelled);
}

void Scheduler::admit() {
  // Only this thread removes from the queue (submit appends), so an index stays valid.
  size_t i = 0;
  while (static_cast<int>(active_.size()) < options_.max_sessions) {
    Pending p;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (i >= queue_.size()) return;
      p = std::move(queue_[i]);
      queue_.erase(queue_.begin() + static_cast<std::ptrdiff_t>(i));
    }
    const bool defer = prefix_in_flight(p.request.prompt);
    if (!defer && try_admit(p)) {
      std::lock_guard<std::mutex> lock(mu_);
      queued_.store(static_cast<int>(queue_.size()));
      continue;
    }
    std::lock_guard<std::mutex> lock(mu_);
    queue_.insert(queue_.begin() + static_cast<std::ptrdiff_t>(i), std::move(p));
    // A deferred request lets later ones past it; one waiting for pages keeps the order.
    if (!defer) return;
    ++i;
  }
}

bool Scheduler::prefix_in_flight(const std::vector<int32_t>& prompt) const {
  if (!step_.prefix_caching()) return false;
  const kv::KvConfig& c = step_.kv_config();
  // reuse_prefix leaves at least max(window, 1) prompt tokens to compute.
  const int usable = static_cast<int>(prompt.size()) - std::max(c.window, 1);
  for (const auto& a : active_) {
    if (!a->prefilling()) continue;
    const auto& other = a->request.prompt;
    const size_t n = std::min(other.size(), prompt.size());
    int lcp = 0;
    while (static_cast<size_t>(lcp) < n &&
           other[static_cast<size_t>(lcp)] == prompt[static_cast<size_t>(lcp)])
      ++lcp;
    const int shareable = (std::min(lcp, usable) - c.sinks) / c.block_tokens;
    const int ready = a->seq->compressed_tokens() / c.block_tokens;
    if (shareable > ready) return true;
  }
  return false;
}

bool Scheduler::try_admit(Pending& p) {
  auto seq = step_.new_sequence(options_.context);
  auto sampler = Sampler::create(p.request.sampler);
  if (!seq.ok() || !sampler.ok()) {
    end_pending(p, FinishReason::kError, (seq.ok() ? sampler.status() : seq.status()).to_string());
    return true;  // consumed
  }
  auto a = std::make_unique<Active>(std::move(p), std::move(seq).value(),
                                    std::move(sampler).value(), step_.tokenizer());
  a->total_max = std::min(a->prompt_len() + a->request.max_tokens, options_.context);
  auto reused = a->seq->reuse_prefix(a->request.prompt);
  if (reused.ok()) a->cached = a->prefilled = *reused;

  // Pages in use now (shared ones once, this sequence's reused ones included) plus what every
  // running sequence and this one may still allocate must fit in the pool.
  const kv::KvPoolStats st = step_.kv_stats();
  int64_t need = future_pages(*a);
  for (const auto& r : active_) need += future_pages(*r);
  if (st.pages_used + need > st.pages_total) {
    p.request = std::move(a->request);  // give the request back; the sequence is dropped
    p.channel = std::move(a->channel);
    return false;
  }
  for (int32_t t : a->request.prompt) a->sampler.accept(t);
  prompt_tokens_.fetch_add(a->cached);
  prompt_cached_tokens_.fetch_add(a->cached);
  active_.push_back(std::move(a));
  return true;
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats s;
  s.queued = queued_.load();
  s.running = running_.load();
  s.steps = steps_.load();
  s.step_tokens = step_tokens_.load();
  s.prompt_tokens = prompt_tokens_.load();
  s.prompt_cached_tokens = prompt_cached_tokens_.load();
  s.generated_tokens = generated_tokens_.load();
  for (int i = 0; i < 4; ++i) s.finished[i] = finished_[i].load();
  s.rejected = rejected_.load();
  s.reserved_pages = reserved_pages_.load();
  return s;
}

SchedulerCapacity Scheduler::capacity() const {
  const kv::KvPoolStats st = step_.kv_stats();
  SchedulerCapacity c;
  c.context = options_.context;
  c.max_sessions = options_.max_sessions;
  c.running = running_.load();
  c.queued = queued_.load();
  c.pages_total = st.pages_total;
  c.pages_used = st.pages_used;
  c.pages_reserved = static_cast<int>(reserved_pages_.load());
  c.pages_per_session = std::max(1, pages_for(options_.context));
  c.page_bytes = st.page_bytes;
  const kv::KvConfig& cfg = step_.kv_config();
  const int exact = std::min(options_.context, cfg.sinks + cfg.window);
  c.exact_bytes_per_session = static_cast<size_t>(exact) * kv::kv_f16_token_bytes(step_.shape());
  const int free_pages = std::max(0, c.pages_total - c.pages_used - c.pages_reserved);
  const int slots = std::max(0, c.max_sessions - c.running);
  c.sessions_fit_now = std::min(slots, free_pages / c.pages_per_session);
  c.sessions_fit_empty = std::min(c.max_sessions, c.pages_total / c.pages_per_session);
  return c;
}

}  // namespace tq::runtime
