// Weight matrices kept quantized on the GPU (DeviceModelOptions::weights = kQuantized): ggml's
// Q4_0 and Q8_0 blocks multiplied as stored, so batch-1 decode reads 4.5 (Q4_0) or 8.5 (Q8_0)
// bits per weight instead of f16's 16. Host-includable: the tests build matrices with
// split_blocks and call the launchers directly.
//
// Device layout of a [rows][cols] matrix of nb = cols / 32 blocks per row (the ggml blocks,
// split so that every lane's load is 16-byte aligned; ggml's 18- and 34-byte blocks are not):
//   qs:     [rows * nb][kQsBytes] the blocks' quants in file order (Q4_0: 16 bytes of nibbles,
//           byte j = q[j] | q[j + 16] << 4; Q8_0: 32 int8), row-major
//   scales: [rows * nb] f16 d, right after qs (at byte rows * nb * kQsBytes, 16-byte aligned)
// The same bytes per weight as the file: 18/32 (Q4_0) and 34/32 (Q8_0) per weight.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "tq/backend/cuda/q8_scale.h"
#include "tq/core/status.h"

namespace tq::backend::cuda {

enum class WeightFormat : uint8_t { kF16, kQ4_0, kQ8_0 };

const char* weight_format_name(WeightFormat f);
// Bytes of a block's quants in the split layout (16 or 32); 0 for kF16.
int quant_qs_bytes(WeightFormat f);
// Device bytes of a [rows][cols] matrix (f16 or split blocks).
size_t weight_matrix_bytes(WeightFormat f, int64_t rows, int64_t cols);

// A device matrix [rows][cols]: f16 row-major, or Q4_0/Q8_0 in the split layout above.
struct MatrixView {
  WeightFormat format = WeightFormat::kF16;
  const void* data = nullptr;
  int rows = 0, cols = 0;
};

// Splits rows of ggml blocks (src: `rows` rows of cols/32 blocks, 18 or 34 bytes each) into the
// two parts of the layout: qs [rows * nb][kQsBytes] and scales [rows * nb] (f16 bits). Host code.
void split_blocks(WeightFormat f, const uint8_t* src, int64_t rows, int64_t cols, uint8_t* qs,
                  uint16_t* scales);

// The most tokens gemv_q takes in one call: each block is read once for all of them.
inline constexpr int kGemvMaxTokens = 8;

// How gemv_q multiplies the activations. kExact: each product q * d * x formed in f32 from the
// f16/f32 x. kQ8: X is first quantized per 32 columns as llama.cpp's q8_1 (d = amax / 127,
// quants rounded to nearest even, as tq's CPU matmuls do) and each block is an integer dot
// product (DP4A), scaled once: a quarter of the instructions, the rounding of 8-bit
// activations (docs/quality.md, "A floor under every CPU number"). kQ8 needs n * cols / 32 *
// 40 bytes of shared memory per thread block (kGemvQ8MaxSmem); larger calls take kExact.
enum class GemvActivations : uint8_t { kExact, kQ8 };
inline constexpr size_t kGemvQ8MaxSmem = 96 * 1024;
// Whether a call of n tokens on w runs the kQ8 kernel when asked.
bool gemv_q8_applies(const MatrixView& w, int n);

// 8-bit activations in device memory, as producer kernels write them (q8_act.cuh's rounding):
// quants [n][ld] int8 in column order, scales [n][ld / 32] (the sum of the block's quants with
// its d, for Q4_0's offset).
struct Q8Activations {
  const int8_t* q = nullptr;        // 16-byte aligned
  const Q8Scale* scales = nullptr;  // 8-byte aligned
  int ld = 0;                       // quants per row, a multiple of 32
};
// x [n][ldx] f16 -> q [n][cols], scales [n][cols / 32] (cols % 32 == 0): a kernel of its own,
// for callers whose producer does not write the quants itself.
Status quantize_q8(const __half* x, int n, int cols, int ldx, int8_t* q, Q8Scale* scales,
                   cudaStream_t s);
// gemv_q with kQ8 activations already quantized (no per-block prologue): the model's decode
// path, whose RMSNorm / SwiGLU / attention-output kernels write them. Same bound as kQ8.
Status gemv_q8(const MatrixView& w, const Q8Activations& x, int n, float* y, int ldy, float beta,
               cudaStream_t s, bool overlap = false);

// Y[t][r] = beta * Y[t][r] + sum_c W[r][c] X[t][c] for t < n (1 <= n <= kGemvMaxTokens),
// r < rows: W quantized (Q4_0/Q8_0), X [n][ldx] (f16 or f32), Y [n][ldy] f32. Each product
// q * d * x is formed in f32 (exact quants, no f16 rounding of the weight), accumulated in f32;
// beta == 0 never reads Y. One warp per row, each lane whole blocks (one 16-byte load per
// Q4_0 block), lanes striding the row's blocks. cols % 32 == 0, X 16-byte aligned with
// ldx % 8 == 0 (f16) / % 4 == 0 (f32).
// overlap: launched with programmatic dependence (sm_90): the kernel may start while the
// stream's previous kernel still runs and load its weights then; it reads X and Y only after
// that kernel has completed. Speeds up a chain of small kernels when the previous kernel lets
// dependents launch early (cuda_common.cuh, pdl_launch_dependents).
// acts: GemvActivations above (kQ8: the quantized x and the integer sums replace the f32
// products; the error bound is then that of 8-bit x).
Status gemv_q(const MatrixView& w, const __half* x, int n, int ldx, float* y, int ldy, float beta,
              cudaStream_t s, bool overlap = false, GemvActivations acts = GemvActivations::kExact);
Status gemv_q(const MatrixView& w, const float* x, int n, int ldx, float* y, int ldy, float beta,
              cudaStream_t s, bool overlap = false, GemvActivations acts = GemvActivations::kExact);

// out[r][c] = f16(W[row0 + r][c]) for r < nrows (the value d * q in f32, rounded once: the same
// f16 the host upload writes), out [nrows][cols]. For cuBLAS GEMMs of quantized weights.
Status dequant_rows(const MatrixView& w, int row0, int nrows, __half* out, cudaStream_t s);

}  // namespace tq::backend::cuda
