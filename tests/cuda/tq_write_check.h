// Host-side check of tq mse pages written by the float32 quantize-on-write kernels against a
// float64 reference of the same input and the CPU codec (quant::VectorCodec::encode):
// - codes: a code may differ from the float64 cell of the rotated unit vector, and from the CPU
//   codec's code, only at a coordinate whose float64 value lies within kNearCell of the cell
//   width (the centroid spacing across that boundary) of a boundary, and only by one cell;
//   such flips number at most kMaxFlipFraction of the coordinates;
// - norms: the stored fp16 norm is the fp16 rounding of a value within kNormRel (relative) of
//   the float64 norm (divided by the float64 ||C[idx]|| of the written codes under norm
//   correction);
// - zero vectors are stored exactly as the CPU stores them (norm 0, codes 0);
// - decoded vectors: the mean of ||x - x~||^2 / ||x||^2 is within kMseRel of the CPU codec's own.
// tq prod (QJL) pages (TqPageGeometry::qjl set), written with an fp16 sign sketch on the tensor
// cores: the codes and norm as above, and
// - signs: bit i equals sign((S r)_i) of the float64 residual r = y - C[idx] of the written codes,
//   except where |(S r)_i| <= kSignTol ||r|| (fp16 rounding decides there); such flips number at
//   most kMaxSignFlipFraction of the signs;
// - the residual norm: the fp16 rounding of a value within kResidualRel of the float64 ||r||;
// - decoded vectors: within kMseRelQjl of the CPU codec's mean error (a flipped sign moves the
//   decode by 2 sqrt(pi/2) / d ||r|| S_i, whatever the sign's margin).
// No CUDA here (a CPU build can run it on emulated pages).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "tq/core/fp16.h"
#include "tq/quant/bitpack.h"
#include "tq/quant/codebook.h"
#include "tq/quant/codec.h"
#include "tq/quant/rotation.h"

