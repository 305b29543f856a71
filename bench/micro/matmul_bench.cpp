// matmul throughput per weight type at SmolLM2-135M's shapes (rows x cols):
// 576x576 (attn q/o), 1536x576 (ffn gate/up), 576x1536 (ffn down), 49152x576 (tied output),
// for decode (1 token) and a prefill chunk (64 tokens), on 1 and 2 threads.
//   build-X/tq_microbench --benchmark_filter=Matmul
// GB/s counts the weight bytes read once per call; GFLOP/s counts 2 * rows * cols * tokens.
// "GB/s" and "GFLOP/s" use wall time; "cpu_GFLOP/s" uses the calling thread's CPU time, which
// for threads:1 is the kernel's own speed even on a shared, loaded box.
#include <benchmark/benchmark.h>

#include <chrono>
#include <string>
#include <vector>

#include "tq/backend/cpu/matmul.h"
#include "tq/core/rng.h"
#include "tq/core/thread_pool.h"
#include "tq/quant/weight_quant.h"

namespace {

using tq::quant::GgmlType;

const GgmlType kTypes[] = {GgmlType::kQ4_1, GgmlType::kQ8_0, GgmlType::kQ4_0,
                           GgmlType::kF16,  GgmlType::kF32,  GgmlType::kQ5_1};
const int64_t kShapes[][2] = {{576, 576}, {1536, 576}, {576, 1536}, {49152, 576}};

void BM_Matmul(benchmark::State& state) {
  const GgmlType type = kTypes[state.range(0)];
  const int64_t rows = kShapes[state.range(1)][0];
  const int64_t cols = kShapes[state.range(1)][1];
  const int n_tokens = static_cast<int>(state.range(2));
  const int n_threads = static_cast<int>(state.range(3));
  const size_t row_bytes = tq::quant::ggml_row_bytes(type, cols);
  std::vector<uint8_t> w(row_bytes * rows);
  tq::Rng rng(1);
  std::vector<float> row(cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (float& v : row) v = static_cast<float>(rng.normal() * 0.05);
    if (!tq::quant::quantize_row_ref(type, row.data(), w.data() + r * row_bytes, cols).ok()) {
      state.SkipWithError("quantize failed");
      return;
    }
  }
  std::vector<float> x(static_cast<size_t>(n_tokens * cols)),
      y(static_cast<size_t>(n_tokens * rows));
  for (float& v : x) v = static_cast<float>(rng.normal());
  tq::ThreadPool pool(n_threads);
  const tq::backend::cpu::WeightView view{type, w.data(), rows, cols};
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    if (!tq::backend::cpu::matmul(pool, view, x.data(), n_tokens, y.data()).ok()) {
      state.SkipWithError("matmul failed");
      return;
    }
    benchmark::DoNotOptimize(y.data());
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double iters = static_cast<double>(state.iterations());
  const double gflop = 2.0 * rows * cols * n_tokens * iters / 1e9;
  state.counters["GB/s"] = static_cast<double>(w.size()) * iters / 1e9 / wall;
  state.counters["GFLOP/s"] = gflop / wall;
  state.counters["cpu_GFLOP/s"] = benchmark::Counter(gflop, benchmark::Counter::kIsRate);
  state.SetLabel(std::string(tq::quant::ggml_type_traits(static_cast<uint32_t>(type))->name) + " " +
                 std::to_string(rows) + "x" + std::to_string(cols) + " t" +
                 std::to_string(n_tokens) + " thr" + std::to_string(n_threads));
}

BENCHMARK(BM_Matmul)
    ->ArgNames({"type", "shape", "tokens", "threads"})
    ->ArgsProduct({{0, 1, 2, 3, 4, 5}, {0, 1, 2, 3}, {1, 64}, {1, 2}})
    ->Unit(benchmark::kMicrosecond);

}  // namespace
