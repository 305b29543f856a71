// The top candidates of logits rows on the device, for sampling there without sending the
// vocabulary's logits to the host (runtime::Sampler::sample_top draws from them). Plain C++
// (no CUDA types): the stream is a cudaStream_t passed as void*.
#pragma once

#include <cstddef>
#include <cstdint>

#include "tq/core/status.h"

namespace tq::backend::cuda {

inline constexpr int kTopRowsMax = 1024;

// The k largest values of each row of x [rows][n] (device; k <= kTopRowsMax, k <= n), most
// likely first, equal values by lower index, NaN as -inf (runtime::top_logits's order): ids
// [rows][k] and values [rows][k] (device). A block selects the top k of up to a chunk of values:
// an MSB-first radix select of the k-th largest 64-bit key (order-preserving value bits, then
// the complemented index, so keys are distinct), then the keys at or above it gathered and
// sorted in shared memory. With a workspace of top_k_workspace_bytes (nonzero for rows of 16384
// values or more) long rows are split: a block per chunk of 8192 values, then a block per row
// over the chunks' candidates; without one, one block scans the whole row.
size_t top_k_workspace_bytes(int rows, int n, int k);
Status top_k_rows(const float* x, int rows, int n, int k, int32_t* ids, float* values, void* stream,
                  void* workspace = nullptr, size_t workspace_bytes = 0);

// out[r] = log sum_i exp(x[r][i]) in double, NaN as -inf (runtime::log_partition's value up to
// the summation order): with the top candidates, a row's logprobs without the row. One block
// per row: the row's maximum, then the sum of exp(x - max) in double.
Status log_partition_rows(const float* x, int rows, int n, double* out, void* stream);

}  // namespace tq::backend::cuda
