// Randomized Hadamard and dense seeded orthogonal rotations (docs/formats.md).
#include "tq/quant/rotation.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "tq/core/rng.h"

namespace tq::quant {
namespace {

bool is_power_of_two(int n) { return n > 0 && (n & (n - 1)) == 0; }

// Q of the float64 Householder QR of a seeded Gaussian matrix, columns signed so that
// diag(R) > 0: Q is then Haar-distributed and uniquely defined by the Gaussian draw.
std::vector<float> dense_orthogonal(int d, Rng& rng) {
  const size_t n = static_cast<size_t>(d);
  std::vector<double> a(n * n);  // column-major: a[j*n + i] = A(i, j)
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j) a[j * n + i] = rng.normal();  // drawn row by row

  std::vector<std::vector<double>> reflectors(n);
  std::vector<double> r_diag(n);
  for (size_t k = 0; k < n; ++k) {
    double norm2 = 0.0;
    for (size_t i = k; i < n; ++i) norm2 += a[k * n + i] * a[k * n + i];
    const double x0 = a[k * n + k];
    const double alpha = x0 >= 0.0 ? -std::sqrt(norm2) : std::sqrt(norm2);
    std::vector<double> v(a.begin() + static_cast<long>(k * n + k),
                          a.begin() + static_cast<long>(k * n + n));
    v[0] -= alpha;
    double vnorm2 = 0.0;
    for (double e : v) vnorm2 += e * e;
    r_diag[k] = alpha;
    if (vnorm2 == 0.0) {  // column already reduced: H_k = I
      r_diag[k] = x0;
      continue;
    }
    for (size_t j = k; j < n; ++j) {  // A[k:, j] -= 2 v (v^T A[k:, j]) / (v^T v)
      double dot = 0.0;
      for (size_t i = k; i < n; ++i) dot += v[i - k] * a[j * n + i];
      const double f = 2.0 * dot / vnorm2;
      for (size_t i = k; i < n; ++i) a[j * n + i] -= f * v[i - k];
    }
    for (double& e : v) e /= std::sqrt(vnorm2);
    reflectors[k] = std::move(v);
  }
  // Q = H_0 H_1 ... H_{n-1}: apply the reflectors to I from the last one back.
  std::vector<double> q(n * n, 0.0);  // row-major
  for (size_t i = 0; i < n; ++i) q[i * n + i] = 1.0;
  for (size_t k = n; k-- > 0;) {
    const auto& v = reflectors[k];
    if (v.empty()) continue;
    for (size_t j = 0; j < n; ++j) {
      double dot = 0.0;
      for (size_t i = k; i < n; ++i) dot += v[i - k] * q[i * n + j];
      for (size_t i = k; i < n; ++i) q[i * n + j] -= 2.0 * dot * v[i - k];
    }
  }
  std::vector<float> out(n * n);
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j)
      out[i * n + j] = static_cast<float>(r_diag[j] < 0.0 ? -q[i * n + j] : q[i * n + j]);
  return out;
}

// y = M x or y = M^T x for a row-major d x d M, with 8 partial sums so the compiler can
// vectorise the reduction without -ffast-math.
void matvec(const float* m, const float* x, float* y, int d, bool transpose) {
  std::vector<float> tmp(static_cast<size_t>(d));
  if (!transpose) {
    for (int i = 0; i < d; ++i) {
      const float* row = m + static_cast<size_t>(i) * d;
      float s[8] = {};
      int j = 0;
      for (; j + 8 <= d; j += 8)
        for (int k = 0; k < 8; ++k) s[k] += row[j + k] * x[j + k];
      for (; j < d; ++j) s[0] += row[j] * x[j];
      tmp[static_cast<size_t>(i)] =
          ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    }
  } else {
    for (int j = 0; j < d; ++j) tmp[static_cast<size_t>(j)] = 0.0f;
    for (int i = 0; i < d; ++i) {
      const float* row = m + static_cast<size_t>(i) * d;
      const float xi = x[i];
      for (int j = 0; j < d; ++j) tmp[static_cast<size_t>(j)] += row[j] * xi;
    }
  }
  for (int i = 0; i < d; ++i) y[i] = tmp[static_cast<size_t>(i)];
}

}  // namespace

void fwht_ref(float* x, int n) {
  for (int h = 1; h < n; h *= 2)
    for (int i = 0; i < n; i += 2 * h)
      for (int j = i; j < i + h; ++j) {
        const float a = x[j];
        const float b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
}

Expected<Rotation> Rotation::create(int dim, uint64_t seed) {
  if (dim < 1 || dim > 1024)
    return invalid_argument("rotation dim must be in [1, 1024], got " + std::to_string(dim));
  Rng rng(derive_seed(seed, static_cast<uint64_t>(dim), kRotationSalt));
  Rotation r;
  r.dim_ = dim;
  if (is_power_of_two(dim)) {
    r.signs_.resize(static_cast<size_t>(dim));
    for (float& s : r.signs_) s = rng.coin() ? -1.0f : 1.0f;
  } else {
    r.dense_ = dense_orthogonal(dim, rng);
  }
  return r;
}

void Rotation::apply(const float* x, float* y) const {
  if (!is_hadamard()) return matvec(dense_.data(), x, y, dim_, false);
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim_));
  for (int i = 0; i < dim_; ++i) y[i] = x[i] * signs_[static_cast<size_t>(i)];  // D x
  fwht_ref(y, dim_);                                                            // H D x
  for (int i = 0; i < dim_; ++i) y[i] *= scale;
}

void Rotation::apply_inverse(const float* y, float* x) const {
  if (!is_hadamard()) return matvec(dense_.data(), y, x, dim_, true);
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim_));
  if (x != y)
    for (int i = 0; i < dim_; ++i) x[i] = y[i];
  fwht_ref(x, dim_);  // H is symmetric: P^T = D H / sqrt(d)
  for (int i = 0; i < dim_; ++i) x[i] *= scale * signs_[static_cast<size_t>(i)];
}

std::vector<float> Rotation::matrix() const {
  if (!is_hadamard()) return dense_;
  const size_t n = static_cast<size_t>(dim_);
  std::vector<float> m(n * n);
  std::vector<float> e(n), col(n);
  for (size_t j = 0; j < n; ++j) {  // column j of P = P e_j
    std::fill(e.begin(), e.end(), 0.0f);
    e[j] = 1.0f;
    apply(e.data(), col.data());
    for (size_t i = 0; i < n; ++i) m[i * n + j] = col[i];
  }
  return m;
}

}  // namespace tq::quant
