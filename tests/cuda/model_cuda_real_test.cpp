// The CUDA forward pass against the CPU forward pass on a real model: the default SmolLM2-135M
// GGUF (Q4_1 weights) when TQ_TEST_MODEL names it (bench/gpu/run.sh sets it on the device;
// skipped with the reason otherwise), on real English text (this repository's README); and on a
// Llama-3-8B-shaped random-weight Q4_0 model (`tq make-model --shape llama3-8b --type q4_0`)
// when TQ_TEST_BIG_MODEL names it, on random token ids (ModelCudaBigTest, bounds below).
//
// The two backends do not compute the same function bit for bit: the CPU multiplies Q4_1
// weights by activations quantized to q8_1 (llama.cpp's scheme), the GPU dequantizes the
// weights to f16 once and runs f16 GEMMs. So the metrics are those of docs/quality-method.md,
// GPU against CPU on every position of the text: mean KL divergence of the next-token
// distributions (nats), top-1 agreement, and max |logit diff| / logit range of the worst row.
// Bounds, from the first run on an H200 (2026-12-02, docs/benchmarks.md), with margin:
// - f16 KV: measured mean KLD 3.9e-3, top-1 95.8%. Bound: KLD < 1e-2, top-1 >= 93%. The CPU
//   rounds activations to q8_1 for its Q4_1 matmuls, the GPU to f16; that is the difference.
// - tq KV: GPU and CPU caches hold different codes wherever the layers' inputs differ by that
//   much (a coordinate near a Lloyd-Max boundary flips), so GPU vs CPU differs by about the
//   quantization's own effect (measured 4.3e-2 / 6.6e-2 for tq4/tq4 / tq4/tq3, own effect on the
//   CPU 4.4e-2 / 7.5e-2). What must hold is that the GPU cache is no lossier than the CPU's:
//   KLD(gpu tq vs gpu f16) <= 1.1 x KLD(cpu tq vs cpu f16) (measured 0.86x and 0.78x), and
//   KLD(gpu tq vs cpu tq) <= 1.5 x KLD(cpu tq vs cpu f16).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "cuda_test_util.h"
#include "tq/backend/cpu/tq_kernels.h"
#include "tq/backend/device_model.h"
#include "tq/core/rng.h"
#include "tq/core/thread_pool.h"
#include "tq/kv/kv_bytes.h"
#include "tq/kv/paged_kv.h"
#include "tq/model/llama.h"
#include "tq/model/model_desc.h"

