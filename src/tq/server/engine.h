// What the server serves: the model, the CPU thread pool, the shared paged KV cache sized in
// bytes, and the continuous-batching scheduler over them, built once at startup. It also turns
// validated API parameters into a runtime::GenerationRequest (chat template, tokenization,
// sampling defaults, the token budget of the context).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "tq/core/status.h"
#include "tq/core/thread_pool.h"
#include "tq/kv/kv_config.h"
#include "tq/kv/paged_kv_cache.h"
#include "tq/model/llama.h"
#include "tq/runtime/scheduler.h"
#include "tq/server/openai_schema.h"

namespace tq::server {

struct EngineOptions {
  kv::KvConfig kv;
  // Bytes for the KV cache: the pool's pages plus the f16 sink/window rows of max_sessions
  // full-context sequences. 0: exactly enough for max_sessions sequences at the full context.
  size_t kv_memory_bytes = 0;
  int threads = 0;  // 0: the hardware's
  bool prefix_caching = true;
  runtime::SchedulerOptions scheduler;
  std::string model_id;  // the name /v1/models lists; "" = the file's stem

  std::string to_string() const;
};

class Engine {
 public:
  static Expected<std::unique_ptr<Engine>> load(const std::string& model_path,
                                                const EngineOptions& options);
  static Expected<std::unique_ptr<Engine>> create(std::unique_ptr<model::Model> model,
                                                  const EngineOptions& options);
  ~Engine();

  const model::Model& model() const { return *model_; }
  runtime::Scheduler& scheduler() { return *scheduler_; }
  const runtime::Scheduler& scheduler() const { return *scheduler_; }
  const kv::PagedKvCache& cache() const { return *cache_; }
  const EngineOptions& options() const { return options_; }
  const std::string& model_id() const { return options_.model_id; }
  int context() const { return options_.scheduler.context; }

  // The prompt of a request as token ids: the chat template applied to the messages, or the
  // completion prompt encoded (or given as ids). Errors are the client's (400).
  Expected<std::vector<int32_t>> prompt_tokens(const CompletionParams& p) const;
  // The request the scheduler runs; `seed` is used when the client gave none. The prompt
  // must leave room for one generated token (checked by the caller for a precise error).
  runtime::GenerationRequest make_request(const CompletionParams& p, std::vector<int32_t> prompt,
                                          uint64_t seed) const;

 private:
  Engine() = default;

  EngineOptions options_;
  std::unique_ptr<model::Model> model_;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<kv::PagedKvCache> cache_;
  std::unique_ptr<runtime::Scheduler> scheduler_;  // last: stopped first
};

}  // namespace tq::server
