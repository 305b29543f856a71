// tq compare: several KV cache configurations side by side on the same chunks, each against
// the f16 cache: bytes per token, compression, PPL, PPL change, KLD and top-1 agreement.
// The f16 logits of a chunk are computed once and every configuration is scored against them.
//   tq compare -f ../shared/data/text/pride-and-prejudice.txt --chunks 16
//       --configs q8_0/q8_0,q4_0/q4_0,tq4/tq4,tq4/tq3,tq3/tq3
// The other KV flags (--kv-window, --kv-sinks, --kv-boundary-*) apply to every configuration.
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "kv_commands.h"
#include "default_model.h"
#include "kv_cli.h"
#include "quality_eval.h"
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
};

int fail(const Status& s) {
  std::fprintf(stderr, "tq compare: %s\n", s.to_string().c_str());
  return 1;
}

// "tq4/tq3" (or "tq4" for both) onto the common flags.
Expected<kv::KvConfig> parse_pair(const std::string& item, const kv::KvConfig& base) {
  const size_t slash = item.find('/');
  const std::string k = item.substr(0, slash);
  const std::string v = slash == std::string::npos ? k : item.substr(slash + 1);
  const std::pair<std::string, std::string> opts[] = {{"-ctk", k}, {"-ctv", v}};
  return kv::parse_kv_options(opts, base);
}

struct Entry {
  kv::KvConfig config;
  std::unique_ptr<kv::PagedKvCache> cache;
  kv::KvBytesPerToken bytes;
  PplAccum ppl;
  KldAccum kld;
};

int run_compare(CompareOptions& o) {
  auto base = o.kv.config();
  if (!base.ok()) return fail(base.status());
  auto model = model::Model::load(o.model);
  if (!model.ok()) return fail(model.status());
  const model::Model& m = **model;
  auto text = load_eval_text(m, o.text, o.ctx, o.chunks);
  if (!text.ok()) return fail(text.status());
  const kv::AttentionShape shape = m.attention_shape();

  std::vector<Entry> entries;
  std::stringstream ss(o.configs);
  for (std::string item; std::getline(ss, item, ',');) {
    if (item.empty()) continue;
    Entry e;
    auto c = parse_pair(item, *base);
    if (!c.ok()) return fail(c.status().with_context("--configs '" + item + "'"));
    e.config = *c;
    auto cache = make_paged_cache(shape, e.config, o.ctx, 1);
    if (!cache.ok()) return fail(cache.status());
    e.cache = std::move(cache).value();
    auto b = kv::kv_bytes_per_token(e.config, shape, o.ctx);
    if (!b.ok()) return fail(b.status());
    e.bytes = *b;
    entries.push_back(std::move(e));
  }
  auto f16_cache = make_paged_cache(shape, kv::KvConfig{}, o.ctx, 1);
  if (!f16_cache.ok()) return fail(f16_cache.status());
  auto f16_bytes = kv::kv_bytes_per_token(kv::KvConfig{}, shape, o.ctx);

  ThreadPool pool(o.threads);
  const int vocab = m.config().vocab_size;
  PplAccum ppl_ref;
  std::vector<float> ref_logits, logits;
  for (int c = 0; c < text->n_chunks; ++c) {
    const std::vector<int32_t> toks = text->chunk(c);
    {
      auto ref = (*f16_cache)->new_sequence(o.ctx);
      if (!ref.ok()) return fail(ref.status());
      if (Status s = eval_chunk(m, toks, **ref, pool, ref_logits); !s.ok()) return fail(s);
    }
    score_chunk(*text, toks, ref_logits, vocab, ppl_ref);
    for (Entry& e : entries) {
      auto seq = e.cache->new_sequence(o.ctx);
      if (!seq.ok()) return fail(seq.status());
      if (Status s = eval_chunk(m, toks, **seq, pool, logits); !s.ok()) return fail(s);
      score_chunk(*text, toks, logits, vocab, e.ppl);
      e.kld.add_chunk(*text, ref_logits, logits, vocab);
    }
    std::fprintf(stderr, "chunk %d/%d done\n", c + 1, text->n_chunks);
  }

  std::printf("text: %s, ctx %d, %d chunks, %lld tokens scored; common kv flags: %s\n",
              text->name.c_str(), o.ctx, text->n_chunks, static_cast<long long>(ppl_ref.count),
              base->to_string().c_str());
  std::printf("| K/V | B/token | vs f16 | K b/elt | V b/elt | PPL | dPPL %% | KLD mean | KLD p99 | top-1 |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  std::printf("| f16/f16 | %.0f | 1.00x | 16.00 | 16.00 | %.4f +/- %.4f | 0 | 0 | 0 | 1 |\n",
              f16_bytes->amortized, ppl_ref.ppl(), ppl_ref.ppl_err());
  for (const Entry& e : entries)
    std::printf("| %s/%s | %.0f | %.2fx | %.3f | %.3f | %.4f +/- %.4f | %+.3f | %.5f | %.5f | %.4f |\n",
                e.config.k_format.name().c_str(), e.config.v_format.name().c_str(),
                e.bytes.amortized, e.bytes.ratio_vs_f16(), e.bytes.k_bits_per_element,
                e.bytes.v_bits_per_element, e.ppl.ppl(), e.ppl.ppl_err(),
                100.0 * (e.ppl.ppl() / ppl_ref.ppl() - 1.0), e.kld.mean(), e.kld.quantile(0.99),
                e.kld.top1());
  return 0;
}

}  // namespace

void add_compare_command(CLI::App& app) {
  auto o = std::make_shared<CompareOptions>();
  auto* cmd = app.add_subcommand("compare", "Several KV cache configurations against the f16 "
                                            "cache: bytes, PPL, KLD, top-1");
  cmd->add_option("-m,--model", o->model, "GGUF model file")->capture_default_str();
  cmd->add_option("-f,--file", o->text, "Text file")->required();
  cmd->add_option("--ctx", o->ctx, "Tokens per chunk")->capture_default_str();
  cmd->add_option("--chunks", o->chunks, "Evaluate the first N chunks (-1: all)")
      ->capture_default_str();
  cmd->add_option("-t,--threads", o->threads, "Threads")->capture_default_str();
  cmd->add_option("--configs", o->configs, "Comma-separated K/V format pairs")
      ->capture_default_str();
  o->kv.add_to(cmd);
  cmd->callback([o] {
    if (const int rc = run_compare(*o); rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace tq::tools
