// TurboQuant_mse (tq{b}) and TurboQuant_prod (tq{b}j) codecs over the SoA block layout.
//
// Encode: u = x/||x||, y = P u, idx_j = cell of y_j; prod adds r = y - C[idx] and sign(S r).
// Attention works in the rotated domain: <q, x~> = norm * <P q, C[idx]> (+ the QJL term), and
// sum_i w_i x~_i = P^T sum_i w_i norm_i C[idx_i], so only queries and outputs are rotated.
#include <algorithm>
#include <cmath>
#include <vector>

#include "tq/quant/bitpack.h"
#include "tq/quant/codec_impl.h"
#include "tq/quant/qjl.h"

namespace tq::quant {
namespace {

constexpr int kSlotChunk = 64;  // slots per kernel call (norm scratch lives on the stack)
constexpr int kMaxDim = 1024;   // Format::validate's limit: per-vector scratch fits the stack

// <a, b> over n floats with 8 partial sums, so the compiler vectorises it without -ffast-math.
float dot(const float* a, const float* b, size_t n) {
  float s[8] = {};
  size_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int k = 0; k < 8; ++k) s[k] += a[j + k] * b[j + k];
  for (; j < n; ++j) s[0] += a[j] * b[j];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

class TqCodec final : public VectorCodec {
 public:
  TqCodec(Format f, int dim, const CodecOptions& o, const Codebook* book, Rotation rotation)
      : format_(f),
        dim_(dim),
        bits_(f.code_bits()),
        book_(book),
        rotation_(std::move(rotation)),
        kernels_(o.kernels ? o.kernels : &ref_kernel_table()),
        norm_fp32_(o.norm_fp32),
        norm_correction_(o.norm_correction && !f.has_qjl()),
        code_bytes_(static_cast<size_t>(dim) * bits_ / 8),
        sign_bytes_(f.has_qjl() ? static_cast<size_t>(dim) / 8 : 0),
        norm_bytes_(o.norm_fp32 ? 4 : 2) {
    if (f.has_qjl()) sketch_ = qjl_matrix(dim, o.seed);
    // The kernels' own form of the query, made once in prepare_query and kept after the
    // float state (in whole floats), instead of once per block in score.
    const size_t prep = kernels_->score_query_bytes && kernels_->prepare_score_query[bits_]
                            ? kernels_->score_query_bytes(dim)
                            : 0;
    prep_floats_ = static_cast<int>((prep + sizeof(float) - 1) / sizeof(float));
  }

  Format format() const override { return format_; }
  int dim() const override { return dim_; }
  size_t bytes_per_vector() const override {
    return code_bytes_ + sign_bytes_ + norm_bytes_ * (format_.has_qjl() ? 2 : 1);
  }
  const KernelTable& kernels() const override { return *kernels_; }

  void encode(const float* x, uint8_t* block, int capacity, int slot) const override {
    const Planes p = planes(block, capacity);
    const size_t d = static_cast<size_t>(dim_);
    double norm2 = 0.0;
    for (size_t j = 0; j < d; ++j) norm2 += static_cast<double>(x[j]) * x[j];
    const double norm = std::sqrt(norm2);
    uint8_t idx[kMaxDim] = {};
    float y[kMaxDim] = {};
    float stored_norm = static_cast<float>(norm);
    float residual_norm = 0.0f;
    if (!std::isfinite(norm)) {
      stored_norm = NAN;  // garbage in, NaN out: decodes to NaN, scores NaN, never crashes
    } else if (norm > 0.0) {
      const float inv = static_cast<float>(1.0 / norm);
      for (size_t j = 0; j < d; ++j) y[j] = x[j] * inv;  // u = x / ||x||
      rotation_.apply(y, y);                             // y = P u
      double recon2 = 0.0;
      for (size_t j = 0; j < d; ++j) {
        idx[j] = static_cast<uint8_t>(quantize_coordinate(book_->boundaries.data(), bits_, y[j]));
        const double c = book_->centroids[idx[j]];
        recon2 += c * c;
      }
      if (norm_correction_) stored_norm = static_cast<float>(norm / std::sqrt(recon2));
      if (format_.has_qjl()) {
        double r2 = 0.0;
        for (size_t j = 0; j < d; ++j) {
          y[j] -= book_->centroids[idx[j]];  // r = y - C[idx]
          r2 += static_cast<double>(y[j]) * y[j];
        }
        residual_norm = static_cast<float>(std::sqrt(r2));
      }
    }
    pack_bits(bits_, idx, d, p.codes + code_bytes_ * slot);
    if (format_.has_qjl()) {
      uint8_t sign[kMaxDim];
      for (size_t i = 0; i < d; ++i)  // sign_i = (S r)_i >= 0
        sign[i] = dot(sketch_.data() + i * d, y, d) >= 0.0f ? 1 : 0;
      pack_bits<1>(sign, d, p.signs + sign_bytes_ * slot);
      store_scalar(p.residual_norms, slot, residual_norm, norm_fp32_);
    }
    store_scalar(p.norms, slot, stored_norm, norm_fp32_);
  }

