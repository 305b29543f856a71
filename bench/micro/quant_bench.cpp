// Microbenchmarks of the KV codecs at d = 128: quantize (encode one vector), fused score and
// fused accumulate of nq = 4 query heads (one GQA group) over 16384 stored vectors, with the
// CPU's kernel table. Bytes/s count the packed bytes read (the compressed cache's bandwidth).
//   build-*/tq_microbench --benchmark_filter='Quant'
#include <benchmark/benchmark.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "tq/backend/cpu/tq_kernels.h"
#include "tq/core/rng.h"
#include "tq/quant/codec.h"

namespace {

using namespace tq;

constexpr int kDim = 128;
constexpr int kNq = 4;
constexpr int kCapacity = 256;
constexpr int kVectors = 16384;
const char* const kFormats[] = {"f16", "q8_0", "q4_0", "tq1", "tq2", "tq3", "tq4", "tq8", "tq3j", "tq4j"};

struct Fixture {
  quant::CodebookCache books;
  std::unique_ptr<quant::VectorCodec> codec;
  std::vector<float> keys;
  std::vector<uint8_t> store;
  std::vector<float> states;
  int blocks = kVectors / kCapacity;

  Fixture(const char* name, bool ref) {
    quant::CodecOptions o;
    o.kernels = ref ? &quant::ref_kernel_table() : &backend::cpu::cpu_kernel_table();
    codec = quant::make_codec(*quant::parse_format(name), kDim, o, books).value();
    Rng rng(1);
    keys.resize(static_cast<size_t>(kVectors) * kDim);
    for (auto& v : keys) v = static_cast<float>(rng.normal());
    store.resize(codec->block_bytes(kCapacity) * blocks);
    for (int i = 0; i < kVectors; ++i)
      codec->encode(&keys[static_cast<size_t>(i) * kDim], block(i / kCapacity), kCapacity, i % kCapacity);
    states.resize(static_cast<size_t>(kNq) * codec->query_state_size());
    for (int h = 0; h < kNq; ++h) codec->prepare_query(&keys[h * kDim], &states[h * codec->query_state_size()]);
  }
  uint8_t* block(int b) { return store.data() + codec->block_bytes(kCapacity) * b; }
};

void BM_QuantEncode(benchmark::State& state, const char* name) {
  Fixture f(name, false);
  int i = 0;
  for (auto _ : state) {
    f.codec->encode(&f.keys[static_cast<size_t>(i) * kDim], f.block(i / kCapacity), kCapacity, i % kCapacity);
    i = (i + 1) % kVectors;
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_QuantScore(benchmark::State& state, const char* name, bool ref) {
  Fixture f(name, ref);
  std::vector<float> out(static_cast<size_t>(kNq) * kCapacity);
  for (auto _ : state) {
    for (int b = 0; b < f.blocks; ++b) {
      f.codec->score(f.states.data(), kNq, f.block(b), kCapacity, kCapacity, out.data());
      benchmark::DoNotOptimize(out.data());
    }
  }
  state.SetItemsProcessed(state.iterations() * kVectors);
  state.SetBytesProcessed(state.iterations() * kVectors * static_cast<int64_t>(f.codec->bytes_per_vector()));
}

void BM_QuantAccumulate(benchmark::State& state, const char* name) {
  Fixture f(name, false);
  std::vector<float> w(static_cast<size_t>(kNq) * kCapacity, 0.001f);
  std::vector<float> acc(static_cast<size_t>(kNq) * f.codec->acc_dim(), 0.0f);
  for (auto _ : state) {
    for (int b = 0; b < f.blocks; ++b)
      f.codec->accumulate(w.data(), kNq, f.block(b), kCapacity, kCapacity, acc.data());
    benchmark::DoNotOptimize(acc.data());
  }
  state.SetItemsProcessed(state.iterations() * kVectors);
  state.SetBytesProcessed(state.iterations() * kVectors * static_cast<int64_t>(f.codec->bytes_per_vector()));
}

int register_all() {
  for (const char* name : kFormats) {
    benchmark::RegisterBenchmark((std::string("BM_QuantEncode/") + name).c_str(), BM_QuantEncode, name);
    benchmark::RegisterBenchmark((std::string("BM_QuantScore/") + name).c_str(), BM_QuantScore, name, false)
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark((std::string("BM_QuantAccumulate/") + name).c_str(), BM_QuantAccumulate, name)
        ->Unit(benchmark::kMicrosecond);
  }
  for (const char* name : {"f16", "tq4"})
    benchmark::RegisterBenchmark((std::string("BM_QuantScoreRef/") + name).c_str(), BM_QuantScore, name, true)
        ->Unit(benchmark::kMicrosecond);
  return 0;
}
const int kRegistered = register_all();

}  // namespace
