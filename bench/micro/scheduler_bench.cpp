// Continuous-batching decode throughput: N concurrent greedy requests (P-token prompts, none
// shared, 64 generated tokens each) through runtime::Scheduler on the default model
// (SmolLM2-135M Q4_1, $TQ_MODEL or ~/.cache/tq/models) with a paged tq4/tq3 KV cache.
//   build-X/tq_microbench --benchmark_filter=SchedulerDecode
// "tok/s" counts generated tokens of all requests over the wall time of the whole batch
// (prompt prefill included: with P = 16 it is dominated by decode steps; P = 512 shows decode
// at a longer context, where attention weighs more).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "tq/backend/cpu/tq_kernels.h"
#include "tq/kv/kv_bytes.h"
#include "tq/kv/paged_kv.h"
#include "tq/model/llama.h"
#include "tq/quant/format.h"
#include "tq/runtime/scheduler.h"

namespace {

constexpr int kGenTokens = 64;

const tq::model::Model* bench_model() {
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

void BM_SchedulerDecode(benchmark::State& state) {
  const tq::model::Model* m = bench_model();
  if (m == nullptr) {
    state.SkipWithError("default model not found (set TQ_MODEL)");
    return;
  }
  const int sessions = static_cast<int>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  const int prompt_tokens = static_cast<int>(state.range(2));
  tq::kv::PagedKvCacheOptions o;
  o.shape = m->attention_shape();
  o.config.k_format = tq::quant::parse_format("tq4").value();
  o.config.v_format = tq::quant::parse_format("tq3").value();
  auto blocks = tq::kv::kv_block_bytes(o.config, o.shape);
  size_t page = 0;
  for (size_t b : blocks.value()) page += b;
  const int context = prompt_tokens + kGenTokens + 16;
  o.pool_bytes = page * static_cast<size_t>(context / o.config.block_tokens + 1) *
                 static_cast<size_t>(sessions);
  o.kernels = &tq::backend::cpu::cpu_kernel_table();
  auto cache = tq::kv::PagedKvCache::create(o);
  if (!cache.ok()) {
    state.SkipWithError(cache.status().to_string().c_str());
    return;
  }
  tq::ThreadPool pool(threads);
  tq::runtime::SchedulerOptions so;
  so.max_sessions = sessions;
  so.context = context;
  so.step_tokens = std::max(256, sessions);

  int64_t generated = 0;
  double wall = 0.0;
  for (auto _ : state) {
    auto sched = tq::runtime::Scheduler::create(*m, **cache, pool, so);
    if (!sched.ok()) {
      state.SkipWithError(sched.status().to_string().c_str());
      return;
    }
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::shared_ptr<tq::runtime::RequestChannel>> channels;
    for (int i = 0; i < sessions; ++i) {
      tq::runtime::GenerationRequest r;
      for (int t = 0; t < prompt_tokens; ++t) r.prompt.push_back(1000 + 37 * i + 5 * (t % 3000));
      r.max_tokens = kGenTokens;
      r.stop_at_eog = false;
      r.sampler.temperature = 0.0f;
      auto ch = (*sched)->submit(std::move(r));
      if (!ch.ok()) {
        state.SkipWithError(ch.status().to_string().c_str());
        return;
      }
      channels.push_back(std::move(ch).value());
    }
    std::vector<tq::runtime::StreamEvent> events;
    for (auto& ch : channels)
      while (!ch->done()) ch->pop_all(events, std::chrono::milliseconds(100));
    wall += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    generated += (*sched)->stats().generated_tokens;
  }
  state.counters["tok/s"] = static_cast<double>(generated) / wall;
  state.counters["sessions"] = sessions;
}

BENCHMARK(BM_SchedulerDecode)
    ->ArgNames({"sessions", "threads", "prompt"})
    ->ArgsProduct({{1, 4, 8, 16}, {2}, {16}})
    ->Args({1, 2, 512})
    ->Args({8, 2, 512})
    ->Iterations(2)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
