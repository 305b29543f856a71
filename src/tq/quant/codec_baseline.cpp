// The baseline formats in the VectorCodec interface: f16, q8_0 and q4_0 (ggml block layouts,
// docs/formats.md). Rows are stored whole, slot after slot; there is no rotation, so queries
// and outputs pass through unchanged.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "tq/quant/codec_impl.h"

namespace tq::quant {
namespace {

void encode_f16(const float* x, int dim, uint8_t* row) {
  for (int j = 0; j < dim; ++j) {
    const uint16_t h = f32_to_f16(x[j]);
    std::memcpy(row + 2 * j, &h, 2);
  }
}

bool all_finite(const float* x, int n) {
  for (int j = 0; j < n; ++j)
    if (!std::isfinite(x[j])) return false;
  return true;
}

// ggml quantize_row_q8_0_ref: s = max|x| / 127, q = round(x / s).
void encode_q8_0(const float* x, int dim, uint8_t* row) {
  for (int b = 0; b < dim / 32; ++b) {
    const float* xb = x + 32 * b;
    uint8_t* blk = row + 34 * b;
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const bool finite = all_finite(xb, 32);
    const float s = finite ? amax / 127.0f : NAN;  // non-finite block: NaN scale, zero quants
    const float inv = (finite && s != 0.0f) ? 1.0f / s : 0.0f;
    const uint16_t h = f32_to_f16(s);
    std::memcpy(blk, &h, 2);
    for (int j = 0; j < 32; ++j)
      blk[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::lround(xb[j] * inv)));
  }
}

// ggml quantize_row_q4_0_ref: s = (the signed value of largest magnitude) / -8,
// q = min(15, (int)(x / s + 8.5)).
void encode_q4_0(const float* x, int dim, uint8_t* row) {
  for (int b = 0; b < dim / 32; ++b) {
    const float* xb = x + 32 * b;
    uint8_t* blk = row + 18 * b;
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < 32; ++j)
      if (std::fabs(xb[j]) > amax) {
        amax = std::fabs(xb[j]);
        max = xb[j];
      }
    const bool finite = all_finite(xb, 32);
    const float s = finite ? max / -8.0f : NAN;
    const float inv = (finite && s != 0.0f) ? 1.0f / s : 0.0f;
    const uint16_t h = f32_to_f16(s);
    std::memcpy(blk, &h, 2);
    for (int j = 0; j < 16; ++j) {
      const int lo = std::min(15, static_cast<int>(xb[j] * inv + 8.5f));
      const int hi = std::min(15, static_cast<int>(xb[j + 16] * inv + 8.5f));
      blk[2 + j] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

class BaselineCodec final : public VectorCodec {
 public:
  BaselineCodec(Format f, int dim, const CodecOptions& o)
      : format_(f),
        dim_(dim),
        kernels_(o.kernels ? o.kernels : &ref_kernel_table()),
        row_bytes_(f.bytes_per_vector(dim)) {}

  Format format() const override { return format_; }
  int dim() const override { return dim_; }
  size_t bytes_per_vector() const override { return row_bytes_; }
  const KernelTable& kernels() const override { return *kernels_; }

  void encode(const float* x, uint8_t* block, int, int slot) const override {
    uint8_t* row = block + row_bytes_ * static_cast<size_t>(slot);
    switch (format_.kind) {
      case FormatKind::kQ8_0:
        return encode_q8_0(x, dim_, row);
      case FormatKind::kQ4_0:
        return encode_q4_0(x, dim_, row);
      default:
        return encode_f16(x, dim_, row);
    }
  }

  void decode(const uint8_t* block, int, int slot, float* x) const override {
    // One row through the accumulate kernel with weight 1: the same arithmetic as attention.
    std::fill(x, x + dim_, 0.0f);
    const float one = 1.0f;
    PlaneAccumulateArgs a;
    a.w = &one;
    a.w_stride = 1;
    a.plane = block + row_bytes_ * static_cast<size_t>(slot);
    a.row_bytes = row_bytes_;
    a.n = 1;
    a.dim = dim_;
    a.acc = x;
    a.acc_stride = dim_;
    ref_kernel_table_for(format_.kind).accumulate(a);
  }

  int query_state_size() const override { return dim_; }
  void prepare_query(const float* q, float* state) const override { std::copy(q, q + dim_, state); }

  void score(const float* states, int nq, const uint8_t* block, int, int n,
             float* out) const override {
    PlaneScoreArgs a;
    a.q = states;
    a.q_stride = dim_;
    a.nq = nq;
    a.plane = block;
    a.row_bytes = row_bytes_;
    a.n = n;
    a.dim = dim_;
    a.out = out;
    a.out_stride = n;
    fns().score(a);
  }

  int acc_dim() const override { return dim_; }
  void accumulate(const float* w, int nq, const uint8_t* block, int, int n,
                  float* acc) const override {
    PlaneAccumulateArgs a;
    a.w = w;
    a.w_stride = n;
    a.nq = nq;
    a.plane = block;
    a.row_bytes = row_bytes_;
    a.n = n;
    a.dim = dim_;
    a.acc = acc;
    a.acc_stride = dim_;
    fns().accumulate(a);
  }
  void finish(const float* acc, float* out) const override { std::copy(acc, acc + dim_, out); }

 private:
  struct Fns {
    PlaneScoreFn score;
    PlaneAccumulateFn accumulate;
  };
  static Fns pick(const KernelTable& t, FormatKind kind) {
    switch (kind) {
      case FormatKind::kQ8_0:
        return {t.score_q8_0, t.accumulate_q8_0};
      case FormatKind::kQ4_0:
        return {t.score_q4_0, t.accumulate_q4_0};
      default:
        return {t.score_f16, t.accumulate_f16};
    }
  }
  Fns fns() const { return pick(*kernels_, format_.kind); }
  static Fns ref_kernel_table_for(FormatKind kind) { return pick(ref_kernel_table(), kind); }

  Format format_;
  int dim_;
  const KernelTable* kernels_;
  size_t row_bytes_;
};

}  // namespace

std::unique_ptr<VectorCodec> make_baseline_codec(Format f, int dim, const CodecOptions& o) {
  return std::make_unique<BaselineCodec>(f, dim, o);
}

}  // namespace tq::quant
