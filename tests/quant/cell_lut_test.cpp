// The GPU's uniform-grid cell lookup (quant/cell_lut.h), emulated on the host bit for bit, must
// give exactly quant::quantize_coordinate's code (tolerance: none) for every tq bit width the
// GPU writes (1..4) and head dim, on boundaries, +-1..4 ulps around them, the grid's own cell
// edges, random coordinates, huge values, infinities, zeros, subnormals and NaN.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "tq/quant/cell_lut.h"
#include "tq/quant/codebook.h"
#include "tq/quant/codec_impl.h"

namespace tq::quant {
namespace {

constexpr uint64_t kSeed = 0x7151u;

// The device lookup, read from the uploaded image as the kernels read it: the cell, then bound
// and 1.5 * 2^23 + cand (a float) at word offsets 0 and 32 of its column, the code as that
// float plus (y > bound ? 1.0f : 0.0f), the centroid at 64 + code.
struct ImageLookup {
  int code;
  float centroid;  // the centroid the norm correction sums
};
ImageLookup lookup_image(const std::vector<uint32_t>& img, float y) {
  const float scale = std::bit_cast<float>(img[3 * kCellLutCells]);
  const float offset = std::bit_cast<float>(img[3 * kCellLutCells + 1]);
  float t = std::fma(y, scale, offset);
  t = t > 0.0f ? (t < 1.0f ? t : 1.0f) : 0.0f;  // .SAT: NaN -> 0
  const float g = std::fma(t, static_cast<float>(kCellLutCells - 1), kCellLutMagic);
  const uint32_t k = std::bit_cast<uint32_t>(g) - kCellLutMagicBits;
  EXPECT_LT(k, static_cast<uint32_t>(kCellLutCells));
  const float up = y > std::bit_cast<float>(img[k]) ? 1.0f : 0.0f;  // set.gt.f32.f32
  const float biased = std::bit_cast<float>(img[kCellLutCells + k]) + up;
  const uint32_t code = std::bit_cast<uint32_t>(biased) - kCellLutMagicBits;
  EXPECT_LT(code, static_cast<uint32_t>(kCellLutCells));
  return {static_cast<int>(code), std::bit_cast<float>(img[2 * kCellLutCells + code])};
}

std::vector<float> probe_values(const Codebook& book, const CellLut& lut) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  std::vector<float> v = {0.0f,
                          -0.0f,
                          1.0f,
                          -1.0f,
                          1e-30f,
                          -1e-30f,
                          1e30f,
                          -1e30f,
                          std::numeric_limits<float>::max(),
                          -std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::denorm_min(),
                          -std::numeric_limits<float>::denorm_min(),
                          kInf,
                          -kInf,
                          std::numeric_limits<float>::quiet_NaN(),
                          -std::numeric_limits<float>::quiet_NaN()};
  const auto around = [&](float x) {  // x and 4 ulps either side
    float up = x, down = x;
    v.push_back(x);
    for (int i = 0; i < 4; ++i) {
      up = std::nextafter(up, kInf);
      down = std::nextafter(down, -kInf);
      v.push_back(up);
      v.push_back(down);
    }
  };
  for (float b : book.boundaries) around(b);
  for (float c : book.centroids) around(c);
  // The grid's own edges: the first float of each cell k >= 1, by bisection over the ordered
  // floats (key: sign-magnitude to unsigned order).
  const auto key = [](float f) {
    const uint32_t u = std::bit_cast<uint32_t>(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  };
  const auto unkey = [](uint32_t k) {
    return std::bit_cast<float>((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
  };
  for (int k = 1; k < kCellLutCells; ++k) {
    uint32_t lo = key(-kInf), hi = key(kInf);
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo) / 2;
      if (cell_lut_grid(lut, unkey(mid)) >= k) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    around(unkey(lo));
  }
  std::mt19937_64 rng(kSeed);
  std::normal_distribution<float> coord(0.0f, 1.0f / std::sqrt(static_cast<float>(book.dim)));
  std::uniform_real_distribution<float> wide(-1.25f, 1.25f);
  for (int i = 0; i < 50000; ++i) v.push_back(coord(rng));
  for (int i = 0; i < 20000; ++i) v.push_back(wide(rng));
  return v;
}

TEST(CellLut, CodesEqualTheBinarySearchExactly) {
  CodebookCache books;
  for (int d : {64, 80, 96, 112, 128, 256}) {
    for (int bits = 1; bits <= 4; ++bits) {
      auto book = books.get(d, bits);
      ASSERT_TRUE(book.ok()) << book.status().to_string();
      auto lut = build_cell_lut(**book);
      ASSERT_TRUE(lut.ok()) << "d=" << d << " b=" << bits << ": " << lut.status().to_string();
      const std::vector<uint32_t> img = lut->image();
      ASSERT_EQ(img.size(), static_cast<size_t>(CellLut::kImageWords));
      long long bad = 0, checked = 0;
      for (float y : probe_values(**book, *lut)) {
        const int want = quantize_coordinate((*book)->boundaries.data(), bits, y);
        const int got = cell_lut_code(*lut, y);
        const ImageLookup dev = lookup_image(img, y);
        ++checked;
        if (got != want || dev.code != want || dev.centroid != (*book)->centroids[want]) {
          if (++bad <= 5)
            ADD_FAILURE() << "d=" << d << " b=" << bits << " seed=" << kSeed << " y=" << y
                          << " (bits 0x" << std::hex << std::bit_cast<uint32_t>(y) << std::dec
                          << "): binary search " << want << ", lut " << got << ", image "
                          << dev.code;
        }
      }
      EXPECT_EQ(bad, 0) << "d=" << d << " b=" << bits << " of " << checked;
    }
  }
}

// Float64 reference: the code is the float64 count of boundaries below y; cand is monotone and
// about every boundary has a cell of its own.
TEST(CellLut, AgreesWithFloat64CountAndHoldsOneBoundaryPerCell) {
  CodebookCache books;
  for (int d : {64, 128, 256}) {
    for (int bits = 1; bits <= 4; ++bits) {
      const Codebook& book = **books.get(d, bits);
      auto lut = build_cell_lut(book);
      ASSERT_TRUE(lut.ok());
      int with_bound = 0;
      for (int k = 0; k < kCellLutCells; ++k) {
        with_bound += std::isfinite(lut->bound[k]) ? 1 : 0;
        EXPECT_LE(lut->cand[k], static_cast<uint32_t>(book.boundaries.size()));
        if (k > 0) {
          EXPECT_LE(lut->cand[k - 1], lut->cand[k]);
        }
      }
      EXPECT_GE(with_bound, static_cast<int>(book.boundaries.size()) / 2);
      std::mt19937_64 rng(kSeed + d * 8 + bits);
      std::uniform_real_distribution<float> u(-0.6f, 0.6f);
      for (int i = 0; i < 20000; ++i) {
        const float y = u(rng);
        int want = 0;  // a linear count in float64, independent of the binary search
        for (float b : book.boundaries)
          want += static_cast<double>(y) > static_cast<double>(b) ? 1 : 0;
        EXPECT_EQ(cell_lut_code(*lut, y), want) << "d=" << d << " y=" << y;
      }
    }
  }
}

TEST(CellLut, RefusesAGridWithTwoBoundariesInACell) {
  CodebookCache books;
  auto book = books.get(128, 5);  // 31 boundaries, denser in the middle than 32 cells
  ASSERT_TRUE(book.ok());
  auto lut = build_cell_lut(**book);
  ASSERT_FALSE(lut.ok());
  EXPECT_EQ(lut.status().code(), StatusCode::kUnsupported);
  auto wide = books.get(128, 8);  // more centroids than the table's column holds
  ASSERT_TRUE(wide.ok());
  EXPECT_EQ(build_cell_lut(**wide).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tq::quant
