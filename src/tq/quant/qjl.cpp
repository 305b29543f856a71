// The seeded Gaussian QJL sketch matrix.
#include "tq/quant/qjl.h"

#include "tq/core/rng.h"
#include "tq/quant/rotation.h"

namespace tq::quant {

std::vector<float> qjl_matrix(int dim, uint64_t seed) {
  if (dim <= 0) return {};
  Rng rng(derive_seed(seed, static_cast<uint64_t>(dim), kQjlSalt));
  std::vector<float> s(static_cast<size_t>(dim) * static_cast<size_t>(dim));
  for (float& v : s) v = static_cast<float>(rng.normal());
  return s;
}

}  // namespace tq::quant
