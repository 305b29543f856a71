// Runtime selection of the fused KV kernels.
#include "tq/backend/cpu/tq_kernels.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include "tq/backend/cpu/tq_kernels_avx2.h"
#include "tq/core/cpu_features.h"

namespace tq::backend::cpu {
namespace {

struct Tables {
  bool avx2 = false, avxvnni = false, avx512vnni = false;
  quant::KernelTable int8, vnni, vnni512;

  Tables() {
#if defined(__x86_64__)
    const CpuFeatures f = detect_cpu_features();
    avx2 = f.avx2 && f.fma && f.f16c;
    if (!avx2) return;
    unsigned a = 0, b = 0, c = 0, d = 0;
    // CPUID.(EAX=7, ECX=1):EAX bit 4 = AVX-VNNI (ymm state is enabled: AVX2 checked it).
    avxvnni = __get_cpuid_count(7, 1, &a, &b, &c, &d) && ((a >> 4) & 1u);
    __builtin_cpu_init();
    avx512vnni = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
    int8 = vnni = vnni512 = avx2_kernel_table_unchecked();
    int8.name = "avx2-int8";
    set_avx2_int8_code_kernels(int8);
    vnni.name = "avxvnni-int8";
    if (avxvnni) set_avxvnni_int8_code_kernels(vnni);
    vnni512.name = "avx512vnni-int8";
    if (avx512vnni) set_avx512vnni_int8_code_kernels(vnni512);
#endif
  }

  std::vector<const quant::KernelTable*> all() const {
    std::vector<const quant::KernelTable*> t = {&quant::ref_kernel_table()};
    if (!avx2) return t;
    t.push_back(&avx2_kernel_table_unchecked());
    t.push_back(&int8);
    if (avx512vnni) t.push_back(&vnni512);
    if (avxvnni) t.push_back(&vnni);
    return t;
  }
};

const Tables& tables() {
  static const Tables kTables;  // immutable after first use
  return kTables;
}

}  // namespace

const quant::KernelTable* avx2_kernel_table() {
  return tables().avx2 ? &avx2_kernel_table_unchecked() : nullptr;
}

std::vector<const quant::KernelTable*> cpu_kernel_tables() { return tables().all(); }

const quant::KernelTable& cpu_kernel_table() {
  static const quant::KernelTable* const kTable = tables().all().back();
  return *kTable;
}

}  // namespace tq::backend::cpu
