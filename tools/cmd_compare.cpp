// tq compare: several KV cache configurations side by side on the same chunks, each against
// the f16 cache: bytes per token, compression, PPL, PPL change, KLD and top-1 agreement.
// The f16 logits of a chunk are computed once and every configuration is scored against them.
//   tq compare -f ../shared/data/text/pride-and-prejudice.txt --chunks 16
//       --configs q8_0/q8_0,q4_0/q4_0,tq4/tq4,tq4/tq3,tq3/tq3
// The other KV flags (--kv-window, --kv-sinks, --kv-boundary-*) apply to every configuration;
// an entry may add its own after its pair, entries then separated by ';':
//   --configs "tq4/tq3;tq4/tq3 --kv-sinks 4;tq4/tq3 --kv-sinks 4 --kv-key-scaling on"
// --device cuda: every forward pass on the GPU (scoring on the CPU), the same table.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "activations_cli.h"
#include "default_model.h"
#include "device_cli.h"
#include "kv_cli.h"
#include "kv_commands.h"
#include "quality_eval.h"
#include "threads_cli.h"
#include "tq/model/llama.h"

namespace tq::tools {
namespace {

struct CompareOptions {
  std::string model = default_model_path();
  std::string text;
  int ctx = 512;
  int chunks = 4;
  int threads = default_thread_count();
  std::string configs = "q8_0/q8_0,q4_0/q4_0,tq4/tq4,tq4/tq3,tq3/tq3";
  KvFlags kv;
  DeviceFlag device;
  ActivationsFlag act;
  PassFlags passes;
};

int fail(const Status& s) {
  std::fprintf(stderr, "tq compare: %s\n", s.to_string().c_str());
  return 1;
}

struct Entry {
  std::string label;  // the --configs entry as given: "tq4/tq3" or "tq4/tq3 --kv-sinks 4"
  kv::KvConfig config;
  std::unique_ptr<kv::PagedKvCache> cache;  // CPU runs only
  kv::KvBytesPerToken bytes;
  PplAccum ppl;
  KldAccum kld;
};

// The CPU: the f16 logits of a chunk once, then every configuration against them.
Status compare_cpu(const model::Model& m, const EvalText& text, const CompareOptions& o,
                   std::vector<Entry>& entries, PplAccum& ppl_ref) {
  TQ_ASSIGN_OR_RETURN(auto f16_cache,
                      make_paged_cache(m.attention_shape(), kv::KvConfig{}, o.ctx, 1));
  ThreadPool pool(o.threads);
  const int vocab = m.config().vocab_size;
  std::vector<float> ref_logits, logits;
  for (int c = 0; c < text.n_chunks; ++c) {
    const std::vector<int32_t> toks = text.chunk(c);
    {
      TQ_ASSIGN_OR_RETURN(auto ref, f16_cache->new_sequence(o.ctx));
      TQ_RETURN_IF_ERROR(eval_chunk(m, toks, *ref, pool, ref_logits, o.passes));
    }
    score_chunk(text, toks, ref_logits, vocab, ppl_ref);
    for (Entry& e : entries) {
      TQ_ASSIGN_OR_RETURN(auto seq, e.cache->new_sequence(o.ctx));
      TQ_RETURN_IF_ERROR(eval_chunk(m, toks, *seq, pool, logits, o.passes));
      score_chunk(text, toks, logits, vocab, e.ppl);
      e.kld.add_chunk(text, ref_logits, logits, vocab);
    }
    std::fprintf(stderr, "chunk %d/%d done\n", c + 1, text.n_chunks);
  }
  return ok_status();
}

// The GPU: an f16-KV model, and one model per configuration in turn (two copies of the weights
// on the device at a time, not one per configuration). The f16 logits of a chunk are computed
// again for each configuration (a GPU pass costs less than keeping [chunks][ctx][vocab] floats);
// the f16 PPL is scored in the first round only.
Status compare_cuda(const model::Model& m, const EvalText& text, const CompareOptions& o,
                    std::vector<Entry>& entries, PplAccum& ppl_ref) {
  const int max_batch = std::min(o.ctx, 512);
  TQ_ASSIGN_OR_RETURN(auto ref, open_cuda_model(m, kv::KvConfig{}, o.ctx, max_batch));
  std::fprintf(stderr, "tq compare: %s\n", ref->describe().c_str());
  const int vocab = m.config().vocab_size;
  std::vector<float> ref_logits, logits;
  const size_t rounds = std::max<size_t>(1, entries.size());
  for (size_t i = 0; i < rounds; ++i) {
    Entry* e = i < entries.size() ? &entries[i] : nullptr;
    std::unique_ptr<backend::DeviceModel> test;
    if (e) {
      auto opened = open_cuda_model(m, e->config, o.ctx, max_batch);
      if (!opened.ok()) return opened.status().with_context(e->label);
      test = std::move(opened).value();
    }
    for (int c = 0; c < text.n_chunks; ++c) {
      const std::vector<int32_t> toks = text.chunk(c);
      TQ_RETURN_IF_ERROR(eval_chunk_on_device(*ref, toks, vocab, ref_logits, o.passes));
      if (i == 0) score_chunk(text, toks, ref_logits, vocab, ppl_ref);
      if (!e) continue;
      TQ_RETURN_IF_ERROR(eval_chunk_on_device(*test, toks, vocab, logits, o.passes));
      score_chunk(text, toks, logits, vocab, e->ppl);
      e->kld.add_chunk(text, ref_logits, logits, vocab);
    }
    if (e) std::fprintf(stderr, "%s done (%d chunks)\n", e->label.c_str(), text.n_chunks);
  }
  return ok_status();
}

int run_compare(CompareOptions& o) {
  auto base = o.kv.config();
  if (!base.ok()) return fail(base.status());
  if (Status s = o.passes.validate(); !s.ok()) return fail(s);
  std::vector<Entry> entries;
  for (const std::string& spec : kv::split_kv_specs(o.configs)) {
    auto c = kv::parse_kv_spec(spec, *base);
    if (!c.ok()) return fail(c.status().with_context("--configs"));
    Entry e;
    e.label = spec;
    e.config = *c;
    entries.push_back(std::move(e));
  }
  if (entries.empty())
    return fail(invalid_argument("--configs names no K/V configuration (e.g. tq4/tq3,q8_0)"));
  o.device.settle(*base);  // the common flags: window, sinks, scaling
  for (const Entry& e : entries) o.device.settle(e.config);
  o.device.settle(o.act.on_gpu());
  auto model = model::Model::load(o.model);
  if (!model.ok()) return fail(model.status());
  if (Status s = o.act.apply(**model, o.device.cuda()); !s.ok()) return fail(s);
  const model::Model& m = **model;
  auto text = load_eval_text(m, o.text, o.ctx, o.chunks);
  if (!text.ok()) return fail(text.status());
  const kv::AttentionShape shape = m.attention_shape();

  for (Entry& e : entries) {
    if (!o.device.cuda()) {
      auto cache = make_paged_cache(m, e.config, o.ctx, 1);
      if (!cache.ok()) return fail(cache.status().with_context(e.label));
      e.cache = std::move(cache).value();
    }
    auto b = kv::kv_bytes_per_token(e.config, shape, o.ctx);
    if (!b.ok()) return fail(b.status().with_context(e.label));
    e.bytes = *b;
  }
  auto f16_bytes = kv::kv_bytes_per_token(kv::KvConfig{}, shape, o.ctx);
  PplAccum ppl_ref;
  if (Status s = o.device.cuda() ? compare_cuda(m, *text, o, entries, ppl_ref)
                                 : compare_cpu(m, *text, o, entries, ppl_ref);
      !s.ok())
    return fail(s);

  std::printf("text: %s, ctx %d, %d chunks, %lld tokens scored; common kv flags: %s%s\n",
              text->name.c_str(), o.ctx, text->n_chunks, static_cast<long long>(ppl_ref.count),
              base->to_string().c_str(), o.passes.describe().c_str());
  std::printf(
      "| K/V (+ flags) | B/token | vs f16 | K b/elt | V b/elt | PPL | dPPL %% | KLD mean | KLD p99 "
      "| top-1 |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  std::printf("| f16/f16 | %.0f | 1.00x | 16.00 | 16.00 | %.4f +/- %.4f | 0 | 0 | 0 | 1 |\n",
              f16_bytes->amortized, ppl_ref.ppl(), ppl_ref.ppl_err());
  for (const Entry& e : entries)
    std::printf(
        "| %s | %.0f | %.2fx | %.3f | %.3f | %.4f +/- %.4f | %+.3f | %.5f | %.5f | %.4f |\n",
        e.label.c_str(), e.bytes.amortized, e.bytes.ratio_vs_f16(), e.bytes.k_bits_per_element,
        e.bytes.v_bits_per_element, e.ppl.ppl(), e.ppl.ppl_err(),
        100.0 * (e.ppl.ppl() / ppl_ref.ppl() - 1.0), e.kld.mean(), e.kld.quantile(0.99),
        e.kld.top1());
  return 0;
}

}  // namespace

void add_compare_command(CLI::App& app) {
  auto o = std::make_shared<CompareOptions>();
  auto* cmd = app.add_subcommand("compare",
                                 "Several KV cache configurations against the f16 "
                                 "cache: bytes, PPL, KLD, top-1");
  cmd->add_option("-m,--model", o->model, "GGUF model file")->capture_default_str();
  cmd->add_option("-f,--file", o->text, "Text file")->required();
  cmd->add_option("--ctx", o->ctx, "Tokens per chunk")->capture_default_str();
  cmd->add_option("--chunks", o->chunks, "Evaluate the first N chunks (-1: all)")
      ->capture_default_str();
  add_threads_option(cmd, o->threads, "Threads");
  cmd->add_option("--configs", o->configs,
                  "K/V format pairs, comma-separated; or ';'-separated entries of a pair and its "
                  "own KV flags: \"tq4/tq3;tq4/tq3 --kv-sinks 4\"")
      ->capture_default_str();
  o->kv.add_to(cmd);
  o->device.add_to(cmd);
  o->act.add_to(cmd);
  o->passes.add_to(cmd);
  cmd->callback([o] {
    if (const int rc = run_compare(*o); rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace tq::tools
