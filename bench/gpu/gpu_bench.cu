// tq_gpu_bench: decode attention over the paged KV cache (Llama-3-8B shape: 32 query heads,
// 8 KV heads, head_dim 128) per context length, batch and K/V format, and quantize-on-write.
// Reports time per call (CUDA events, warm-up, L2 flushed before every rep, median), the bytes
// the call must read (K/V pages as stored + query/partials), achieved GB/s, the fraction of the
// measured device-to-device copy bandwidth (bytes read + written), and the speedup over tq's
// own f16 kernel. Writes CSV files into --out.
// Quantize-on-write, old (WriteKernel::kLegacy, CPU-order float64) vs new (the float32 team
// kernel for bulk writes, the warp kernel for decode writes), in one run:
// - bulk: 65536 tokens x 8 KV heads x 128 from fp16 (write_bench.csv: new, write_bench_legacy.csv);
// - decode: one token x 8 KV heads x 128, K and V, from fp32 as the model writes them, into 32
//   layers' distinct pools, 32 back-to-back layer writes timed per layer (write_decode.csv): old
//   (2 legacy launches per layer), new separate (2 warp-kernel launches), new fused
//   (quantize_write_kv: 1 launch), on a stream and as a CUDA graph (GPU time without the CPU's
//   launch cost).
//
//   tq_gpu_bench --out DIR [--contexts 1024,4096] [--batches 1,8] [--formats tq4/tq4,f16/f16]
//                [--reps 20] [--write 0|1] [--write-input f16|f32] [--attention 0|1] [--gemv 0|1]
//                [--flush write|read] [--max-splits N] [--pdl 0|1] [--ragged 0|1]
//                [--by-length 0|1] [--fused-merge 0|1]
// --flush: how the L2 is evicted before each rep (see flush_l2; read by default, write the memset
// of the tables before session 38); --max-splits: cap the split-K
// plan (1: one CTA per sequence and KV head, the plan before session 16 at batch >= 32);
// --pdl 1: the attention and merge kernels launched with programmatic dependence, as the model's
// decode step launches them; --ragged 1: mixed lengths, sequence b holding context * (b % 8 + 1)
// / 8 tokens (a batch of sessions at different depths), bytes counted over the tokens held;
// --by-length 0: every sequence cut as the longest (the plan before session 18; 1, the default,
// shares the CTAs by length: "splits x tokens" then shows the longest's plan, marked L, whose
// CTA count the batch shares); --fused-merge 0: the merge kernel after the attention kernel (1,
// the default: the attention CTA that ends a (sequence, KV head)'s splits merges its rows, as
// DecodeAttentionParams::merge_counters lets it; "splits x tokens" then ends in F).
// Built with -DTQ_ATTN_TIMELINE (a diagnostic build), one more call per cell stamps every CTA
// (decode_attention.cuh, TQ_TL) and prints a `timeline` line: launch spread, prologue, loop,
// epilogue and end times of the CTAs (median, extremes), and the merge's.
// --gemv 1 (default): the quantized-weight GEMV section (gemv_bench.cu) first.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "gemv_bench.h"
#include "tq/backend/cuda/device_tables.h"
#include "tq/backend/cuda/kv_cuda.h"
#include "tq/core/rng.h"
#include "tq/quant/codebook.h"
#include "tq/quant/format.h"

namespace {

using namespace tq;
using namespace tq::backend::cuda;

#define CK(expr)                                                                                  \
  do {                                                                                            \
    const cudaError_t e_ = (expr);                                                                \
    if (e_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)
#define ST(expr)                                                                                  \
  do {                                                                                            \
    const ::tq::Status s_ = (expr);                                                               \
    if (!s_.ok()) {                                                                               \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, s_.to_string().c_str()); \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)

constexpr int kHeads = 32, kKvHeads = 8, kDim = 128, kCap = 32;
constexpr uint64_t kSeed = 0xbe4c0006u;

// Roughly normal fp16 values (sum of uniforms from a hash), outlier channels on keys.
template <class T>
__global__ void random_kv_kernel(T* x, size_t n, uint64_t seed, float outlier) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint64_t h = (i + 1) * 0x9e3779b97f4a7c15ull ^ seed;
    h ^= h >> 31;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 29;
    const float u =
        ((h & 0xffff) + ((h >> 16) & 0xffff) + ((h >> 32) & 0xffff) + ((h >> 48) & 0xffff)) /
            65536.0f -
        2.0f;
    const int j = static_cast<int>(i % kDim);
    const float v = u * 1.7f * ((j == 3 || j == 85) ? outlier : 1.0f);
    if constexpr (std::is_same_v<T, float>) {
      x[i] = __half2float(__float2half_rn(v));  // the same values as the fp16 rows
    } else {
      x[i] = __float2half_rn(v);
    }
  }
}

