// Internal: the AVX2 kernel tables, defined in TUs compiled with -mavx2 -mfma -mf16c (and, for
// the VNNI flavours, a target attribute). Call only after checking the CPU (tq_kernels.cpp
// does).
#pragma once

#include "tq/quant/kernels.h"

namespace tq::backend::cpu {

// Float kernels for every entry (exact up to summation order).
const quant::KernelTable& avx2_kernel_table_unchecked();

// Integer kernels for packed codes of 1..4 bits (tq_kernels_int8_inl.h): they overwrite
// t.score_codes[1..4] and t.accumulate_codes[1..4] and leave the other entries alone.
void set_avx2_int8_code_kernels(quant::KernelTable& t);        // vpmaddubsw (AVX2 only)
void set_avxvnni_int8_code_kernels(quant::KernelTable& t);     // AVX-VNNI vpdpbusd
void set_avx512vnni_int8_code_kernels(quant::KernelTable& t);  // AVX512-VNNI+VL vpdpbusd

}  // namespace tq::backend::cpu
