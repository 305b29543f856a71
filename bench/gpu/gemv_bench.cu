// The quantized-weight GEMV (backend/cuda/gemv_q.h) on the Llama-3-8B matrices, f16/f32-product
// activations (kExact) against 8-bit activations (kQ8) in the same run: time per call (CUDA
// events, L2 flushed by reading 256 MiB before every rep, median), the weight bytes one call must
// read, GB/s and the fraction of the measured copy bandwidth. Part of tq_gpu_bench (--gemv 1, the
// default).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "gemv_bench.h"
#include "tq/backend/cuda/gemv_q.h"

namespace tq::bench {
namespace {

using backend::cuda::GemvActivations;
using backend::cuda::MatrixView;
using backend::cuda::WeightFormat;

#define GCK(expr)                                                                                 \
  do {                                                                                            \
    const cudaError_t e_ = (expr);                                                                \
    if (e_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      return 1;                                                                                   \
    }                                                                                             \
  } while (0)

__device__ uint64_t mix(uint64_t h) {
  h ^= h >> 31;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 29;
  return h;
}

// Random quant bytes (Q8_0's 0x80 avoided), f16 scales in +-[0.002, 0.02), roughly normal x.
__global__ void fill_kernel(uint8_t* qs, size_t qs_bytes, __half* scales, size_t blocks, __half* x,
                            size_t nx, bool q8) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < qs_bytes;
       i += stride) {
    uint8_t v = static_cast<uint8_t>(mix(i * 0x9e3779b97f4a7c15ull + 1) & 0xff);
    qs[i] = q8 && v == 0x80 ? 0x81 : v;
  }
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < blocks;
       i += stride) {
    const uint64_t h = mix(i * 0x632be59bd9b4e019ull + 7);
    const float d = 0.002f + 0.018f * static_cast<float>(h & 0xffff) / 65536.0f;
    scales[i] = __float2half_rn((h >> 16) & 1 ? -d : d);
  }
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < nx; i += stride) {
    const uint64_t h = mix(i * 0x2545f4914f6cdd1dull + 3);
    const float u =
        ((h & 0xffff) + ((h >> 16) & 0xffff) + ((h >> 32) & 0xffff) + ((h >> 48) & 0xffff)) /
            65536.0f -
        2.0f;
    x[i] = __float2half_rn(u * 1.7f);
  }
}

// Reads the flush buffer (L2 eviction that leaves clean lines: a memset would leave ~50 MB of
// dirty lines whose write-back lands inside the timed call, which for a 10 MB matrix is most of
// its time).
__global__ void read_flush_kernel(const uint4* p, size_t n, unsigned* sink) {
  uint32_t acc = 0;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const uint4 v = __ldcs(p + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9e3779b9u) *sink = acc;  // practically never: keeps the loads
}

struct Matrix {
  const char* name;
  int rows, cols;
};

}  // namespace

