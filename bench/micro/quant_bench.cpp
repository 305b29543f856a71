// Microbenchmarks of the KV codecs: quantize (encode one vector, d = 128), and the fused
// attention primitives over 16384 stored vectors in blocks of 32 slots (the paged cache's
// default block): score of nq query heads (one GQA group), accumulate of nq weight rows, and
// attend = score a K block then accumulate a V block of the same format (one decode step's
// work per block). Each runs with the float AVX2 table ("avx2", the kernels before the integer
// ones) and with the CPU's fastest table ("cpu": avxvnni-int8 etc.), so ratios measured in the
// same run compare them. Bytes/s count the packed bytes read (the compressed cache's bandwidth).
//   build-*/tq_microbench --benchmark_filter='Quant'
//   names: BM_QuantScore/<format>/d<dim>/nq<heads>/<table>
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

constexpr int kCapacity = 32;
constexpr int kVectors = 16384;
constexpr int kEncodeDim = 128;

enum class Table { kRef, kAvx2, kCpu };

const quant::KernelTable* table_of(Table t) {
  switch (t) {
    case Table::kRef:
      return &quant::ref_kernel_table();
    case Table::kAvx2:
      return backend::cpu::avx2_kernel_table();
    case Table::kCpu:
      return &backend::cpu::cpu_kernel_table();
  }
  return nullptr;
}

struct Fixture {
  int dim, nq;
  quant::CodebookCache books;
  std::unique_ptr<quant::VectorCodec> codec;
  std::vector<float> keys;
  std::vector<uint8_t> store;  // K blocks, then (attend) V blocks
  std::vector<float> states;
  int blocks = kVectors / kCapacity;

  Fixture(const char* name, int d, int heads, const quant::KernelTable* table) : dim(d), nq(heads) {
    quant::CodecOptions o;
    o.kernels = table;
    codec = quant::make_codec(*quant::parse_format(name), dim, o, books).value();
    Rng rng(1);
    keys.resize(static_cast<size_t>(kVectors) * dim);
    for (auto& v : keys) v = static_cast<float>(rng.normal());
    store.resize(codec->block_bytes(kCapacity) * blocks * 2);
    for (int i = 0; i < 2 * kVectors; ++i)
      codec->encode(&keys[static_cast<size_t>(i % kVectors) * dim], block(i / kCapacity), kCapacity,
                    i % kCapacity);
    states.resize(static_cast<size_t>(nq) * codec->query_state_size());
    for (int h = 0; h < nq; ++h)
      codec->prepare_query(&keys[static_cast<size_t>(h) * dim],
                           &states[h * codec->query_state_size()]);
  }
  uint8_t* block(int b) { return store.data() + codec->block_bytes(kCapacity) * b; }
  void count(benchmark::State& state, int passes) const {
    state.SetItemsProcessed(state.iterations() * kVectors * passes);
    state.SetBytesProcessed(state.iterations() * kVectors * passes *
                            static_cast<int64_t>(codec->bytes_per_vector()));
  }
};

void BM_QuantEncode(benchmark::State& state, const char* name) {
  Fixture f(name, kEncodeDim, 1, &backend::cpu::cpu_kernel_table());
  int i = 0;
  for (auto _ : state) {
    f.codec->encode(&f.keys[static_cast<size_t>(i) * kEncodeDim], f.block(i / kCapacity), kCapacity,
                    i % kCapacity);
    i = (i + 1) % kVectors;
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_QuantScore(benchmark::State& state, const char* name, int d, int nq, Table t) {
  Fixture f(name, d, nq, table_of(t));
  std::vector<float> out(static_cast<size_t>(nq) * kCapacity);
  for (auto _ : state) {
    for (int b = 0; b < f.blocks; ++b) {
      f.codec->score(f.states.data(), nq, f.block(b), kCapacity, kCapacity, out.data());
      benchmark::DoNotOptimize(out.data());
    }
  }
  f.count(state, 1);
}

void BM_QuantAccumulate(benchmark::State& state, const char* name, int d, int nq, Table t) {
  Fixture f(name, d, nq, table_of(t));
  std::vector<float> w(static_cast<size_t>(nq) * kCapacity, 0.001f);
  std::vector<float> acc(static_cast<size_t>(nq) * f.codec->acc_dim(), 0.0f);
  for (auto _ : state) {
    for (int b = 0; b < f.blocks; ++b)
      f.codec->accumulate(w.data(), nq, f.block(b), kCapacity, kCapacity, acc.data());
    benchmark::DoNotOptimize(acc.data());
  }
  f.count(state, 1);
}

// Score a K block, turn the scores into weights (an affine map, so that the softmax exp does not
// dominate the kernels being measured), accumulate the V
// block: items = K/V vector pairs.
void BM_QuantAttend(benchmark::State& state, const char* name, int d, int nq, Table t) {
  Fixture f(name, d, nq, table_of(t));
  std::vector<float> s(static_cast<size_t>(nq) * kCapacity);
  std::vector<float> acc(static_cast<size_t>(nq) * f.codec->acc_dim(), 0.0f);
  for (auto _ : state) {
    for (int b = 0; b < f.blocks; ++b) {
      f.codec->score(f.states.data(), nq, f.block(b), kCapacity, kCapacity, s.data());
      for (float& v : s) v = 1.0f + 0.01f * v;  // a cheap stand-in for exp: kernels only
      f.codec->accumulate(s.data(), nq, f.block(f.blocks + b), kCapacity, kCapacity, acc.data());
    }
    benchmark::DoNotOptimize(acc.data());
  }
  f.count(state, 2);
  state.SetItemsProcessed(state.iterations() * kVectors);
}

int register_all() {
  for (const char* name :
       {"f16", "q8_0", "q4_0", "tq1", "tq2", "tq3", "tq4", "tq8", "tq3j", "tq4j"})
    benchmark::RegisterBenchmark((std::string("BM_QuantEncode/") + name).c_str(), BM_QuantEncode,
                                 name);
  const bool avx2 = backend::cpu::avx2_kernel_table() != nullptr;
  for (const char* name : {"f16", "q8_0", "q4_0", "tq4", "tq3", "tq2", "tq3j"}) {
    for (int d : {64, 128}) {
      for (int nq : {3, 4}) {
        for (Table t : {Table::kAvx2, Table::kCpu}) {
          if (t == Table::kAvx2 && !avx2) continue;
          const std::string suffix = std::string("/") + name + "/d" + std::to_string(d) + "/nq" +
                                     std::to_string(nq) + (t == Table::kAvx2 ? "/avx2" : "/cpu");
          benchmark::RegisterBenchmark(("BM_QuantScore" + suffix).c_str(), BM_QuantScore, name, d,
                                       nq, t)
              ->Unit(benchmark::kMicrosecond);
          benchmark::RegisterBenchmark(("BM_QuantAccumulate" + suffix).c_str(), BM_QuantAccumulate,
                                       name, d, nq, t)
              ->Unit(benchmark::kMicrosecond);
          benchmark::RegisterBenchmark(("BM_QuantAttend" + suffix).c_str(), BM_QuantAttend, name, d,
                                       nq, t)
              ->Unit(benchmark::kMicrosecond);
        }
      }
    }
  }
  for (const char* name : {"f16", "tq4"})
    benchmark::RegisterBenchmark((std::string("BM_QuantScoreRef/") + name + "/d128/nq4").c_str(),
                                 BM_QuantScore, name, 128, 4, Table::kRef)
        ->Unit(benchmark::kMicrosecond);
  return 0;
}
const int kRegistered = register_all();

}  // namespace
