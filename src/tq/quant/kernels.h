// The fused attention primitives on packed planes, as a table of function pointers: the
// portable scalar reference lives here (kernels_ref.cpp, reads like the paper); SIMD tables
// live in src/tq/backend/cpu/tq_kernels*.cpp and are chosen once from CPUID. Codecs take a
// table through CodecOptions::kernels, so the quant layer never depends on the backend.
//
// A "plane" is `n` rows of `row_bytes` bytes (one row per slot, docs/formats.md "Blocks").
// Scores are raw dots (per-row norms are applied through `scale`), accumulations take weights
// that already include each row's norm.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tq::quant {

// Kernels handle any nq; SIMD ones register-block up to kMaxGroupHeads at a time.
inline constexpr int kMaxGroupHeads = 4;

struct PlaneScoreArgs {
  const float* q = nullptr;  // [nq][q_stride] prepared queries (rotated domain for tq)
  int q_stride = 0;
  int nq = 1;
  const uint8_t* plane = nullptr;  // [n][row_bytes]
  size_t row_bytes = 0;
  int n = 0;
  int dim = 0;
  const float* table = nullptr;  // [2^bits] code values (packed-code planes only)
  const float* scale = nullptr;  // [n] per-row factor, nullptr for 1
  float* out = nullptr;          // [nq][out_stride]: out[h][i] (+)= scale[i] * <q_h, row_i>
  int out_stride = 0;
  bool add = false;  // accumulate into out instead of overwriting
  // Optional: the same queries already in the table's own form (prepare_score_query[bits] of
  // each q_h, q_prep_stride bytes apart), so a kernel called once per cache block does not
  // redo that work every block; nullptr: the kernel prepares them.
  const uint8_t* q_prep = nullptr;
  size_t q_prep_stride = 0;
};

struct PlaneAccumulateArgs {
  const float* w = nullptr;  // [nq][w_stride] weight of row i for head h (norms included)
  int w_stride = 0;
  int nq = 1;
  const uint8_t* plane = nullptr;  // [n][row_bytes]
  size_t row_bytes = 0;
  int n = 0;
  int dim = 0;
  const float* table = nullptr;  // [2^bits] code values (packed-code planes only)
  float* acc = nullptr;          // [nq][acc_stride]: acc[h][.] += sum_i w[h][i] * row_i
  int acc_stride = 0;
};

using PlaneScoreFn = void (*)(const PlaneScoreArgs&);
using PlaneAccumulateFn = void (*)(const PlaneAccumulateArgs&);
// dst[i] = the f16 at src + 2 i as a float, i < n (a block's norm plane; src 2-byte aligned
// or not, any n).
using F16ToF32Fn = void (*)(const uint8_t* src, float* dst, int n);
// One block of an online softmax (attention walking a cache block by block): row[0..visible)
// holds scores (natural-log units), *m and *l the running maximum and sum. Writes the weights
// exp(row[j] - m') into row[0..visible) and zeros into row[visible..cnt), sets *m = m' =
// max(*m, the row's maximum) and *l = *l * c + the weights' sum, and returns c = exp(m - m')
// (0 on a first block, *m = -inf), the factor the caller's accumulators take. visible >= 1.
// NaN scores do not move the maximum and give NaN weights.
using OnlineSoftmaxFn = float (*)(float* row, int visible, int cnt, float* m, float* l);

struct KernelTable {
  const char* name = "";
  // Packed b-bit codes (LSB-first bitstream) looked up in `table`; index = bits (1..8).
  // bits = 1 with table {-1, +1} is the QJL sign plane.
  PlaneScoreFn score_codes[9] = {};
  PlaneAccumulateFn accumulate_codes[9] = {};
  PlaneScoreFn score_f16 = nullptr;
  PlaneAccumulateFn accumulate_f16 = nullptr;
  PlaneScoreFn score_q8_0 = nullptr;
  PlaneAccumulateFn accumulate_q8_0 = nullptr;
  PlaneScoreFn score_q4_0 = nullptr;
  PlaneAccumulateFn accumulate_q4_0 = nullptr;
  F16ToF32Fn f16_to_f32 = nullptr;  // nullptr: the scalar conversion
  // score_codes[bits]'s query preparation, done once per query instead of once per call:
  // score_query_bytes(dim) bytes per head (0 or nullptr: the table has none), written by
  // prepare_score_query[bits](q, dim, out) and passed back as PlaneScoreArgs::q_prep.
  size_t (*score_query_bytes)(int dim) = nullptr;
  void (*prepare_score_query[9])(const float* q, int dim, uint8_t* out) = {};
  OnlineSoftmaxFn online_softmax = nullptr;  // nullptr: online_softmax_ref
};

// The portable scalar reference (always available).
const KernelTable& ref_kernel_table();
float online_softmax_ref(float* row, int visible, int cnt, float* m, float* l);

}  // namespace tq::quant
