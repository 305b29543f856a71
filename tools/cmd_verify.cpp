// tq verify: a KV cache configuration against the f16 cache on the same chunks and weights
// (../shared/docs/quality-method.md, "Against the f16 cache"): KL divergence of the next-token
// distributions (mean, p99, max), top-1 agreement, PPL ratio, and per layer the cosine of the
// stored K and V against the originals and the relative error of the attention output.
//   tq verify -f ../shared/data/text/pride-and-prejudice.txt --chunks 4 -ctk tq4 -ctv tq3
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "kv_commands.h"
#include "default_model.h"
#include "kv_cli.h"
#include "quality_eval.h"
#include "tq/model/llama.h"

namespace tq::tools {
namespace {

// Per-layer measurements of the cache under test, taken while the model runs on it: every
// append is mirrored into an f16 shadow cache, every attend is repeated on the shadow with the
// same queries (so the error is that layer's own, for identical inputs), and after the chunk
// the stored K/V are decoded and compared with the originals.
struct LayerStats {
  double k_cos_min = 1, k_cos_sum = 0, v_cos_min = 1, v_cos_sum = 0;
  int64_t vectors = 0;
  double attn_err2 = 0, attn_ref2 = 0;
};

class ProbeKv final : public kv::SequenceKv {
 public:
  ProbeKv(kv::PagedKv& test, kv::PagedKv& shadow, const kv::AttentionShape& shape,
          std::vector<LayerStats>& stats)
      : test_(test), shadow_(shadow), shape_(shape), stats_(stats),
        k_(static_cast<size_t>(shape.n_layers)), v_(static_cast<size_t>(shape.n_layers)) {}

  int length() const override { return test_.length(); }
  int capacity() const override { return test_.capacity(); }
  Status append(int layer, int n, const float* k, const float* v) override {
    TQ_RETURN_IF_ERROR(test_.append(layer, n, k, v));
    TQ_RETURN_IF_ERROR(shadow_.append(layer, n, k, v));
    const size_t elems = static_cast<size_t>(n) * shape_.n_kv_heads * shape_.head_dim;
    k_[static_cast<size_t>(layer)].insert(k_[static_cast<size_t>(layer)].end(), k, k + elems);
    v_[static_cast<size_t>(layer)].insert(v_[static_cast<size_t>(layer)].end(), v, v + elems);
    return ok_status();
  }
  Status attend(int layer, int n, const float* q, float* out, ThreadPool& pool) override {
    TQ_RETURN_IF_ERROR(test_.attend(layer, n, q, out, pool));
    ref_.resize(static_cast<size_t>(n) * shape_.n_heads * shape_.head_dim);
    TQ_RETURN_IF_ERROR(shadow_.attend(layer, n, q, ref_.data(), pool));
    LayerStats& s = stats_[static_cast<size_t>(layer)];
    for (size_t i = 0; i < ref_.size(); ++i) {
      const double d = static_cast<double>(out[i]) - ref_[i];
      s.attn_err2 += d * d;
      s.attn_ref2 += static_cast<double>(ref_[i]) * ref_[i];
    }
    return ok_status();
  }
  Status commit(int n) override {
    TQ_RETURN_IF_ERROR(test_.commit(n));
    return shadow_.commit(n);
  }
  size_t bytes_used() const override { return test_.bytes_used(); }

  // Cosine of every stored K and V vector (as the cache holds it now) with its original.
  Status measure_store() {
    const size_t d = static_cast<size_t>(shape_.head_dim);
    const size_t row = static_cast<size_t>(shape_.n_kv_heads) * d;
    std::vector<float> got(row);
    for (int l = 0; l < shape_.n_layers; ++l) {
      LayerStats& s = stats_[static_cast<size_t>(l)];
      for (int p = 0; p < test_.length(); ++p) {
        for (int value = 0; value < 2; ++value) {
          TQ_RETURN_IF_ERROR(test_.read_stored(l, p, value == 1, got.data()));
          const float* orig = (value ? v_ : k_)[static_cast<size_t>(l)].data() + p * row;
          for (int h = 0; h < shape_.n_kv_heads; ++h) {
            double dot = 0, a2 = 0, b2 = 0;
            for (size_t e = h * d; e < (h + 1) * d; ++e) {
              dot += static_cast<double>(got[e]) * orig[e];
              a2 += static_cast<double>(got[e]) * got[e];
              b2 += static_cast<double>(orig[e]) * orig[e];
            }
            const double cos = a2 > 0 && b2 > 0 ? dot / std::sqrt(a2 * b2) : (a2 == b2 ? 1 : 0);
            if (value) {
              s.v_cos_min = std::min(s.v_cos_min, cos);
              s.v_cos_sum += cos;
            } else {
              s.k_cos_min = std::min(s.k_cos_min, cos);
              s.k_cos_sum += cos;
              ++s.vectors;
            }
          }
        }
      }
    }
    return ok_status();
  }

