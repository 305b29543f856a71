// Lloyd-Max solver for the coordinate density f_d, in float64.
//
// Only the positive half is solved (the density is symmetric and 2^b is even). Cell masses
// come from the regularized incomplete beta function (T^2 ~ Beta(1/2, (d-1)/2)), the first
// moments in closed form, so there is no quadrature error. Initialisation uses the
// high-resolution optimum (centroid density proportional to f^(1/3), which for f_d is f_d'
// with d' = (d+6)/3), then Newton steps on the tridiagonal Lloyd fixed-point system, falling
// back to plain Lloyd steps whenever a Newton step does not help. b = 8 converges in a few
// iterations instead of tens of thousands.
#include "tq/quant/codebook.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

namespace tq::quant {
namespace {

// Continued fraction of the incomplete beta function (modified Lentz), valid for
// x < (a+1)/(a+b+2).
double beta_cf(double a, double b, double x) {
  constexpr double kTiny = 1e-300;
  constexpr double kEps = 1e-16;
  double c = 1.0;
  double d = 1.0 - (a + b) * x / (a + 1.0);
  if (std::fabs(d) < kTiny) d = kTiny;
  d = 1.0 / d;
  double h = d;
  for (int m = 1; m <= 10000; ++m) {
    const double m2 = 2.0 * m;
    double aa = m * (b - m) * x / ((a - 1.0 + m2) * (a + m2));
    d = 1.0 + aa * d;
    if (std::fabs(d) < kTiny) d = kTiny;
    c = 1.0 + aa / c;
    if (std::fabs(c) < kTiny) c = kTiny;
    d = 1.0 / d;
    h *= d * c;
    aa = -(a + m) * (a + b + m) * x / ((a + m2) * (a + 1.0 + m2));
    d = 1.0 + aa * d;
    if (std::fabs(d) < kTiny) d = kTiny;
    c = 1.0 + aa / c;
    if (std::fabs(c) < kTiny) c = kTiny;
    d = 1.0 / d;
    const double del = d * c;
    h *= del;
    if (std::fabs(del - 1.0) < kEps) break;
  }
  return h;
}

// Regularized incomplete beta I_x(a, b).
double incomplete_beta(double a, double b, double x) {
  if (x <= 0.0) return 0.0;
  if (x >= 1.0) return 1.0;
  const double log_front =
      std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) + a * std::log(x) + b * std::log1p(-x);
  const double front = std::exp(log_front);
  if (x < (a + 1.0) / (a + b + 2.0)) return front * beta_cf(a, b, x) / a;
  return 1.0 - front * beta_cf(b, a, 1.0 - x) / b;
}

// The density of one coordinate: exact f_d (real d >= 3 allowed, for the companding
// initialisation) or its N(0, 1/d) approximation.
struct Density {
  double d;
  bool gaussian;

