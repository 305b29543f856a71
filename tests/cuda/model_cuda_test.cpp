// The CUDA forward pass (backend/cuda/model_cuda.h) against the CPU forward pass on small
// random-weight models (model/random_model.h): logits of a chunked prefill and of decode steps
// for f16, tq4, tq3 and boundary-layer KV configurations, llama (normal RoPE) and qwen2 (NEOX
// RoPE, q/k/v biases), and greedy generation step for step with f16 KV.
//
// Metric: for every logits row, max |gpu - cpu| / (max - min of the CPU row); the worst row.
// Measured on an H200 (2026-12-02, docs/benchmarks.md); tolerances keep a margin over them:
// - f16 weights, f16 KV: 8.1e-4 (prefill) / 6.7e-4 (decode). The GPU rounds every GEMM input
//   to f16 and the attention kernel the query and softmax weights; the CPU stays in float32.
//   kF16Tol = 1e-2.
// - q8_0 weights, f16 KV: 1.2e-2. The CPU quantizes activations to q8_0 (llama.cpp's scheme),
//   the GPU keeps f16. kQ8Tol = 5e-2.
// - tq KV (key centering on, as the CPU cache): 3.4e-2 (tq3 + q8_0 boundary) to 6.0e-2
//   (tq3/tq3). Not a GPU error: a key or value within rounding of a Lloyd-Max cell boundary
//   takes the other code, and early prefill rows attend to one or two tokens, so such flips
//   reach the logits undiluted. On the CPU alone, moving the weights by f16 rounding (f16 vs f32
//   weights of the same draw: 7e-4 with f16 KV) moves tq logits by 2.4e-2 to 5.7e-2, and the
//   CPU's fused int8 kernels differ from its scalar reference by 3.7e-2 to 6.1e-2. So tq cases
//   are also held to a fraction of the quantization's own effect, max |cpu tq - cpu f16 KV| /
//   range (0.088 to 0.36 here): kTqFracOfQuant = 0.6 (measured 0.17 to 0.39), plus an absolute
//   cap kTqAbsTol = 0.1. The GPU without key centering (CPU with it) measured 0.46 to 1.0.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "cuda_test_util.h"
#include "tq/backend/cpu/ops.h"
#include "tq/backend/cpu/tq_kernels.h"
#include "tq/backend/device_model.h"
#include "tq/kv/kv_bytes.h"
#include "tq/kv/paged_kv.h"
#include "tq/model/gguf_writer.h"
#include "tq/model/llama.h"
#include "tq/model/model_desc.h"
#include "tq/model/random_model.h"
#include "tq/runtime/logprobs.h"
#include "tq/runtime/sampler.h"

namespace tq::backend {
namespace {

constexpr double kF16Tol = 1e-2;
constexpr double kQ8Tol = 5e-2;
constexpr double kTqFracOfQuant = 0.6;
constexpr double kTqAbsTol = 1e-1;
// tq's one-token GEMV kernel against cuBLAS's GEMM for the same decode steps: both accumulate
// f16 products in f32, in different orders.
constexpr double kGemvTol = 1e-3;
constexpr int kCtx = 256;

model::RandomModelSpec spec_for(model::Arch arch, quant::GgmlType type, uint64_t seed) {
  model::RandomModelSpec s;
  s.arch = arch;
  s.n_layers = 4;
  s.dim = 256;
  s.ffn_dim = 512;
  s.n_heads = 4;
  s.n_kv_heads = 2;  // head_dim 64 (the CUDA kernels have 64 and 128), GQA groups of 2
  s.vocab_size = 512;
  s.context_length = kCtx;
  s.type = type;
  s.seed = seed;
  s.tied_output = arch == model::Arch::kLlama;
  return s;
}

std::unique_ptr<model::Model> build_model(const model::RandomModelSpec& spec) {
  model::GgufWriter w;
  EXPECT_TRUE(model::build_random_model(spec, w).ok());
  auto bytes = w.serialize();
  if (!bytes.ok()) return nullptr;
  auto m = model::Model::from_bytes(std::move(bytes).value());
  EXPECT_TRUE(m.ok()) << m.status().to_string();
  return m.ok() ? std::move(m).value() : nullptr;
}

Expected<kv::KvConfig> kv_config(const std::string& k, const std::string& v, int boundary = 0,
                                 const std::string& boundary_format = "f16", int sinks = 0,
                                 int window = 0, bool scaling = false) {
  std::vector<std::pair<std::string, std::string>> o = {{"-ctk", k}, {"-ctv", v}};
  if (boundary > 0) {
    o.push_back({"--kv-boundary-layers", std::to_string(boundary)});
    o.push_back({"--kv-boundary-type", boundary_format});
  }
  if (sinks > 0) o.push_back({"--kv-sinks", std::to_string(sinks)});
  if (window > 0) o.push_back({"--kv-window", std::to_string(window)});
  if (scaling) {
    o.push_back({"--kv-key-scaling", "on"});
    o.push_back({"--kv-value-scaling", "on"});
  }
  return kv::parse_kv_options(o);
}

// The CPU side: the paged cache with the same KvConfig (the CPU's fused kernels).
struct CpuRun {
  std::unique_ptr<kv::PagedKvCache> cache;
  std::unique_ptr<kv::PagedKv> seq;
  ThreadPool pool{2};
  model::ForwardScratch scratch;