namespace tq::backend {
namespace {

constexpr int kTokens = 384;  // scored positions (prefill, several passes on the GPU)

struct Compare {
  double kld = 0.0;       // mean over rows, KL(ref || got)
  double top1 = 0.0;      // fraction of rows with the same argmax
  double of_range = 0.0;  // worst row: max |got - ref| / (max - min of ref)
};

Compare compare(const std::vector<float>& got, const std::vector<float>& ref, int rows, int vocab) {
  Compare c;
  std::vector<double> lp(static_cast<size_t>(vocab)), lq(lp.size());
  auto log_softmax = [vocab](const float* x, std::vector<double>& out) {
    double mx = -INFINITY;
    for (int i = 0; i < vocab; ++i) mx = std::max(mx, static_cast<double>(x[i]));
    double s = 0.0;
    for (int i = 0; i < vocab; ++i) s += std::exp(static_cast<double>(x[i]) - mx);
    const double lse = mx + std::log(s);
    for (int i = 0; i < vocab; ++i) out[static_cast<size_t>(i)] = x[i] - lse;
  };
  int same = 0;
  for (int r = 0; r < rows; ++r) {
    const float* a = got.data() + static_cast<size_t>(r) * vocab;
    const float* b = ref.data() + static_cast<size_t>(r) * vocab;
    log_softmax(b, lp);
    log_softmax(a, lq);
    double kl = 0.0, md = 0.0, mx = -INFINITY, mn = INFINITY;
    int ia = 0, ib = 0;
    for (int i = 0; i < vocab; ++i) {
      const size_t k = static_cast<size_t>(i);
      kl += std::exp(lp[k]) * (lp[k] - lq[k]);
      md = std::max(md, std::fabs(static_cast<double>(a[i]) - b[i]));
      mx = std::max(mx, static_cast<double>(b[i]));
      mn = std::min(mn, static_cast<double>(b[i]));
      if (!std::isfinite(a[i])) md = INFINITY;
      if (a[i] > a[ia]) ia = i;
      if (b[i] > b[ib]) ib = i;
    }
    c.kld += kl;
    same += ia == ib;
    c.of_range = std::max(c.of_range, md / (mx - mn));
  }
  c.kld /= rows;
  c.top1 = static_cast<double>(same) / rows;
  return c;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// Logits of every position of `ids` on the CPU: one paged sequence, appended in chunks of 128
// (the chunking of `tq ppl`), all rows.
Status cpu_logits(const model::Model& m, const kv::KvConfig& config,
                  const std::vector<int32_t>& ids, std::vector<float>& out) {
  kv::PagedKvCacheOptions o;
  o.shape = m.attention_shape();
  o.config = config;
  TQ_ASSIGN_OR_RETURN(const std::vector<size_t> blocks, kv::kv_block_bytes(config, o.shape));
  size_t page = 0;
  for (size_t b : blocks) page += b;
  const int n = static_cast<int>(ids.size());
  o.pool_bytes = page * static_cast<size_t>(n / config.block_tokens + 2);
  o.prefix_caching = false;
  o.kernels = &cpu::cpu_kernel_table();
  TQ_ASSIGN_OR_RETURN(auto cache, kv::PagedKvCache::create(o));
  TQ_ASSIGN_OR_RETURN(auto seq, cache->new_sequence(n + 1));
  ThreadPool pool(default_thread_count());
  model::ForwardScratch scratch;
  const int vocab = m.config().vocab_size;
  out.assign(static_cast<size_t>(n) * vocab, NAN);
  for (int from = 0; from < n; from += 128) {
    const int count = std::min(128, n - from);
    model::ForwardArgs a{ids.data() + from,
                         count,
                         seq.get(),
                         &pool,
                         &scratch,
                         model::LogitsMode::kAll,
                         out.data() + static_cast<size_t>(from) * vocab};
    TQ_RETURN_IF_ERROR(m.forward(a));
  }
  return ok_status();
}

// The same on the GPU: the same chunks of 128 (max_batch 128), so key centering's mean is taken
// over the same first 128 tokens on both sides.
// With decode_tail > 0 the last decode_tail tokens go one at a time (decode steps: the one-row
// GEMV kernels, the CUDA graph), the rest as one prefill.
Status gpu_logits(const model::Model& m, const kv::KvConfig& config,
                  const std::vector<int32_t>& ids, std::vector<float>& out,
                  DeviceWeights weights = DeviceWeights::kF16, int decode_tail = 0) {
  DeviceModelOptions o;
  o.weights = weights;
  o.kv = config;
  o.max_context = static_cast<int>(ids.size()) + 1;
  o.max_batch = 128;
  TQ_ASSIGN_OR_RETURN(auto gpu, create_cuda_model(model::describe_for_backend(m), o));
  const int vocab = m.config().vocab_size;
  out.assign(ids.size() * static_cast<size_t>(vocab), NAN);
  const int n = static_cast<int>(ids.size());
  DeviceForwardArgs a;
  a.tokens = ids.data();
  a.n = n - decode_tail;
  a.logits_mode = DeviceLogits::kAll;
  a.logits = out.data();
  TQ_RETURN_IF_ERROR(gpu->forward(a));
  for (int t = n - decode_tail; t < n; ++t) {
    a.tokens = ids.data() + t;
    a.n = 1;
    a.logits_mode = DeviceLogits::kLast;
    a.logits = out.data() + static_cast<size_t>(t) * vocab;
    TQ_RETURN_IF_ERROR(gpu->forward(a));
  }
  return ok_status();
}

class ModelCudaRealTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TQ_REQUIRE_GPU();
    const char* path = std::getenv("TQ_TEST_MODEL");
    if (path == nullptr || *path == '\0')
      GTEST_SKIP() << "skipped: TQ_TEST_MODEL is not set (the default model's path)";
    auto m = model::Model::load(path);
    ASSERT_TRUE(m.ok()) << m.status().to_string();
    model_ = std::move(m).value();
    const std::string text = read_file(std::string(TQ_SOURCE_DIR) + "/README.md");
    ASSERT_GT(text.size(), 4000u);
    ids_ = model_->tokenizer().encode(text, /*add_bos=*/true, /*parse_special=*/false);
    ASSERT_GE(static_cast<int>(ids_.size()), kTokens);
    ids_.resize(kTokens);
  }

