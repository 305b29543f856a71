// The integer code kernels with AVX512-VNNI on 256-bit vectors (EVEX vpdpbusd, for CPUs that
// have AVX-512 but not AVX-VNNI: 4 u8 x s8 products into each int32 lane, no intermediate
// saturation, so both sides use the full int8 range). The ISA is enabled for
// this file's own functions only; every header with inline code is included before that, so
// no out-of-line copy of a shared inline function is built with it.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "tq/backend/cpu/tq_kernels_avx2.h"
#include "tq/quant/kernels.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni"))), \
                             apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni")
#endif

#include "tq/backend/cpu/tq_kernels_int8_inl.h"

namespace tq::backend::cpu {
namespace {

struct Avx512VnniDot {
  static constexpr int kMax = 127;
  static __m256i dot(__m256i acc, __m256i u, __m256i s) { return _mm256_dpbusd_epi32(acc, u, s); }
};

}  // namespace

void set_avx512vnni_int8_code_kernels(quant::KernelTable& t) {
  set_int8_code_kernels<Avx512VnniDot>(t);
}

}  // namespace tq::backend::cpu

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif
