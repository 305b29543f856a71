// Scalar reference of the fused primitives: decode one row into floats, then use it for every
// query head of the group (GQA sharing). SIMD tables are tested against this one.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "tq/core/fp16.h"
#include "tq/quant/bitpack.h"
#include "tq/quant/kernels.h"

namespace tq::quant {
namespace {

// Row decoders: row bytes -> dim floats.
template <int kBits>
struct CodesRow {
  static void decode(const uint8_t* row, int dim, const float* table, float* out) {
    uint8_t idx[1024];
    unpack_bits<kBits>(row, static_cast<size_t>(dim), idx);
    for (int j = 0; j < dim; ++j) out[j] = table[idx[j]];  // y~_j = C[idx_j]
  }
};

struct F16Row {
  static void decode(const uint8_t* row, int dim, const float*, float* out) {
    for (int j = 0; j < dim; ++j) {
      uint16_t h;
      std::memcpy(&h, row + 2 * j, 2);
      out[j] = f16_to_f32(h);
    }
  }
};

struct Q8_0Row {  // per 32 elements: fp16 scale, 32 x int8
  static void decode(const uint8_t* row, int dim, const float*, float* out) {
    for (int b = 0; b < dim / 32; ++b) {
      const uint8_t* blk = row + 34 * b;
      uint16_t h;
      std::memcpy(&h, blk, 2);
      const float s = f16_to_f32(h);
      for (int j = 0; j < 32; ++j)
        out[32 * b + j] = s * static_cast<float>(static_cast<int8_t>(blk[2 + j]));
    }
  }
};

struct Q4_0Row {  // per 32 elements: fp16 scale, byte j = elem j (low) | elem j+16 (high)
  static void decode(const uint8_t* row, int dim, const float*, float* out) {
    for (int b = 0; b < dim / 32; ++b) {
      const uint8_t* blk = row + 18 * b;
      uint16_t h;
      std::memcpy(&h, blk, 2);
      const float s = f16_to_f32(h);
      for (int j = 0; j < 16; ++j) {
        out[32 * b + j] = s * static_cast<float>((blk[2 + j] & 0x0f) - 8);
        out[32 * b + j + 16] = s * static_cast<float>((blk[2 + j] >> 4) - 8);
      }
    }
  }
};

template <typename Row>
void score_ref(const PlaneScoreArgs& a) {
  std::vector<float> x(static_cast<size_t>(a.dim));
  for (int i = 0; i < a.n; ++i) {
    Row::decode(a.plane + static_cast<size_t>(i) * a.row_bytes, a.dim, a.table, x.data());
    const float s = a.scale ? a.scale[i] : 1.0f;
    for (int h = 0; h < a.nq; ++h) {
      const float* q = a.q + static_cast<size_t>(h) * a.q_stride;
      float dot = 0.0f;
      for (int j = 0; j < a.dim; ++j) dot += q[j] * x[j];
      float& o = a.out[static_cast<size_t>(h) * a.out_stride + i];
      o = (a.add ? o : 0.0f) + s * dot;
    }
  }
}

template <typename Row>
void accumulate_ref(const PlaneAccumulateArgs& a) {
  std::vector<float> x(static_cast<size_t>(a.dim));
  for (int i = 0; i < a.n; ++i) {
    Row::decode(a.plane + static_cast<size_t>(i) * a.row_bytes, a.dim, a.table, x.data());
    for (int h = 0; h < a.nq; ++h) {
      const float w = a.w[static_cast<size_t>(h) * a.w_stride + i];
      float* acc = a.acc + static_cast<size_t>(h) * a.acc_stride;
      for (int j = 0; j < a.dim; ++j) acc[j] += w * x[j];
    }
  }
}

void f16_to_f32_ref(const uint8_t* src, float* dst, int n) {
  for (int i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    dst[i] = f16_to_f32(h);
  }
}

KernelTable make_ref_table() {
  KernelTable t;
  t.name = "ref";
  t.f16_to_f32 = f16_to_f32_ref;
  t.online_softmax = online_softmax_ref;
  t.score_codes[1] = score_ref<CodesRow<1>>;
  t.score_codes[2] = score_ref<CodesRow<2>>;
  t.score_codes[3] = score_ref<CodesRow<3>>;
  t.score_codes[4] = score_ref<CodesRow<4>>;
  t.score_codes[5] = score_ref<CodesRow<5>>;
  t.score_codes[6] = score_ref<CodesRow<6>>;
  t.score_codes[7] = score_ref<CodesRow<7>>;
  t.score_codes[8] = score_ref<CodesRow<8>>;
  t.accumulate_codes[1] = accumulate_ref<CodesRow<1>>;
  t.accumulate_codes[2] = accumulate_ref<CodesRow<2>>;
  t.accumulate_codes[3] = accumulate_ref<CodesRow<3>>;
  t.accumulate_codes[4] = accumulate_ref<CodesRow<4>>;
  t.accumulate_codes[5] = accumulate_ref<CodesRow<5>>;
  t.accumulate_codes[6] = accumulate_ref<CodesRow<6>>;
  t.accumulate_codes[7] = accumulate_ref<CodesRow<7>>;
  t.accumulate_codes[8] = accumulate_ref<CodesRow<8>>;
  t.score_f16 = score_ref<F16Row>;
  t.accumulate_f16 = accumulate_ref<F16Row>;
  t.score_q8_0 = score_ref<Q8_0Row>;
  t.accumulate_q8_0 = accumulate_ref<Q8_0Row>;
  t.score_q4_0 = score_ref<Q4_0Row>;
  t.accumulate_q4_0 = accumulate_ref<Q4_0Row>;
  return t;
}

}  // namespace

float online_softmax_ref(float* row, int visible, int cnt, float* m, float* l) {
  float mx = -INFINITY;
  for (int j = 0; j < visible; ++j) mx = std::max(mx, row[j]);
  const float m_new = std::max(*m, mx);
  const float c = std::exp(*m - m_new);  // 0 on the first block (m = -inf)
  float sum = 0.0f;
  for (int j = 0; j < visible; ++j) {
    const float w = std::exp(row[j] - m_new);
    row[j] = w;
    sum += w;
  }
  for (int j = visible; j < cnt; ++j) row[j] = 0.0f;
  *l = *l * c + sum;
  *m = m_new;
  return c;
}

const KernelTable& ref_kernel_table() {
  static const KernelTable kTable = make_ref_table();  // immutable after first use
  return kTable;
}

}  // namespace tq::quant
