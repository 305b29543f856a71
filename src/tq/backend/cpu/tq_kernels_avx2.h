// Internal: the AVX2 kernel table, defined in a TU compiled with -mavx2 -mfma -mf16c. Call only
// after checking the CPU (tq_kernels.cpp does).
#pragma once

#include "tq/quant/kernels.h"

namespace tq::backend::cpu {

const quant::KernelTable& avx2_kernel_table_unchecked();

}  // namespace tq::backend::cpu