  Status init(const model::Model& m, const kv::KvConfig& config) {
    kv::PagedKvCacheOptions o;
    o.shape = m.attention_shape();
    o.config = config;
    TQ_ASSIGN_OR_RETURN(const std::vector<size_t> blocks, kv::kv_block_bytes(config, o.shape));
    size_t page = 0;
    for (size_t b : blocks) page += b;
    o.pool_bytes = page * static_cast<size_t>(kCtx / config.block_tokens + 1);
    o.prefix_caching = false;
    o.kernels = &cpu::cpu_kernel_table();
    if (config.value_scaling) {
      TQ_ASSIGN_OR_RETURN(o.value_weights, m.value_output_weights());
    }
    TQ_ASSIGN_OR_RETURN(cache, kv::PagedKvCache::create(o));
    TQ_ASSIGN_OR_RETURN(seq, cache->new_sequence(kCtx));
    return ok_status();
  }
  Status forward(const model::Model& m, const int32_t* ids, int n, bool all, float* logits) {
    model::ForwardArgs a{ids,   n,        seq.get(),
                         &pool, &scratch, all ? model::LogitsMode::kAll : model::LogitsMode::kLast,
                         logits};
    return m.forward(a);
  }
};

Expected<std::unique_ptr<DeviceModel>> gpu_model(const model::Model& m, const kv::KvConfig& config,
                                                 int max_batch, bool cublas_gemv = false,
                                                 int n_seqs = 1,
                                                 DeviceWeights weights = DeviceWeights::kF16,
                                                 bool int8_activations = true) {
  DeviceModelOptions o;
  o.int8_activations = int8_activations;
  o.kv = config;
  o.max_context = kCtx;
  o.max_batch = max_batch;
  o.max_sequences = n_seqs;
  o.cublas_gemv = cublas_gemv;
  o.weights = weights;
  if (config.value_scaling) {
    TQ_ASSIGN_OR_RETURN(o.value_weights, m.value_output_weights());
  }
  return create_cuda_model(model::describe_for_backend(m), o);
}

struct Diff {
  double of_range = 0.0;  // max |a - b| / (max - min of ref), worst row
  double of_std = 0.0;    // max |a - b| / std of ref, worst row (forward_test's metric)
};

Diff row_diff(const float* got, const float* ref, int rows, int vocab) {
  Diff d;
  for (int r = 0; r < rows; ++r) {
    const float* a = got + static_cast<size_t>(r) * vocab;
    const float* b = ref + static_cast<size_t>(r) * vocab;
    double mx = -1e300, mn = 1e300, mean = 0.0, md = 0.0;
    for (int i = 0; i < vocab; ++i) {
      mx = std::max(mx, static_cast<double>(b[i]));
      mn = std::min(mn, static_cast<double>(b[i]));
      mean += b[i];
      if (!std::isfinite(a[i])) md = INFINITY;
      md = std::max(md, std::fabs(static_cast<double>(a[i]) - b[i]));
    }
    mean /= vocab;
    double var = 0.0;
    for (int i = 0; i < vocab; ++i) var += (b[i] - mean) * (b[i] - mean);
    d.of_range = std::max(d.of_range, md / (mx - mn));
    d.of_std = std::max(d.of_std, md / std::sqrt(var / vocab));
  }
  return d;
}

std::vector<int32_t> prompt_ids(int n, int vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& t : ids) t = static_cast<int32_t>(rng.next_u64() % static_cast<uint64_t>(vocab));
  return ids;
}

struct Case {
  const char* name;
  model::Arch arch;
  quant::GgmlType weights;
  const char* k;
  const char* v;
  int boundary;
  double tol;  // absolute bound on the metric; quantized KV cases also get kTqFracOfQuant
  int sinks = 0, window = 0;
  bool scaling = false;  // --kv-key-scaling and --kv-value-scaling on
  bool quantized_kv() const {
    return std::string(k) != "f16" || std::string(v) != "f16" || boundary > 0;
  }
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class ModelCudaTest : public ::testing::TestWithParam<Case> {};

// Prefill of 45 tokens in passes of 32 and 13 (kAll), then 8 decode steps (kLast) fed the same
// tokens on both sides. The GPU splits its one 45-token call into passes of 32 and 13; the CPU
// appends the same two chunks, so key centering's mean (tokens 1..31 of the first append or
// pass, kv::PagedKv::set_key_mean) is taken over the same tokens on both sides.
TEST_P(ModelCudaTest, LogitsMatchCpu) {
  TQ_REQUIRE_GPU();
  const Case c = GetParam();
  const uint64_t seed = 0x6d6f64656c37u;  // "model7"
  SCOPED_TRACE(std::string(c.name) + ", seed " + std::to_string(seed));
  auto m = build_model(spec_for(c.arch, c.weights, seed));
  ASSERT_TRUE(m);
  auto config = kv_config(c.k, c.v, c.boundary, "q8_0", c.sinks, c.window, c.scaling);
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  CpuRun cpu;
  ASSERT_TRUE(cpu.init(*m, *config).ok());
  // The quantization's own effect: the CPU with f16 KV, fed the same tokens.
  auto exact_config = kv_config("f16", "f16");
  ASSERT_TRUE(exact_config.ok());
  CpuRun cpu_exact;
  ASSERT_TRUE(cpu_exact.init(*m, *exact_config).ok());
  auto gpu = gpu_model(*m, *config, 32);
  ASSERT_TRUE(gpu.ok()) << gpu.status().to_string();

  const int vocab = m->config().vocab_size;
  const std::vector<int32_t> ids = prompt_ids(45, vocab, seed);
  const int n = static_cast<int>(ids.size());
  std::vector<float> ref(static_cast<size_t>(n) * vocab), exact(ref.size()), got(ref.size(), NAN);
  for (const auto [from, count] : {std::pair{0, 32}, std::pair{32, n - 32}}) {
    const size_t at = static_cast<size_t>(from) * vocab;
    ASSERT_TRUE(cpu.forward(*m, ids.data() + from, count, true, ref.data() + at).ok());
    ASSERT_TRUE(cpu_exact.forward(*m, ids.data() + from, count, true, exact.data() + at).ok());
  }
  DeviceForwardArgs a;
  a.tokens = ids.data();
  a.n = n;
  a.logits_mode = DeviceLogits::kAll;
  a.logits = got.data();
  const Status st = (*gpu)->forward(a);
  ASSERT_TRUE(st.ok()) << st.to_string();
  EXPECT_EQ((*gpu)->length(0), n);
  const Diff prefill = row_diff(got.data(), ref.data(), n, vocab);
  const Diff prefill_quant = row_diff(exact.data(), ref.data(), n, vocab);

  Diff decode, decode_quant;
  std::vector<float> r1(static_cast<size_t>(vocab)), e1(r1.size()), g1(r1.size(), NAN);
  for (int step = 0; step < 8; ++step) {
    const int32_t t = ids[static_cast<size_t>(step * 5)];
    ASSERT_TRUE(cpu.forward(*m, &t, 1, false, r1.data()).ok());
    ASSERT_TRUE(cpu_exact.forward(*m, &t, 1, false, e1.data()).ok());
    DeviceForwardArgs d;
    d.tokens = &t;
    d.n = 1;
    d.logits = g1.data();
    ASSERT_TRUE((*gpu)->forward(d).ok());
    const Diff s = row_diff(g1.data(), r1.data(), 1, vocab);
    decode.of_range = std::max(decode.of_range, s.of_range);
    decode.of_std = std::max(decode.of_std, s.of_std);
    decode_quant.of_range =
        std::max(decode_quant.of_range, row_diff(e1.data(), r1.data(), 1, vocab).of_range);
  }
  std::printf(
      "[ measured ] %-26s prefill max|gpu-cpu|/range %.2e (/std %.2e), decode %.2e (/std %.2e); "
      "quantization effect %.2e / %.2e; tol %.0e\n",
      c.name, prefill.of_range, prefill.of_std, decode.of_range, decode.of_std,
      prefill_quant.of_range, decode_quant.of_range, c.tol);
  EXPECT_LT(prefill.of_range, c.tol);
  EXPECT_LT(decode.of_range, c.tol);
  if (c.quantized_kv()) {
    const double quant = std::max(prefill_quant.of_range, decode_quant.of_range);
    EXPECT_LT(std::max(prefill.of_range, decode.of_range), kTqFracOfQuant * quant)
        << "gpu vs cpu against the quantization's own effect";
  }
}

const Case kCases[] = {
    {"llama f16w kv f16/f16", model::Arch::kLlama, quant::GgmlType::kF16, "f16", "f16", 0, kF16Tol},
    {"qwen2 f16w kv f16/f16", model::Arch::kQwen2, quant::GgmlType::kF16, "f16", "f16", 0, kF16Tol},
    {"llama f16w kv tq4/tq4", model::Arch::kLlama, quant::GgmlType::kF16, "tq4", "tq4", 0,
     kTqAbsTol},
    {"llama f16w kv tq4/tq3", model::Arch::kLlama, quant::GgmlType::kF16, "tq4", "tq3", 0,
     kTqAbsTol},
    {"llama f16w kv tq3/tq3", model::Arch::kLlama, quant::GgmlType::kF16, "tq3", "tq3", 0,
     kTqAbsTol},
    {"qwen2 f16w kv tq3 b1:q8_0", model::Arch::kQwen2, quant::GgmlType::kF16, "tq3", "tq3", 1,
     kTqAbsTol},
    {"llama q8_0w kv f16/f16", model::Arch::kLlama, quant::GgmlType::kQ8_0, "f16", "f16", 0,
     kQ8Tol},
    // Sinks and window (f16 rows beside the pages). Prefill 32 + 13 keeps 16..31, then 29..44
    // exact (the second pass reads 29..31 from the ring and gathers them in order), the 8 decode
    // steps wrap the ring. With f16 pages every row is exact on both sides, so a wrong, missing
    // or twice-counted row shows at f16 tolerance; the tq cases add the compressed pages and
    // key centering's mean without the sinks.
    {"llama f16w kv f16/f16 s4 w16", model::Arch::kLlama, quant::GgmlType::kF16, "f16", "f16", 0,
     kF16Tol, 4, 16},
    {"llama f16w kv tq4/tq3 s4 w16", model::Arch::kLlama, quant::GgmlType::kF16, "tq4", "tq3", 0,
     kTqAbsTol, 4, 16},
    {"qwen2 f16w kv tq3/tq3 w8", model::Arch::kQwen2, quant::GgmlType::kF16, "tq3", "tq3", 0,
     kTqAbsTol, 0, 8},
    {"llama f16w kv tq4/tq4 s4", model::Arch::kLlama, quant::GgmlType::kF16, "tq4", "tq4", 0,
     kTqAbsTol, 4, 0},
    // Key and value scaling (the slot's first pass sets the scales from its keys, queries and
    // values, and W_o's column norms), with and without sinks and window.
    {"llama f16w kv tq4/tq3 scaled", model::Arch::kLlama, quant::GgmlType::kF16, "tq4", "tq3", 0,
     kTqAbsTol, 0, 0, true},
    {"qwen2 f16w kv tq3/tq3 s4 w16 scaled", model::Arch::kQwen2, quant::GgmlType::kF16, "tq3",
     "tq3", 0, kTqAbsTol, 4, 16, true},
};

INSTANTIATE_TEST_SUITE_P(Configs, ModelCudaTest, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& i) {
                           return "case" + std::to_string(i.index);
                         });

// Greedy generation, each side fed its own choices: the same 16 tokens. On a mismatch the
// message gives the CPU's margin between its top two logits at that step (a near tie).
TEST(ModelCudaGreedy, SixteenStepsEqualWithF16Kv) {
  TQ_REQUIRE_GPU();
  const uint64_t seed = 0x677265656479u;  // "greedy"
  auto m = build_model(spec_for(model::Arch::kLlama, quant::GgmlType::kF16, seed));
  ASSERT_TRUE(m);
  auto config = kv_config("f16", "f16");
  ASSERT_TRUE(config.ok());
  CpuRun cpu;
  ASSERT_TRUE(cpu.init(*m, *config).ok());
  auto gpu = gpu_model(*m, *config, 64);
  ASSERT_TRUE(gpu.ok()) << gpu.status().to_string();
  const int vocab = m->config().vocab_size;
  const std::vector<int32_t> prompt = prompt_ids(12, vocab, seed);
  std::vector<float> rl(static_cast<size_t>(vocab)), gl(rl.size());
  ASSERT_TRUE(
      cpu.forward(*m, prompt.data(), static_cast<int>(prompt.size()), false, rl.data()).ok());
  DeviceForwardArgs a;
  a.tokens = prompt.data();
  a.n = static_cast<int>(prompt.size());
  a.logits = gl.data();
  ASSERT_TRUE((*gpu)->forward(a).ok());
  double min_margin = INFINITY;
  for (int step = 0; step < 16; ++step) {
    const int32_t tc = cpu::argmax(rl.data(), vocab), tg = cpu::argmax(gl.data(), vocab);
    std::vector<float> sorted = rl;
    std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
    min_margin = std::min(min_margin, static_cast<double>(sorted[0] - sorted[1]));
    ASSERT_EQ(tc, tg) << "step " << step << ": cpu top-2 margin " << sorted[0] - sorted[1]
                      << ", gpu logit of the cpu token " << gl[static_cast<size_t>(tc)];
    ASSERT_TRUE(cpu.forward(*m, &tc, 1, false, rl.data()).ok());
    DeviceForwardArgs d;
    d.tokens = &tg;
    d.n = 1;
    d.logits = gl.data();
    ASSERT_TRUE((*gpu)->forward(d).ok());
  }
  std::printf("[ measured ] greedy: 16 equal tokens, smallest cpu top-2 margin %.3g\n", min_margin);
}

// Decode through tq's GEMV kernel and through cuBLAS: the same logits up to summation order.
TEST(ModelCudaGemv, MatchesCublas) {
  TQ_REQUIRE_GPU();
  const uint64_t seed = 0x67656d76u;  // "gemv"
  auto m = build_model(spec_for(model::Arch::kQwen2, quant::GgmlType::kF16, seed));
  ASSERT_TRUE(m);
  auto config = kv_config("f16", "f16");
  ASSERT_TRUE(config.ok());
  auto ours = gpu_model(*m, *config, 32, false);
  auto theirs = gpu_model(*m, *config, 32, true);
  ASSERT_TRUE(ours.ok() && theirs.ok()) << ours.status().to_string() << theirs.status().to_string();
  const int vocab = m->config().vocab_size;
  const std::vector<int32_t> ids = prompt_ids(28, vocab, seed);
  std::vector<float> a(static_cast<size_t>(vocab), NAN), b(a.size(), NAN);
  double worst = 0.0;
  for (size_t i = 0; i < ids.size(); ++i) {  // 20 prompt tokens in one pass, then one at a time
    const int n = i == 0 ? 20 : 1;
    if (i != 0 && i < 20) continue;
    DeviceForwardArgs f;
    f.tokens = ids.data() + i;
    f.n = n;
    f.logits = a.data();
    ASSERT_TRUE((*ours)->forward(f).ok());
    f.logits = b.data();
    ASSERT_TRUE((*theirs)->forward(f).ok());
    worst = std::max(worst, row_diff(a.data(), b.data(), 1, vocab).of_range);
  }
  std::printf("[ measured ] gemv vs cuBLAS: max|diff|/range %.2e over 9 passes, tol %.0e\n", worst,
              kGemvTol);
  EXPECT_LT(worst, kGemvTol);
}

// Batched decode (forward_batch) against each slot decoded alone (forward), on two models
// with the same weights and KV config. Four slots of different lengths: 37 and 70 prompt tokens
// (one and three pages), an empty slot (its first token comes through the batch: key mean 0,
// as forward()'s lone first token), and a copy of the first slot (copy_sequence; on the batched
// model also extended by 10 other tokens and truncated back, DeviceModel::truncate) extended by
// 20 tokens. Then 6 batched steps of the 4 slots, each compared with the same token through
// forward() on the reference model. The only difference is the matmuls' summation order
// (cuBLAS GEMM over 4 rows vs the one-row GEMV kernel), so f16 KV is held to kGemvTol; tq KV to
// kBatchTqTol, which allows a rare code flip of a K/V element rounded near a cell boundary (the
// observed differences are in the [ measured ] line). Top-1 tokens must agree everywhere.
constexpr double kBatchTqTol = 1e-2;

struct BatchCase {
  const char* k;
  const char* v;
  int sinks = 0, window = 0;
  bool scaling = false;
};
class ModelCudaBatchTest : public ::testing::TestWithParam<BatchCase> {};

TEST_P(ModelCudaBatchTest, MatchesOneSlotAtATime) {
  TQ_REQUIRE_GPU();
  const BatchCase c = GetParam();
  const uint64_t seed = 0x6261746368u;  // "batch"
  SCOPED_TRACE(std::string("kv ") + c.k + "/" + c.v + ", seed " + std::to_string(seed));
  auto m = build_model(spec_for(model::Arch::kLlama, quant::GgmlType::kF16, seed));
  ASSERT_TRUE(m);
  auto config = kv_config(c.k, c.v, 0, "f16", c.sinks, c.window, c.scaling);
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  constexpr int kSlots = 4;
  auto batched = gpu_model(*m, *config, 32, false, kSlots);
  auto alone = gpu_model(*m, *config, 32, false, kSlots);
  ASSERT_TRUE(batched.ok() && alone.ok()) << batched.status().to_string();
  DeviceModel& B = **batched;
  DeviceModel& A = **alone;
  const int vocab = m->config().vocab_size;
  const std::vector<int32_t> ids = prompt_ids(200, vocab, seed);
  std::vector<float> sink(static_cast<size_t>(vocab));
  const auto prefill = [&](DeviceModel& dm, int seq, size_t from, int n) {
    DeviceForwardArgs a;
    a.seq = seq;
    a.tokens = ids.data() + from;
    a.n = n;
    a.logits = sink.data();
    return dm.forward(a);
  };
  // Slot 0: 37 tokens; slot 1: 70; slot 2: empty; slot 3: slot 0's 37 then 20 more.
  for (DeviceModel* dm : {&A, &B}) {
    ASSERT_TRUE(prefill(*dm, 0, 0, 37).ok());
    ASSERT_TRUE(prefill(*dm, 1, 40, 70).ok());
  }
  ASSERT_TRUE(prefill(A, 3, 0, 37).ok());
  ASSERT_TRUE(B.copy_sequence(0, 3).ok());
  EXPECT_EQ(B.length(3), 37);
  // On B, 10 other tokens then truncate(3, 37) (prefix reuse): as if they had never come. With
  // a window the ring no longer holds the rows before the cut: until `window` tokens have come
  // the slot refuses forward_batch, and forward() reads positions before 37 compressed, as A's
  // pass of 20 does (its window is its own last 16 tokens).
  ASSERT_TRUE(prefill(B, 3, 180, 10).ok());
  const Status cut = B.truncate(3, 37);
  EXPECT_TRUE(cut.ok()) << cut.to_string();
  EXPECT_EQ(B.length(3), 37);
  EXPECT_EQ(B.refill_until(3), c.window > 0 ? 37 + c.window : 0);
  if (c.window > 0) {
    const int32_t one = ids[120];
    DeviceForwardArgs d1;
    d1.seq = 3;
    d1.tokens = &one;
    d1.n = 1;
    d1.logits = sink.data();
    EXPECT_EQ(B.forward_batch(std::span<const DeviceForwardArgs>(&d1, 1)).code(),
              StatusCode::kInvalidArgument);
    EXPECT_EQ(B.length(3), 37);
  }
  for (DeviceModel* dm : {&A, &B}) ASSERT_TRUE(prefill(*dm, 3, 120, 20).ok());
  EXPECT_EQ(B.refill_until(3), 0);

  // Refused before any cache is touched: a slot twice, two tokens in one item.
  {
    const int32_t two[2] = {1, 2};
    std::vector<DeviceForwardArgs> bad(2);
    bad[0].seq = bad[1].seq = 1;
    bad[0].tokens = bad[1].tokens = two;
    bad[0].n = bad[1].n = 1;
    bad[0].logits = bad[1].logits = sink.data();
    EXPECT_EQ(B.forward_batch(bad).code(), StatusCode::kInvalidArgument);
    bad[1].seq = 2;
    bad[1].n = 2;
    EXPECT_EQ(B.forward_batch(bad).code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(B.length(1), 70);
    EXPECT_EQ(B.length(2), 0);
  }

  std::vector<float> got(static_cast<size_t>(kSlots) * vocab, NAN), ref(got.size(), NAN);
  double worst = 0.0;
  int top1_equal = 0, rows = 0;
  for (int step = 0; step < 6; ++step) {
    int32_t tok[kSlots];
    std::vector<DeviceForwardArgs> items(kSlots);
    for (int s = 0; s < kSlots; ++s) {
      tok[s] = ids[static_cast<size_t>(150 + 4 * step + s)];
      items[s].seq = s;
      items[s].tokens = &tok[s];
      items[s].n = 1;
      items[s].logits = got.data() + static_cast<size_t>(s) * vocab;
      DeviceForwardArgs one = items[s];
      one.logits = ref.data() + static_cast<size_t>(s) * vocab;
      ASSERT_TRUE(A.forward(one).ok());
    }
    const Status st = B.forward_batch(items);
    ASSERT_TRUE(st.ok()) << st.to_string();
    worst = std::max(worst, row_diff(got.data(), ref.data(), kSlots, vocab).of_range);
    for (int s = 0; s < kSlots; ++s, ++rows) {
      const size_t o = static_cast<size_t>(s) * vocab;
      top1_equal += cpu::argmax(got.data() + o, vocab) == cpu::argmax(ref.data() + o, vocab);
    }
  }
  for (int s = 0; s < kSlots; ++s) EXPECT_EQ(B.length(s), A.length(s)) << "slot " << s;
  EXPECT_EQ(B.length(2), 6);
  const bool f16 = std::string(c.k) == "f16" && std::string(c.v) == "f16";
  const double tol = f16 ? kGemvTol : kBatchTqTol;
  std::printf(
      "[ measured ] batch of 4 (kv %s/%s) vs one at a time: max|diff|/range %.2e over 6 "
      "steps, top-1 %d/%d, tol %.0e\n",
      c.k, c.v, worst, top1_equal, rows, tol);
  EXPECT_LT(worst, tol);
  EXPECT_EQ(top1_equal, rows);
}

INSTANTIATE_TEST_SUITE_P(Kv, ModelCudaBatchTest,
                         ::testing::Values(BatchCase{"f16", "f16"}, BatchCase{"tq4", "tq4"},
                                           BatchCase{"tq4", "tq3"}, BatchCase{"tq3", "tq3"},
                                           BatchCase{"tq4", "tq3", 4, 16},
                                           BatchCase{"tq4", "tq3", 4, 16, true}),
                         [](const ::testing::TestParamInfo<BatchCase>& i) {
                           std::string s = std::string(i.param.k) + "_" + i.param.v;
                           if (i.param.sinks + i.param.window > 0)
                             s += "_s" + std::to_string(i.param.sinks) + "w" +
                                  std::to_string(i.param.window);
                           if (i.param.scaling) s += "_scaled";
                           return s;
                         });

// Quantized weights on the device (DeviceWeights::kQuantized: Q4_0/Q8_0 blocks multiplied as
// stored) against the f16-weights GPU path on the same model: both decode the same blocks, only
// the products differ (the f16 path rounds each d * q to f16 at upload, ~2^-12 relative; gemv_q
// keeps it exact in f32) and their summation order. The CPU alone shows what rounding the
// weights to f16 does to these logits: 7e-4 of the range (header); kQuantWeightsTol = 5e-3
// leaves margin for four layers of it. Exercised: a 45-token prefill (passes of 32 and 13:
// dequantize + cuBLAS, which reproduces the f16 path's GEMM inputs exactly), a 5-token pass
// (gemv_q over 5 rows), 8 decode steps (1 row), and forward_batch of 4 slots (4 rows), llama
// with tied output (a quantized copy of token_embd for the logits) and qwen2 (untied, biases).
constexpr double kQuantWeightsTol = 5e-3;

struct QuantCase {
  const char* name;
  model::Arch arch;
  quant::GgmlType weights;
};
class ModelCudaQuantWeightsTest : public ::testing::TestWithParam<QuantCase> {};

struct QuantDiffs {
  double prefill = 0.0, short_pass = 0.0, decode = 0.0, batch = 0.0;
  int top1 = 0, rows = 0;
};

// The same passes through an f16-weight model and a quantized-weight one (int8_activations as
// given): max |diff| / range of each kind of pass.
QuantDiffs compare_quant_weights(const model::Model& m, bool int8_activations, uint64_t seed) {
  QuantDiffs q;
  auto config = kv_config("f16", "f16");
  EXPECT_TRUE(config.ok());
  constexpr int kSlots = 4;
  auto ref = gpu_model(m, *config, 32, false, kSlots, DeviceWeights::kF16);
  auto quant =
      gpu_model(m, *config, 32, false, kSlots, DeviceWeights::kQuantized, int8_activations);
  EXPECT_TRUE(ref.ok()) << ref.status().to_string();
  EXPECT_TRUE(quant.ok()) << quant.status().to_string();
  if (!ref.ok() || !quant.ok()) return q;
  const std::string described = (*quant)->describe();
  std::printf("[ measured ] %s\n", described.c_str());
  EXPECT_EQ(described.find("(0 of"), std::string::npos) << "no matrix stayed blocks";
  EXPECT_EQ((*ref)->describe().find("quantized"), std::string::npos);
  EXPECT_EQ(described.find("f16 activations") == std::string::npos, int8_activations);
  DeviceModel& R = **ref;
  DeviceModel& Q = **quant;
  const int vocab = m.config().vocab_size;
  const std::vector<int32_t> ids = prompt_ids(120, vocab, seed);

  // Slot 0: 45 tokens (kAll), 5 more (kAll), then 8 single steps.
  std::vector<float> a(static_cast<size_t>(45) * vocab, NAN), b(a.size(), NAN);
  const auto run = [&](DeviceModel& dm, int seq, size_t from, int n, DeviceLogits mode,
                       float* out) {
    DeviceForwardArgs f;
    f.seq = seq;
    f.tokens = ids.data() + from;
    f.n = n;
    f.logits_mode = mode;
    f.logits = out;
    return dm.forward(f);
  };
  EXPECT_TRUE(run(R, 0, 0, 45, DeviceLogits::kAll, a.data()).ok());
  EXPECT_TRUE(run(Q, 0, 0, 45, DeviceLogits::kAll, b.data()).ok());
  q.prefill = row_diff(b.data(), a.data(), 45, vocab).of_range;
  EXPECT_TRUE(run(R, 0, 45, 5, DeviceLogits::kAll, a.data()).ok());
  EXPECT_TRUE(run(Q, 0, 45, 5, DeviceLogits::kAll, b.data()).ok());
  q.short_pass = row_diff(b.data(), a.data(), 5, vocab).of_range;
  for (int step = 0; step < 8; ++step) {
    EXPECT_TRUE(run(R, 0, 50 + step, 1, DeviceLogits::kLast, a.data()).ok());
    const Status st = run(Q, 0, 50 + step, 1, DeviceLogits::kLast, b.data());
    EXPECT_TRUE(st.ok()) << st.to_string();
    q.decode = std::max(q.decode, row_diff(b.data(), a.data(), 1, vocab).of_range);
  }
  // Slots 1..3: 20 tokens each, then 4 batched steps of all four slots.
  for (int s = 1; s < kSlots; ++s)
    for (DeviceModel* dm : {&R, &Q})
      EXPECT_TRUE(run(*dm, s, 60 + 10 * s, 20, DeviceLogits::kLast, a.data()).ok());
  std::vector<float> ga(static_cast<size_t>(kSlots) * vocab, NAN), gb(ga.size(), NAN);
  for (int step = 0; step < 4; ++step) {
    int32_t tok[kSlots];
    std::vector<DeviceForwardArgs> ia(kSlots), ib(kSlots);
    for (int s = 0; s < kSlots; ++s) {
      tok[s] = ids[static_cast<size_t>(100 + 4 * step + s)];
      ia[s].seq = ib[s].seq = s;
      ia[s].tokens = ib[s].tokens = &tok[s];
      ia[s].n = ib[s].n = 1;
      ia[s].logits = ga.data() + static_cast<size_t>(s) * vocab;
      ib[s].logits = gb.data() + static_cast<size_t>(s) * vocab;
    }
    EXPECT_TRUE(R.forward_batch(ia).ok());
    const Status st = Q.forward_batch(ib);
    EXPECT_TRUE(st.ok()) << st.to_string();
    q.batch = std::max(q.batch, row_diff(gb.data(), ga.data(), kSlots, vocab).of_range);
    for (int s = 0; s < kSlots; ++s, ++q.rows) {
      const size_t o = static_cast<size_t>(s) * vocab;
      q.top1 += cpu::argmax(ga.data() + o, vocab) == cpu::argmax(gb.data() + o, vocab);
    }
  }
  for (int s = 0; s < kSlots; ++s) EXPECT_EQ(Q.length(s), R.length(s)) << "slot " << s;
  return q;
}

TEST_P(ModelCudaQuantWeightsTest, MatchesF16Weights) {
  TQ_REQUIRE_GPU();
  const QuantCase c = GetParam();
  const uint64_t seed = 0x7175616e74u;  // "quant"
  SCOPED_TRACE(std::string(c.name) + ", seed " + std::to_string(seed));
  auto m = build_model(spec_for(c.arch, c.weights, seed));
  ASSERT_TRUE(m);
  // f16 activations: the quantized GEMV's products are exact in f32, so only the summation
  // order differs from the f16-weight path (kQuantWeightsTol). 8-bit activations (the default):
  // the rounding of every activation to 8 bits per 32 columns, as the CPU's matmuls do; held
  // to the CPU-vs-GPU bound for that same rounding (kQ8Tol, header; measured 1.0e-2 to 1.4e-2).
  for (const bool int8 : {false, true}) {
    SCOPED_TRACE(int8 ? "8-bit activations" : "f16 activations");
    const QuantDiffs q = compare_quant_weights(*m, int8, seed);
    const double tol = int8 ? kQ8Tol : kQuantWeightsTol;
    std::printf(
        "[ measured ] %s quant (%s activations) vs f16 weights, max|diff|/range: prefill %.2e, "
        "5-token pass %.2e, decode %.2e, batch of 4 %.2e (top-1 %d/%d); tol %.0e\n",
        c.name, int8 ? "8-bit" : "f16", q.prefill, q.short_pass, q.decode, q.batch, q.top1, q.rows,
        tol);
    EXPECT_LT(q.prefill, kQuantWeightsTol);  // prefill dequantizes for cuBLAS either way
    EXPECT_LT(q.short_pass, tol);
    EXPECT_LT(q.decode, tol);
    EXPECT_LT(q.batch, tol);
    EXPECT_GT(q.rows, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Weights, ModelCudaQuantWeightsTest,
    ::testing::Values(QuantCase{"llama q4_0", model::Arch::kLlama, quant::GgmlType::kQ4_0},
                      QuantCase{"llama q8_0", model::Arch::kLlama, quant::GgmlType::kQ8_0},
                      QuantCase{"qwen2 q4_0", model::Arch::kQwen2, quant::GgmlType::kQ4_0},
                      QuantCase{"qwen2 q8_0", model::Arch::kQwen2, quant::GgmlType::kQ8_0}),
    [](const ::testing::TestParamInfo<QuantCase>& i) {
      std::string s = i.param.name;
      for (char& ch : s)
        if (ch == ' ') ch = '_';
      return s;
    });

// CUDA graphs (DeviceModelOptions::cuda_graphs) against the same passes launched kernel by
// kernel, on two models with the same weights: a graph replays the captured launches with the
// same arguments, reading the per-step inputs from the same device buffers, so the logits must
// be bit-identical (tolerance 0). Exercised: 150 one-token forward() steps of one slot from 45 to
// 195 tokens (the batch-of-one graph is captured again as the length passes each capacity:
// 128, 160, 192), then 12 forward_batch steps of three slots (one of them empty at first: its
// key mean is set outside the graph), one of them with no logits asked (another graph), and the
// counters that show which path ran.
struct GraphCase {
  const char* k;
  const char* v;
  DeviceWeights weights;
  int sinks = 0, window = 0;
};
class ModelCudaGraphTest : public ::testing::TestWithParam<GraphCase> {};

TEST_P(ModelCudaGraphTest, DecodeEqualsEagerLaunches) {
  TQ_REQUIRE_GPU();
  const GraphCase c = GetParam();
  const uint64_t seed = 0x6772617068u;  // "graph"
  SCOPED_TRACE(std::string("kv ") + c.k + "/" + c.v + ", seed " + std::to_string(seed));
  auto m = build_model(spec_for(model::Arch::kQwen2, quant::GgmlType::kQ4_0, seed));
  ASSERT_TRUE(m);
  auto config = kv_config(c.k, c.v, 0, "f16", c.sinks, c.window);
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  constexpr int kSlots = 3;
  DeviceModelOptions o;
  o.kv = *config;
  o.max_context = kCtx;
  o.max_batch = 32;
  o.max_sequences = kSlots;
  o.weights = c.weights;
  auto graphs = create_cuda_model(model::describe_for_backend(*m), o);
  o.cuda_graphs = false;
  auto eager = create_cuda_model(model::describe_for_backend(*m), o);
  ASSERT_TRUE(graphs.ok()) << graphs.status().to_string();
  ASSERT_TRUE(eager.ok()) << eager.status().to_string();
  DeviceModel& G = **graphs;
  DeviceModel& E = **eager;
  const int vocab = m->config().vocab_size;
  const size_t row_bytes = static_cast<size_t>(vocab) * sizeof(float);
  const std::vector<int32_t> ids = prompt_ids(400, vocab, seed);
  std::vector<float> a(static_cast<size_t>(kSlots) * vocab, NAN), b(a.size(), NAN);
  const auto run = [&](DeviceModel& dm, int seq, size_t from, int n, float* out,
                       int32_t* greedy = nullptr) {
    DeviceForwardArgs f;
    f.seq = seq;
    f.tokens = ids.data() + from;
    f.n = n;
    f.logits = out;
    f.greedy = greedy;
    return dm.forward(f);
  };
  int differing = 0, compared = 0, greedy_wrong = 0;
  for (DeviceModel* dm : {&G, &E}) {
    ASSERT_TRUE(run(*dm, 0, 0, 45, a.data()).ok());
    ASSERT_TRUE(run(*dm, 1, 50, 70, a.data()).ok());
  }
  for (int step = 0; step < 150; ++step) {
    ASSERT_TRUE(run(E, 0, 120 + step, 1, a.data()).ok());
    // Every other step only the device's greedy token comes back (no logits buffer).
    int32_t greedy = -1;
    const bool token_only = step % 2 == 1;
    const Status st = run(G, 0, 120 + step, 1, token_only ? nullptr : b.data(), &greedy);
    ASSERT_TRUE(st.ok()) << st.to_string();
    greedy_wrong += greedy != runtime::greedy_token(a.data(), vocab);
    if (!token_only) {
      differing += std::memcmp(a.data(), b.data(), row_bytes) != 0;
      ++compared;
    }
  }
  for (int step = 0; step < 12; ++step) {
    int32_t tok[kSlots];
    std::vector<DeviceForwardArgs> ia(kSlots), ib(kSlots);
    int32_t greedy[kSlots] = {-1, -1, -1};
    for (int s = 0; s < kSlots; ++s) {
      tok[s] = ids[static_cast<size_t>(300 + 3 * step + s)];
      if (step != 5) ib[s].greedy = &greedy[s];  // step 5 asks for no logits at all
      ia[s].seq = ib[s].seq = s;
      ia[s].tokens = ib[s].tokens = &tok[s];
      ia[s].n = ib[s].n = 1;
      ia[s].logits_mode = ib[s].logits_mode = step == 5 ? DeviceLogits::kNone : DeviceLogits::kLast;
      ia[s].logits = a.data() + static_cast<size_t>(s) * vocab;
      ib[s].logits = b.data() + static_cast<size_t>(s) * vocab;
    }
    ASSERT_TRUE(E.forward_batch(ia).ok());
    const Status st = G.forward_batch(ib);
    ASSERT_TRUE(st.ok()) << st.to_string();
    if (step == 5) continue;
    for (int s = 0; s < kSlots; ++s, ++compared) {
      differing += std::memcmp(a.data() + static_cast<size_t>(s) * vocab,
                               b.data() + static_cast<size_t>(s) * vocab, row_bytes) != 0;
      greedy_wrong +=
          greedy[s] != runtime::greedy_token(a.data() + static_cast<size_t>(s) * vocab, vocab);
    }
  }
  for (int s = 0; s < kSlots; ++s) EXPECT_EQ(G.length(s), E.length(s)) << "slot " << s;
  EXPECT_EQ(G.length(0), 45 + 150 + 12);
  EXPECT_EQ(G.length(2), 12);
  const DeviceModelStats gs = G.stats(), es = E.stats();
  std::printf(
      "[ measured ] graphs vs eager launches (kv %s/%s): %d of %d logits rows differ "
      "(tolerance 0), %d greedy tokens differ; graphs: %lld captured, %lld replayed, %lld eager "
      "passes\n",
      c.k, c.v, differing, compared, greedy_wrong, static_cast<long long>(gs.graph_captures),
      static_cast<long long>(gs.graph_replays), static_cast<long long>(gs.eager_passes));
  EXPECT_EQ(differing, 0);
  EXPECT_EQ(greedy_wrong, 0) << "the device's greedy token differs from the logits' argmax";
  // Batch of one: captured at lengths 46 (capacity 128), 129, 161 and 193; batch of three: with
  // and without logits; and every graph once more after each growth of the attention workspace
  // (doubling: a few times here). Measured 11 on an H200.
  EXPECT_GE(gs.graph_captures, 6);
  EXPECT_LE(gs.graph_captures, 16);
  EXPECT_EQ(gs.graph_captures + gs.graph_replays, 150 + 12);
  EXPECT_EQ(gs.eager_passes, 2 + 3);  // the prefills: 45 = 32 + 13, 70 = 32 + 32 + 6
  EXPECT_EQ(es.graph_captures + es.graph_replays, 0);
  EXPECT_EQ(es.eager_passes, 5 + 150 + 12);
}

INSTANTIATE_TEST_SUITE_P(Kv, ModelCudaGraphTest,
                         ::testing::Values(GraphCase{"f16", "f16", DeviceWeights::kF16},
                                           GraphCase{"tq4", "tq3", DeviceWeights::kQuantized},
                                           GraphCase{"tq3", "tq3", DeviceWeights::kF16},
                                           GraphCase{"tq4", "tq3", DeviceWeights::kQuantized, 4,
                                                     64}),
                         [](const ::testing::TestParamInfo<GraphCase>& i) {
                           return std::string(i.param.k) + "_" + i.param.v +
                                  (i.param.weights == DeviceWeights::kQuantized ? "_quant"
                                                                                : "_f16w") +
                                  (i.param.window > 0 ? "_window" : "");
                         });

// The top candidates of a pass (DeviceForwardArgs::top_k) are runtime::top_logits of the logits
// the same pass returns: a prefill's last row, and a batch of three slots asking for different
// counts (one none) in one forward_batch, with and without a logits buffer (exact: the same
// floats, ranked the same way). Bad requests are refused before any cache is touched.
TEST(ModelCudaTopCandidates, EqualTheHostRankingOfTheLogits) {
  TQ_REQUIRE_GPU();
  const uint64_t seed = 0x746f706b;  // "topk"
  auto m = build_model(spec_for(model::Arch::kLlama, quant::GgmlType::kF16, seed));
  ASSERT_TRUE(m);
  auto config = kv_config("tq4", "tq3");
  ASSERT_TRUE(config.ok());
  constexpr int kSlots = 3;
  auto gpu = gpu_model(*m, *config, 32, false, kSlots);
  ASSERT_TRUE(gpu.ok()) << gpu.status().to_string();
  DeviceModel& dm = **gpu;
  const int vocab = m->config().vocab_size;
  const std::vector<int32_t> ids = prompt_ids(60, vocab, seed);
  std::vector<float> logits(static_cast<size_t>(kSlots) * vocab, NAN);
  std::vector<int32_t> top_ids(static_cast<size_t>(kSlots) * 1024, -1), want_ids(1024);
  std::vector<float> top_vals(top_ids.size(), NAN), want_vals(1024);
  double log_z[kSlots];
  // The log partition of the row (logprobs from the candidates): the host's in float64 over the
  // same logits, up to the summation order (1e-9).
  const auto check_log_z = [&](int slot, const char* what) {
    const double want =
        runtime::log_partition(logits.data() + static_cast<size_t>(slot) * vocab, vocab);
    EXPECT_NEAR(log_z[slot], want, 1e-9) << what << " slot " << slot;
  };
  const auto check = [&](int slot, int k, const char* what) {
    runtime::top_logits(logits.data() + static_cast<size_t>(slot) * vocab, vocab, k,
                        want_ids.data(), want_vals.data());
    for (int i = 0; i < k; ++i) {
      ASSERT_EQ(top_ids[static_cast<size_t>(slot) * 1024 + i], want_ids[static_cast<size_t>(i)])
          << what << " slot " << slot << " rank " << i;
      ASSERT_EQ(top_vals[static_cast<size_t>(slot) * 1024 + i], want_vals[static_cast<size_t>(i)])
          << what << " slot " << slot << " rank " << i;
    }
  };
  for (int slot = 0; slot < kSlots; ++slot) {
    DeviceForwardArgs a;
    a.seq = slot;
    a.tokens = ids.data() + 10 * slot;
    a.n = 20 + 8 * slot;  // 20, 28, and 36 in passes of 32 + 4
    a.logits = logits.data() + static_cast<size_t>(slot) * vocab;
    a.top_k = 104;
    a.top_ids = top_ids.data() + static_cast<size_t>(slot) * 1024;
    a.top_logits = top_vals.data() + static_cast<size_t>(slot) * 1024;
    log_z[slot] = NAN;
    a.log_z = &log_z[slot];
    ASSERT_TRUE(dm.forward(a).ok());
    check(slot, 104, "prefill");
    check_log_z(slot, "prefill");
  }
  const int counts[kSlots] = {40, 0, vocab};
  for (int step = 0; step < 3; ++step) {
    std::vector<DeviceForwardArgs> items(kSlots);
    int32_t tok[kSlots];
    for (int s = 0; s < kSlots; ++s) {
      tok[s] = ids[static_cast<size_t>(40 + 3 * step + s)];
      items[s].seq = s;
      items[s].tokens = &tok[s];
      items[s].n = 1;
      items[s].logits = logits.data() + static_cast<size_t>(s) * vocab;
      items[s].top_k = std::min(counts[s], DeviceForwardArgs::kMaxTopK);
      items[s].top_ids = top_ids.data() + static_cast<size_t>(s) * 1024;
      items[s].top_logits = top_vals.data() + static_cast<size_t>(s) * 1024;
      log_z[s] = NAN;
      items[s].log_z = s == 1 ? nullptr : &log_z[s];  // not every row asks
    }
    const Status st = dm.forward_batch(items);
    ASSERT_TRUE(st.ok()) << st.to_string();
    for (int s = 0; s < kSlots; ++s) check(s, items[s].top_k, "batch");
    check_log_z(0, "batch");
    check_log_z(2, "batch");
    EXPECT_TRUE(std::isnan(log_z[1]));
  }
  // Refused before anything runs: k over the maximum, a missing buffer, no logits mode.
  DeviceForwardArgs bad;
  bad.seq = 0;
  bad.tokens = ids.data();
  bad.n = 1;
  bad.top_k = DeviceForwardArgs::kMaxTopK + 1;
  bad.top_ids = top_ids.data();
  bad.top_logits = top_vals.data();
  EXPECT_EQ(dm.forward(bad).code(), StatusCode::kInvalidArgument);
  bad.top_k = 8;
  bad.top_logits = nullptr;
  EXPECT_EQ(dm.forward(bad).code(), StatusCode::kInvalidArgument);
  bad.top_logits = top_vals.data();
  bad.logits_mode = DeviceLogits::kNone;
  EXPECT_EQ(dm.forward(bad).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(dm.length(0), 20 + 3);
}

// Inputs the device must refuse before touching the cache.
TEST(ModelCudaOptions, RejectsBadTokensAndOverflow) {
  TQ_REQUIRE_GPU();
  auto m = build_model(spec_for(model::Arch::kLlama, quant::GgmlType::kF16, 3));
  ASSERT_TRUE(m);
  auto config = kv_config("tq4", "tq3");
  ASSERT_TRUE(config.ok());
  auto gpu = gpu_model(*m, *config, 16);
  ASSERT_TRUE(gpu.ok()) << gpu.status().to_string();
  std::vector<float> logits(static_cast<size_t>(m->config().vocab_size));
  const int32_t bad = m->config().vocab_size;
  DeviceForwardArgs a;
  a.tokens = &bad;
  a.n = 1;
  a.logits = logits.data();
  EXPECT_EQ((*gpu)->forward(a).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*gpu)->length(0), 0);
  const std::vector<int32_t> many(kCtx + 1, 7);
  a.tokens = many.data();
  a.n = kCtx + 1;
  EXPECT_EQ((*gpu)->forward(a).code(), StatusCode::kResourceExhausted);
  EXPECT_EQ((*gpu)->length(0), 0);
}

}  // namespace
}  // namespace tq::backend