namespace tq::test {

inline constexpr double kNearCell = 1e-5;
inline constexpr double kMaxFlipFraction = 1e-4;
inline constexpr double kNormRel = 1e-6;
inline constexpr double kMseRel = 1e-3;
inline constexpr double kSignTol = 1e-2;
inline constexpr double kMaxSignFlipFraction = 2e-3;
inline constexpr double kResidualRel = 1e-5;
inline constexpr double kMseRelQjl = 3e-2;

struct TqPageGeometry {
  int dim = 0, bits = 0, heads = 0, cap = 0;  // bits: code bits (of the mse part for prod)
  size_t head_stride = 0, block_stride = 0;
  bool norm_correction = false;
  const std::vector<float>* qjl = nullptr;  // S (row-major d x d) of a tq prod pool, else null
};

struct TqCheckResult {
  int vectors = 0;
  long long coords = 0;
  long long near = 0;          // coordinates within kNearCell of a boundary (float64)
  long long flips_vs_cpu = 0;  // codes that differ from the CPU codec's
  long long flips_vs_f64 = 0;  // codes that differ from the float64 cell
  long long bad_codes = 0;     // differences not explained by a near-boundary coordinate
  int bad_norms = 0;
  int bad_zero = 0;
  double mse_gpu = 0.0, mse_cpu = 0.0;  // mean ||x - x~||^2 / ||x||^2 over nonzero vectors
  double max_norm_rel = 0.0;  // largest |fp16 norm - ref| / ref seen (incl. fp16 rounding)
  long long signs = 0;        // QJL sign bits checked
  long long sign_flips = 0;   // bits that differ from sign((S r)_i) in float64
  long long bad_signs = 0;    // flips where |(S r)_i| > kSignTol ||r||
  int bad_residuals = 0;      // residual norms not from within kResidualRel of the float64 ||r||
};

inline double f16_value(uint16_t h) { return static_cast<double>(f16_to_f32(h)); }

// x: [tokens][heads][dim]; slots: slot_mapping (negative: skipped); gpu / cpu: the pools.
inline TqCheckResult check_tq_pages(const std::vector<float>& x, const std::vector<int32_t>& slots,
                                    const TqPageGeometry& g, const std::vector<uint8_t>& gpu,
                                    const std::vector<uint8_t>& cpu, const quant::Codebook& book,
                                    const quant::Rotation& rot, const quant::VectorCodec& codec) {
  TqCheckResult r;
  const int d = g.dim, nb = (1 << g.bits) - 1;
  const size_t code_bytes = static_cast<size_t>(d) * g.bits / 8;
  const size_t sign_bytes = g.qjl ? static_cast<size_t>(d) / 8 : 0;
  const size_t norms_at = g.cap * (code_bytes + sign_bytes);  // then the residual norms (prod)
  const std::vector<float>& signs = rot.signs();
  std::vector<double> res(d);
  std::vector<double> y(d);
  std::vector<uint8_t> gc(d), cc(d);
  std::vector<float> dec(d);
  double sum_gpu = 0.0, sum_cpu = 0.0;
  int nonzero = 0;
  for (size_t t = 0; t < slots.size(); ++t) {
    if (slots[t] < 0) continue;
    const int s = slots[t] % g.cap;
    for (int h = 0; h < g.heads; ++h) {
      ++r.vectors;
      const float* xv = x.data() + (t * g.heads + h) * d;
      const size_t off = static_cast<size_t>(slots[t] / g.cap) * g.block_stride + h * g.head_stride;
      const uint8_t* gb = gpu.data() + off;
      const uint8_t* cb = cpu.data() + off;
      uint16_t gn, cn;
      std::memcpy(&gn, gb + norms_at + 2 * s, 2);
      std::memcpy(&cn, cb + norms_at + 2 * s, 2);
      double n2 = 0.0;
      for (int j = 0; j < d; ++j) n2 += static_cast<double>(xv[j]) * xv[j];
      if (n2 == 0.0) {  // stored exactly as the CPU stores it
        if (gn != cn || std::memcmp(gb + s * code_bytes, cb + s * code_bytes, code_bytes) != 0)
          ++r.bad_zero;
        if (g.qjl && (std::memcmp(gb + g.cap * code_bytes + s * sign_bytes,
                                  cb + g.cap * code_bytes + s * sign_bytes, sign_bytes) != 0 ||
                      std::memcmp(gb + norms_at + 2 * g.cap + 2 * s,
                                  cb + norms_at + 2 * g.cap + 2 * s, 2) != 0))
          ++r.bad_zero;
        continue;
      }
      const double norm = std::sqrt(n2);
      for (int j = 0; j < d; ++j) y[j] = signs[j] * (xv[j] / norm);
      for (int hh = 1; hh < d; hh *= 2)  // float64 Walsh-Hadamard
        for (int i = 0; i < d; i += 2 * hh)
          for (int j = i; j < i + hh; ++j) {
            const double a = y[j], b = y[j + hh];
            y[j] = a + b;
            y[j + hh] = a - b;
          }
      quant::unpack_bits(g.bits, gb + s * code_bytes, d, gc.data());
      quant::unpack_bits(g.bits, cb + s * code_bytes, d, cc.data());
      double recon2 = 0.0;
      for (int j = 0; j < d; ++j) {
        r.coords++;
        const double yj = y[j] / std::sqrt(static_cast<double>(d));
        int cell = 0;
        for (int k = 0; k < nb; ++k) cell += yj > book.boundaries[k] ? 1 : 0;
        // Within kNearCell of boundary k (between cells k and k + 1)?
        const auto near_boundary = [&](int k) {
          if (k < 0 || k >= nb) return false;
          const double w = static_cast<double>(book.centroids[k + 1]) - book.centroids[k];
          return std::fabs(yj - book.boundaries[k]) <= kNearCell * w;
        };
        bool near = false;
        for (int k = 0; k < nb; ++k) near = near || near_boundary(k);
        r.near += near;
        const int gj = gc[j], cj = cc[j];
        r.flips_vs_cpu += gj != cj;
        r.flips_vs_f64 += gj != cell;
        // Explained: one cell apart, across a boundary the float64 value is near.
        const auto explained = [&](int a, int b) {
          return a == b || (std::abs(a - b) == 1 && near_boundary(std::min(a, b)));
        };
        if (!explained(gj, cj) || !explained(gj, cell)) ++r.bad_codes;
        recon2 += static_cast<double>(book.centroids[gj]) * book.centroids[gj];
        res[j] = yj - book.centroids[gj];
      }
      if (g.qjl) {
        double rn2 = 0.0;
        for (int j = 0; j < d; ++j) rn2 += res[j] * res[j];
        const double rn = std::sqrt(rn2);
        uint16_t grn;
        std::memcpy(&grn, gb + norms_at + 2 * g.cap + 2 * s, 2);
        const float rlo = static_cast<float>(rn * (1.0 - kResidualRel)),
                    rhi = static_cast<float>(rn * (1.0 + kResidualRel));
        const double rv = f16_value(grn);
        if (!(rv >= f16_value(f32_to_f16(rlo)) && rv <= f16_value(f32_to_f16(rhi))))
          ++r.bad_residuals;
        const uint8_t* sg = gb + g.cap * code_bytes + s * sign_bytes;
        for (int i = 0; i < d; ++i) {
          double si = 0.0;
          for (int j = 0; j < d; ++j) si += static_cast<double>((*g.qjl)[i * d + j]) * res[j];
          const bool bit = (sg[i / 8] >> (i % 8)) & 1;
          ++r.signs;
          if (bit != (si >= 0.0)) {
            ++r.sign_flips;
            if (std::fabs(si) > kSignTol * rn) ++r.bad_signs;
          }
        }
      }
      const double ref = g.norm_correction ? norm / std::sqrt(recon2) : norm;
      const float lo = static_cast<float>(ref * (1.0 - kNormRel)),
                  hi = static_cast<float>(ref * (1.0 + kNormRel));
      const double v = f16_value(gn);
      if (!(v >= f16_value(f32_to_f16(lo)) && v <= f16_value(f32_to_f16(hi)))) ++r.bad_norms;
      r.max_norm_rel = std::max(r.max_norm_rel, std::fabs(v - ref) / ref);

      double eg = 0.0, ec = 0.0;
      codec.decode(gb, g.cap, s, dec.data());
      for (int j = 0; j < d; ++j)
        eg += (static_cast<double>(xv[j]) - dec[j]) * (static_cast<double>(xv[j]) - dec[j]);
      codec.decode(cb, g.cap, s, dec.data());
      for (int j = 0; j < d; ++j)
        ec += (static_cast<double>(xv[j]) - dec[j]) * (static_cast<double>(xv[j]) - dec[j]);
      sum_gpu += eg / n2;
      sum_cpu += ec / n2;
      ++nonzero;
    }
  }
  r.mse_gpu = nonzero ? sum_gpu / nonzero : 0.0;
  r.mse_cpu = nonzero ? sum_cpu / nonzero : 0.0;
  return r;
}

}  // namespace tq::test