int gemv_bench(const std::string& out_dir, int reps, double copy_gbps, void* flush,
               size_t flush_bytes) {
  const Matrix mats[] = {{"attn qkv", 6144, 4096},
                         {"attn output", 4096, 4096},
                         {"ffn gate+up", 28672, 4096},
                         {"ffn down", 4096, 14336},
                         {"output (vocab)", 128256, 4096}};
  FILE* csv = std::fopen((out_dir + "/gemv_bench.csv").c_str(), "w");
  if (!csv) return 1;
  std::fprintf(csv,
               "matrix,format,rows,cols,n,exact_us,q8_smem_us,q8_us,bytes,q8_gbps,q8_frac_copy\n");
  std::printf(
      "\n## Quantized-weight GEMV, Llama-3-8B matrices: f16 x with f32 products (exact), 8-bit x "
      "quantized by each thread block (q8 smem: gemv_q kQ8), 8-bit x written by the kernel before "
      "(q8: gemv_q8, the model's decode path)\n\n| matrix | format | n | exact (us) | q8 smem (us) "
      "| q8 (us) | weight MB | exact GB/s | q8 GB/s | q8 of copy | q8 speedup |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|\n");
  cudaEvent_t a, b;
  GCK(cudaEventCreate(&a));
  GCK(cudaEventCreate(&b));
  for (const WeightFormat f : {WeightFormat::kQ4_0, WeightFormat::kQ8_0})
    for (const Matrix& mt : mats) {
      const size_t bytes = backend::cuda::weight_matrix_bytes(f, mt.rows, mt.cols);
      const size_t blocks = static_cast<size_t>(mt.rows) * (mt.cols / 32);
      const size_t qs_bytes = blocks * backend::cuda::quant_qs_bytes(f);
      constexpr int kMaxN = 8;
      void* w = nullptr;
      __half* x = nullptr;
      float* y = nullptr;
      GCK(cudaMalloc(&w, bytes));
      GCK(cudaMalloc(&x, static_cast<size_t>(kMaxN) * mt.cols * sizeof(__half)));
      GCK(cudaMalloc(&y, static_cast<size_t>(kMaxN) * mt.rows * sizeof(float)));
      fill_kernel<<<1024, 256>>>(static_cast<uint8_t*>(w), qs_bytes,
                                 reinterpret_cast<__half*>(static_cast<uint8_t*>(w) + qs_bytes),
                                 blocks, x, static_cast<size_t>(kMaxN) * mt.cols,
                                 f == WeightFormat::kQ8_0);
      GCK(cudaGetLastError());
      const MatrixView view{f, w, mt.rows, mt.cols};
      int8_t* xq = nullptr;
      backend::cuda::Q8Scale* xs = nullptr;
      GCK(cudaMalloc(&xq, static_cast<size_t>(kMaxN) * mt.cols));
      GCK(cudaMalloc(&xs,
                     static_cast<size_t>(kMaxN) * mt.cols / 32 * sizeof(backend::cuda::Q8Scale)));
      {
        const Status st = backend::cuda::quantize_q8(x, kMaxN, mt.cols, mt.cols, xq, xs, nullptr);
        if (!st.ok()) {
          std::fprintf(stderr, "quantize_q8: %s\n", st.to_string().c_str());
          return 1;
        }
      }
      for (const int n : {1, 2, 4, 8}) {
        double us[3] = {0, 0, 0};
        for (int mode = 0; mode < 3; ++mode) {
          const GemvActivations acts = mode ? GemvActivations::kQ8 : GemvActivations::kExact;
          std::vector<float> ms;
          for (int r = -3; r < reps; ++r) {
            read_flush_kernel<<<1024, 256>>>(static_cast<const uint4*>(flush), flush_bytes / 16,
                                             static_cast<unsigned*>(flush));
            GCK(cudaEventRecord(a));
            const Status st = mode == 2 ? backend::cuda::gemv_q8(view, {xq, xs, mt.cols}, n, y,
                                                                 mt.rows, 0.0f, nullptr)
                                        : backend::cuda::gemv_q(view, x, n, mt.cols, y, mt.rows,
                                                                0.0f, nullptr, false, acts);
            GCK(cudaEventRecord(b));
            GCK(cudaEventSynchronize(b));
            if (!st.ok()) {
              std::fprintf(stderr, "gemv_q: %s\n", st.to_string().c_str());
              return 1;
            }
            float t = 0;
            GCK(cudaEventElapsedTime(&t, a, b));
            if (r >= 0) ms.push_back(t);
          }
          std::sort(ms.begin(), ms.end());
          us[mode] = ms[ms.size() / 2] * 1e3;
        }
        const double gb = static_cast<double>(bytes) / 1e9;
        const double q8_gbps = gb / (us[2] * 1e-6), ex_gbps = gb / (us[0] * 1e-6);
        // Reads only: the copy's GB/s counts bytes read + written.
        const double frac = q8_gbps / copy_gbps;
        std::printf(
            "| %s %dx%d | %s | %d | %.1f | %.1f | %.1f | %.1f | %.0f | %.0f | %.2f | %.2fx |\n",
            mt.name, mt.rows, mt.cols, backend::cuda::weight_format_name(f), n, us[0], us[1], us[2],
            bytes / 1e6, ex_gbps, q8_gbps, frac, us[0] / us[2]);
        std::fprintf(csv, "%s,%s,%d,%d,%d,%.2f,%.2f,%.2f,%zu,%.1f,%.3f\n", mt.name,
                     backend::cuda::weight_format_name(f), mt.rows, mt.cols, n, us[0], us[1], us[2],
                     bytes, q8_gbps, frac);
      }
      cudaFree(xq);
      cudaFree(xs);
      cudaFree(w);
      cudaFree(x);
      cudaFree(y);
    }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::fclose(csv);
  return 0;
}

}  // namespace tq::bench
