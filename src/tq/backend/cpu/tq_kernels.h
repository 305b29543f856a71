// The CPU's fused KV-attention kernels (score / accumulate on packed planes) as
// quant::KernelTables, chosen once from CPUID. Tables, fastest last:
//   "avx2"            float AVX2/FMA/F16C kernels (exact up to summation order)
//   "avx2-int8"       + integer kernels for 1..4-bit codes (vpmaddubsw; 7-bit query/weights)
//   "avx512vnni-int8" + the same with AVX512-VNNI vpdpbusd on ymm (8-bit query/weights)
//   "avxvnni-int8"    + the same with AVX-VNNI vpdpbusd
// The integer kernels round the query (score) or the weights (accumulate) to int8 per head and
// call and the codebook to int8: docs/quant.md gives the error, far below the codes' own.
// Pass a table to codecs through quant::CodecOptions::kernels.
#pragma once

#include <vector>

#include "tq/quant/codec.h"
#include "tq/quant/kernels.h"

namespace tq::backend::cpu {

// The fastest table this CPU runs (selected on first use, immutable afterwards); the scalar
// reference on CPUs without AVX2/FMA/F16C.
const quant::KernelTable& cpu_kernel_table();

// The float AVX2 table, or nullptr when this CPU lacks AVX2/FMA/F16C.
const quant::KernelTable* avx2_kernel_table();

// Every table this CPU runs, the scalar reference first (tests and benchmarks compare them).
std::vector<const quant::KernelTable*> cpu_kernel_tables();

// `o` with the CPU kernel table filled in.
inline quant::CodecOptions with_cpu_kernels(quant::CodecOptions o) {
  o.kernels = &cpu_kernel_table();
  return o;
}

}  // namespace tq::backend::cpu
