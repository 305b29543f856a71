// Continuous batching over the shared paged KV cache. Clients submit() requests from any
// thread; one engine thread runs steps. Each step:
//   1. drops cancelled requests (their pages go back to the pool at once),
//   2. admits waiting requests in arrival order while a session slot and enough KV pages are
//      free (a request's pages are reserved for its whole prompt + max_tokens, so a running
//      sequence can never run out of cache mid-generation),
//   3. batches one token of every decoding sequence with prefill chunks of new prompts (at
//      most prefill_chunk tokens per prompt and step_tokens in all, so a long prompt never
//      stalls the running streams for more than one chunk),
//   4. runs the batch through the model as one step (StepModel::forward: on the CPU one
//      Model::forward_batch, on the GPU one batched decode pass plus the prefill chunks),
//      samples, and streams each text.
// A new sequence first takes the longest cached prefix of its prompt from the cache's prefix
// index, and a request whose prefix another sequence is still prefilling waits for those pages
// (others may pass it), so a system prompt shared by many requests is computed and stored once
// (where the step model shares prefixes: the CPU's paged cache does, the GPU's slots do not).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tq/core/status.h"
#include "tq/core/thread_pool.h"
#include "tq/kv/paged_kv_cache.h"
#include "tq/model/llama.h"
#include "tq/runtime/request_channel.h"
#include "tq/runtime/step_model.h"

namespace tq::runtime {

struct SchedulerOptions {
  // Bounds of what validate() accepts: the server holds a worker thread per running or waiting
  // request, so these also bound its threads.
  static constexpr int kMaxSessions = 4096;
  static constexpr int kMaxQueue = 4096;

  int max_sessions = 8;     // sequences in the running batch at most
  int max_queue = 64;       // requests waiting for a slot or for KV pages; more are refused
  int context = 2048;       // tokens per sequence, prompt and generation together
  int prefill_chunk = 128;  // prompt tokens of one sequence per step at most
  int step_tokens = 256;    // tokens through the model per step at most (>= max_sessions)

  Status validate() const;
  std::string to_string() const;
};

struct SchedulerStats {
  int queued = 0;
  int running = 0;
  int64_t steps = 0;
  int64_t step_tokens = 0;           // tokens run through the model, all steps
  int64_t prompt_tokens = 0;         // prompt tokens of finished and running requests
  int64_t prompt_cached_tokens = 0;  // of those, taken from the prefix cache
  int64_t generated_tokens = 0;
  int64_t finished[4] = {};  // by FinishReason
  int64_t rejected = 0;      // submit() refused: queue full or shutting down
  // KV pages the running sequences may still allocate (their reservations not yet used).
  int64_t reserved_pages = 0;
};

// How many more sessions the cache holds now, at the full context, from the pool's pages.
struct SchedulerCapacity {
  int context = 0;
  int max_sessions = 0;
  int running = 0;
  int queued = 0;
  int pages_total = 0;
  int pages_used = 0;         // held by sequences
  int pages_reserved = 0;     // still to be allocated by running sequences
  int pages_per_session = 0;  // a full-context sequence (sinks and window in f16 aside)
  size_t page_bytes = 0;
  size_t exact_bytes_per_session = 0;  // f16 sinks + window rows of a full-context sequence
  int sessions_fit_now = 0;            // min(free slots, unreserved pages / pages_per_session)
  int sessions_fit_empty = 0;          // the same with no session running
};

class Scheduler {
 public:
  // `step` must outlive the scheduler; the engine thread starts here and is its only user
  // (kv_stats() aside). InvalidArgument when the options exceed the step model's limits.
  static Expected<std::unique_ptr<Scheduler>> create(StepModel& step,
                                                     const SchedulerOptions& options);
  // On the CPU: a CpuStepModel over these, owned by the scheduler. The model, cache and pool
  // must outlive it.
  static Expected<std::unique_ptr<Scheduler>> create(const model::Model& model,
                                                     kv::PagedKvCache& cache, ThreadPool& pool,
                                                     const SchedulerOptions& options);
  ~Scheduler();  // stops the engine; requests still in flight end as cancelled
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request; events arrive on the returned channel. InvalidArgument for a request
  // that can never run (bad ids, prompt + 1 over the context, more KV pages than the pool
  // has); ResourceExhausted when the queue is full or the scheduler is draining.
  Expected<std::shared_ptr<RequestChannel>> submit(
      GenerationRequest request, SteadyClock::time_point arrival = SteadyClock::now());

