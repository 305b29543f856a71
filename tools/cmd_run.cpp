// tq run: generate text from a prompt, streamed to stdout as it comes; prompt and generation
// speed to stderr.
//   tq run -p "The capital of France is" -n 32
//   tq run --chat -p "Write a haiku about caches" --temp 0.7 --seed 1
//   tq run -f prompt.txt -n 128 -ctk tq4 -ctv tq3      (KV flags: the compressed paged cache)
//   tq run --device cuda -p "Hello" -n 64 -ctk tq4 -ctv tq3   (the forward pass on the GPU)
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "default_model.h"
#include "device_cli.h"
#include "device_generate.h"
#include "kv_cli.h"
#include "seed_cli.h"
#include "threads_cli.h"
#include "tq/backend/cpu/ops.h"
#include "tq/core/rng.h"
#include "tq/core/text_file.h"
#include "tq/core/thread_pool.h"
#include "tq/kv/dense_kv.h"
#include "tq/model/chat_template.h"
#include "tq/model/llama.h"
#include "tq/runtime/generator.h"

namespace tq::tools {
namespace {

struct RunOptions {
  std::string model = default_model_path();
  std::string prompt;
  std::string prompt_file;
  int n_predict = 128;
  int ctx = 0;  // 0: min(model context, 4096)
  int threads = default_thread_count();
  int prefill_batch = 256;
  bool chat = false;
  std::string system;
  std::vector<std::string> stop;
  bool ignore_eos = false;
  runtime::SamplerConfig sampler;
  bool draw_seed = false;  // --seed -1: a random seed, printed (llama.cpp's convention)
  KvFlags kv;
  DeviceFlag device;
};

constexpr int kDefaultCtxCap = 4096;

int fail(int rc, const std::string& msg) {
  std::fprintf(stderr, "tq run: %s\n", msg.c_str());
  return rc;
}

Expected<std::string> read_prompt(const RunOptions& o) {
  if (!o.prompt_file.empty()) {
    if (!o.prompt.empty()) return invalid_argument("give -p or -f, not both");
    auto text = read_text_file(o.prompt_file);
    if (!text.ok()) return text.status().with_context("prompt file");
    return text;
  }
  if (o.prompt.empty()) return invalid_argument("no prompt (-p TEXT or -f FILE)");
  return o.prompt;
}

// The prompt's token ids: raw text, or the model's chat template around it (--chat).
Expected<std::vector<int32_t>> tokenize_prompt(const model::Model& m, const RunOptions& o,
                                               const std::string& text) {
  const model::Tokenizer& tok = m.tokenizer();
  bool add_bos = tok.add_bos_default();
  std::string rendered = text;
  if (o.chat) {
    if (tok.chat_template().empty())
      return unsupported("the model has no tokenizer.chat_template; drop --chat");
    std::vector<model::ChatMessage> msgs;
    if (!o.system.empty()) msgs.push_back({"system", o.system});
    msgs.push_back({"user", text});
    model::ChatTemplateOptions opts;
    opts.bos_token = std::string(tok.token_text(tok.bos_id()));
    opts.eos_token = std::string(tok.token_text(tok.eos_id()));
    TQ_ASSIGN_OR_RETURN(rendered, model::apply_chat_template(tok.chat_template(), msgs, opts));
    // Templates that print the BOS text themselves (Llama 3) must not get a second one.
    if (!opts.bos_token.empty() && rendered.rfind(opts.bos_token, 0) == 0) add_bos = false;
  } else if (!o.system.empty()) {
    return invalid_argument("--system needs --chat");
  }
  // As llama.cpp's CLI: special-token text in the prompt ("<|im_start|>") becomes the token.
  std::vector<int32_t> ids = tok.encode(rendered, add_bos, /*parse_special=*/true);
  if (ids.empty()) return invalid_argument("the prompt encodes to no tokens");
  return ids;
}

int run(RunOptions& o) {
  if (o.n_predict < 0) return fail(2, "-n must be >= 0");
  if (o.threads < 1) return fail(2, "--threads must be >= 1");
  if (o.ctx < 0) return fail(2, "--ctx must be >= 0 (0: the model's context, at most 4096)");
  if (Status st = o.sampler.validate(); !st.ok()) return fail(2, st.message());
  if (o.draw_seed) {
    o.sampler.seed = random_seed();
    std::fprintf(stderr, "seed: %llu\n", static_cast<unsigned long long>(o.sampler.seed));
  }
  auto kv_config = o.kv.config();
  if (!kv_config.ok()) return fail(2, kv_config.status().message());
  o.device.settle(*kv_config);
  const bool paged = !o.kv.given.empty();
  auto text = read_prompt(o);
  if (!text.ok()) return fail(2, text.status().message());

  auto loaded = model::Model::load(o.model);
  if (!loaded.ok()) {
    std::string msg = loaded.status().to_string();
    if (o.model == default_model_path())
      msg += " (fetch the default model: scripts/fetch-model.sh)";
    return fail(1, msg);
  }
  const model::Model& m = **loaded;
  const int model_ctx = m.config().context_length;
  const int ctx = o.ctx > 0 ? o.ctx : std::min(model_ctx, kDefaultCtxCap);
  if (ctx > model_ctx)
    std::fprintf(stderr, "tq run: warning: --ctx %d exceeds the trained context %d\n", ctx,
                 model_ctx);

  auto ids = tokenize_prompt(m, o, *text);
  if (!ids.ok()) return fail(2, ids.status().message());
  const int n_prompt = static_cast<int>(ids->size());
  if (n_prompt >= ctx)
    return fail(2, "the prompt has " + std::to_string(n_prompt) + " tokens but the context is " +
                       std::to_string(ctx) + " (raise --ctx, at most the model's " +
                       std::to_string(model_ctx) + ")");

  runtime::GenerateOptions g;
  g.max_tokens = o.n_predict;
  g.stop_strings = o.stop;
  g.stop_at_eog = !o.ignore_eos;
  g.prefill_batch = o.prefill_batch;
  g.sampler = o.sampler;
  const auto stream_piece = [](int32_t, std::string_view piece) {
    if (!piece.empty()) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    }
    return true;
  };
  const auto report = [&](const runtime::GenerationStats& st, const std::string& where) {
    std::fprintf(stderr,
                 "tq run: kv %s, %s\n"
                 "tq run: prompt     %5d tokens in %7.3f s = %8.2f tokens/s\n"
                 "tq run: generation %5d tokens in %7.3f s = %8.2f tokens/s (stop: %s)\n",
                 paged || o.device.cuda() ? kv_config->to_string().c_str() : "dense f32",
                 where.c_str(), st.prompt_tokens, st.prompt_seconds, st.prompt_tokens_per_second(),
                 st.generated_tokens, st.generation_seconds, st.generation_tokens_per_second(),
                 runtime::stop_reason_name(st.stop_reason));
  };

