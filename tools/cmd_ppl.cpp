// tq ppl: perplexity of a text with a given KV cache configuration, the way llama-perplexity
// computes it (../shared/docs/quality-method.md), plus the cache's bytes per token.
//   tq ppl -f ../shared/data/text/pride-and-prejudice.txt --ctx 512 --chunks 16 -ctk tq4 -ctv tq3
//   tq ppl --device cuda -f ... (the forward pass and the cache on the GPU; scoring on the CPU)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "activations_cli.h"
#include "default_model.h"
#include "device_cli.h"
#include "json_out.h"
#include "kv_cli.h"
#include "kv_commands.h"
#include "quality_eval.h"
#include "threads_cli.h"
#include "tq/core/thread_pool.h"
#include "tq/model/llama.h"

namespace tq::tools {
namespace {

struct PplOptions {
  std::string model = default_model_path();
  std::string text;
  int ctx = 512;
  int chunks = -1;
  int threads = default_thread_count();
  bool json = false;
  KvFlags kv;
  DeviceFlag device;
  ActivationsFlag act;
  PassFlags passes;
};

int run_ppl(PplOptions& o) {
  auto config = o.kv.config();
  if (!config.ok()) {
    std::fprintf(stderr, "tq ppl: %s\n", config.status().to_string().c_str());
    return 2;
  }
  if (Status s = o.passes.validate(); !s.ok()) {
    std::fprintf(stderr, "tq ppl: %s\n", s.to_string().c_str());
    return 2;
  }
  o.device.settle(*config);
  o.device.settle(o.act.on_gpu());
  auto model = model::Model::load(o.model);
  if (!model.ok()) {
    std::fprintf(stderr, "tq ppl: %s\n", model.status().to_string().c_str());
    return 1;
  }
  if (Status s = o.act.apply(**model, o.device.cuda()); !s.ok()) {
    std::fprintf(stderr, "tq ppl: %s\n", s.to_string().c_str());
    return 2;
  }
  const model::Model& m = **model;
  auto text = load_eval_text(m, o.text, o.ctx, o.chunks);
  if (!text.ok()) {
    std::fprintf(stderr, "tq ppl: %s\n", text.status().to_string().c_str());
    return 1;
  }
  const kv::AttentionShape shape = m.attention_shape();
  auto cache = make_paged_cache(m, *config, o.ctx, 1);
  auto bytes = kv::kv_bytes_per_token(*config, shape, o.ctx);
  if (!cache.ok() || !bytes.ok()) {
    std::fprintf(stderr, "tq ppl: %s\n",
                 (cache.ok() ? bytes.status() : cache.status()).to_string().c_str());
    return 1;
  }
  ThreadPool pool(o.threads);
  const int vocab = m.config().vocab_size;
  std::unique_ptr<backend::DeviceModel> dm;
  if (o.device.cuda()) {
    backend::DeviceModelOptions tuning = o.device.tuning();
    o.act.apply(tuning);
    auto opened = open_cuda_model(m, *config, o.ctx, std::min(o.ctx, 512), 1, tuning);
    if (!opened.ok()) {
      std::fprintf(stderr, "tq ppl: %s\n", opened.status().to_string().c_str());
      return 1;
    }
    dm = std::move(opened).value();
    std::fprintf(stderr, "tq ppl: %s\n", dm->describe().c_str());
  }
  std::fprintf(stderr, "tq ppl: %s, %d of %d chunks of %d tokens, kv %s\n", text->name.c_str(),
               text->n_chunks, text->available_chunks, o.ctx, config->to_string().c_str());
  PplAccum ppl;
  std::vector<float> logits;
  const auto t0 = std::chrono::steady_clock::now();
  for (int c = 0; c < text->n_chunks; ++c) {
    const std::vector<int32_t> toks = text->chunk(c);
    Status st;
    if (dm) {
      st = eval_chunk_on_device(*dm, toks, vocab, logits, o.passes);
    } else {
      auto seq = (*cache)->new_sequence(o.ctx);
      st = seq.ok() ? eval_chunk(m, toks, **seq, pool, logits, o.passes) : seq.status();
    }
    if (!st.ok()) {
      std::fprintf(stderr, "tq ppl: chunk %d: %s\n", c, st.to_string().c_str());
      return 1;
    }
    score_chunk(*text, toks, logits, vocab, ppl);
    std::fprintf(stderr, "[%d]%.4f,", c + 1, ppl.ppl());
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "\n");
  if (o.json) {
    std::printf(
        "{\"text\":%s,\"ctx\":%d,\"chunks\":%d,\"tokens_scored\":%lld,\"k\":\"%s\",\"v\":\"%"
        "s\","
        "\"kv\":\"%s\",\"ppl\":%s,\"ppl_err\":%s,\"kv_bytes_per_token\":%.2f,"
        "\"ratio_vs_f16\":%.4f,\"k_bits_per_element\":%.4f,\"v_bits_per_element\":%.4f,"
        "\"ubatch\":%d,\"decode\":%s,\"seconds\":%.2f}\n",
        json_string(text->name).c_str(), o.ctx, text->n_chunks, static_cast<long long>(ppl.count),
        config->k_format.name().c_str(), config->v_format.name().c_str(),
        config->to_string().c_str(), json_number(ppl.ppl()).c_str(),
        json_number(ppl.ppl_err()).c_str(), bytes->amortized, bytes->ratio_vs_f16(),
        bytes->k_bits_per_element, bytes->v_bits_per_element, o.passes.ubatch,
        o.passes.decode ? "true" : "false", secs);
  } else {
    std::printf("text: %s, ctx %d, %d chunks, %lld tokens scored\n", text->name.c_str(), o.ctx,
                text->n_chunks, static_cast<long long>(ppl.count));
    std::printf("kv: %s%s\n", config->to_string().c_str(), o.passes.describe().c_str());
    std::printf("kv bytes: %s\n", bytes->to_string().c_str());
    std::printf("PPL = %.4f +/- %.5f\n", ppl.ppl(), ppl.ppl_err());
    std::printf("time: %.1f s (%.1f tokens/s)\n", secs, text->n_chunks * o.ctx / secs);
  }
  return 0;
}

}  // namespace

void add_ppl_command(CLI::App& app) {
  auto o = std::make_shared<PplOptions>();
  auto* cmd = app.add_subcommand("ppl",
                                 "Perplexity of a text with a KV cache configuration "
                                 "(llama-perplexity's method)");
  cmd->add_option("-m,--model", o->model, "GGUF model file")->capture_default_str();
  cmd->add_option("-f,--file", o->text, "Text file")->required();
  cmd->add_option("--ctx", o->ctx, "Tokens per chunk")->capture_default_str();
  cmd->add_option("--chunks", o->chunks, "Evaluate only the first N chunks (-1: all)")
      ->capture_default_str();
  add_threads_option(cmd, o->threads, "Threads");
  cmd->add_flag("--json", o->json, "One JSON line on stdout");
  o->kv.add_to(cmd);
  o->device.add_to(cmd);
  o->act.add_to(cmd);
  o->passes.add_to(cmd);
  o->device.add_weights_to(cmd);
  o->device.add_tuning_to(cmd);
  cmd->callback([o] {
    const int rc = run_ppl(*o);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace tq::tools
