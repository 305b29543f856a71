// The small element-wise and reduction ops of a transformer forward pass on the CPU (RMSNorm,
// RoPE, SwiGLU, residual add, softmax, argmax) and the dot / axpy kernels attention is built
// from. dot and axpy have AVX2 variants (ops_avx2.cpp) chosen once from CPUID; every op has a
// plain scalar `_ref` that the tests compare against.
#pragma once

#include <cstdint>

#include "tq/kv/dense_kv.h"

namespace tq::backend::cpu {

// ---- scalar references ------------------------------------------------------------------------
float dot_ref(const float* a, const float* b, int n);
// y += a * x
void axpy_ref(float a, const float* x, float* y, int n);

// ---- dispatched (AVX2 where the CPU has it) ---------------------------------------------------
float dot(const float* a, const float* b, int n);
void axpy(float a, const float* x, float* y, int n);
// "avx2" or "scalar": which variant dot/axpy use on this CPU.
const char* ops_simd_level();
// The dispatched dot/axpy as the table the dense KV cache takes (the kv layer cannot include
// the backend).
kv::DenseKernels dense_kv_kernels();

// y = x / sqrt(mean(x^2) + eps) * w (y may alias x). The sum of squares is accumulated in
// double so long rows stay exact to float rounding.
void rmsnorm(const float* x, const float* w, float* y, int n, float eps);

// Rotates the first `rope_dims` dims of each of the n_heads heads in x ([n_heads][head_dim]) by
// the angles whose cos/sin are given per pair ([rope_dims/2]). neox = false pairs (2i, 2i+1)
// (llama.cpp's "normal" rope on GGUF-permuted llama weights); neox = true pairs (i, i+rope_dims/2).
void rope(float* x, int n_heads, int head_dim, int rope_dims, const float* cos_t,
          const float* sin_t, bool neox);

// gate[i] = silu(gate[i]) * up[i]   (SwiGLU; AVX2 where the CPU has it)
void silu_mul(float* gate, const float* up, int n);
void silu_mul_ref(float* gate, const float* up, int n);

// y[i] += x[i]
void add(float* y, const float* x, int n);

// y[i] += bias[i] for each of the n rows of y ([n][dim]).
void add_bias_rows(float* y, const float* bias, int n, int dim);

// In place, numerically stable (subtracts the max). Returns the max.
float softmax(float* x, int n);

// Index of the largest value (the first one on ties); -1 for n <= 0. NaNs are skipped.
int argmax(const float* x, int n);

}  // namespace tq::backend::cpu
