// Runtime selection of the fused KV kernels.
#include "tq/backend/cpu/tq_kernels.h"

#include "tq/backend/cpu/tq_kernels_avx2.h"
#include "tq/core/cpu_features.h"

namespace tq::backend::cpu {

const quant::KernelTable* avx2_kernel_table() {
#if defined(__x86_64__)
  const CpuFeatures f = detect_cpu_features();
  if (f.avx2 && f.fma && f.f16c) return &avx2_kernel_table_unchecked();
#endif
  return nullptr;
}

const quant::KernelTable& cpu_kernel_table() {
  static const quant::KernelTable* const kTable = [] {
    const quant::KernelTable* t = avx2_kernel_table();
    return t ? t : &quant::ref_kernel_table();
  }();
  return *kTable;
}

}  // namespace tq::backend::cpu
