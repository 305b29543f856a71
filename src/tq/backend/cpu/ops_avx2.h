// Declarations of the AVX2 op variants (ops_avx2.cpp); only ops.cpp's dispatch table and the
// tests call them, and only when detect_cpu_features() reports avx2 and fma.
#pragma once

namespace tq::backend::cpu {

float dot_avx2(const float* a, const float* b, int n);
void axpy_avx2(float a, const float* x, float* y, int n);
void silu_mul_avx2(float* gate, const float* up, int n);

}  // namespace tq::backend::cpu
