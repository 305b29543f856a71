// The CPU's fused KV-attention kernels (score / accumulate on packed planes) as a
// quant::KernelTable, chosen once from CPUID: AVX2+FMA+F16C when the CPU has them, the scalar
// reference otherwise. Pass it to codecs through quant::CodecOptions::kernels.
#pragma once

#include "tq/quant/codec.h"
#include "tq/quant/kernels.h"

namespace tq::backend::cpu {

// The fastest table this CPU runs (selected on first use, immutable afterwards).
const quant::KernelTable& cpu_kernel_table();

// The AVX2 table, or nullptr when this CPU lacks AVX2/FMA/F16C (tests compare it to the ref).
const quant::KernelTable* avx2_kernel_table();

// `o` with the CPU kernel table filled in.
inline quant::CodecOptions with_cpu_kernels(quant::CodecOptions o) {
  o.kernels = &cpu_kernel_table();
  return o;
}

}  // namespace tq::backend::cpu
