// tq_gpu_bench's GEMV section (gemv_bench.cu).
#pragma once

#include <cstddef>
#include <string>

namespace tq::bench {

// The quantized-weight GEMV on the Llama-3-8B matrices, exact vs 8-bit activations; a table on
// stdout and gemv_bench.csv in out_dir. copy_gbps: the measured copy (bytes read + written);
// flush: a buffer read before every rep (L2 eviction). Non-zero on a CUDA error.
int gemv_bench(const std::string& out_dir, int reps, double copy_gbps, void* flush,
               size_t flush_bytes);

}  // namespace tq::bench
