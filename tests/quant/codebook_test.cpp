// Lloyd-Max codebooks: optimality checked by independent quadrature, known distortions, cache.
#include <gtest/gtest.h>

#include <cmath>
#include <thread>
#include <vector>

#include "tq/quant/codebook.h"

namespace tq::quant {
namespace {

// Composite 10-point Gauss-Legendre of g over [a, b]: independent of the solver's closed forms.
template <typename G>
double integrate(G g, double a, double b, int pieces = 400) {
  static const double x[5] = {0.1488743389816312, 0.4333953941292472, 0.6794095682990244,
                              0.8650633666889845, 0.9739065285171717};
  static const double w[5] = {0.2955242247147529, 0.2692667193099963, 0.2190863625159820,
                              0.1494513491505806, 0.0666713443086881};
  double sum = 0.0;
  const double h = (b - a) / pieces;
  for (int p = 0; p < pieces; ++p) {
    const double mid = a + (p + 0.5) * h, half = 0.5 * h;
    for (int k = 0; k < 5; ++k) sum += w[k] * half * (g(mid - half * x[k]) + g(mid + half * x[k]));
  }
  return sum;
}

constexpr double kCentroidTol = 1e-9;  // |c_k - E[T | T in cell k]|
constexpr double kBoundaryTol = 1e-7;  // float boundary vs float64 midpoint

TEST(Codebook, CentroidsAreConditionalMeansAndBoundariesMidpoints) {
  for (int d : {64, 80, 128, 256}) {
    for (int b : {1, 2, 3, 4, 8}) {
      if (b == 8 && d != 128) continue;  // one b = 8 case keeps the test fast
      auto book = solve_lloyd_max(d, b);
      ASSERT_TRUE(book.ok()) << book.status().to_string();
      const auto& c = book->centroids_f64;
      ASSERT_EQ(c.size(), size_t{1} << b);
      ASSERT_EQ(book->boundaries.size(), c.size() - 1);
      const auto pdf = [d](double t) { return coordinate_pdf(d, t); };
      for (size_t k = 0; k < c.size(); ++k) {
        const double lo = k == 0 ? -1.0 : 0.5 * (c[k - 1] + c[k]);
        const double hi = k + 1 == c.size() ? 1.0 : 0.5 * (c[k] + c[k + 1]);
        const double mass = integrate(pdf, lo, hi);
        const double mean = integrate([&](double t) { return t * pdf(t); }, lo, hi) / mass;
        EXPECT_NEAR(c[k], mean, kCentroidTol) << "d=" << d << " b=" << b << " k=" << k;
        EXPECT_NEAR(c[k], -c[c.size() - 1 - k], 1e-15) << "symmetry d=" << d << " b=" << b;
        if (k + 1 < c.size()) {
          EXPECT_NEAR(book->boundaries[k], 0.5 * (c[k] + c[k + 1]), kBoundaryTol);
        }
        if (k > 0) {
          EXPECT_LT(c[k - 1], c[k]);
        }
      }
    }
  }
}

TEST(Codebook, DistortionMatchesQuadratureAndThePaper) {
  // d = 128: the values the TurboQuant paper reports (about .36, .117, .03, .009).
  const double expected[5] = {0, 0.3609, 0.1160, 0.03397, 0.009315};
  for (int b = 1; b <= 4; ++b) {
    auto book = solve_lloyd_max(128, b);
    ASSERT_TRUE(book.ok());
    EXPECT_NEAR(book->mse_per_vector, expected[b], 0.002 * expected[b]) << "b=" << b;
    // d * E[(T - Q(T))^2] by quadrature.
    const auto& c = book->centroids_f64;
    double mse = 0.0;
    for (size_t k = 0; k < c.size(); ++k) {
      const double lo = k == 0 ? -1.0 : 0.5 * (c[k - 1] + c[k]);
      const double hi = k + 1 == c.size() ? 1.0 : 0.5 * (c[k] + c[k + 1]);
      mse += integrate([&](double t) { return (t - c[k]) * (t - c[k]) * coordinate_pdf(128, t); },
                       lo, hi);
    }
    EXPECT_NEAR(book->mse_per_vector, 128 * mse, 1e-9 * book->mse_per_vector) << "b=" << b;
    // The paper's upper bound sqrt(3) pi / 2 * 4^-b.
    EXPECT_LT(book->mse_per_vector, std::sqrt(3.0) * M_PI / 2.0 * std::pow(4.0, -b));
  }
}

TEST(Codebook, GaussianApproximationIsCloseForLargeDimsAndWorseForSmall) {
  CodebookOptions gauss;
  gauss.gaussian_approx = true;
  for (int b = 1; b <= 4; ++b) {
    auto exact = solve_lloyd_max(256, b);
    auto approx = solve_lloyd_max(256, b, gauss);
    ASSERT_TRUE(exact.ok() && approx.ok());
    // Both distortions are evaluated under the exact f_d: the exact optimum is never worse.
    EXPECT_LE(exact->mse_per_vector, approx->mse_per_vector * (1 + 1e-12)) << b;
    EXPECT_NEAR(exact->mse_per_vector, approx->mse_per_vector, 0.003 * exact->mse_per_vector) << b;
  }
  auto exact = solve_lloyd_max(8, 3);
  auto approx = solve_lloyd_max(8, 3, gauss);
  ASSERT_TRUE(exact.ok() && approx.ok());
  EXPECT_LT(exact->mse_per_vector, 0.95 * approx->mse_per_vector);
}

TEST(Codebook, SmallDimIsUniformAndTailIsConsistent) {
  // d = 3: f_3 is uniform on [-1, 1], whose Lloyd-Max quantizer is uniform.
  auto book = solve_lloyd_max(3, 2);
  ASSERT_TRUE(book.ok());
  const double expected[4] = {-0.75, -0.25, 0.25, 0.75};
  for (int k = 0; k < 4; ++k) EXPECT_NEAR(book->centroids_f64[k], expected[k], 1e-12);
  for (double x : {0.0, 0.05, 0.1, 0.3}) {
    const double tail = integrate([](double t) { return coordinate_pdf(128, t); }, x, 1.0);
    EXPECT_NEAR(coordinate_tail(128, x), tail, 1e-13) << x;
  }
}

TEST(Codebook, RejectsBadArgumentsAndCachesOnce) {
  EXPECT_FALSE(solve_lloyd_max(2, 3).ok());
  EXPECT_FALSE(solve_lloyd_max(128, 0).ok());
  EXPECT_FALSE(solve_lloyd_max(128, 9).ok());
  CodebookCache cache;
  EXPECT_FALSE(cache.get(128, 9).ok());
  std::vector<const Codebook*> got(4, nullptr);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) threads.emplace_back([&, t] { got[t] = *cache.get(96, 4); });
  for (auto& th : threads) th.join();
  for (int t = 1; t < 4; ++t) EXPECT_EQ(got[t], got[0]);
  EXPECT_EQ(got[0]->dim, 96);
  EXPECT_EQ(got[0]->bits, 4);
}

}  // namespace
}  // namespace tq::quant