  double upper() const { return gaussian ? std::numeric_limits<double>::infinity() : 1.0; }
  double log_norm() const {  // log of Gamma(d/2) / (sqrt(pi) Gamma((d-1)/2))
    return std::lgamma(d / 2.0) - std::lgamma((d - 1.0) / 2.0) - 0.5 * std::log(M_PI);
  }
  double pdf(double t) const {
    if (gaussian) return std::sqrt(d / (2.0 * M_PI)) * std::exp(-0.5 * d * t * t);
    if (t <= -1.0 || t >= 1.0) return 0.0;
    return std::exp(log_norm() + 0.5 * (d - 3.0) * std::log1p(-t * t));
  }
  // P(T > x), x >= 0.
  double tail(double x) const {
    if (gaussian) return 0.5 * std::erfc(x * std::sqrt(d / 2.0));
    if (x >= 1.0) return 0.0;
    return 0.5 * incomplete_beta((d - 1.0) / 2.0, 0.5, 1.0 - x * x);
  }
  // Integral of t f(t) over [a, b], 0 <= a < b.
  double moment(double a, double b) const {
    if (gaussian) return (pdf(a) - pdf(b)) / d;
    const auto prim = [&](double t) {  // -(K/(d-1)) (1-t^2)^((d-1)/2), up to sign
      return t >= 1.0 ? 0.0 : std::exp(log_norm() + 0.5 * (d - 1.0) * std::log1p(-t * t));
    };
    return (prim(a) - prim(b)) / (d - 1.0);
  }
  // Integral of t^2 f(t) over [x, upper) (exact f_d only: T^2 ~ Beta(1/2, (d-1)/2)).
  double second_moment_tail(double x) const {
    if (x >= 1.0) return 0.0;
    return 0.5 / d * incomplete_beta((d - 1.0) / 2.0, 1.5, 1.0 - x * x);
  }
};

// x >= 0 with tail(x) = p, by bisection (used once per centroid for the initial guess).
double tail_quantile(const Density& f, double p) {
  double lo = 0.0;
  double hi = f.gaussian ? 40.0 / std::sqrt(f.d) : 1.0;
  for (int i = 0; i < 200 && hi - lo > 1e-17; ++i) {
    const double mid = 0.5 * (lo + hi);
    (f.tail(mid) > p ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

struct HalfState {
  std::vector<double> edge;  // [m+1] cell edges, edge[0] = 0, edge[m] = upper
  std::vector<double> mass;  // [m]
  std::vector<double> mean;  // [m] the Lloyd map T(c)
};

HalfState lloyd_map(const Density& f, const std::vector<double>& c) {
  const size_t m = c.size();
  HalfState s;
  s.edge.resize(m + 1);
  s.edge[0] = 0.0;
  s.edge[m] = f.upper();
  for (size_t k = 1; k < m; ++k) s.edge[k] = 0.5 * (c[k - 1] + c[k]);
  s.mass.resize(m);
  s.mean.resize(m);
  std::vector<double> tails(m + 1);
  for (size_t k = 0; k <= m; ++k) tails[k] = f.tail(s.edge[k]);
  for (size_t k = 0; k < m; ++k) {
    s.mass[k] = tails[k] - tails[k + 1];
    const double mom = f.moment(s.edge[k], s.edge[k + 1]);
    // A cell far out in the tail can have a mass below what float64 resolves: keep its
    // centroid in the cell instead of dividing 0 by 0.
    s.mean[k] =
        s.mass[k] > 1e-300 ? mom / s.mass[k] : 0.5 * (s.edge[k] + std::min(s.edge[k + 1], 1.0));
  }
  return s;
}

double max_step(const std::vector<double>& c, const HalfState& s) {
  double r = 0.0;
  for (size_t k = 0; k < c.size(); ++k) r = std::max(r, std::fabs(s.mean[k] - c[k]));
  return r;
}

bool valid_centroids(const Density& f, const std::vector<double>& c) {
  for (size_t k = 0; k < c.size(); ++k) {
    if (!(c[k] > 0.0) || !(c[k] < f.upper())) return false;
    if (k > 0 && !(c[k] > c[k - 1])) return false;
  }
  return true;
}

// One Newton step on g(c) = c - T(c); J_T is tridiagonal (centroid k depends on the edges of
// its own cell, which are midpoints of its neighbours). Solved with the Thomas algorithm.
std::vector<double> newton_step(const Density& f, const std::vector<double>& c,
                                const HalfState& s) {
  const size_t m = c.size();
  std::vector<double> lower(m, 0.0), diag(m, 1.0), upper(m, 0.0), rhs(m);
  for (size_t k = 0; k < m; ++k) {
    rhs[k] = s.mean[k] - c[k];
    if (!(s.mass[k] > 1e-300)) continue;
    if (k > 0) {  // lower edge moves with c[k-1] and c[k]
      const double alpha = f.pdf(s.edge[k]) * (s.mean[k] - s.edge[k]) / s.mass[k];
      lower[k] -= 0.5 * alpha;
      diag[k] -= 0.5 * alpha;
    }
    if (k + 1 < m) {  // upper edge moves with c[k] and c[k+1]
      const double beta = f.pdf(s.edge[k + 1]) * (s.edge[k + 1] - s.mean[k]) / s.mass[k];
      upper[k] -= 0.5 * beta;
      diag[k] -= 0.5 * beta;
    }
  }
  for (size_t k = 1; k < m; ++k) {
    const double w = lower[k] / diag[k - 1];
    diag[k] -= w * upper[k - 1];
    rhs[k] -= w * rhs[k - 1];
  }
  std::vector<double> delta(m);
  delta[m - 1] = rhs[m - 1] / diag[m - 1];
  for (size_t k = m - 1; k-- > 0;) delta[k] = (rhs[k] - upper[k] * delta[k + 1]) / diag[k];
  std::vector<double> out(m);
  for (size_t k = 0; k < m; ++k) out[k] = c[k] + delta[k];
  return out;
}

// d * E[(T - Q(T))^2] under the exact f_d, for any symmetric codebook (positive half `c`).
double exact_mse(int dim, const std::vector<double>& c) {
  const Density f{static_cast<double>(dim), false};
  const size_t m = c.size();
  double sum = 0.0;
  for (size_t k = 0; k < m; ++k) {
    const double a = k == 0 ? 0.0 : 0.5 * (c[k - 1] + c[k]);
    const double b = k + 1 == m ? 1.0 : std::min(1.0, 0.5 * (c[k] + c[k + 1]));
    if (a >= 1.0) continue;
    const double mass = f.tail(a) - f.tail(b);
    const double m1 = f.moment(a, b);
    const double m2 = f.second_moment_tail(a) - f.second_moment_tail(b);
    sum += m2 - 2.0 * c[k] * m1 + c[k] * c[k] * mass;
  }
  return 2.0 * dim * sum;
}

}  // namespace

double coordinate_pdf(int dim, double t) { return Density{static_cast<double>(dim), false}.pdf(t); }

double coordinate_tail(int dim, double x) {
  const Density f{static_cast<double>(dim), false};
  return x >= 0.0 ? f.tail(x) : 1.0 - f.tail(-x);
}

Expected<Codebook> solve_lloyd_max(int dim, int bits, const CodebookOptions& options) {
  if (dim < 3 || dim > 65536)
    return invalid_argument("codebook dim must be in [3, 65536], got " + std::to_string(dim));
  if (bits < 1 || bits > 8)
    return invalid_argument("codebook bits must be in [1, 8], got " + std::to_string(bits));
  if (!(options.tol > 0.0) || options.max_iter < 1)
    return invalid_argument("codebook solver needs tol > 0 and max_iter >= 1");

  const Density f{static_cast<double>(dim), options.gaussian_approx};
  const int levels = 1 << bits;
  const size_t m = static_cast<size_t>(levels / 2);

  // High-resolution initial guess: quantiles of f^(1/3) at (i + 1/2) / levels.
  const Density companded =
      f.gaussian ? Density{f.d / 3.0, true} : Density{(f.d + 6.0) / 3.0, false};
  std::vector<double> c(m);
  for (size_t k = 0; k < m; ++k)
    c[k] = tail_quantile(companded, 0.5 - (static_cast<double>(k) + 0.5) / levels);

  HalfState s = lloyd_map(f, c);
  double step = max_step(c, s);
  int iter = 0;
  while (step > options.tol && iter < options.max_iter) {
    ++iter;
    std::vector<double> next = newton_step(f, c, s);
    if (valid_centroids(f, next)) {
      HalfState ns = lloyd_map(f, next);
      const double nstep = max_step(next, ns);
      if (nstep < step) {
        c = std::move(next);
        s = std::move(ns);
        step = nstep;
        continue;
      }
    }
    c = s.mean;  // plain Lloyd step: always improves the distortion
    s = lloyd_map(f, c);
    step = max_step(c, s);
  }
  if (step > options.tol)
    return internal_error("Lloyd-Max did not converge for d=" + std::to_string(dim) +
                          ", b=" + std::to_string(bits) + " (step " + std::to_string(step) + ")");

  Codebook book;
  book.dim = dim;
  book.bits = bits;
  book.iterations = iter;
  book.centroids_f64.resize(static_cast<size_t>(levels));
  for (size_t k = 0; k < m; ++k) {
    book.centroids_f64[m + k] = c[k];
    book.centroids_f64[m - 1 - k] = -c[k];
  }
  for (double v : book.centroids_f64) book.centroids.push_back(static_cast<float>(v));
  for (int k = 0; k + 1 < levels; ++k)
    book.boundaries.push_back(
        static_cast<float>(0.5 * (book.centroids_f64[k] + book.centroids_f64[k + 1])));
  book.mse_per_vector = exact_mse(dim, c);
  return book;
}

Expected<const Codebook*> CodebookCache::get(int dim, int bits) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = books_.find({dim, bits});
  if (it != books_.end()) return it->second.get();
  TQ_ASSIGN_OR_RETURN(Codebook book, solve_lloyd_max(dim, bits, options_));
  auto owned = std::make_unique<Codebook>(std::move(book));
  const Codebook* ptr = owned.get();
  books_.emplace(std::make_pair(dim, bits), std::move(owned));
  return ptr;
}

}  // namespace tq::quant