// Slots of the flattened (sequence, token) indices t0 .. t0 + n - 1.
__global__ void slots_kernel(int32_t* slots, int n, long long t0, const int32_t* table,
                             int blocks_per_seq, int len) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const long long gi = t0 + i;
  const int seq = static_cast<int>(gi / len), t = static_cast<int>(gi % len);
  slots[i] = table[seq * blocks_per_seq + t / kCap] * kCap + t % kCap;
}

std::vector<int> parse_ints(const char* s) {
  std::vector<int> v;
  for (const char* p = s; *p;) {
    v.push_back(std::atoi(p));
    while (*p && *p != ',') ++p;
    if (*p) ++p;
  }
  return v;
}
std::vector<std::string> parse_list(const char* s) {
  std::vector<std::string> v;
  std::string cur;
  for (const char* p = s;; ++p) {
    if (*p == ',' || !*p) {
      if (!cur.empty()) v.push_back(cur);
      cur.clear();
      if (!*p) break;
    } else {
      cur += *p;
    }
  }
  return v;
}

struct Timer {
  cudaEvent_t a, b;
  Timer() {
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
  }
  ~Timer() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
};

// How the L2 is evicted before each rep (--flush). read (the default since session 38): a kernel
// reads the buffer; the L2 is left holding clean lines, as a decode step leaves it before the
// attention (its weight GEMVs read, the K/V write stores one token). write: a memset of the
// buffer, as triton's do_bench and nvbench do; the L2 is left full of dirty lines (up to its 50
// MB on an H100/H200), whose write-back the timed call pays while it reads: bytes the "bytes
// read" column does not count. The attention kernel's time inside the model's decode step (ncu,
// caches as the step leaves them; docs/benchmarks.md, session 38) lies near the read flush's
// (109.6 against 108.6 us at 32k batch 8 tq4/tq4 on an H100; the write flush's 116.5).
bool g_flush_read = true;

// Reads n 16-byte words; writes only if their XOR hits a value it never does (the loads stay).
__global__ void read_flush_kernel(const uint4* p, size_t n, uint32_t* sink) {
  uint32_t x = 0;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const uint4 v = p[i];
    x ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (x == 0x9e3779b9u) *sink = x;
}

void flush_l2(void* flush, size_t flush_bytes, int rep) {
  if (g_flush_read) {
    // The buffer's last 16 bytes are the sink (never written: see the kernel).
    const size_t n = flush_bytes / 16 - 1;
    read_flush_kernel<<<1024, 256>>>(
        static_cast<const uint4*>(flush), n,
        reinterpret_cast<uint32_t*>(static_cast<uint8_t*>(flush) + n * 16));
    CK(cudaGetLastError());
  } else {
    CK(cudaMemsetAsync(flush, rep & 0xff, flush_bytes));
  }
}