  if (o.device.cuda()) {
    // The GPU keeps the paged cache in the KV flags' formats (f16 when none are given).
    auto dm =
        open_cuda_model(m, *kv_config, ctx, std::min(o.prefill_batch, ctx), 1, o.device.tuning());
    if (!dm.ok()) return fail(1, dm.status().to_string());
    auto stats = generate_on_device(**dm, 0, m, *ids, g, stream_piece);
    std::printf("\n");
    std::fflush(stdout);
    if (!stats.ok()) return fail(1, stats.status().to_string());
    report(*stats, (*dm)->describe());
    return 0;
  }

  // The dense float32 cache unless KV flags ask for the compressed paged one.
  std::unique_ptr<kv::PagedKvCache> paged_cache;
  std::unique_ptr<kv::SequenceKv> seq;
  if (paged) {
    auto cache = make_paged_cache(m, *kv_config, ctx, 1);
    if (!cache.ok()) return fail(1, cache.status().to_string());
    paged_cache = std::move(cache).value();
    auto s = paged_cache->new_sequence(ctx);
    if (!s.ok()) return fail(1, s.status().to_string());
    seq = std::move(s).value();
  } else {
    auto s = kv::DenseKv::create(m.attention_shape(), ctx, backend::cpu::dense_kv_kernels());
    if (!s.ok()) return fail(1, s.status().to_string());
    seq = std::move(s).value();
  }

  ThreadPool pool(o.threads);
  runtime::Generator gen(m, pool);
  auto stats = gen.generate(*ids, *seq, g, stream_piece);
  std::printf("\n");
  std::fflush(stdout);
  if (!stats.ok()) return fail(1, stats.status().to_string());
  report(*stats, std::to_string(o.threads) + " threads");
  return 0;
}

}  // namespace

void add_run_command(CLI::App& app) {
  auto o = std::make_shared<RunOptions>();
  auto* cmd = app.add_subcommand("run", "Generate text from a prompt (streams to stdout)");
  cmd->add_option("-m,--model", o->model, "GGUF model file")->capture_default_str();
  cmd->add_option("-p,--prompt", o->prompt, "Prompt text");
  cmd->add_option("-f,--file", o->prompt_file, "Read the prompt from a file");
  cmd->add_option("-n,--n-predict", o->n_predict, "Tokens to generate at most")
      ->capture_default_str();
  cmd->add_option("--ctx", o->ctx, "Context size in tokens (0: min(model context, 4096))")
      ->capture_default_str();
  add_threads_option(cmd, o->threads, "Threads");
  cmd->add_option("--batch", o->prefill_batch, "Prompt tokens per forward pass")
      ->capture_default_str();
  cmd->add_flag("--chat", o->chat, "Wrap the prompt in the model's chat template as a user turn");
  cmd->add_option("--system", o->system, "System message (with --chat)");
  cmd->add_option("--stop", o->stop, "Stop before this text (repeatable)");
  cmd->add_flag("--ignore-eos", o->ignore_eos, "Keep generating past end-of-generation tokens");
  auto& s = o->sampler;
  cmd->add_option("--temp", s.temperature, "Temperature (0: greedy)")->capture_default_str();
  cmd->add_option("--top-k", s.top_k, "Top-k (0: off)")->capture_default_str();
  cmd->add_option("--top-p", s.top_p, "Top-p (1: off)")->capture_default_str();
  cmd->add_option("--min-p", s.min_p, "Min-p (0: off)")->capture_default_str();
  cmd->add_option("--repeat-penalty", s.repeat_penalty, "Repetition penalty (1: off)")
      ->capture_default_str();
  cmd->add_option("--repeat-last-n", s.repeat_last_n, "Tokens the penalties look back")
      ->capture_default_str();
  cmd->add_option("--presence-penalty", s.presence_penalty, "Presence penalty")
      ->capture_default_str();
  cmd->add_option("--frequency-penalty", s.frequency_penalty, "Frequency penalty")
      ->capture_default_str();
  add_sampling_seed_option(cmd, s.seed, o->draw_seed, "Sampling seed (-1: a random one, printed)");
  o->kv.add_to(cmd);
  o->device.add_to(cmd);
  o->device.add_weights_to(cmd);
  o->device.add_tuning_to(cmd);
  cmd->callback([o] {
    const int rc = run(*o);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace tq::tools
