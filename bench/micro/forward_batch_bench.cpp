// One decode step of N sequences on the default model (SmolLM2-135M Q4_1, $TQ_MODEL or
// ~/.cache/tq/models) with a paged tq4/tq3 KV cache holding `context` tokens per sequence:
// N Model::forward calls (one weight stream per sequence, what the scheduler did before
// forward_batch) against one Model::forward_batch (one weight stream per step).
//   build-X/tq_microbench --benchmark_filter=DecodeStep
// "tok/s" = N tokens per step over the wall time of a step. On a shared, loaded box prefer
// threads:1 and the CPU column (all work on the calling thread, so CPU time is the work).
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "tq/backend/cpu/tq_kernels.h"
#include "tq/kv/kv_bytes.h"
#include "tq/kv/paged_kv.h"
#include "tq/model/llama.h"
#include "tq/quant/format.h"

namespace {

constexpr int kSteps = 24;  // decode steps timed per run (the contexts grow by this much)

const tq::model::Model* decode_model() {
  static std::unique_ptr<tq::model::Model> model = [] {
    std::string path;
    if (const char* p = std::getenv("TQ_MODEL"); p && *p) {
      path = p;
    } else {
      const char* home = std::getenv("HOME");
      path = std::string(home ? home : ".") + "/.cache/tq/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    }
    auto m = tq::model::Model::load(path);
    return m.ok() ? std::move(m).value() : nullptr;
  }();
  return model.get();
}

void BM_DecodeStep(benchmark::State& state) {
  const tq::model::Model* m = decode_model();
  if (m == nullptr) {
    state.SkipWithError("default model not found (set TQ_MODEL)");
    return;
  }
  const int n_seq = static_cast<int>(state.range(0));
  const int context = static_cast<int>(state.range(1));
  const bool batched = state.range(2) != 0;
  const int threads = static_cast<int>(state.range(3));
  const int vocab = m->config().vocab_size;

  tq::kv::PagedKvCacheOptions o;
  o.shape = m->attention_shape();
  o.config.k_format = tq::quant::parse_format("tq4").value();
  o.config.v_format = tq::quant::parse_format("tq3").value();
  o.prefix_caching = false;
  const auto blocks = tq::kv::kv_block_bytes(o.config, o.shape);
  size_t page = 0;
  for (size_t b : blocks.value()) page += b;
  const int capacity = context + kSteps + 1;
  o.pool_bytes =
      page * static_cast<size_t>(capacity / o.config.block_tokens + 2) * static_cast<size_t>(n_seq);
  o.kernels = &tq::backend::cpu::cpu_kernel_table();
  auto cache = tq::kv::PagedKvCache::create(o);
  if (!cache.ok()) {
    state.SkipWithError(cache.status().to_string().c_str());
    return;
  }
  tq::ThreadPool pool(threads);
  tq::model::ForwardScratch scratch;
  std::vector<std::unique_ptr<tq::kv::PagedKv>> seqs;
  std::vector<int32_t> prompt(static_cast<size_t>(context));
  for (int s = 0; s < n_seq; ++s) {
    seqs.push_back(std::move((*cache)->new_sequence(capacity)).value());
    for (int t = 0; t < context; ++t)
      prompt[static_cast<size_t>(t)] = 1000 + 37 * s + 5 * (t % 3000);
    tq::model::ForwardArgs a{prompt.data(), context,  seqs.back().get(),
                             &pool,         &scratch, tq::model::LogitsMode::kNone,
                             nullptr};
    if (!m->forward(a).ok()) {
      state.SkipWithError("prefill failed");
      return;
    }
  }
  std::vector<float> logits(static_cast<size_t>(n_seq) * vocab);
  std::vector<int32_t> next(static_cast<size_t>(n_seq), 42);
  std::vector<tq::model::BatchSequence> items;
  for (int s = 0; s < n_seq; ++s)
    items.push_back({&next[static_cast<size_t>(s)], 1, seqs[static_cast<size_t>(s)].get(),
                     tq::model::LogitsMode::kLast, logits.data() + static_cast<size_t>(s) * vocab});
  for (auto _ : state) {
    tq::Status st;
    if (batched) {
      st = m->forward_batch(items, pool, scratch);
    } else {
      for (const auto& it : items) {
        st = m->forward({it.tokens, 1, it.kv, &pool, &scratch, it.logits_mode, it.logits});
        if (!st.ok()) break;
      }
    }
    if (!st.ok()) {
      state.SkipWithError(st.to_string().c_str());
      return;
    }
    benchmark::DoNotOptimize(logits.data());
  }
  state.counters["tok/s"] =
      benchmark::Counter(static_cast<double>(n_seq) * static_cast<double>(state.iterations()),
                         benchmark::Counter::kIsRate);
}

BENCHMARK(BM_DecodeStep)
    ->ArgNames({"seqs", "context", "batched", "threads"})
    ->ArgsProduct({{1, 4, 8, 16}, {16}, {0, 1}, {1, 2}})
    ->ArgsProduct({{1, 8}, {512}, {0, 1}, {1, 2}})
    ->Iterations(kSteps)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
