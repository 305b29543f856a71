// The scale of one 32-column block of 8-bit activations (gemv_q.h, GemvActivations::kQ8), in
// a header of its own so that host-side parameter structs (kv_cuda.h) can name it without CUDA.
#pragma once

#include <cstdint>

namespace tq::backend::cuda {

struct Q8Scale {
  float d;      // amax / 127
  int32_t sum;  // sum of the block's 32 quants
};

}  // namespace tq::backend::cuda
