// Rotations: orthogonality for every head dim, apply == matrix, determinism from the seed.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "tq/core/rng.h"
#include "tq/quant/qjl.h"
#include "tq/quant/rotation.h"

namespace tq::quant {
namespace {

constexpr double kOrthoTol = 1e-5;  // |(P P^T)_ij - delta_ij| in float
constexpr uint64_t kSeed = 0x5eed;

TEST(Rotation, IsOrthogonalForEveryHeadDim) {
  for (int d : {3, 8, 24, 64, 80, 96, 112, 128, 256}) {
    auto rot = Rotation::create(d, kSeed);
    ASSERT_TRUE(rot.ok());
    EXPECT_EQ(rot->is_hadamard(), (d & (d - 1)) == 0) << d;
    EXPECT_EQ(rot->signs().size(), rot->is_hadamard() ? size_t(d) : 0u);
    const std::vector<float> p = rot->matrix();
    double worst = 0.0;
    for (int i = 0; i < d; ++i)
      for (int j = 0; j < d; ++j) {
        double s = 0.0;
        for (int k = 0; k < d; ++k) s += double(p[i * d + k]) * p[j * d + k];
        worst = std::max(worst, std::fabs(s - (i == j ? 1.0 : 0.0)));
      }
    EXPECT_LT(worst, kOrthoTol) << "d=" << d << " seed=" << kSeed;
  }
}

TEST(Rotation, ApplyMatchesMatrixAndInverseInverts) {
  Rng rng(7);
  for (int d : {64, 80, 96, 112, 128, 256}) {
    auto rot = Rotation::create(d, kSeed);
    ASSERT_TRUE(rot.ok());
    const std::vector<float> p = rot->matrix();
    std::vector<float> x(d), y(d), back(d);
    for (auto& v : x) v = static_cast<float>(rng.normal());
    rot->apply(x.data(), y.data());
    for (int i = 0; i < d; ++i) {
      double s = 0.0;
      for (int k = 0; k < d; ++k) s += double(p[i * d + k]) * x[k];
      EXPECT_NEAR(y[i], s, 1e-5) << "d=" << d << " i=" << i;
    }
    rot->apply_inverse(y.data(), back.data());
    for (int i = 0; i < d; ++i) EXPECT_NEAR(back[i], x[i], 1e-5) << "d=" << d;
    std::vector<float> inplace = x;  // aliasing allowed
    rot->apply(inplace.data(), inplace.data());
    for (int i = 0; i < d; ++i) EXPECT_NEAR(inplace[i], y[i], 1e-6) << "d=" << d;
  }
}

TEST(Rotation, IsAPureFunctionOfSeedAndDim) {
  for (int d : {80, 128}) {
    const auto a = Rotation::create(d, kSeed)->matrix();
    const auto b = Rotation::create(d, kSeed)->matrix();
    const auto c = Rotation::create(d, kSeed + 1)->matrix();
    EXPECT_EQ(a, b);
    EXPECT_NE(a, c);
  }
  EXPECT_FALSE(Rotation::create(0, kSeed).ok());
  EXPECT_FALSE(Rotation::create(2048, kSeed).ok());
  // QJL matrix: deterministic, roughly standard normal entries.
  const auto s = qjl_matrix(128, kSeed);
  EXPECT_EQ(s, qjl_matrix(128, kSeed));
  double mean = 0.0, var = 0.0;
  for (float v : s) mean += v;
  mean /= s.size();
  for (float v : s) var += (v - mean) * (v - mean);
  var /= s.size();
  EXPECT_NEAR(mean, 0.0, 4.0 / std::sqrt(double(s.size())));
  EXPECT_NEAR(var, 1.0, 0.03);
}

}  // namespace
}  // namespace tq::quant
