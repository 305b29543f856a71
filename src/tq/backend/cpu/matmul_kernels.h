// The per-ISA kernel table behind matmul (internal to backend/cpu and its tests). Each ISA
// fills one const table; matmul picks the table once from detect_cpu_features().
#pragma once

#include <cstdint>

#include "tq/backend/cpu/matmul.h"
#include "tq/core/prefetch.h"
#include "tq/core/status.h"
#include "tq/core/thread_pool.h"
#include "tq/quant/ggml_blocks.h"

namespace tq::backend::cpu {

// A slice of one matmul: rows [row_begin, row_end) of W against all n_tokens activations.
struct TileJob {
  const uint8_t* w = nullptr;  // row r starts at w + r * row_bytes
  int64_t row_bytes = 0;
  int64_t row_begin = 0;
  int64_t row_end = 0;
  const void* act = nullptr;  // token t starts at act + t * act_stride bytes (BlockQ8A or float)
  int64_t act_stride = 0;
  int64_t cols = 0;
  int n_tokens = 0;
  float* y = nullptr;  // Y[t][r] at y[t * y_stride + r]
  int64_t y_stride = 0;
  int64_t w_rows = 0;  // rows of the whole W from w: weights are prefetched up to its end (0: none)
};

// How far ahead of the row being multiplied the weight stream is prefetched (core/prefetch.h):
// on the development VM 2048 to 16384 bytes gave the same decode speed, 1024 less.
inline constexpr int64_t kWeightPrefetchAhead = 4096;

// Prefetches the weights kWeightPrefetchAhead bytes after row r's (as many bytes as `rows` rows).
inline void prefetch_weights_ahead(const TileJob& job, int64_t r, int64_t rows = 1) {
  if (job.w_rows <= 0) return;
  prefetch_l2_ahead(job.w, static_cast<size_t>(job.w_rows * job.row_bytes),
                    static_cast<size_t>(r * job.row_bytes), kWeightPrefetchAhead,
                    static_cast<size_t>(rows * job.row_bytes));
}

using TileFn = void (*)(const TileJob& job);

struct MatmulKernels {
  const char* name;  // "ref", "avx2"
  void (*quantize_q8a)(const float* x, quant::BlockQ8A* dst, int64_t n);
  // Integer paths: weights in the named type, activations BlockQ8A.
  TileFn q4_0;
  TileFn q4_1;
  TileFn q5_0;
  TileFn q5_1;
  TileFn q8_0;
  // Float weights (rows of cols floats) against float activations.
  TileFn f32;
  // Dequantize a row to floats (the float path and embeddings).
  void (*dequantize)(quant::GgmlType type, const uint8_t* src, float* dst, int64_t n);
};

const MatmulKernels& matmul_kernels_ref();
// nullptr when the CPU lacks AVX2+FMA+F16C.
const MatmulKernels* matmul_kernels_avx2();
// The AVX2 table itself (matmul_weights_avx2.cpp); call only where the CPU has AVX2.
const MatmulKernels& matmul_kernels_avx2_table();
// The table matmul uses on this CPU.
const MatmulKernels& matmul_kernels_active();

// matmul through a given table (tests compare tables against each other).
Status matmul_with(const MatmulKernels& k, ThreadPool& pool, const WeightView& w, const float* x,
                   int n_tokens, float* y, Activations act = Activations::kQuantized);

}  // namespace tq::backend::cpu