  std::unique_ptr<model::Model> model_;
  std::vector<int32_t> ids_;
};

kv::KvConfig config(const std::string& k, const std::string& v) {
  const std::vector<std::pair<std::string, std::string>> o = {{"-ctk", k}, {"-ctv", v}};
  auto c = kv::parse_kv_options(o);
  EXPECT_TRUE(c.ok()) << c.status().to_string();
  return c.ok() ? *c : kv::KvConfig{};
}

TEST_F(ModelCudaRealTest, LogitsMatchCpu) {
  const int vocab = model_->config().vocab_size;
  std::vector<float> cpu_f16, gpu_f16;
  const kv::KvConfig f16 = config("f16", "f16");
  ASSERT_TRUE(cpu_logits(*model_, f16, ids_, cpu_f16).ok());
  const Status st = gpu_logits(*model_, f16, ids_, gpu_f16);
  ASSERT_TRUE(st.ok()) << st.to_string();
  const Compare exact = compare(gpu_f16, cpu_f16, kTokens, vocab);
  std::printf(
      "[ measured ] real model, kv f16/f16: gpu vs cpu mean KLD %.2e, top-1 %.1f%%, "
      "max|diff|/range %.2e (%d positions)\n",
      exact.kld, 100.0 * exact.top1, exact.of_range, kTokens);
  EXPECT_LT(exact.kld, 1e-2);
  EXPECT_GE(exact.top1, 0.93);

  for (const auto& [k, v] : {std::pair{"tq4", "tq4"}, std::pair{"tq4", "tq3"}}) {
    SCOPED_TRACE(std::string(k) + "/" + v);
    const kv::KvConfig c = config(k, v);
    std::vector<float> cpu_tq, gpu_tq;
    ASSERT_TRUE(cpu_logits(*model_, c, ids_, cpu_tq).ok());
    const Status s = gpu_logits(*model_, c, ids_, gpu_tq);
    ASSERT_TRUE(s.ok()) << s.to_string();
    const Compare backends = compare(gpu_tq, cpu_tq, kTokens, vocab);
    const Compare quant = compare(cpu_tq, cpu_f16, kTokens, vocab);
    const Compare gpu_quant = compare(gpu_tq, gpu_f16, kTokens, vocab);
    std::printf(
        "[ measured ] real model, kv %s/%s: gpu vs cpu mean KLD %.2e, top-1 %.1f%%; "
        "quantization's own KLD: cpu %.2e (top-1 %.1f%%), gpu %.2e (top-1 %.1f%%)\n",
        k, v, backends.kld, 100.0 * backends.top1, quant.kld, 100.0 * quant.top1, gpu_quant.kld,
        100.0 * gpu_quant.top1);
    EXPECT_LE(gpu_quant.kld, 1.1 * quant.kld);
    EXPECT_LE(backends.kld, 1.5 * quant.kld);
  }
}

// The Llama-3-8B shape (32 layers, 32 query / 8 KV heads of 128, 128256-token vocabulary) with
// random Q4_0 weights, on 128 random token ids (one pass on each device). Random weights give
// flatter next-token distributions than a trained model, and 32 layers more depth for the two
// backends' roundings to grow through. Bounds are set before the first run, from the small
// model's numbers (f16 KV: KLD 3.9e-3, top-1 95.8%) with room for the depth: f16 KV mean KLD
// < 2e-2 and top-1 >= 90%, for the GPU's f16 weights and for its quantized weights
// (DeviceWeights::kQuantized: its prefill dequantizes to f16 for cuBLAS, so its last 16
// positions are decode steps, where the Q4_0 blocks are multiplied as stored); tq4/tq3 with the
// real model's rule (the GPU cache no lossier than the CPU's, within 1.1x, and GPU vs CPU
// within 1.5x of the quantization's own KLD). The CPU runs on every core of the device's host.
constexpr int kBigTokens = 128;

TEST(ModelCudaBigTest, LogitsMatchCpu) {
  TQ_REQUIRE_GPU();
  const char* path = std::getenv("TQ_TEST_BIG_MODEL");
  if (path == nullptr || *path == '\0')
    GTEST_SKIP() << "skipped: TQ_TEST_BIG_MODEL is not set (a tq make-model llama3-8b file)";
  auto loaded = model::Model::load(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  const model::Model& m = **loaded;
  const int vocab = m.config().vocab_size;
  std::vector<int32_t> ids(kBigTokens);
  Rng rng(0x62696738u);  // "big8"
  for (auto& t : ids) t = static_cast<int32_t>(rng.next_u64() % static_cast<uint64_t>(vocab));
  const kv::KvConfig f16 = config("f16", "f16");
  std::vector<float> cpu_f16, gpu_f16, gpu_f16_quant;
  ASSERT_TRUE(cpu_logits(m, f16, ids, cpu_f16).ok());
  Status st = gpu_logits(m, f16, ids, gpu_f16);
  ASSERT_TRUE(st.ok()) << st.to_string();
  constexpr int kDecodeTail = 16;
  st = gpu_logits(m, f16, ids, gpu_f16_quant, DeviceWeights::kQuantized, kDecodeTail);
  ASSERT_TRUE(st.ok()) << st.to_string();
  for (const auto& [name, got] :
       {std::pair{"f16 weights", &gpu_f16}, std::pair{"quantized weights", &gpu_f16_quant}}) {
    const Compare c = compare(*got, cpu_f16, kBigTokens, vocab);
    std::printf(
        "[ measured ] 8B shape, kv f16/f16, GPU %s: gpu vs cpu mean KLD %.2e, top-1 %.1f%%, "
        "max|diff|/range %.2e (%d positions)\n",
        name, c.kld, 100.0 * c.top1, c.of_range, kBigTokens);
    EXPECT_LT(c.kld, 2e-2) << name;
    EXPECT_GE(c.top1, 0.90) << name;
  }
  {  // The decode rows alone (the quantized GEMV), against the CPU's same positions.
    const size_t first = static_cast<size_t>(kBigTokens - kDecodeTail) * vocab;
    const std::vector<float> got(gpu_f16_quant.begin() + first, gpu_f16_quant.end());
    const std::vector<float> ref(cpu_f16.begin() + first, cpu_f16.end());
    const Compare c = compare(got, ref, kDecodeTail, vocab);
    std::printf(
        "[ measured ] 8B shape, kv f16/f16, GPU quantized weights, the %d decode steps: gpu vs "
        "cpu mean KLD %.2e, top-1 %.1f%%, max|diff|/range %.2e\n",
        kDecodeTail, c.kld, 100.0 * c.top1, c.of_range);
    EXPECT_LT(c.kld, 2e-2);
    EXPECT_GE(c.top1, 0.80);  // 16 rows: one disagreement is 6%
  }
  const kv::KvConfig tq = config("tq4", "tq3");
  std::vector<float> cpu_tq, gpu_tq;
  ASSERT_TRUE(cpu_logits(m, tq, ids, cpu_tq).ok());
  st = gpu_logits(m, tq, ids, gpu_tq);
  ASSERT_TRUE(st.ok()) << st.to_string();
  const Compare backends = compare(gpu_tq, cpu_tq, kBigTokens, vocab);
  const Compare quant = compare(cpu_tq, cpu_f16, kBigTokens, vocab);
  const Compare gpu_quant = compare(gpu_tq, gpu_f16, kBigTokens, vocab);
  std::printf(
      "[ measured ] 8B shape, kv tq4/tq3: gpu vs cpu mean KLD %.2e, top-1 %.1f%%; "
      "quantization's own KLD: cpu %.2e (top-1 %.1f%%), gpu %.2e (top-1 %.1f%%)\n",
      backends.kld, 100.0 * backends.top1, quant.kld, 100.0 * quant.top1, gpu_quant.kld,
      100.0 * gpu_quant.top1);
  EXPECT_LE(gpu_quant.kld, 1.1 * quant.kld);
  EXPECT_LE(backends.kld, 1.5 * quant.kld);
}

}  // namespace
}  // namespace tq::backend
