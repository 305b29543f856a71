// What the server serves: the model and the continuous-batching scheduler over a step model,
// built once at startup. On the CPU the step model is the thread pool and the shared paged KV
// cache sized in bytes; on CUDA it is a backend::DeviceModel's sequence slots (no prefix
// sharing). It also turns validated API parameters into a runtime::GenerationRequest (chat
// template, tokenization, sampling defaults, the token budget of the context).
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tq/backend/device_model.h"
#include "tq/core/status.h"
#include "tq/core/thread_pool.h"
#include "tq/kv/kv_config.h"
#include "tq/kv/paged_kv_cache.h"
#include "tq/model/llama.h"
#include "tq/runtime/scheduler.h"
#include "tq/runtime/step_model.h"
#include "tq/server/openai_schema.h"

namespace tq::server {

enum class EngineDevice { kCpu, kCuda };

struct EngineOptions {
  EngineDevice device = EngineDevice::kCpu;
  kv::KvConfig kv;
  // Bytes for the KV cache: the pool's pages plus the f16 sink/window rows of max_sessions
  // full-context sequences. 0: exactly enough for max_sessions sequences at the full context.
  // On CUDA: the sequence slots are as many full-context ones as fit (at most max_sessions).
  size_t kv_memory_bytes = 0;
  int threads = 0;             // 0: the hardware's (CPU)
  bool prefix_caching = true;  // shared pages (CPU), or prefixes reused by slot (CUDA)
  runtime::SchedulerOptions scheduler;
  std::string model_id;  // the name /v1/models lists; "" = the file's stem

  std::string to_string() const;
};

// The device model a CUDA engine needs for these options and this model's attention: slots of
// the full context (as many as max_sessions, fewer when kv_memory_bytes holds fewer), passes
// wide enough for a prefill chunk and for every slot's decode token. A clear error for what
// the GPU lacks (window, sinks, key scaling) or for a budget below one sequence.
Expected<backend::DeviceModelOptions> device_model_options(const EngineOptions& options,
                                                           const kv::AttentionShape& shape);

// Puts a loaded model on the device with these options (the CLI's open_cuda_model).
using DeviceOpener = std::function<Expected<std::unique_ptr<backend::DeviceModel>>(
    const model::Model&, const backend::DeviceModelOptions&)>;

// The prompt of a request as token ids for `model` (what Engine::prompt_tokens returns): the
// chat template applied to the messages (ChatML when the model has none), or the completion
// prompt encoded (or given as ids). Errors are the client's (400). Free so that a client of the
// engine (tq bench voice) can size its prompts before building one.
Expected<std::vector<int32_t>> render_prompt_tokens(const model::Model& model,
                                                    const CompletionParams& p);

class Engine {
 public:
  // Loads the model file; with options.device kCuda, `open_device` puts it on the device with
  // device_model_options().
  static Expected<std::unique_ptr<Engine>> load(const std::string& model_path,
                                                const EngineOptions& options,
                                                const DeviceOpener& open_device = {});
  // `device`: the model on the GPU, made from device_model_options(), with options.device
  // kCuda; null for the CPU. The scheduler's max_sessions is lowered to the device's slots.
  static Expected<std::unique_ptr<Engine>> create(
      std::unique_ptr<model::Model> model, const EngineOptions& options,
      std::unique_ptr<backend::DeviceModel> device = nullptr);
  ~Engine();

  const model::Model& model() const { return *model_; }
  runtime::Scheduler& scheduler() { return *scheduler_; }
  const runtime::Scheduler& scheduler() const { return *scheduler_; }
  // The KV cache's numbers and formats, whichever device holds it.
  const runtime::StepModel& step_model() const { return *step_; }
  // "cpu (N threads)" or the device model's description.
  const std::string& device_description() const { return device_description_; }
  const EngineOptions& options() const { return options_; }
  const std::string& model_id() const { return options_.model_id; }
  int context() const { return options_.scheduler.context; }

  // The prompt of a request as token ids: the chat template applied to the messages, or the
  // completion prompt encoded (or given as ids). Errors are the client's (400).
  Expected<std::vector<int32_t>> prompt_tokens(const CompletionParams& p) const {
    return render_prompt_tokens(*model_, p);
  }
  // The request the scheduler runs for choice `choice` of p.n; `seed` is used when the client
  // gave none, the client's seed + choice when it did. The prompt must leave room for one
  // generated token (checked by the caller for a precise error).
  runtime::GenerationRequest make_request(const CompletionParams& p, std::vector<int32_t> prompt,
                                          uint64_t seed, int choice = 0) const;

 private:
  Engine() = default;

  EngineOptions options_;
  std::unique_ptr<model::Model> model_;
  std::string device_description_;
  std::unique_ptr<ThreadPool> pool_;               // CPU
  std::unique_ptr<kv::PagedKvCache> cache_;        // CPU
  std::unique_ptr<backend::DeviceModel> device_;   // CUDA
  std::unique_ptr<runtime::StepModel> step_;       // over the pool and cache, or the device
  std::unique_ptr<runtime::Scheduler> scheduler_;  // last: stopped first
};

}  // namespace tq::server