  // Refuses new requests, waits up to `timeout` for those in flight to finish, then cancels
  // the rest and waits for the engine to drop them. Returns the number cancelled.
  int drain(std::chrono::milliseconds timeout);
  bool draining() const { return draining_.load(); }

  SchedulerStats stats() const;
  SchedulerCapacity capacity() const;
  const SchedulerOptions& options() const { return options_; }
  const StepModel& step_model() const { return step_; }

 private:
  struct Active;
  struct Pending {
    GenerationRequest request;
    std::shared_ptr<RequestChannel> channel;
  };
  struct BatchItem;

  Scheduler(StepModel& step, std::unique_ptr<StepModel> owned, const SchedulerOptions& options);
  Status start();  // checks the step model's limits and pages, then starts the engine
  void engine_loop();
  void step();
  void reap_cancelled();
  void admit();
  bool try_admit(Pending& p);
  // True when a sequence still prefilling shares more full pages of this prompt than the
  // prefix cache holds yet: admitting later reuses them instead of computing them twice.
  bool prefix_in_flight(const std::vector<int32_t>& prompt) const;
  Status run_batch(std::vector<BatchItem>& items);
  // Samples the next token from logits (or takes `picked`, the model's greedy token or the draw
  // from its top candidates, when logits is null) and streams it; logprobs from logits, or from
  // `top`'s candidates and log_z.
  void after_logits(Active& a, const float* logits, int32_t picked = -1,
                    const BatchItem* top = nullptr);
  void finish(Active& a, FinishReason reason, const std::string& error = {});
  void remove_finished();
  // Pushes a pending request's final event (cancelled or failed before it ran).
  void end_pending(Pending& p, FinishReason reason, const std::string& error = {});
  void count_done(FinishReason reason);
  int pages_for(int tokens) const;
  int future_pages(const Active& a) const;
  void publish_counts();

  std::unique_ptr<StepModel> owned_;  // the convenience create()'s CPU step model, else null
  StepModel& step_;
  const SchedulerOptions options_;
  const int vocab_;

  mutable std::mutex mu_;
  std::condition_variable work_cv_;  // engine: a request arrived or stop
  std::condition_variable idle_cv_;  // drain: queue and batch emptied
  std::deque<Pending> queue_;        // guarded by mu_
  bool stop_ = false;                // guarded by mu_
  int in_flight_ = 0;                // guarded by mu_: submitted, final event not yet pushed
  std::atomic<bool> draining_{false};
  std::atomic<bool> cancel_all_{false};

  // Engine thread only.
  std::vector<std::unique_ptr<Active>> active_;
  std::vector<StepRow> rows_;  // one step's rows (reused)
  std::vector<float> logits_;  // [rows][vocab]
  // [rows][SamplerConfig::kMaxTopCandidates]: the top candidates of rows sampled from them
  std::vector<int32_t> top_ids_;
  std::vector<float> top_logits_;

  // Published by the engine for stats() and capacity().
  std::atomic<int> running_{0};
  std::atomic<int> queued_{0};
  std::atomic<int64_t> steps_{0};
  std::atomic<int64_t> step_tokens_{0};
  std::atomic<int64_t> prompt_tokens_{0};
  std::atomic<int64_t> prompt_cached_tokens_{0};
  std::atomic<int64_t> generated_tokens_{0};
  std::atomic<int64_t> finished_[4] = {};
  std::atomic<int64_t> rejected_{0};
  std::atomic<int64_t> reserved_pages_{0};

  std::thread engine_;  // last: starts after every member above exists
};

}  // namespace tq::runtime
