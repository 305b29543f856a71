// Scalar reference dequantizers for the GGUF weight types (ggml's dequantize_row_* in plain
// C++). They define what every fast path (SIMD matmul, CUDA) must reproduce.
#pragma once

#include <cstdint>

#include "tq/core/status.h"
#include "tq/quant/ggml_types.h"

namespace tq::quant {

// True for the types dequantize_row_ref handles (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
// Q4_K, Q5_K, Q6_K).
bool can_dequantize(GgmlType type);

// dst[0, n) = the n elements starting at src. n must be a multiple of the block size:
// InvalidArgument otherwise, Unsupported for types outside can_dequantize.
Status dequantize_row_ref(GgmlType type, const uint8_t* src, float* dst, int64_t n);

}  // namespace tq::quant
