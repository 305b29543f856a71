// Scalar reference quantizers float -> ggml blocks (ggml's quantize_row_*_ref), for writing
// GGUF files (tq make-model, test fixtures) and for the matmul's activation rows.
#pragma once

#include <cstdint>

#include "tq/core/status.h"
#include "tq/quant/ggml_blocks.h"
#include "tq/quant/ggml_types.h"

namespace tq::quant {

// True for the types quantize_row_ref writes: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.
bool can_quantize(GgmlType type);

// Writes ggml_row_bytes(type, n) bytes to dst. n must be a multiple of the block size.
Status quantize_row_ref(GgmlType type, const float* src, uint8_t* dst, int64_t n);

// Activation row for the integer matmul: n / 32 blocks, d = max|x| / 127, qs = round(x / d),
// s = d * sum(qs). n must be a multiple of 32.
void quantize_row_q8a_ref(const float* x, BlockQ8A* dst, int64_t n);

}  // namespace tq::quant
