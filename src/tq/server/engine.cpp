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

namespace tq::server {

std::string EngineOptions::to_string() const {
  char buf[160];
  std::snprintf(buf, sizeof buf, "kv_memory=%zu threads=%d prefix_caching=%d ", kv_memory_bytes,
                threads, prefix_caching ? 1 : 0);
  return buf + scheduler.to_string() + " kv: " + kv.to_string();
}

Expected<std::unique_ptr<Engine>> Engine::load(const std::string& model_path,
                                               const EngineOptions& options) {
  TQ_ASSIGN_OR_RETURN(auto model, model::Model::load(model_path));
  EngineOptions o = options;
  if (o.model_id.empty()) o.model_id = std::filesystem::path(model_path).stem().string();
  return create(std::move(model), o);
}

Expected<std::unique_ptr<Engine>> Engine::create(std::unique_ptr<model::Model> model,
                                                 const EngineOptions& options) {
  if (!model) return invalid_argument("engine: no model");
  TQ_RETURN_IF_ERROR(options.scheduler.validate());
  const kv::AttentionShape shape = model->attention_shape();
  TQ_RETURN_IF_ERROR(options.kv.validate_for(shape.n_layers, shape.head_dim));
  const int ctx = options.scheduler.context;
  if (ctx > model->config().context_length)
    TQ_LOG(kWarn, "serve: context %d is longer than the model's trained context %d", ctx,
           model->config().context_length);

  // Pool bytes: every session's f16 rows come off the budget first, the pages get the rest.
  TQ_ASSIGN_OR_RETURN(const std::vector<size_t> blocks, kv::kv_block_bytes(options.kv, shape));
  size_t page_bytes = 0;
  for (size_t b : blocks) page_bytes += b;
  const int bt = options.kv.block_tokens;
  const size_t pages_per_seq =
      static_cast<size_t>((std::max(0, ctx - options.kv.sinks) + bt - 1) / bt);
  const size_t exact_per_seq =
      static_cast<size_t>(std::min(ctx, options.kv.sinks + options.kv.window)) *
      kv::kv_f16_token_bytes(shape);
  const size_t sessions = static_cast<size_t>(options.scheduler.max_sessions);
  size_t pool_bytes = page_bytes * std::max<size_t>(pages_per_seq, 1) * sessions;
  if (options.kv_memory_bytes > 0) {
    const size_t exact_all = exact_per_seq * sessions;
    const size_t one_seq = page_bytes * std::max<size_t>(pages_per_seq, 1);
    if (options.kv_memory_bytes < exact_all + one_seq)
      return invalid_argument(
          "serve: --kv-memory " + std::to_string(options.kv_memory_bytes) +
          " bytes is less than one full-context sequence (" + std::to_string(one_seq) +
          " bytes of pages) plus the f16 window/sink rows of " + std::to_string(sessions) +
          " sessions (" + std::to_string(exact_all) + " bytes)");
    pool_bytes = options.kv_memory_bytes - exact_all;
  }

  std::unique_ptr<Engine> e(new Engine());
  e->options_ = options;
  if (e->options_.model_id.empty()) e->options_.model_id = "tq-model";
  e->model_ = std::move(model);
  e->pool_ = std::make_unique<ThreadPool>(options.threads > 0 ? options.threads
                                                              : default_thread_count());
  kv::PagedKvCacheOptions co;
  co.shape = shape;
  co.config = options.kv;
  co.pool_bytes = pool_bytes;
  co.prefix_caching = options.prefix_caching;
  co.kernels = &backend::cpu::cpu_kernel_table();
  TQ_ASSIGN_OR_RETURN(e->cache_, kv::PagedKvCache::create(co));
  TQ_ASSIGN_OR_RETURN(e->scheduler_,
                      runtime::Scheduler::create(*e->model_, *e->cache_, *e->pool_,
                                                 options.scheduler));
  return e;
}

Engine::~Engine() {
  scheduler_.reset();  // its sequences hold pages of the cache
  cache_.reset();
}

Expected<std::vector<int32_t>> Engine::prompt_tokens(const CompletionParams& p) const {
  const model::Tokenizer& tok = model_->tokenizer();
  if (p.endpoint == Endpoint::kCompletion) {
    if (p.prompt_is_tokens) {
      for (int32_t id : p.prompt_tokens)
        if (id >= model_->config().vocab_size)
          return invalid_argument("token id " + std::to_string(id) + " is outside the vocab [0, " +
                                  std::to_string(model_->config().vocab_size) + ")");
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
                                                std::vector<int32_t> prompt,
                                                uint64_t seed) const {
  runtime::GenerationRequest r;
  const int room = context() - static_cast<int>(prompt.size());
  r.prompt = std::move(prompt);
  // max_tokens beyond the context left is clipped (the answer then ends with "length").
  r.max_tokens = std::max(1, std::min(p.max_tokens.value_or(room), room));
  r.stop_strings = p.stop;
  r.stop_at_eog = !p.ignore_eos;
  r.sampler = p.sampler;
  r.sampler.seed = p.seed.value_or(seed);
  r.logprobs = p.logprobs ? p.top_logprobs : -1;
  return r;
}

}  // namespace tq::server
