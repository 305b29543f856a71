// The random orthogonal rotation P applied to every unit vector before scalar quantization.
// Power-of-two d: randomized Hadamard P = H D / sqrt(d), applied in O(d log d) with the fast
// Walsh-Hadamard transform. Other d (80, 96, 112): a dense orthogonal matrix from the float64
// Householder QR of a seeded Gaussian matrix, signs fixed so diag(R) > 0. docs/formats.md,
// "Rotations and seeds", is the normative description.
#pragma once

#include <cstdint>
#include <vector>

#include "tq/core/status.h"

namespace tq::quant {

// Salts that separate the random streams drawn from one layer seed.
inline constexpr uint64_t kRotationSalt = 0x726f74u;  // "rot"
inline constexpr uint64_t kQjlSalt = 0x716a6cu;       // "qjl"

class Rotation {
 public:
  // dim in [1, 1024]; draws from Rng(derive_seed(seed, dim, kRotationSalt)).
  static Expected<Rotation> create(int dim, uint64_t seed);

  int dim() const { return dim_; }
  bool is_hadamard() const { return !signs_.empty(); }

  void apply(const float* x, float* y) const;          // y = P x (x and y may alias)
  void apply_inverse(const float* y, float* x) const;  // x = P^T y (may alias)

  // Dense row-major d x d P (for GPU upload and tests).
  std::vector<float> matrix() const;
  // Hadamard's D diagonal (+-1); empty for the dense rotation.
  const std::vector<float>& signs() const { return signs_; }

 private:
  Rotation() = default;
  int dim_ = 0;
  std::vector<float> signs_;  // [d] Hadamard only
  std::vector<float> dense_;  // [d][d] row-major P, dense only
};

// In-place unnormalized fast Walsh-Hadamard transform (Sylvester order), n a power of two.
void fwht_ref(float* x, int n);

}  // namespace tq::quant
