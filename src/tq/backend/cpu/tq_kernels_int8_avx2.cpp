// The integer code kernels on plain AVX2: acc += u8 x s8 through vpmaddubsw (int16 pair sums,
// which saturate above 32767: with u <= 255 the int8 side is limited to [-64, 64]) and a
// vpmaddwd by ones.
#include <immintrin.h>

#include "tq/backend/cpu/tq_kernels_int8_inl.h"

namespace tq::backend::cpu {
namespace {

struct MaddubsDot {
  static constexpr int kMax = 64;
  static __m256i dot(__m256i acc, __m256i u, __m256i s) {
    const __m256i pairs = _mm256_maddubs_epi16(u, s);
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
  }
};

}  // namespace

void set_avx2_int8_code_kernels(quant::KernelTable& t) { set_int8_code_kernels<MaddubsDot>(t); }

}  // namespace tq::backend::cpu
