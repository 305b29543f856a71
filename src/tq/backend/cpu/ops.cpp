// Scalar ops and the dot/axpy dispatch table.
#include "tq/backend/cpu/ops.h"

#include <cmath>
#include <limits>

#include "tq/backend/cpu/ops_avx2.h"
#include "tq/core/cpu_features.h"

namespace tq::backend::cpu {
namespace {

struct OpsTable {
  float (*dot)(const float*, const float*, int);
  void (*axpy)(float, const float*, float*, int);
  void (*silu_mul)(float*, const float*, int);
  const char* level;
};

// Chosen once from CPUID and never written again.
const OpsTable& ops_table() {
  static const OpsTable table = [] {
    const CpuFeatures f = detect_cpu_features();
    if (f.avx2 && f.fma) return OpsTable{dot_avx2, axpy_avx2, silu_mul_avx2, "avx2"};
    return OpsTable{dot_ref, axpy_ref, silu_mul_ref, "scalar"};
  }();
  return table;
}

}  // namespace

float dot_ref(const float* a, const float* b, int n) {
  float s = 0.0f;
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

void axpy_ref(float a, const float* x, float* y, int n) {
  for (int i = 0; i < n; ++i) y[i] += a * x[i];
}

float dot(const float* a, const float* b, int n) { return ops_table().dot(a, b, n); }
void axpy(float a, const float* x, float* y, int n) { ops_table().axpy(a, x, y, n); }
const char* ops_simd_level() { return ops_table().level; }
kv::DenseKernels dense_kv_kernels() { return {ops_table().dot, ops_table().axpy}; }

void rmsnorm(const float* x, const float* w, float* y, int n, float eps) {
  double ss = 0.0;
  for (int i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float scale = static_cast<float>(1.0 / std::sqrt(ss / n + eps));
  for (int i = 0; i < n; ++i) y[i] = x[i] * scale * w[i];
}

void rope(float* x, int n_heads, int head_dim, int rope_dims, const float* cos_t,
          const float* sin_t, bool neox) {
  const int half = rope_dims / 2;
  for (int h = 0; h < n_heads; ++h) {
    float* v = x + static_cast<size_t>(h) * head_dim;
    if (neox) {
      for (int i = 0; i < half; ++i) {
        const float x0 = v[i], x1 = v[i + half];
        v[i] = x0 * cos_t[i] - x1 * sin_t[i];
        v[i + half] = x0 * sin_t[i] + x1 * cos_t[i];
      }
    } else {
      for (int i = 0; i < half; ++i) {
        const float x0 = v[2 * i], x1 = v[2 * i + 1];
        v[2 * i] = x0 * cos_t[i] - x1 * sin_t[i];
        v[2 * i + 1] = x0 * sin_t[i] + x1 * cos_t[i];
      }
    }
  }
}

void silu_mul_ref(float* gate, const float* up, int n) {
  for (int i = 0; i < n; ++i) {
    const float g = gate[i];
    gate[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void silu_mul(float* gate, const float* up, int n) { ops_table().silu_mul(gate, up, n); }

void add(float* y, const float* x, int n) {
  for (int i = 0; i < n; ++i) y[i] += x[i];
}

void add_bias_rows(float* y, const float* bias, int n, int dim) {
  for (int t = 0; t < n; ++t) add(y + static_cast<size_t>(t) * dim, bias, dim);
}

float softmax(float* x, int n) {
  if (n <= 0) return 0.0f;
  float mx = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < n; ++i) mx = std::fmax(mx, x[i]);
  double sum = 0.0;
  for (int i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int i = 0; i < n; ++i) x[i] *= inv;
  return mx;
}

int argmax(const float* x, int n) {
  int best = -1;
  float best_v = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < n; ++i) {
    if (std::isnan(x[i])) continue;
    if (best < 0 || x[i] > best_v) {
      best = i;
      best_v = x[i];
    }
  }
  return best;
}

}  // namespace tq::backend::cpu
