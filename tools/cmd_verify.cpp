// tq verify: a KV cache configuration against the f16 cache on the same chunks and weights
// (../shared/docs/quality-method.md, "Against the f16 cache"): KL divergence of the next-token
// distributions (mean, p99, max), top-1 agreement, PPL ratio, and per layer the cosine of the
// stored K and V against the originals and the relative error of the attention output.
//   tq verify -f ../shared/data/text/pride-and-prejudice.txt --chunks 4 -ctk tq4 -ctv tq3
//   tq verify --device cuda ... (both caches on the GPU: an f16-KV model and one with the cache
//   under test; see verify_cuda for what the per-layer columns mean there)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "activations_cli.h"
#include "default_model.h"
#include "device_cli.h"
#include "json_out.h"
#include "kv_cli.h"
#include "kv_commands.h"
#include "quality_eval.h"
#include "threads_cli.h"
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

// Adds the per-KV-head cosines of one stored row `got` with its original `orig` (both
// [n_kv_heads][d]) to the layer's K (value false) or V statistics.
void add_row_cosines(const float* got, const float* orig, int n_kv_heads, size_t d, bool value,
                     LayerStats& s) {
  for (int h = 0; h < n_kv_heads; ++h) {
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

class ProbeKv final : public kv::SequenceKv {
 public:
  ProbeKv(kv::PagedKv& test, kv::PagedKv& shadow, const kv::AttentionShape& shape,
          std::vector<LayerStats>& stats)
      : test_(test),
        shadow_(shadow),
        shape_(shape),
        stats_(stats),
        k_(static_cast<size_t>(shape.n_layers)),
        v_(static_cast<size_t>(shape.n_layers)) {}

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
    const size_t row = static_cast<size_t>(shape_.n_kv_heads) * shape_.head_dim;
    std::vector<float> got(row);
    for (int l = 0; l < shape_.n_layers; ++l) {
      LayerStats& s = stats_[static_cast<size_t>(l)];
      for (int p = 0; p < test_.length(); ++p) {
        for (int value = 0; value < 2; ++value) {
          TQ_RETURN_IF_ERROR(test_.read_stored(l, p, value == 1, got.data()));
          const float* orig = (value ? v_ : k_)[static_cast<size_t>(l)].data() + p * row;
          add_row_cosines(got.data(), orig, shape_.n_kv_heads, static_cast<size_t>(shape_.head_dim),
                          value == 1, s);
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
  bool json = false;
  KvFlags kv;
  DeviceFlag device;
  ActivationsFlag act;
  PassFlags passes;
};

struct VerifyResult {
  PplAccum ppl_ref, ppl_test;
  KldAccum kld;
  std::vector<LayerStats> layers;
  // Whether the per-layer K/V cosines are against the originals of the same run (the CPU) or
  // against the f16 run's rows (cuda), and whether the attention error was measured (CPU only).
  bool cos_vs_same_run = true;
  bool attn_measured = true;
};

void report_chunk(int c, const KldAccum& kld) {
  std::fprintf(stderr, "[%d] kld %.5f top1 %.4f\n", c + 1, kld.mean(), kld.top1());
}

// The CPU: the test cache behind a ProbeKv, so the per-layer statistics see the originals.
Status verify_cpu(const model::Model& m, const EvalText& text, const kv::KvConfig& config,
                  const VerifyOptions& o, VerifyResult& r) {
  const kv::AttentionShape shape = m.attention_shape();
  TQ_ASSIGN_OR_RETURN(auto test_cache, make_paged_cache(m, config, o.ctx, 1));
  TQ_ASSIGN_OR_RETURN(auto f16_cache, make_paged_cache(shape, kv::KvConfig{}, o.ctx, 2));
  ThreadPool pool(o.threads);
  const int vocab = m.config().vocab_size;
  std::vector<float> ref_logits, test_logits;
  for (int c = 0; c < text.n_chunks; ++c) {
    const std::vector<int32_t> toks = text.chunk(c);
    TQ_ASSIGN_OR_RETURN(auto ref, f16_cache->new_sequence(o.ctx));
    TQ_RETURN_IF_ERROR(eval_chunk(m, toks, *ref, pool, ref_logits, o.passes));
    ref.reset();
    TQ_ASSIGN_OR_RETURN(auto test, test_cache->new_sequence(o.ctx));
    TQ_ASSIGN_OR_RETURN(auto shadow, f16_cache->new_sequence(o.ctx));
    ProbeKv probe(*test, *shadow, shape, r.layers);
    TQ_RETURN_IF_ERROR(eval_chunk(m, toks, probe, pool, test_logits, o.passes));
    TQ_RETURN_IF_ERROR(probe.measure_store());
    score_chunk(text, toks, ref_logits, vocab, r.ppl_ref);
    score_chunk(text, toks, test_logits, vocab, r.ppl_test);
    r.kld.add_chunk(text, ref_logits, test_logits, vocab);
    report_chunk(c, r.kld);
  }
  return ok_status();
}

// The GPU: two device models, one with the f16 cache and one with the cache under test, each
// chunk through both. The GPU forward pass keeps no originals and has no hook to repeat an
// attention on an f16 shadow, so on cuda:
//   - K/V cosine: the test model's stored rows (DeviceModel::read_stored) against the f16
//     model's rows of the same positions, i.e. the f16 run's K/V. Layer 0 sees the same input
//     in both runs; from layer 1 on the inputs differ by the error of the layers below, which
//     this cosine includes (the CPU's is the layer's own storage error only).
//   - attention error: not measured (null in JSON, "n/a" in the table).
Status verify_cuda(const model::Model& m, const EvalText& text, const kv::KvConfig& config,
                   const VerifyOptions& o, VerifyResult& r) {
  const int max_batch = std::min(o.ctx, 512);
  // The cache under test first: its flags (window, sinks, key scaling) are what cuda may refuse.
  TQ_ASSIGN_OR_RETURN(auto test, open_cuda_model(m, config, o.ctx, max_batch));
  TQ_ASSIGN_OR_RETURN(auto ref, open_cuda_model(m, kv::KvConfig{}, o.ctx, max_batch));
  std::fprintf(stderr, "tq verify: %s\n", test->describe().c_str());
  r.cos_vs_same_run = false;
  r.attn_measured = false;
  const kv::AttentionShape shape = m.attention_shape();
  const int vocab = m.config().vocab_size;
  const size_t row = static_cast<size_t>(shape.n_kv_heads) * shape.head_dim;
  std::vector<float> ref_logits, test_logits;
  std::vector<float> orig(static_cast<size_t>(o.ctx) * row), got(orig.size());
  for (int c = 0; c < text.n_chunks; ++c) {
    const std::vector<int32_t> toks = text.chunk(c);
    TQ_RETURN_IF_ERROR(eval_chunk_on_device(*ref, toks, vocab, ref_logits, o.passes));
    TQ_RETURN_IF_ERROR(eval_chunk_on_device(*test, toks, vocab, test_logits, o.passes));
    const int n = test->length(0);
    for (int l = 0; l < shape.n_layers; ++l) {
      for (const bool value : {false, true}) {
        TQ_RETURN_IF_ERROR(ref->read_stored(0, l, value, 0, n, orig.data()));
        TQ_RETURN_IF_ERROR(test->read_stored(0, l, value, 0, n, got.data()));
        for (int p = 0; p < n; ++p)
          add_row_cosines(got.data() + p * row, orig.data() + p * row, shape.n_kv_heads,
                          static_cast<size_t>(shape.head_dim), value,
                          r.layers[static_cast<size_t>(l)]);
      }
    }
    score_chunk(text, toks, ref_logits, vocab, r.ppl_ref);
    score_chunk(text, toks, test_logits, vocab, r.ppl_test);
    r.kld.add_chunk(text, ref_logits, test_logits, vocab);
    report_chunk(c, r.kld);
  }
  return ok_status();
}

void print_json(const VerifyOptions& o, const EvalText& text, const kv::KvConfig& config,
                const kv::KvBytesPerToken& bytes, const VerifyResult& r, double secs) {
  const double ratio = r.ppl_test.ppl() / r.ppl_ref.ppl();
  std::printf(
      "{\"text\":%s,\"ctx\":%d,\"ubatch\":%d,\"decode\":%s,\"chunks\":%d,\"tokens_scored\":%"
      "lld,"
      "\"device\":\"%s\","
      "\"k\":\"%s\",\"v\":\"%s\",\"kv\":\"%s\",\"kv_bytes_per_token\":%.2f,"
      "\"ratio_vs_f16\":%.4f,\"ppl_f16\":%s,\"ppl_f16_err\":%s,\"ppl\":%s,\"ppl_err\":%s,"
      "\"ppl_ratio\":%s,\"ppl_change_pct\":%s,\"kld_mean\":%s,\"kld_p99\":%s,"
      "\"kld_max\":%s,\"top1\":%s,\"kv_cos_vs\":\"%s\",\"layers\":[",
      json_string(text.name).c_str(), o.ctx, o.passes.ubatch, o.passes.decode ? "true" : "false",
      text.n_chunks, static_cast<long long>(r.ppl_test.count), o.device.resolved(),
      config.k_format.name().c_str(), config.v_format.name().c_str(), config.to_string().c_str(),
      bytes.amortized, bytes.ratio_vs_f16(), json_number(r.ppl_ref.ppl()).c_str(),
      json_number(r.ppl_ref.ppl_err()).c_str(), json_number(r.ppl_test.ppl()).c_str(),
      json_number(r.ppl_test.ppl_err()).c_str(), json_number(ratio).c_str(),
      json_number(100.0 * (ratio - 1.0), "%.4f").c_str(), json_number(r.kld.mean(), "%.8f").c_str(),
      json_number(r.kld.quantile(0.99), "%.8f").c_str(), json_number(r.kld.max(), "%.8f").c_str(),
      json_number(r.kld.top1()).c_str(), r.cos_vs_same_run ? "originals" : "f16_run");
  for (size_t l = 0; l < r.layers.size(); ++l) {
    const LayerStats& s = r.layers[l];
    const double n = static_cast<double>(std::max<int64_t>(1, s.vectors));
    const double attn =
        !r.attn_measured ? NAN : (s.attn_ref2 > 0 ? std::sqrt(s.attn_err2 / s.attn_ref2) : 0.0);
    std::printf(
        "%s{\"layer\":%zu,\"k_cos_min\":%s,\"k_cos_mean\":%s,\"v_cos_min\":%s,"
        "\"v_cos_mean\":%s,\"attn_rel_err\":%s}",
        l ? "," : "", l, json_number(s.k_cos_min).c_str(), json_number(s.k_cos_sum / n).c_str(),
        json_number(s.v_cos_min).c_str(), json_number(s.v_cos_sum / n).c_str(),
        json_number(attn).c_str());
  }
  std::printf("],\"seconds\":%.2f}\n", secs);
}

void print_text(const VerifyOptions& o, const EvalText& text, const kv::KvConfig& config,
                const kv::KvBytesPerToken& bytes, const VerifyResult& r) {
  const int n_layers = static_cast<int>(r.layers.size());
  std::printf("text: %s, ctx %d, %d chunks, %lld tokens scored\n", text.name.c_str(), o.ctx,
              text.n_chunks, static_cast<long long>(r.ppl_test.count));
  std::printf("kv: %s%s\n", config.to_string().c_str(), o.passes.describe().c_str());
  std::printf("kv bytes: %s\n", bytes.to_string().c_str());
  std::printf("PPL f16  = %.4f +/- %.5f\n", r.ppl_ref.ppl(), r.ppl_ref.ppl_err());
  std::printf("PPL test = %.4f +/- %.5f\n", r.ppl_test.ppl(), r.ppl_test.ppl_err());
  std::printf("PPL ratio = %.5f (%+.3f%%)\n", r.ppl_test.ppl() / r.ppl_ref.ppl(),
              100.0 * (r.ppl_test.ppl() / r.ppl_ref.ppl() - 1.0));
  std::printf("KLD mean = %.6f, p99 = %.6f, max = %.6f\n", r.kld.mean(), r.kld.quantile(0.99),
              r.kld.max());
  std::printf("top-1 agreement = %.4f\n", r.kld.top1());
  if (!r.cos_vs_same_run)
    std::printf(
        "on cuda: K/V cos is against the f16 run's K/V (from layer 1 on it includes the drift of "
        "the layer's input between the runs); attn rel err n/a on cuda (it needs the f16 "
        "attention of the same queries inside the GPU forward pass, which has no hook for it)\n");
  std::printf("%5s %10s %10s %10s %10s %12s\n", "layer", "K cos min", "K cos mean", "V cos min",
              "V cos mean", "attn rel err");
  for (int l = 0; l < n_layers; ++l) {
    const LayerStats& s = r.layers[static_cast<size_t>(l)];
    const double n = static_cast<double>(std::max<int64_t>(1, s.vectors));
    std::printf("%5d %10.5f %10.5f %10.5f %10.5f ", l, s.k_cos_min, s.k_cos_sum / n, s.v_cos_min,
                s.v_cos_sum / n);
    if (r.attn_measured)
      std::printf("%12.5f\n", s.attn_ref2 > 0 ? std::sqrt(s.attn_err2 / s.attn_ref2) : 0.0);
    else
      std::printf("%12s\n", "n/a");
  }
}

int fail(const Status& s) {
  std::fprintf(stderr, "tq verify: %s\n", s.to_string().c_str());
  return 1;
}

int run_verify(VerifyOptions& o) {
  auto config = o.kv.config();
  if (!config.ok()) return fail(config.status());
  if (Status s = o.passes.validate(); !s.ok()) return fail(s);
  o.device.settle(*config);
  o.device.settle(o.act.on_gpu());
  auto model = model::Model::load(o.model);
  if (!model.ok()) return fail(model.status());
  if (Status s = o.act.apply(**model, o.device.cuda()); !s.ok()) return fail(s);
  const model::Model& m = **model;
  auto text = load_eval_text(m, o.text, o.ctx, o.chunks);
  if (!text.ok()) return fail(text.status());
  const kv::AttentionShape shape = m.attention_shape();
  auto bytes = kv::kv_bytes_per_token(*config, shape, o.ctx);
  if (!bytes.ok()) return fail(bytes.status());

  VerifyResult r;
  r.layers.resize(static_cast<size_t>(shape.n_layers));
  const auto t0 = std::chrono::steady_clock::now();
  const Status st =
      o.device.cuda() ? verify_cuda(m, *text, *config, o, r) : verify_cpu(m, *text, *config, o, r);
  if (!st.ok()) return fail(st);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (o.json)
    print_json(o, *text, *config, *bytes, r, secs);
  else
    print_text(o, *text, *config, *bytes, r);
  return 0;
}

}  // namespace

void add_verify_command(CLI::App& app) {
  auto o = std::make_shared<VerifyOptions>();
  auto* cmd =
      app.add_subcommand("verify",
                         "A KV cache configuration against the f16 cache: KLD, top-1, PPL ratio, "
                         "per-layer K/V cosine and attention error");
  cmd->add_option("-m,--model", o->model, "GGUF model file")->capture_default_str();
  cmd->add_option("-f,--file", o->text, "Text file")->required();
  cmd->add_option("--ctx", o->ctx, "Tokens per chunk")->capture_default_str();
  cmd->add_option("--chunks", o->chunks, "Evaluate the first N chunks (-1: all)")
      ->capture_default_str();
  add_threads_option(cmd, o->threads, "Threads");
  cmd->add_flag("--json", o->json, "One JSON line on stdout (metrics not measured: null)");
  o->kv.add_to(cmd);
  o->device.add_to(cmd);
  o->act.add_to(cmd);
  o->passes.add_to(cmd);
  cmd->callback([o] {
    if (const int rc = run_verify(*o); rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace tq::tools