  void decode(const uint8_t* block, int capacity, int slot, float* x) const override {
    const ConstPlanes p = planes(block, capacity);
    const size_t d = static_cast<size_t>(dim_);
    std::vector<uint8_t> idx(d);
    unpack_bits(bits_, p.codes + code_bytes_ * slot, d, idx.data());
    std::vector<float> y(d);
    for (size_t j = 0; j < d; ++j) y[j] = book_->centroids[idx[j]];  // y~ = C[idx]
    if (format_.has_qjl()) {  // y~ += sqrt(pi/2)/d * ||r|| * S^T sign
      std::vector<uint8_t> sign(d);
      unpack_bits<1>(p.signs + sign_bytes_ * slot, d, sign.data());
      const float f =
          static_cast<float>(qjl_scale(dim_)) * load_scalar(p.residual_norms, slot, norm_fp32_);
      for (size_t i = 0; i < d; ++i) {
        const float si = sign[i] ? f : -f;
        const float* row = sketch_.data() + i * d;
        for (size_t j = 0; j < d; ++j) y[j] += si * row[j];
      }
    }
    rotation_.apply_inverse(y.data(), x);
    const float norm = load_scalar(p.norms, slot, norm_fp32_);
    for (size_t j = 0; j < d; ++j) x[j] *= norm;
  }

  int query_state_size() const override { return float_state_size() + prep_floats_; }

  void prepare_query(const float* q, float* state) const override {
    rotation_.apply(q, state);  // P q
    if (prep_floats_ > 0)
      kernels_->prepare_score_query[bits_](state, dim_,
                                           reinterpret_cast<uint8_t*>(state + float_state_size()));
    if (!format_.has_qjl()) return;
    const size_t d = static_cast<size_t>(dim_);
    for (size_t i = 0; i < d; ++i) state[d + i] = dot(sketch_.data() + i * d, state, d);  // S P q
  }

  void score(const float* states, int nq, const uint8_t* block, int capacity, int n,
             float* out) const override {
    const ConstPlanes p = planes(block, capacity);
    const float qjl = static_cast<float>(qjl_scale(dim_));
    float scale[kSlotChunk];
    for (int i0 = 0; i0 < n; i0 += kSlotChunk) {
      const int m = std::min(kSlotChunk, n - i0);
      load_scalars(*kernels_, p.norms, i0, m, norm_fp32_, scale);
      PlaneScoreArgs a;
      a.q = states;
      a.q_stride = query_state_size();
      a.nq = nq;
      a.plane = p.codes + code_bytes_ * i0;
      a.row_bytes = code_bytes_;
      a.n = m;
      a.dim = dim_;
      a.table = book_->centroids.data();
      a.scale = scale;
      a.out = out + i0;
      a.out_stride = n;
      if (prep_floats_ > 0) {
        a.q_prep = reinterpret_cast<const uint8_t*>(states + float_state_size());
        a.q_prep_stride = sizeof(float) * static_cast<size_t>(query_state_size());
      }
      kernels_->score_codes[bits_](a);
      if (!format_.has_qjl()) continue;
      float res[kSlotChunk];
      load_scalars(*kernels_, p.residual_norms, i0, m, norm_fp32_, res);
      for (int i = 0; i < m; ++i) scale[i] *= qjl * res[i];
      a.q = states + dim_;
      a.plane = p.signs + sign_bytes_ * i0;
      a.row_bytes = sign_bytes_;
      a.table = kSignTable;
      a.add = true;
      a.q_prep = nullptr;  // the sketch part prepares its own
      kernels_->score_codes[1](a);
    }
  }

  int acc_dim() const override { return format_.has_qjl() ? 2 * dim_ : dim_; }

