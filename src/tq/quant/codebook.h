// Lloyd-Max scalar codebooks for one coordinate of a randomly rotated unit vector in R^d.
// The coordinate density is f_d(t) = Gamma(d/2) / (sqrt(pi) Gamma((d-1)/2)) (1-t^2)^((d-3)/2)
// on [-1, 1] (docs/formats.md, "Codebooks"); the optimum is solved in float64 to convergence,
// so a codebook is a pure function of (d, b) and the CPU, the GPU and every run agree.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "tq/core/status.h"

namespace tq::quant {

struct Codebook {
  int dim = 0;
  int bits = 0;
  std::vector<float> centroids;   // 2^bits, ascending, symmetric about 0
  std::vector<float> boundaries;  // 2^bits - 1 midpoints of adjacent centroids
  double mse_per_vector = 0.0;    // E||u - u~||^2 for a random unit u, under the exact f_d
  // The float64 solution the float tables are rounded from (tests check optimality on it).
  std::vector<double> centroids_f64;
  int iterations = 0;  // solver iterations used (Newton + Lloyd steps)
};

struct CodebookOptions {
  bool gaussian_approx = false;  // solve for N(0, 1/d) instead of the exact f_d
  double tol = 1e-12;            // stop when no centroid moves more than tol in one step
  int max_iter = 10000;
};

// Solves the Lloyd-Max conditions (each centroid the conditional mean of its cell, each
// boundary the midpoint of its neighbours) for f_d, d >= 3, bits 1..8.
Expected<Codebook> solve_lloyd_max(int dim, int bits, const CodebookOptions& options = {});

// The exact coordinate density f_d and its integrals, in float64 (also used by tests).
double coordinate_pdf(int dim, double t);
// P(T > x) for T ~ f_d, computed without cancellation in the tail.
double coordinate_tail(int dim, double x);

// Solved codebooks by (dim, bits), each solved once. Thread-safe. Pointers stay valid for the
// cache's lifetime, so a codec must not outlive the cache it got its codebook from.
class CodebookCache {
 public:
  explicit CodebookCache(CodebookOptions options = {}) : options_(options) {}
  CodebookCache(const CodebookCache&) = delete;
  CodebookCache& operator=(const CodebookCache&) = delete;

  Expected<const Codebook*> get(int dim, int bits);

 private:
  CodebookOptions options_;
  std::mutex mu_;
  std::map<std::pair<int, int>, std::unique_ptr<Codebook>> books_;
};

}  // namespace tq::quant
