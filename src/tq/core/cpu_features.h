// Which SIMD instruction sets this CPU has, read once from CPUID by the dispatch tables.
#pragma once

namespace tq {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
};

CpuFeatures detect_cpu_features();

// "avx2+fma+f16c" or "scalar": the widest level the dispatch tables use on this CPU.
const char* simd_level_name(const CpuFeatures& f);

}  // namespace tq