 private:
  kv::PagedKv& test_;
  kv::PagedKv& shadow_;
  kv::AttentionShape shape_;
  std::vector<LayerStats>& stats_;
  std::vector<std::vector<float>> k_, v_;  // [layer][pos][kv_head][d] originals
  std::vector<float> ref_;
};

struct VerifyOptions {
  std::string model = default_model_path();
  std::string text;
  int ctx = 512;
  int chunks = 4;
  int threads = default_thread_count();
  KvFlags kv;
};

int fail(const Status& s) {
  std::fprintf(stderr, "tq verify: %s\n", s.to_string().c_str());
  return 1;
}

int run_verify(VerifyOptions& o) {
  auto config = o.kv.config();
  if (!config.ok()) return fail(config.status());
  auto model = model::Model::load(o.model);
  if (!model.ok()) return fail(model.status());
  const model::Model& m = **model;
  auto text = load_eval_text(m, o.text, o.ctx, o.chunks);
  if (!text.ok()) return fail(text.status());
  const kv::AttentionShape shape = m.attention_shape();
  auto test_cache = make_paged_cache(shape, *config, o.ctx, 1);
  if (!test_cache.ok()) return fail(test_cache.status());
  auto f16_cache = make_paged_cache(shape, kv::KvConfig{}, o.ctx, 2);
  if (!f16_cache.ok()) return fail(f16_cache.status());
  auto bytes = kv::kv_bytes_per_token(*config, shape, o.ctx);
  if (!bytes.ok()) return fail(bytes.status());

  ThreadPool pool(o.threads);
  const int vocab = m.config().vocab_size;
  PplAccum ppl_ref, ppl_test;
  KldAccum kld;
  std::vector<LayerStats> layers(static_cast<size_t>(shape.n_layers));
  std::vector<float> ref_logits, test_logits;
  for (int c = 0; c < text->n_chunks; ++c) {
    const std::vector<int32_t> toks = text->chunk(c);
    auto ref = (*f16_cache)->new_sequence(o.ctx);
    if (!ref.ok()) return fail(ref.status());
    if (Status s = eval_chunk(m, toks, **ref, pool, ref_logits); !s.ok()) return fail(s);
    ref->reset();
    auto test = (*test_cache)->new_sequence(o.ctx);
    auto shadow = (*f16_cache)->new_sequence(o.ctx);
    if (!test.ok() || !shadow.ok()) return fail(test.ok() ? shadow.status() : test.status());
    ProbeKv probe(**test, **shadow, shape, layers);
    if (Status s = eval_chunk(m, toks, probe, pool, test_logits); !s.ok()) return fail(s);
    if (Status s = probe.measure_store(); !s.ok()) return fail(s);
    score_chunk(*text, toks, ref_logits, vocab, ppl_ref);
    score_chunk(*text, toks, test_logits, vocab, ppl_test);
    kld.add_chunk(*text, ref_logits, test_logits, vocab);
    std::fprintf(stderr, "[%d] kld %.5f top1 %.4f\n", c + 1, kld.mean(), kld.top1());
  }

  std::printf("text: %s, ctx %d, %d chunks, %lld tokens scored\n", text->name.c_str(), o.ctx,
              text->n_chunks, static_cast<long long>(ppl_test.count));
  std::printf("kv: %s\n", config->to_string().c_str());
  std::printf("kv bytes: %s\n", bytes->to_string().c_str());
  std::printf("PPL f16  = %.4f +/- %.5f\n", ppl_ref.ppl(), ppl_ref.ppl_err());
  std::printf("PPL test = %.4f +/- %.5f\n", ppl_test.ppl(), ppl_test.ppl_err());
  std::printf("PPL ratio = %.5f (%+.3f%%)\n", ppl_test.ppl() / ppl_ref.ppl(),
              100.0 * (ppl_test.ppl() / ppl_ref.ppl() - 1.0));
  std::printf("KLD mean = %.6f, p99 = %.6f, max = %.6f\n", kld.mean(), kld.quantile(0.99),
              kld.max());
  std::printf("top-1 agreement = %.4f\n", kld.top1());
  std::printf("%5s %10s %10s %10s %10s %12s\n", "layer", "K cos min", "K cos mean", "V cos min",
              "V cos mean", "attn rel err");
  for (int l = 0; l < shape.n_layers; ++l) {
    const LayerStats& s = layers[static_cast<size_t>(l)];
    const double n = static_cast<double>(std::max<int64_t>(1, s.vectors));
    std::printf("%5d %10.5f %10.5f %10.5f %10.5f %12.5f\n", l, s.k_cos_min, s.k_cos_sum / n,
                s.v_cos_min, s.v_cos_sum / n,
                s.attn_ref2 > 0 ? std::sqrt(s.attn_err2 / s.attn_ref2) : 0.0);
  }
  return 0;
}

}  // namespace

void add_verify_command(CLI::App& app) {
  auto o = std::make_shared<VerifyOptions>();
  auto* cmd = app.add_subcommand(
      "verify", "A KV cache configuration against the f16 cache: KLD, top-1, PPL ratio, "
                "per-layer K/V cosine and attention error");
  cmd->add_option("-m,--model", o->model, "GGUF model file")->capture_default_str();
  cmd->add_option("-f,--file", o->text, "Text file")->required();
  cmd->add_option("--ctx", o->ctx, "Tokens per chunk")->capture_default_str();
  cmd->add_option("--chunks", o->chunks, "Evaluate the first N chunks (-1: all)")
      ->capture_default_str();
  cmd->add_option("-t,--threads", o->threads, "Threads")->capture_default_str();
  o->kv.add_to(cmd);
  cmd->callback([o] {
    if (const int rc = run_verify(*o); rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace tq::tools