// Median time (ms) of fn over reps, with `flush` (L2 eviction, g_flush_read) before every rep.
template <typename Fn>
double time_median(Fn&& fn, int reps, void* flush, size_t flush_bytes) {
  Timer t;
  for (int i = 0; i < 3; ++i) fn();  // warm-up
  CK(cudaDeviceSynchronize());
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    flush_l2(flush, flush_bytes, r);
    CK(cudaEventRecord(t.a));
    fn();
    CK(cudaEventRecord(t.b));
    CK(cudaEventSynchronize(t.b));
    float x = 0;
    CK(cudaEventElapsedTime(&x, t.a, t.b));
    ms.push_back(x);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

#ifdef TQ_ATTN_TIMELINE
}  // namespace
namespace tq::backend::cuda {
extern unsigned long long* g_attn_timeline;
}
namespace {
double pct(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[static_cast<size_t>(q * static_cast<double>(v.size() - 1))];
}
// One more call with every CTA's %globaltimer stamps: where the call's time goes (us from the
// first CTA's start).
template <typename Fn>
void timeline_report(Fn&& fn, size_t ctas, size_t merges, void* flush, size_t flush_bytes,
                     const std::string& label, double event_us) {
  unsigned long long* d = nullptr;
  const size_t n = ctas * 10 + merges * 2;
  CK(cudaMalloc(&d, n * 8));
  CK(cudaMemset(d, 0, n * 8));
  tq::backend::cuda::g_attn_timeline = d;
  flush_l2(flush, flush_bytes, 1);
  fn();
  CK(cudaDeviceSynchronize());
  tq::backend::cuda::g_attn_timeline = nullptr;
  std::vector<unsigned long long> h(n);
  CK(cudaMemcpy(h.data(), d, n * 8, cudaMemcpyDeviceToHost));
  CK(cudaFree(d));
  unsigned long long t0 = ~0ull;
  for (size_t c = 0; c < ctas; ++c) t0 = std::min(t0, h[c * 10]);
  const auto us = [&](unsigned long long t) { return (static_cast<double>(t) - t0) * 1e-3; };
  std::vector<double> start, pre, pro, loop, epi, end, mstart, mend;
  for (size_t c = 0; c < ctas; ++c) {
    const unsigned long long* r = &h[c * 10];
    if (r[7] == 0) continue;  // a CTA with no tokens (empty split, past the batch's splits)
    const unsigned long long last = std::max({r[3], r[4], r[5], r[6]});
    start.push_back(us(r[0]));
    pre.push_back(static_cast<double>(r[1] - r[0]) * 1e-3);
    pro.push_back(static_cast<double>(r[2] - r[0]) * 1e-3);
    loop.push_back(static_cast<double>(last - r[2]) * 1e-3);
    epi.push_back(static_cast<double>(r[7] - last) * 1e-3);
    end.push_back(us(r[7]));
  }
  // Where the CTAs ran (stamp 8: %smid), in launch order (x fastest): how many a SM held, and
  // whether CTA c shared the SM of CTA c - n_sm (the blocks dealt round the SMs in turn).
  std::vector<int> per_sm;
  size_t dealt = 0, dealt_of = 0;
  for (size_t c = 0; c < ctas; ++c) {
    if (h[c * 10 + 7] == 0) continue;
    const size_t sm = h[c * 10 + 8];
    if (sm >= per_sm.size()) per_sm.resize(sm + 1, 0);
    ++per_sm[sm];
  }
  const size_t n_sm = per_sm.size();
  for (size_t c = n_sm; c < ctas; ++c) {
    if (h[c * 10 + 7] == 0 || h[(c - n_sm) * 10 + 7] == 0) continue;
    ++dealt_of;
    if (h[c * 10 + 8] == h[(c - n_sm) * 10 + 8]) ++dealt;
  }
  const auto [lo, hi] = std::minmax_element(per_sm.begin(), per_sm.end());
  for (size_t m = 0; m < merges; ++m) {
    if (h[ctas * 10 + 2 * m] == 0)
      continue;  // (the merge in the attention kernel: no merge kernel)
    mstart.push_back(us(h[ctas * 10 + 2 * m]));
    mend.push_back(us(h[ctas * 10 + 2 * m + 1]));
  }
  std::printf(
      "timeline %s: %zu CTAs, event %.1f us | start max %.1f | "
      "prologue med %.1f (to pdl_wait %.1f) | loop min %.1f med %.1f max %.1f | "
      "epilogue med %.1f | end min %.1f med %.1f max %.1f | merge %.1f..%.1f | "
      "%zu SMs, %d..%d CTAs an SM, %zu of %zu on the SM of CTA c - %zu\n",
      label.c_str(), ctas, event_us, pct(start, 1), pct(pro, 0.5), pct(pre, 0.5), pct(loop, 0),
      pct(loop, 0.5), pct(loop, 1), pct(epi, 0.5), pct(end, 0), pct(end, 0.5), pct(end, 1),
      mstart.empty() ? 0.0 : pct(mstart, 0), mend.empty() ? 0.0 : pct(mend, 1), n_sm,
      per_sm.empty() ? 0 : *lo, per_sm.empty() ? 0 : *hi, dealt, dealt_of, n_sm);
}
#endif

struct PoolSet {
  PagedPool k, v;
  std::unique_ptr<DeviceCodecTables> kt, vt;
};

// Fills one pool with `tokens` random vectors per sequence through the write kernel.
void fill_pool(PagedPool& pool, const int32_t* d_table, int batch, int len, int blocks_per_seq,
               __half* scratch, size_t scratch_tokens, int32_t* d_slots, uint64_t seed,
               float outlier) {
  const long long total = static_cast<long long>(batch) * len;
  for (long long t0 = 0; t0 < total; t0 += static_cast<long long>(scratch_tokens)) {
    const int n = static_cast<int>(std::min<long long>(scratch_tokens, total - t0));
    random_kv_kernel<<<1024, 256>>>(scratch, static_cast<size_t>(n) * kKvHeads * kDim, seed + t0,
                                    outlier);
    CK(cudaGetLastError());
    slots_kernel<<<(n + 255) / 256, 256>>>(d_slots, n, t0, d_table, blocks_per_seq, len);
    CK(cudaGetLastError());
    QuantizeWriteParams w;
    w.pool = pool;
    w.x = scratch;
    w.x_is_f16 = true;
    w.tokens = n;
    w.slot_mapping = d_slots;
    ST(quantize_write(w, nullptr));
  }
  CK(cudaDeviceSynchronize());
}

// Decode-shape quantize-on-write: one token x kKvHeads x kDim for K and V (fp32 input, as the
// model writes them) into each of kLayers layers' own pools, timed as kLayers back-to-back layer
// writes (L2 flushed before each rep), per layer.
void decode_write_bench(const std::string& out_dir, const char* device, quant::CodebookCache& books,
                        int reps, void* flush, size_t flush_bytes) {
  constexpr int kLayers = 32, kBlocks = 64;  // 2048 tokens of context per layer pool
  FILE* csv = std::fopen((out_dir + "/write_decode.csv").c_str(), "w");
  std::fprintf(csv,
               "device,kv,variant,launches_per_layer,stream_us_per_layer,graph_us_per_layer\n");
  std::printf(
      "\n## Quantize-on-write, decode shape: 1 token x %d KV heads x %d, K and V, fp32 in, %d "
      "layers' pools\n\n"
      "us per layer (%d back-to-back layer writes / %d); stream = launched from the host each rep, "
      "graph = "
      "the same launches replayed as one CUDA graph.\n\n"
      "| K/V | variant | launches/layer | stream (us/layer) | graph (us/layer) "
      "|\n|---|---|---|---|---|\n",
      kKvHeads, kDim, kLayers, kLayers, kLayers);
  cudaStream_t stream = nullptr;
  CK(cudaStreamCreate(&stream));  // blocking: events on the legacy stream bracket its work
  float *xk = nullptr, *xv = nullptr;
  int32_t* slot = nullptr;
  CK(cudaMalloc(&xk, kKvHeads * kDim * sizeof(float)));
  CK(cudaMalloc(&xv, kKvHeads * kDim * sizeof(float)));
  CK(cudaMalloc(&slot, sizeof(int32_t)));
  {
    std::vector<float> h(kKvHeads * kDim);
    Rng rng(kSeed + 9);
    for (size_t i = 0; i < h.size(); ++i)
      h[i] = static_cast<float>(rng.normal()) * ((i % kDim == 3) ? 10.0f : 1.0f);
    CK(cudaMemcpy(xk, h.data(), h.size() * 4, cudaMemcpyHostToDevice));
    for (float& e : h) e *= 0.5f;
    CK(cudaMemcpy(xv, h.data(), h.size() * 4, cudaMemcpyHostToDevice));
    const int32_t s = 37 * kCap + 5;  // block 37, slot 5
    CK(cudaMemcpy(slot, &s, 4, cudaMemcpyHostToDevice));
  }
  for (const char* kv : {"tq4/tq4", "tq4/tq3", "tq3/tq3", "f16/f16"}) {
    const std::string pair = kv;
    const quant::Format kf = *quant::parse_format(pair.substr(0, pair.find('/')));
    const quant::Format vf = *quant::parse_format(pair.substr(pair.find('/') + 1));
    std::vector<std::unique_ptr<DeviceCodecTables>> tables;
    std::vector<QuantizeWriteParams> wk(kLayers), wv(kLayers);
    for (int l = 0; l < kLayers; ++l) {
      for (const bool is_v : {false, true}) {
        const quant::Format f = is_v ? vf : kf;
        auto t = DeviceCodecTables::create(f, kDim, derive_seed(kSeed, 100 + l), books);
        ST(t.status());
        tables.push_back(std::make_unique<DeviceCodecTables>(std::move(*t)));
        QuantizeWriteParams& w = is_v ? wv[l] : wk[l];
        w.pool.format = f;
        w.pool.head_dim = kDim;
        w.pool.block_tokens = kCap;
        w.pool.n_kv_heads = kKvHeads;
        w.pool.norm_correction = true;
        w.pool.tables = tables.back()->view();
        CK(cudaMalloc(&w.pool.data, w.pool.block_stride_or_default() * kBlocks));
        w.x = is_v ? xv : xk;
        w.slot_mapping = slot;
        w.tokens = 1;
      }
    }
    struct Variant {
      const char* name;
      WriteKernel kernel;
      bool fused;
    };
    for (const Variant var : {Variant{"old (legacy)", WriteKernel::kLegacy, false},
                              Variant{"new, K and V apart", WriteKernel::kWarp, false},
                              Variant{"new, fused", WriteKernel::kWarp, true}}) {
      const auto layers = [&] {
        for (int l = 0; l < kLayers; ++l) {
          wk[l].kernel = wv[l].kernel = var.kernel;
          if (var.fused) {
            ST(quantize_write_kv(wk[l], wv[l], stream));
          } else {
            ST(quantize_write(wk[l], stream));
            ST(quantize_write(wv[l], stream));
          }
        }
      };
      const double ms_stream = time_median(layers, reps, flush, flush_bytes);
      cudaGraph_t graph = nullptr;
      cudaGraphExec_t exec = nullptr;
      CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
      layers();
      CK(cudaStreamEndCapture(stream, &graph));
      CK(cudaGraphInstantiate(&exec, graph, 0));
      const double ms_graph =
          time_median([&] { CK(cudaGraphLaunch(exec, stream)); }, reps, flush, flush_bytes);
      CK(cudaGraphExecDestroy(exec));
      CK(cudaGraphDestroy(graph));
      const int launches = var.fused ? 1 : 2;
      std::printf("| %s | %s | %d | %.2f | %.2f |\n", kv, var.name, launches,
                  ms_stream * 1e3 / kLayers, ms_graph * 1e3 / kLayers);
      std::fprintf(csv, "%s,%s,%s,%d,%.3f,%.3f\n", device, kv, var.name, launches,
                   ms_stream * 1e3 / kLayers, ms_graph * 1e3 / kLayers);
      std::fflush(stdout);
    }
    for (int l = 0; l < kLayers; ++l) {
      CK(cudaFree(wk[l].pool.data));
      CK(cudaFree(wv[l].pool.data));
    }
  }
  CK(cudaFree(xk));
  CK(cudaFree(xv));
  CK(cudaFree(slot));
  CK(cudaStreamDestroy(stream));
  std::fclose(csv);
}

}  // namespace

