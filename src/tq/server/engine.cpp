// Engine construction and request building (see engine.h).
#include "tq/server/engine.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <utility>

#include "tq/backend/cpu/tq_kernels.h"
#include "tq/core/log.h"
#include "tq/kv/kv_bytes.h"
#include "tq/model/chat_template.h"
#include "tq/runtime/cpu_step_model.h"
#include "tq/runtime/device_step_model.h"

namespace tq::server {

std::string EngineOptions::to_string() const {
  char buf[160];
  std::snprintf(buf, sizeof buf, "device=%s kv_memory=%zu threads=%d prefix_caching=%d ",
                device == EngineDevice::kCuda ? "cuda" : "cpu", kv_memory_bytes, threads,
                prefix_caching ? 1 : 0);
  return buf + scheduler.to_string() + " kv: " + kv.to_string();
}

namespace {

// Pages of one full-context sequence.
size_t pages_per_sequence(const EngineOptions& o) {
  const int bt = o.kv.block_tokens;
  return static_cast<size_t>(
      std::max(1, (std::max(0, o.scheduler.context - o.kv.sinks) + bt - 1) / bt));
}

Expected<size_t> page_bytes(const EngineOptions& o, const kv::AttentionShape& shape) {
  TQ_ASSIGN_OR_RETURN(const std::vector<size_t> blocks, kv::kv_block_bytes(o.kv, shape));
  size_t bytes = 0;
  for (size_t b : blocks) bytes += b;
  return bytes;
}

// The f16 sink and window rows of one full-context sequence.
size_t exact_bytes_per_sequence(const EngineOptions& o, const kv::AttentionShape& shape) {
  return static_cast<size_t>(std::min(o.scheduler.context, o.kv.sinks + o.kv.window)) *
         kv::kv_f16_token_bytes(shape);
}

// The CPU pool's bytes: every session's f16 rows come off the budget first, the pages get the
// rest.
Expected<size_t> cpu_pool_bytes(const EngineOptions& o, const kv::AttentionShape& shape) {
  TQ_ASSIGN_OR_RETURN(const size_t page, page_bytes(o, shape));
  const size_t exact_per_seq = exact_bytes_per_sequence(o, shape);
  const size_t sessions = static_cast<size_t>(o.scheduler.max_sessions);
  const size_t one_seq = page * pages_per_sequence(o);
  if (o.kv_memory_bytes == 0) return one_seq * sessions;
  const size_t exact_all = exact_per_seq * sessions;
  if (o.kv_memory_bytes < exact_all + one_seq)
    return invalid_argument(
        "serve: --kv-memory " + std::to_string(o.kv_memory_bytes) +
        " bytes is less than one full-context sequence (" + std::to_string(one_seq) +
        " bytes of pages) plus the f16 window/sink rows of " + std::to_string(sessions) +
        " sessions (" + std::to_string(exact_all) + " bytes)");
  return o.kv_memory_bytes - exact_all;
}

}  // namespace

Expected<backend::DeviceModelOptions> device_model_options(const EngineOptions& options,
                                                           const kv::AttentionShape& shape) {
  backend::DeviceModelOptions d;
  d.kv = options.kv;
  d.max_context = options.scheduler.context;
  d.max_sequences = options.scheduler.max_sessions;
  // One pass holds a whole prefill chunk, or every slot's decode token.
  d.max_batch = std::min(65535, std::max(options.scheduler.prefill_chunk, d.max_sequences));
  if (Status st = d.validate(); !st.ok()) return st.with_context("serve --device cuda");
  if (options.kv_memory_bytes > 0) {
    TQ_ASSIGN_OR_RETURN(const size_t page, page_bytes(options, shape));
    // A device slot: its pages, its f16 sink and window rows, its key means and scales.
    const size_t per_slot = page * pages_per_sequence(options) +
                            exact_bytes_per_sequence(options, shape) +
                            kv::kv_key_mean_bytes(d.kv, shape);
    const size_t fit = options.kv_memory_bytes / per_slot;
    if (fit < 1)
      return invalid_argument("serve: --kv-memory " + std::to_string(options.kv_memory_bytes) +
                              " bytes is less than one full-context sequence slot (" +
                              std::to_string(per_slot) + " bytes)");
    d.max_sequences = static_cast<int>(std::min<size_t>(fit, static_cast<size_t>(d.max_sequences)));
  }
  return d;
}

Expected<std::unique_ptr<Engine>> Engine::load(const std::string& model_path,
                                               const EngineOptions& options,
                                               const DeviceOpener& open_device) {
  TQ_ASSIGN_OR_RETURN(auto model, model::Model::load(model_path));
  EngineOptions o = options;
  if (o.model_id.empty()) o.model_id = std::filesystem::path(model_path).stem().string();
  if (o.device == EngineDevice::kCpu) return create(std::move(model), o);
  if (!open_device) return invalid_argument("engine: no way to open the device model");
  TQ_ASSIGN_OR_RETURN(const backend::DeviceModelOptions d,
                      device_model_options(o, model->attention_shape()));
  TQ_ASSIGN_OR_RETURN(auto device, open_device(*model, d));
  return create(std::move(model), o, std::move(device));
}

Expected<std::unique_ptr<Engine>> Engine::create(std::unique_ptr<model::Model> model,
                                                 const EngineOptions& options,
                                                 std::unique_ptr<backend::DeviceModel> device) {
  if (!model) return invalid_argument("engine: no model");
  const bool cuda = options.device == EngineDevice::kCuda;
  if (cuda != (device != nullptr))
    return invalid_argument(cuda ? "engine: --device cuda needs the model on the device"
                                 : "engine: a device model was given for a CPU engine");
  TQ_RETURN_IF_ERROR(options.scheduler.validate());
  const kv::AttentionShape shape = model->attention_shape();
  TQ_RETURN_IF_ERROR(options.kv.validate_for(shape.n_layers, shape.head_dim));
  const int ctx = options.scheduler.context;
  if (ctx > model->config().context_length)
    TQ_LOG(kWarn, "serve: context %d is longer than the model's trained context %d", ctx,
           model->config().context_length);

  std::unique_ptr<Engine> e(new Engine());
  e->options_ = options;
  if (e->options_.model_id.empty()) e->options_.model_id = "tq-model";
  e->model_ = std::move(model);
  if (cuda) {
    // One sequence per device slot; prefixes are reused from what the slots hold.
    runtime::SchedulerOptions& so = e->options_.scheduler;
    const int slots = device->options().max_sequences;
    if (so.max_sessions > slots) {
      TQ_LOG(kInfo, "serve: max_sessions %d -> %d: the device holds %d full-context slots",
             so.max_sessions, slots, slots);
      so.max_sessions = slots;
    }
    e->device_description_ = device->describe();
    e->device_ = std::move(device);
    TQ_ASSIGN_OR_RETURN(e->step_, runtime::DeviceStepModel::create(*e->device_, *e->model_,
                                                                   options.prefix_caching));
  } else {
    TQ_ASSIGN_OR_RETURN(const size_t pool_bytes, cpu_pool_bytes(options, shape));
    const int threads = options.threads > 0 ? options.threads : default_thread_count();
    e->device_description_ = "cpu (" + std::to_string(threads) + " threads)";
    e->pool_ = std::make_unique<ThreadPool>(threads);
    kv::PagedKvCacheOptions co;
    co.shape = shape;
    co.config = options.kv;
    co.pool_bytes = pool_bytes;
    co.prefix_caching = options.prefix_caching;
    co.kernels = &backend::cpu::cpu_kernel_table();
    if (options.kv.value_scaling) {
      TQ_ASSIGN_OR_RETURN(co.value_weights, e->model_->value_output_weights());
    }
    TQ_ASSIGN_OR_RETURN(e->cache_, kv::PagedKvCache::create(co));
    e->step_ = std::make_unique<runtime::CpuStepModel>(*e->model_, *e->cache_, *e->pool_);
  }
  TQ_ASSIGN_OR_RETURN(e->scheduler_, runtime::Scheduler::create(*e->step_, e->options_.scheduler));
  return e;
}

Engine::~Engine() {
  scheduler_.reset();  // its sequences hold pages of the cache or slots of the device
  step_.reset();
  cache_.reset();
  device_.reset();
}

Expected<std::vector<int32_t>> render_prompt_tokens(const model::Model& model,
                                                    const CompletionParams& p) {
  const model::Tokenizer& tok = model.tokenizer();
  if (p.endpoint == Endpoint::kCompletion) {
    if (p.prompt_is_tokens) {
      for (int32_t id : p.prompt_tokens)
        if (id >= model.config().vocab_size)
          return invalid_argument("token id " + std::to_string(id) + " is outside the vocab [0, " +
                                  std::to_string(model.config().vocab_size) + ")");
      return p.prompt_tokens;
    }
    return tok.encode(p.prompt, tok.add_bos_default(), /*parse_special=*/true);
  }
  model::ChatTemplateOptions o;
  if (tok.bos_id() >= 0) o.bos_token = std::string(tok.token_text(tok.bos_id()));
  if (tok.eos_id() >= 0) o.eos_token = std::string(tok.token_text(tok.eos_id()));
  o.add_generation_prompt = true;
  std::string text;
  if (tok.chat_template().empty()) {
    text = model::format_chat(model::ChatFormat::kChatMl, p.messages, o);
  } else {
    TQ_ASSIGN_OR_RETURN(text, model::apply_chat_template(tok.chat_template(), p.messages, o));
  }
  // The template writes any BOS itself (as transformers' apply_chat_template(tokenize=True)).
  return tok.encode(text, /*add_bos=*/false, /*parse_special=*/true);
}

runtime::GenerationRequest Engine::make_request(const CompletionParams& p,
                                                std::vector<int32_t> prompt, uint64_t seed,
                                                int choice) const {
  runtime::GenerationRequest r;
  const int room = context() - static_cast<int>(prompt.size());
  r.prompt = std::move(prompt);
  // max_tokens beyond the context left is clipped (the answer then ends with "length").
  r.max_tokens = std::max(1, std::min(p.max_tokens.value_or(room), room));
  r.stop_strings = p.stop;
  r.stop_at_eog = !p.ignore_eos;
  r.sampler = p.sampler;
  r.sampler.seed = p.seed ? *p.seed + static_cast<uint64_t>(choice) : seed;
  r.logprobs = p.logprobs ? p.top_logprobs : -1;
  return r;
}

}  // namespace tq::server
