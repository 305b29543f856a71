// A uniform-grid lookup table for the Lloyd-Max cell search, built on the host per codebook, for
// the GPU's quantize-on-write (the float32 kernels of backend/cuda/quantize_write_fast.cuh).
//
// The device finds the cell of y in float32 as
//   t = saturate(fma(y, scale, offset))        (one FFMA.SAT; NaN -> 0)
//   g = fma(t, kCellLutCells - 1, 1.5 * 2^23)  (one FFMA: bits(g) = bits(1.5 * 2^23) + k,
//                                               k = rint(t * (kCellLutCells - 1)))
//   idx = cand[k] + (y > bound[k])
// with one table entry per grid cell k: the boundaries certainly below the cell (cand) and the
// one boundary that may fall inside it (bound; +inf when none).
//
// Why idx is exactly quantize_coordinate(y), the number of boundaries strictly below y (NaN ->
// 0): every step above is monotone non-decreasing in y (an IEEE fma with scale > 0 rounds to
// nearest, saturation clamps, and the second fma with a positive factor again), so the floats y
// with grid cell k form an interval S_k = [lo_k, hi_k], and the S_k follow each other in k.
// cell_lut_grid emulates the device arithmetic bit for bit (std::fma of floats is correctly
// rounded, as the GPU's FFMA is), and build_cell_lut finds lo_k, hi_k exactly by bisection over
// the ordered floats. It then widens each S_k by a margin (kCellLutMargin times the largest
// boundary magnitude, ~8 ulps) that the exact emulation does not need but that keeps the
// argument true should the device's rounding ever differ from it, and assigns to cell k
//   cand[k]  = #{j : b_j < lo_k - margin}     (below every y the cell can hold),
//   bound[k] = the b_j with lo_k - margin <= b_j < hi_k + margin, if any,
// and refuses the grid when some widened cell holds two boundaries. For y in cell k a boundary
// is then either below every y of the cell (counted in cand), at or above every y of it (never
// counted), or bound[k], counted exactly when y > bound[k]: the sum is the count of
// boundaries below y. NaN saturates to t = 0, cell 0, where cand = 0 (its range reaches -inf)
// and NaN > bound is false: 0, as on the CPU. +-inf land in the end cells (ranges reaching
// +-inf) and count like any value there. tests/quant/cell_lut_test.cpp checks the emulation
// against quantize_coordinate for bits 1..4 and head dims 64..256 over boundaries, +-1 ulp
// around them, huge values, infinities and NaN.
#pragma once

#include <cstdint>
#include <vector>

#include "tq/core/status.h"
#include "tq/quant/codebook.h"

namespace tq::quant {

// Grid cells: one bank per cell in each of the four 32-word arrays of the device table, so a
// warp's loads from it never conflict.
inline constexpr int kCellLutCells = 32;
// The magic 1.5 * 2^23: a float in [2^23, 2^24) has an ulp of 1, so fma(t, n, kMagic) rounds
// t * n to an integer k and holds it in the low mantissa bits: bits = kCellLutMagicBits + k.
inline constexpr float kCellLutMagic = 12582912.0f;
inline constexpr uint32_t kCellLutMagicBits = 0x4B400000u;
// The widening of each cell's exact y-range, relative to the largest boundary magnitude.
inline constexpr double kCellLutMargin = 0x1p-20;

struct CellLut {
  float scale = 0.0f;  // t = saturate(fma(y, scale, offset))
  float offset = 0.0f;
  std::vector<float> bound;      // [kCellLutCells] the boundary inside the cell, or +inf
  std::vector<uint32_t> cand;    // [kCellLutCells] boundaries below the cell
  std::vector<float> centroids;  // the codebook's 2^b centroids (the norm correction's C[idx])

  // The device image, 32-bit words: [bound][float 1.5 * 2^23 + cand, as bits][centroids,
  // zero-padded] (kCellLutCells words each), then scale and offset (bit patterns) and -4
  // kCellLutMagicBits (mod 2^32: the device adds it to the table's address, a run-time value so the
  // compiler keeps it in a register).
  static constexpr int kImageWords = 3 * kCellLutCells + 3;
  std::vector<uint32_t> image() const;
};

// The grid for a codebook's boundaries (ascending), or Unsupported when a cell of
// kCellLutCells would hold two boundaries (never for bits <= 4; the test checks d = 64..256).
Expected<CellLut> build_cell_lut(const Codebook& book);

// Host emulation of the device arithmetic, bit for bit: the grid cell of y, and the code.
int cell_lut_grid(const CellLut& lut, float y);
int cell_lut_code(const CellLut& lut, float y);

}  // namespace tq::quant
