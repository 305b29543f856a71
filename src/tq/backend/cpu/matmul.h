// Weight x activation products for the CPU forward pass: Y = X W^T with W in a GGUF weight
// type. Quantized types run as integer dot products against activations quantized once per
// call (llama.cpp's scheme); the rest dequantize a few rows at a time into floats.
#pragma once

#include <cstdint>

#include "tq/core/status.h"
#include "tq/core/thread_pool.h"
#include "tq/quant/ggml_types.h"

namespace tq::backend::cpu {

// Row-major: `rows` rows of `cols` elements (GGUF shape [cols, rows]); each row is
// ggml_row_bytes(type, cols) bytes.
struct WeightView {
  quant::GgmlType type;
  const uint8_t* data;
  int64_t rows;
  int64_t cols;
};

// How activations meet quantized weights.
enum class Activations {
  kQuantized,  // rounded to 8 bits per 32 (q8_1, llama.cpp's scheme): integer dot products
  kFloat,      // kept in float; weights dequantized per tile (slower; for quality runs)
};

// Y[t][r] = sum_c W[r][c] * X[t][c] for t < n_tokens. X is float [n_tokens][cols], Y float
// [n_tokens][rows]. InvalidArgument for bad shapes, Unsupported for types tq cannot multiply.
Status matmul(ThreadPool& pool, const WeightView& w, const float* x, int n_tokens, float* y,
              Activations act = Activations::kQuantized);

// dst[0, n) = the first n elements at src (embedding lookups). n must be a multiple of the
// type's block size and the type one of quant::can_dequantize; otherwise dst is zero-filled.
void dequantize_row(quant::GgmlType type, const uint8_t* src, float* dst, int64_t n);

// True when matmul has an integer SIMD/ref path for the type (the rest go through floats).
bool matmul_has_int_path(quant::GgmlType type);

}  // namespace tq::backend::cpu
