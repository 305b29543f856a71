// The QJL sketch of TurboQuant_prod: a fixed d x d matrix S of i.i.d. N(0, 1) entries from
// the layer seed. The residual r of the mse stage is stored as sign(S r) and ||r||, and
// <q, r> is estimated (unbiasedly) as sqrt(pi/2)/d * ||r|| * <S q, sign(S r)>.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace tq::quant {

// Row-major S from Rng(derive_seed(seed, dim, kQjlSalt)), drawn row by row.
std::vector<float> qjl_matrix(int dim, uint64_t seed);

// sqrt(pi/2) / d: the factor that makes the sign sketch an unbiased inner-product estimate.
inline double qjl_scale(int dim) { return std::sqrt(M_PI / 2.0) / dim; }

}  // namespace tq::quant
