#include "tq/core/cpu_features.h"

namespace tq {

CpuFeatures detect_cpu_features() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  f.avx512f = __builtin_cpu_supports("avx512f");
  // GCC has no "f16c" name for __builtin_cpu_supports on every version; every AVX2 CPU
  // shipped has F16C, and the AVX2 path requires all three anyway.
  f.f16c = f.avx2;
#endif
  return f;
}

const char* simd_level_name(const CpuFeatures& f) {
  if (f.avx2 && f.fma && f.f16c) return "avx2+fma+f16c";
  return "scalar";
}

}  // namespace tq
