// matmul throughput per weight type at SmolLM2-135M's shapes (rows x cols):
// 576x576 (attn q/o), 1536x576 (ffn gate/up), 576x1536 (ffn down), 49152x576 (tied output),
// for decode (1 token) and a prefill chunk (64 tokens), on the default thread count.
//   build-X/tq_microbench --benchmark_filter=Matmul
// GB/s counts the weight bytes read once per call; GFLOP/s counts 2 * rows * cols * tokens.
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "tq/backend/cpu/matmul.h"
#include "tq/core/rng.h"
#include "tq/core/thread_pool.h"
#include "tq/quant/weight_quant.h"

namespace {

using tq::quant::GgmlType;

const GgmlType kTypes[] = {GgmlType::kQ4_1, GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kF16,
                           GgmlType::kF32, GgmlType::kQ5_1};
const int64_t kShapes[][2] = {{576, 576}, {1536, 576}, {576, 1536}, {49152, 576}};

void BM_Matmul(benchmark::State& state) {
  const GgmlType type = kTypes[state.range(0)];
  const int64_t rows = kShapes[state.range(1)][0];
  const int64_t cols = kShapes[state.range(1)][1];
  const int n_tokens = static_cast<int>(state.range(2));
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
  std::vector<float> x(static_cast<size_t>(n_tokens * cols)), y(static_cast<size_t>(n_tokens * rows));
  for (float& v : x) v = static_cast<float>(rng.normal());
  tq::ThreadPool pool(tq::default_thread_count());
  const tq::backend::cpu::WeightView view{type, w.data(), rows, cols};
  for (auto _ : state) {
    if (!tq::backend::cpu::matmul(pool, view, x.data(), n_tokens, y.data()).ok()) {
      state.SkipWithError("matmul failed");
      return;
    }
    benchmark::DoNotOptimize(y.data());
  }
  const double iters = static_cast<double>(state.iterations());
  state.counters["GB/s"] = benchmark::Counter(static_cast<double>(w.size()) * iters / 1e9,
                                              benchmark::Counter::kIsRate);
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * rows * cols * n_tokens * iters / 1e9,
                                                 benchmark::Counter::kIsRate);
  state.SetLabel(std::string(tq::quant::ggml_type_traits(static_cast<uint32_t>(type))->name) +
                 " " + std::to_string(rows) + "x" + std::to_string(cols) + " t" +
                 std::to_string(n_tokens));
}

BENCHMARK(BM_Matmul)
    ->ArgNames({"type", "shape", "tokens"})
    ->ArgsProduct({{0, 1, 2, 3, 4, 5}, {0, 1, 2, 3}, {1, 64}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

}  // namespace
