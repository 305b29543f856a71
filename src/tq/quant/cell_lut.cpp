// build_cell_lut: exact cell ranges by bisection over the ordered floats, then the entries
// (cell_lut.h has the argument).
#include "tq/quant/cell_lut.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <string>

namespace tq::quant {
namespace {

// Floats (NaN excluded) in increasing order as unsigned keys, and back.
uint32_t order_key(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
float from_key(uint32_t k) {
  return std::bit_cast<float>((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// The smallest float y (-inf allowed) with cell_lut_grid(y) >= k; grid(+inf) is the last cell,
// so it exists for every k.
float first_of_cell(const CellLut& lut, int k) {
  uint32_t lo = order_key(-std::numeric_limits<float>::infinity());
  uint32_t hi = order_key(std::numeric_limits<float>::infinity());
  while (lo < hi) {
    const uint32_t mid = lo + (hi - lo) / 2;
    if (cell_lut_grid(lut, from_key(mid)) >= k) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return from_key(lo);
}

}  // namespace

int cell_lut_grid(const CellLut& lut, float y) {
  float t = std::fma(y, lut.scale, lut.offset);  // FFMA.SAT: NaN and t <= 0 -> 0, t >= 1 -> 1
  t = t > 0.0f ? (t < 1.0f ? t : 1.0f) : 0.0f;
  const float g = std::fma(t, static_cast<float>(kCellLutCells - 1), kCellLutMagic);
  return static_cast<int>(std::bit_cast<uint32_t>(g) - kCellLutMagicBits);
}

int cell_lut_code(const CellLut& lut, float y) {
  const int k = cell_lut_grid(lut, y);
  return static_cast<int>(lut.cand[k]) + (y > lut.bound[k] ? 1 : 0);
}

std::vector<uint32_t> CellLut::image() const {
  std::vector<uint32_t> w;
  w.reserve(kImageWords);
  for (float v : bound) w.push_back(std::bit_cast<uint32_t>(v));
  for (uint32_t v : cand) w.push_back(kCellLutMagicBits + v);  // the float 1.5 * 2^23 + cand
  for (int i = 0; i < kCellLutCells; ++i)
    w.push_back(i < static_cast<int>(centroids.size()) ? std::bit_cast<uint32_t>(centroids[i])
                                                       : 0u);
  w.push_back(std::bit_cast<uint32_t>(scale));
  w.push_back(std::bit_cast<uint32_t>(offset));
  w.push_back(0u - 4u * kCellLutMagicBits);
  return w;
}

Expected<CellLut> build_cell_lut(const Codebook& book) {
  const std::vector<float>& b = book.boundaries;
  const int nb = static_cast<int>(b.size());
  const std::string what =
      "cell lut (d=" + std::to_string(book.dim) + ", b=" + std::to_string(book.bits) + ")";
  if (nb < 1 || book.centroids.size() != b.size() + 1 || book.centroids.size() > kCellLutCells)
    return invalid_argument(what + ": needs 2^b <= " + std::to_string(kCellLutCells) +
                            " centroids and 2^b - 1 boundaries");
  for (int j = 0; j < nb; ++j)
    if (!std::isfinite(b[j]) || (j > 0 && !(b[j - 1] < b[j])))
      return invalid_argument(what + ": boundaries must be finite and ascending");

  // The grid spans [b_0, b_last] (one boundary: a unit either side of it).
  const double lo = nb > 1 ? b.front() : b.front() - 1.0;
  const double hi = nb > 1 ? b.back() : b.back() + 1.0;
  CellLut lut;
  lut.scale = static_cast<float>(1.0 / (hi - lo));
  lut.offset = static_cast<float>(-lo / (hi - lo));
  if (!(lut.scale > 0.0f) || !std::isfinite(lut.scale))
    return invalid_argument(what + ": degenerate boundary range");

  const double margin = kCellLutMargin * std::max(std::fabs(static_cast<double>(b.front())),
                                                  std::fabs(static_cast<double>(b.back())));
  constexpr double kInf = std::numeric_limits<double>::infinity();
  std::vector<float> first(kCellLutCells);
  for (int k = 0; k < kCellLutCells; ++k) first[k] = first_of_cell(lut, k);
  lut.bound.assign(kCellLutCells, std::numeric_limits<float>::infinity());
  lut.cand.assign(kCellLutCells, 0u);
  lut.centroids = book.centroids;
  for (int k = 0; k < kCellLutCells; ++k) {
    // S_k = [first[k], the float before first[k + 1]], widened by the margin; the end cells
    // reach -inf and +inf.
    const double wlo = k == 0 ? -kInf : static_cast<double>(first[k]) - margin;
    const double whi = k + 1 == kCellLutCells
                           ? kInf
                           : static_cast<double>(std::nextafter(first[k + 1], -kInf)) + margin;
    int below = 0, inside = 0;
    for (int j = 0; j < nb; ++j) {
      if (b[j] < wlo) {
        ++below;
      } else if (b[j] < whi) {
        ++inside;
        lut.bound[k] = b[j];
      }
    }
    if (inside > 1)
      return unsupported(what + ": grid cell " + std::to_string(k) + " holds " +
                         std::to_string(inside) + " boundaries");
    lut.cand[k] = static_cast<uint32_t>(below);
  }
  return Expected<CellLut>(std::move(lut));
}

}  // namespace tq::quant