int main(int argc, char** argv) {
  std::string out_dir = ".";
  std::vector<int> contexts = {1024, 4096, 16384, 32768, 131072};
  std::vector<int> batches = {1, 8, 32, 64};
  std::vector<std::string> formats = {"f16/f16", "q8_0/q8_0", "q4_0/q4_0", "tq4/tq4",
                                      "tq4/tq3", "tq3/tq3",   "tq2/tq2"};
  int reps = 20;
  int max_splits = 0;       // split-K cap per sequence (0: the plan's choice)
  bool pdl = false;         // --pdl 1: programmatic dependence, as the model's step launches
  bool ragged = false;      // --ragged 1: sequence b holds len * (b % 8 + 1) / 8 tokens
  bool by_length = true;    // --by-length 0: every sequence cut as the longest (A/B runs)
  bool fused_merge = true;  // --fused-merge 0: the merge kernel (A/B runs)
  bool write_bench = true, attention_bench = true, gemv = true, write_f32 = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--out")
      out_dir = argv[i + 1];
    else if (a == "--contexts")
      contexts = parse_ints(argv[i + 1]);
    else if (a == "--batches")
      batches = parse_ints(argv[i + 1]);
    else if (a == "--formats")
      formats = parse_list(argv[i + 1]);
    else if (a == "--reps")
      reps = std::atoi(argv[i + 1]);
    else if (a == "--write")
      write_bench = std::atoi(argv[i + 1]) != 0;
    else if (a == "--write-input") {
      const std::string v = argv[i + 1];
      if (v != "f16" && v != "f32") {
        std::fprintf(stderr, "tq_gpu_bench: --write-input takes f16 or f32, not '%s'\n", v.c_str());
        return 1;
      }
      write_f32 = v == "f32";
    } else if (a == "--attention")
      attention_bench = std::atoi(argv[i + 1]) != 0;
    else if (a == "--gemv")
      gemv = std::atoi(argv[i + 1]) != 0;
    else if (a == "--max-splits")
      max_splits = std::atoi(argv[i + 1]);
    else if (a == "--pdl")
      pdl = std::atoi(argv[i + 1]) != 0;
    else if (a == "--ragged")
      ragged = std::atoi(argv[i + 1]) != 0;
    else if (a == "--by-length")
      by_length = std::atoi(argv[i + 1]) != 0;
    else if (a == "--fused-merge")
      fused_merge = std::atoi(argv[i + 1]) != 0;
    else if (a == "--flush") {
      const std::string v = argv[i + 1];
      if (v != "write" && v != "read") {
        std::fprintf(stderr, "tq_gpu_bench: --flush takes write or read, not '%s'\n", v.c_str());
        return 1;
      }
      g_flush_read = v == "read";
    } else {
      std::fprintf(stderr, "tq_gpu_bench: unknown option '%s'\n", a.c_str());
      return 1;
    }
  }
  if (argc % 2 == 0) {
    std::fprintf(stderr, "tq_gpu_bench: option '%s' needs a value\n", argv[argc - 1]);
    return 1;
  }

  {  // every CSV goes into --out: make it, or say why not before any work
    std::error_code ec;
    std::filesystem::create_directories(out_dir, ec);
    if (ec) {
      std::fprintf(stderr, "tq_gpu_bench: cannot create --out '%s': %s\n", out_dir.c_str(),
                   ec.message().c_str());
      return 1;
    }
  }
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  size_t free_b = 0, total_b = 0;
  CK(cudaMemGetInfo(&free_b, &total_b));
  std::printf("device: %s, %d SMs, L2 %d MB, %.1f GiB (%.1f free)\n", prop.name,
              prop.multiProcessorCount, prop.l2CacheSize >> 20, total_b / 1073741824.0,
              free_b / 1073741824.0);

  // L2 flush buffer and the copy-bandwidth ceiling.
  const size_t flush_bytes = 256ull << 20;
  void* flush = nullptr;
  CK(cudaMalloc(&flush, flush_bytes));
  CK(cudaMemset(flush, 0x5a, flush_bytes));
  double copy_gbps = 0;
  {
    const size_t n = 2ull << 30;
    void *a = nullptr, *b = nullptr;
    CK(cudaMalloc(&a, n));
    CK(cudaMalloc(&b, n));
    CK(cudaMemset(a, 1, n));
    const double ms = time_median([&] { CK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice)); },
                                  10, flush, flush_bytes);
    copy_gbps = 2.0 * n / (ms * 1e-3) / 1e9;
    CK(cudaFree(a));
    CK(cudaFree(b));
  }
  std::printf("device-to-device copy: %.0f GB/s (bytes read + written)\n", copy_gbps);
  if (gemv && tq::bench::gemv_bench(out_dir, reps, copy_gbps, flush, flush_bytes) != 0) return 1;

  quant::CodebookCache books;
  const uint64_t layer_seed = derive_seed(kSeed, 1);
  const size_t scratch_tokens = 65536;
  __half* scratch = nullptr;
  int32_t* d_slots = nullptr;
  CK(cudaMalloc(&scratch, scratch_tokens * kKvHeads * kDim * sizeof(__half)));
  CK(cudaMalloc(&d_slots, scratch_tokens * sizeof(int32_t)));

  // fp32 rows for the bulk write when asked (the model's prefill writes fp32 K/V rows).
  float* scratch32 = nullptr;
  if (write_bench && write_f32)
    CK(cudaMalloc(&scratch32, scratch_tokens * kKvHeads * kDim * sizeof(float)));

  // --- quantize-on-write bandwidth (65536 tokens x 8 KV heads from fp16 or fp32) ---
  FILE* wcsv = std::fopen((out_dir + "/write_bench.csv").c_str(), "w");
  FILE* wcsv_old = std::fopen((out_dir + "/write_bench_legacy.csv").c_str(), "w");
  for (FILE* f : {wcsv, wcsv_old})
    std::fprintf(f, "device,format,tokens,time_us,bytes,gbps,frac_copy\n");
  std::printf(
      "\n## Quantize-on-write, %zu tokens x %d KV heads x %d, %s in (old = legacy CPU-order "
      "kernel)\n\n",
      scratch_tokens, kKvHeads, kDim, write_f32 ? "fp32" : "fp16");
  std::printf(
      "| format | old (us) | new (us) | bytes moved | new GB/s | old of copy | new of copy | "
      "speedup |\n"
      "|---|---|---|---|---|---|---|---|\n");
  for (const char* fname : {"f16", "q8_0", "q4_0", "tq4", "tq3", "tq2", "tq4j"}) {
    if (!write_bench) break;
    const quant::Format f = *quant::parse_format(fname);
    auto tables = DeviceCodecTables::create(f, kDim, layer_seed, books);
    ST(tables.status());
    const int blocks = static_cast<int>(scratch_tokens / kCap);
    PagedPool pool;
    pool.format = f;
    pool.head_dim = kDim;
    pool.block_tokens = kCap;
    pool.n_kv_heads = kKvHeads;
    pool.norm_correction = true;
    pool.tables = tables->view();
    CK(cudaMalloc(&pool.data, pool.block_stride_or_default() * blocks));
    std::vector<int32_t> slots(scratch_tokens);
    const std::vector<int32_t> table = [&] {
      std::vector<int32_t> t(static_cast<size_t>(blocks));
      for (int i = 0; i < blocks; ++i) t[static_cast<size_t>(i)] = i;
      Rng rng(kSeed);
      for (int i = blocks - 1; i > 0; --i)
        std::swap(t[static_cast<size_t>(i)], t[rng.next_u64() % (i + 1)]);
      return t;
    }();
    for (size_t i = 0; i < scratch_tokens; ++i)
      slots[i] = table[i / kCap] * kCap + static_cast<int>(i % kCap);
    CK(cudaMemcpy(d_slots, slots.data(), slots.size() * 4, cudaMemcpyHostToDevice));
    if (write_f32) {
      random_kv_kernel<<<1024, 256>>>(scratch32, scratch_tokens * kKvHeads * kDim, kSeed, 10.0f);
    } else {
      random_kv_kernel<<<1024, 256>>>(scratch, scratch_tokens * kKvHeads * kDim, kSeed, 10.0f);
    }
    CK(cudaGetLastError());
    QuantizeWriteParams w;
    w.pool = pool;
    w.x = write_f32 ? static_cast<const void*>(scratch32) : static_cast<const void*>(scratch);
    w.x_is_f16 = !write_f32;
    w.slot_mapping = d_slots;
    w.tokens = static_cast<int>(scratch_tokens);
    w.kernel = WriteKernel::kLegacy;
    const double ms_old =
        time_median([&] { ST(quantize_write(w, nullptr)); }, reps, flush, flush_bytes);
    w.kernel =
        WriteKernel::kTeam;  // the float32 team kernel (f16 / q8_0 / q4_0 / tq prod: unchanged)
    const double ms =
        time_median([&] { ST(quantize_write(w, nullptr)); }, reps, flush, flush_bytes);
    const double bytes = static_cast<double>(scratch_tokens) * kKvHeads *
                             (kDim * (write_f32 ? 4 : 2) + f.bytes_per_vector(kDim)) +
                         scratch_tokens * 4.0;
    const double gbps = bytes / (ms * 1e-3) / 1e9, gbps_old = bytes / (ms_old * 1e-3) / 1e9;
    std::printf("| %s | %.1f | %.1f | %.0f MB | %.0f | %.2f | %.2f | %.2fx |\n", fname,
                ms_old * 1e3, ms * 1e3, bytes / 1e6, gbps, gbps_old / copy_gbps, gbps / copy_gbps,
                ms_old / ms);
    std::fprintf(wcsv, "%s,%s,%zu,%.2f,%.0f,%.1f,%.4f\n", prop.name, fname, scratch_tokens,
                 ms * 1e3, bytes, gbps, gbps / copy_gbps);
    std::fprintf(wcsv_old, "%s,%s,%zu,%.2f,%.0f,%.1f,%.4f\n", prop.name, fname, scratch_tokens,
                 ms_old * 1e3, bytes, gbps_old, gbps_old / copy_gbps);
    std::fflush(stdout);
    CK(cudaFree(pool.data));
  }
  std::fclose(wcsv);
  std::fclose(wcsv_old);
  if (scratch32 != nullptr) CK(cudaFree(scratch32));
  if (write_bench) decode_write_bench(out_dir, prop.name, books, reps, flush, flush_bytes);
  if (!attention_bench) contexts.clear();

  // --- decode attention ---
  const char* const flush_name = g_flush_read ? "read" : "write";
  FILE* csv = std::fopen((out_dir + "/gpu_bench.csv").c_str(), "w");
  std::fprintf(csv,
               "device,context,batch,format,time_us,bytes,gbps,frac_copy,speedup_vs_f16,flush\n");
  std::printf(
      "\n## Decode attention, %d query heads / %d KV heads / d %d, copy BW %.0f GB/s, L2 flush: "
      "%s\n",
      kHeads, kKvHeads, kDim, copy_gbps, flush_name);
  for (int len : contexts) {
    std::printf(
        "\n### context %d\n\n| batch | format | time (us) | bytes read | GB/s | of copy BW | vs tq "
        "f16 | splits x tokens |\n"
        "|---|---|---|---|---|---|---|---|\n",
        len);
    for (int batch : batches) {
      double f16_ms = 0;
      for (const std::string& fk : formats) {
        const size_t slash = fk.find('/');
        const quant::Format kf = *quant::parse_format(fk.substr(0, slash));
        const quant::Format vf = *quant::parse_format(fk.substr(slash + 1));
        const int blocks_per_seq = (len + kCap - 1) / kCap;
        const size_t n_blocks = static_cast<size_t>(batch) * blocks_per_seq;
        const size_t kv_bytes =
            n_blocks * kKvHeads * kCap * (kf.bytes_per_vector(kDim) + vf.bytes_per_vector(kDim));
        CK(cudaMemGetInfo(&free_b, &total_b));
        if (kv_bytes + (1ull << 30) > free_b) {
          std::printf("| %d | %s | skipped: %.1f GB of pages do not fit |\n", batch, fk.c_str(),
                      kv_bytes / 1e9);
          continue;
        }
        PoolSet ps;
        auto kt = DeviceCodecTables::create(kf, kDim, layer_seed, books);
        auto vt = DeviceCodecTables::create(vf, kDim, layer_seed, books);
        ST(kt.status());
        ST(vt.status());
        ps.kt = std::make_unique<DeviceCodecTables>(std::move(*kt));
        ps.vt = std::make_unique<DeviceCodecTables>(std::move(*vt));
        for (PagedPool* p : {&ps.k, &ps.v}) {
          const bool is_k = p == &ps.k;
          p->format = is_k ? kf : vf;
          p->head_dim = kDim;
          p->block_tokens = kCap;
          p->n_kv_heads = kKvHeads;
          p->norm_correction = true;
          p->tables = is_k ? ps.kt->view() : ps.vt->view();
          CK(cudaMalloc(&p->data, p->block_stride_or_default() * n_blocks));
        }
        // Pages of all sequences interleaved in shuffled order, as a busy pool hands them out.
        std::vector<int32_t> table(n_blocks);
        for (size_t i = 0; i < n_blocks; ++i) table[i] = static_cast<int32_t>(i);
        Rng rng(kSeed + len + batch);
        for (size_t i = n_blocks - 1; i > 0; --i)
          std::swap(table[i], table[rng.next_u64() % (i + 1)]);
        int32_t *d_table = nullptr, *d_len = nullptr;
        CK(cudaMalloc(&d_table, n_blocks * 4));
        CK(cudaMalloc(&d_len, batch * 4));
        CK(cudaMemcpy(d_table, table.data(), n_blocks * 4, cudaMemcpyHostToDevice));
        std::vector<int32_t> lens(static_cast<size_t>(batch), len);
        if (ragged)
          for (int b = 0; b < batch; ++b)
            lens[static_cast<size_t>(b)] =
                std::max(1, static_cast<int>(1LL * len * (b % 8 + 1) / 8));
        CK(cudaMemcpy(d_len, lens.data(), batch * 4, cudaMemcpyHostToDevice));
        fill_pool(ps.k, d_table, batch, len, blocks_per_seq, scratch, scratch_tokens, d_slots,
                  kSeed + 1, 10.0f);
        fill_pool(ps.v, d_table, batch, len, blocks_per_seq, scratch, scratch_tokens, d_slots,
                  kSeed + 2, 1.0f);

        DecodeAttentionParams p;
        p.n_seqs = batch;
        p.n_heads = kHeads;
        p.scale = 1.0f / std::sqrt(static_cast<float>(kDim));
        p.main.k = ps.k;
        p.main.v = ps.v;
        p.main.block_tables = d_table;
        p.main.max_blocks = blocks_per_seq;
        p.main.lengths = d_len;
        p.main.max_length = len;
        float *d_q = nullptr, *d_out = nullptr;
        const size_t qn = static_cast<size_t>(batch) * kHeads * kDim;
        CK(cudaMalloc(&d_q, qn * 4));
        CK(cudaMalloc(&d_out, qn * 4));
        std::vector<float> hq(qn);
        Rng qr(kSeed + 3);
        for (float& x : hq) x = static_cast<float>(qr.normal());
        CK(cudaMemcpy(d_q, hq.data(), qn * 4, cudaMemcpyHostToDevice));
        p.q = d_q;
        p.out = d_out;
        p.num_sms = prop.multiProcessorCount;
        p.max_splits = max_splits;
        p.overlap_launches = pdl;
        p.split_by_length = by_length;
        int32_t* d_counters = nullptr;  // (zero before the first call; every call leaves them so)
        if (fused_merge) {
          CK(cudaMalloc(&d_counters, static_cast<size_t>(batch) * kKvHeads * 4));
          CK(cudaMemset(d_counters, 0, static_cast<size_t>(batch) * kKvHeads * 4));
          p.merge_counters = d_counters;
        }
        auto plan = plan_decode_attention(p);
        ST(plan.status());
        const size_t ws = plan->workspace_bytes;
        CK(cudaMalloc(&p.workspace, ws));
        p.workspace_bytes = ws;
        const double ms =
            time_median([&] { ST(decode_attention(p, *plan, nullptr)); }, reps, flush, flush_bytes);
#ifdef TQ_ATTN_TIMELINE
        timeline_report([&] { ST(decode_attention(p, *plan, nullptr)); },
                        static_cast<size_t>(plan->main_splits) * kKvHeads * batch,
                        static_cast<size_t>(kHeads) * batch, flush, flush_bytes,
                        std::to_string(len) + " b" + std::to_string(batch) + " " + fk, ms * 1e3);
#endif
        // Bytes the call must move: every stored K/V byte once (of the tokens the sequences
        // hold), the query, the partials (written and read back) and the output.
        double tokens_held = 0;
        for (int32_t l : lens) tokens_held += l;
        const double kv_read =
            static_cast<double>(kv_bytes) * tokens_held / (static_cast<double>(n_blocks) * kCap);
        const double bytes = kv_read + 2.0 * static_cast<double>(ws) + qn * 8.0 + n_blocks * 4.0;
        const double gbps = bytes / (ms * 1e-3) / 1e9;
        if (kf == quant::kFormatF16) f16_ms = ms;
        const double speedup = f16_ms > 0 ? f16_ms / ms : 0.0;
        std::printf("| %d | %s | %.1f | %.1f MB | %.0f | %.2f | %.2fx | %d x %d%s%s |\n", batch,
                    fk.c_str(), ms * 1e3, bytes / 1e6, gbps, gbps / copy_gbps, speedup,
                    plan->main_splits, plan->main_tokens_per_split,
                    plan->main_split_budget > 0 ? " L" : "", plan->fused_merge ? " F" : "");
        std::fprintf(csv, "%s,%d,%d,%s,%.2f,%.0f,%.1f,%.4f,%.3f,%s\n", prop.name, len, batch,
                     fk.c_str(), ms * 1e3, bytes, gbps, gbps / copy_gbps, speedup, flush_name);
        std::fflush(stdout);
        CK(cudaFree(p.workspace));
        if (d_counters) CK(cudaFree(d_counters));
        CK(cudaFree(d_q));
        CK(cudaFree(d_out));
        CK(cudaFree(d_table));
        CK(cudaFree(d_len));
        CK(cudaFree(ps.k.data));
        CK(cudaFree(ps.v.data));
      }
    }
  }
  std::fclose(csv);
  std::printf("\ncopy_gbps=%.1f\n", copy_gbps);
  return 0;
}