  void accumulate(const float* w, int nq, const uint8_t* block, int capacity, int n,
                  float* acc) const override {
    const ConstPlanes p = planes(block, capacity);
    const float qjl = static_cast<float>(qjl_scale(dim_));
    float scaled[kMaxGroupHeads * kSlotChunk];
    for (int h0 = 0; h0 < nq; h0 += kMaxGroupHeads) {
      const int g = std::min(kMaxGroupHeads, nq - h0);
      for (int i0 = 0; i0 < n; i0 += kSlotChunk) {
        const int m = std::min(kSlotChunk, n - i0);
        float norms[kSlotChunk];
        load_scalars(*kernels_, p.norms, i0, m, norm_fp32_, norms);
        for (int h = 0; h < g; ++h) {  // w_hi * norm_i
          const float* wh = w + static_cast<size_t>(h0 + h) * n + i0;
          float* sh = scaled + h * kSlotChunk;
          for (int i = 0; i < m; ++i) sh[i] = wh[i] * norms[i];
        }
        PlaneAccumulateArgs a;
        a.w = scaled;
        a.w_stride = kSlotChunk;
        a.nq = g;
        a.plane = p.codes + code_bytes_ * i0;
        a.row_bytes = code_bytes_;
        a.n = m;
        a.dim = dim_;
        a.table = book_->centroids.data();
        a.acc = acc + static_cast<size_t>(h0) * acc_dim();
        a.acc_stride = acc_dim();
        kernels_->accumulate_codes[bits_](a);
        if (!format_.has_qjl()) continue;
        load_scalars(*kernels_, p.residual_norms, i0, m, norm_fp32_, norms);
        for (int h = 0; h < g; ++h)  // the sketch part: w_hi * norm_i * sqrt(pi/2)/d * ||r_i||
          for (int i = 0; i < m; ++i) scaled[h * kSlotChunk + i] *= qjl * norms[i];
        a.plane = p.signs + sign_bytes_ * i0;
        a.row_bytes = sign_bytes_;
        a.table = kSignTable;
        a.acc = acc + static_cast<size_t>(h0) * acc_dim() + dim_;
        kernels_->accumulate_codes[1](a);
      }
    }
  }

  void finish(const float* acc, float* out) const override {
    if (!format_.has_qjl()) return rotation_.apply_inverse(acc, out);
    const size_t d = static_cast<size_t>(dim_);
    std::vector<float> y(acc, acc + d);
    for (size_t i = 0; i < d; ++i) {  // y += S^T acc_sketch
      const float* row = sketch_.data() + i * d;
      const float a = acc[d + i];
      for (size_t j = 0; j < d; ++j) y[j] += a * row[j];
    }
    rotation_.apply_inverse(y.data(), out);
  }

 private:
  static constexpr float kSignTable[2] = {-1.0f, 1.0f};  // QJL bit 0 -> -1, bit 1 -> +1

  template <typename Byte>
  struct PlanesT {
    Byte* codes;
    Byte* signs;
    Byte* norms;
    Byte* residual_norms;
  };
  using Planes = PlanesT<uint8_t>;
  using ConstPlanes = PlanesT<const uint8_t>;

  template <typename Byte>
  PlanesT<Byte> planes(Byte* block, int capacity) const {
    const size_t c = static_cast<size_t>(capacity);
    PlanesT<Byte> p;
    p.codes = block;
    p.signs = block + c * code_bytes_;
    p.norms = p.signs + c * sign_bytes_;
    p.residual_norms = p.norms + c * norm_bytes_;
    return p;
  }

  Format format_;
  int dim_;
  int bits_;  // mse code bits
  const Codebook* book_;
  Rotation rotation_;
  const KernelTable* kernels_;
  bool norm_fp32_;
  bool norm_correction_;
  size_t code_bytes_;
  size_t sign_bytes_;
  size_t norm_bytes_;
  int prep_floats_ = 0;  // floats of the kernels' prepared query after the float state
  int float_state_size() const { return format_.has_qjl() ? 2 * dim_ : dim_; }
  std::vector<float> sketch_;  // [d][d] QJL matrix S (prod only)
};

}  // namespace

std::unique_ptr<VectorCodec> make_tq_codec(Format f, int dim, const CodecOptions& o,
                                           const Codebook* book, Rotation rotation) {
  return std::make_unique<TqCodec>(f, dim, o, book, std::move(rotation));
}

}  // namespace tq::quant
