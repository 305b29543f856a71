// The dense float32 KV cache and its exact attention.
#include "tq/kv/dense_kv.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "tq/core/prefetch.h"

namespace tq::kv {
namespace {

// Positions scored at once: the score block lives on the stack.
constexpr int kBlock = 128;
// The K (V) row this many positions ahead is prefetched while a row is scored (accumulated):
// a head's rows are strided by the other heads', a pattern the development VM's hardware
// prefetchers do not run ahead on (core/prefetch.h).
constexpr int kPrefetchRows = 8;

float dot_scalar(const float* a, const float* b, int n) {
  float s = 0.0f;
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

void axpy_scalar(float a, const float* x, float* y, int n) {
  for (int i = 0; i < n; ++i) y[i] += a * x[i];
}

}  // namespace

void attend_head_group(const AttendGroupArgs& a, const DenseKernels& kernels) {
  const auto dot = kernels.dot ? kernels.dot : dot_scalar;
  const auto axpy = kernels.axpy ? kernels.axpy : axpy_scalar;
  const int g_n = a.heads;
  float acc[kMaxGroupHeads][kMaxAttnHeadDim];
  float scores[kMaxGroupHeads][kBlock];
  // Online softmax over blocks, per head: running max m and normalizer l; acc is rescaled
  // whenever the max grows, so no exp ever sees a positive argument.
  float m[kMaxGroupHeads];
  double l[kMaxGroupHeads];
  for (int g = 0; g < g_n; ++g) {
    std::fill(acc[g], acc[g] + a.head_dim, 0.0f);
    m[g] = -std::numeric_limits<float>::infinity();
    l[g] = 0.0;
  }
  const size_t row_bytes = static_cast<size_t>(a.head_dim) * sizeof(float);
  for (int b0 = 0; b0 < a.n_ctx; b0 += kBlock) {
    const int nb = std::min(kBlock, a.n_ctx - b0);
    const int ahead = std::min(nb, a.n_ctx - b0 - kPrefetchRows);  // rows with one to prefetch
    float bm[kMaxGroupHeads];
    std::fill(bm, bm + g_n, -std::numeric_limits<float>::infinity());
    for (int j = 0; j < nb; ++j) {
      if (j < ahead) prefetch_l2(a.k + (b0 + j + kPrefetchRows) * a.kv_stride, row_bytes);
      const float* kr = a.k + (b0 + j) * a.kv_stride;
      for (int g = 0; g < g_n; ++g) {
        scores[g][j] = a.scale * dot(a.q[g], kr, a.head_dim);
        bm[g] = std::max(bm[g], scores[g][j]);
      }
    }
    for (int g = 0; g < g_n; ++g) {
      if (bm[g] > m[g]) {
        const float alpha = std::isinf(m[g]) ? 0.0f : std::exp(m[g] - bm[g]);
        for (int d = 0; d < a.head_dim; ++d) acc[g][d] *= alpha;
        l[g] *= alpha;
        m[g] = bm[g];
      }
    }
    for (int j = 0; j < nb; ++j) {
      if (j < ahead) prefetch_l2(a.v + (b0 + j + kPrefetchRows) * a.kv_stride, row_bytes);
      const float* vr = a.v + (b0 + j) * a.kv_stride;
      for (int g = 0; g < g_n; ++g) {
        const float p = std::exp(scores[g][j] - m[g]);
        l[g] += p;
        axpy(p, vr, acc[g], a.head_dim);
      }
    }
  }
  for (int g = 0; g < g_n; ++g) {
    const float inv = l[g] > 0.0 ? static_cast<float>(1.0 / l[g]) : 0.0f;
    for (int d = 0; d < a.head_dim; ++d) a.out[g][d] = acc[g][d] * inv;
  }
}

DenseKv::DenseKv(const AttentionShape& shape, int capacity, DenseKernels kernels)
    : shape_(shape),
      kernels_(kernels),
      capacity_(capacity),
      kv_dim_(static_cast<size_t>(shape.n_kv_heads) * shape.head_dim),
      k_(shape.n_layers),
      v_(shape.n_layers),
      pending_(shape.n_layers, 0) {}

Expected<std::unique_ptr<DenseKv>> DenseKv::create(const AttentionShape& s, int capacity,
                                                   DenseKernels kernels) {
  if (s.n_layers < 1 || s.n_heads < 1 || s.n_kv_heads < 1 || s.n_heads % s.n_kv_heads != 0)
    return invalid_argument("dense kv: bad head counts (layers " + std::to_string(s.n_layers) +
                            ", heads " + std::to_string(s.n_heads) + ", kv heads " +
                            std::to_string(s.n_kv_heads) + ")");
  if (s.head_dim < 1 || s.head_dim > kMaxAttnHeadDim)
    return invalid_argument("dense kv: head_dim " + std::to_string(s.head_dim) + " outside [1, " +
                            std::to_string(kMaxAttnHeadDim) + "]");
  if (!(s.scale > 0.0f) || !std::isfinite(s.scale))
    return invalid_argument("dense kv: softmax scale must be positive");
  if (capacity < 1) return invalid_argument("dense kv: capacity must be positive");
  return std::unique_ptr<DenseKv>(new DenseKv(s, capacity, kernels));
}

Status DenseKv::check_layer(int layer, int n) const {
  if (layer < 0 || layer >= shape_.n_layers)
    return invalid_argument("dense kv: layer " + std::to_string(layer) + " out of range");
  if (n < 1) return invalid_argument("dense kv: token count must be positive");
  return ok_status();
}

Status DenseKv::append(int layer, int n, const float* k, const float* v) {
  TQ_RETURN_IF_ERROR(check_layer(layer, n));
  if (pending_[layer] != 0)
    return invalid_argument("dense kv: layer " + std::to_string(layer) +
                            " appended twice before commit");
  if (n > capacity_ - length_)
    return resource_exhausted("dense kv: " + std::to_string(length_) + " + " + std::to_string(n) +
                              " tokens exceed the capacity " + std::to_string(capacity_));
  const size_t need = static_cast<size_t>(length_ + n) * kv_dim_;
  auto& kl = k_[layer];
  auto& vl = v_[layer];
  if (kl.size() < need) {
    // Geometric growth: a long generation reallocates O(log n) times, not per token.
    const size_t grown =
        std::min(static_cast<size_t>(capacity_) * kv_dim_, std::max(need, kl.size() * 2));
    kl.resize(grown);
    vl.resize(grown);
  }
  const size_t off = static_cast<size_t>(length_) * kv_dim_;
  std::memcpy(kl.data() + off, k, static_cast<size_t>(n) * kv_dim_ * sizeof(float));
  std::memcpy(vl.data() + off, v, static_cast<size_t>(n) * kv_dim_ * sizeof(float));
  pending_[layer] = n;
  return ok_status();
}

Status DenseKv::attend(int layer, int n, const float* q, float* out, ThreadPool& pool) {
  TQ_RETURN_IF_ERROR(check_layer(layer, n));
  if (pending_[layer] != n)
    return invalid_argument("dense kv: attend of " + std::to_string(n) + " tokens on layer " +
                            std::to_string(layer) + " with " + std::to_string(pending_[layer]) +
                            " appended");
  // One captured pointer keeps the lambda inside std::function's small buffer: no allocation
  // per call.
  struct Job {
    const DenseKv* self;
    const float* q;
    float* out;
    const float* kb;
    const float* vb;
    int n_heads, groups, hd;
    size_t q_stride;
  };
  const Job job{this,
                q,
                out,
                k_[layer].data(),
                v_[layer].data(),
                shape_.n_heads,
                shape_.n_heads / shape_.n_kv_heads,
                shape_.head_dim,
                static_cast<size_t>(shape_.n_heads) * shape_.head_dim};
  // Tasks: (query, KV head, a run of at most kMaxGroupHeads of its query heads), so each K/V row
  // is read once per run rather than once per query head.
  const int runs = (job.groups + kMaxGroupHeads - 1) / kMaxGroupHeads;
  const size_t tasks = static_cast<size_t>(n) * shape_.n_kv_heads * runs;
  pool.parallel_for(tasks, 1, [&job, runs](size_t begin, size_t end) {
    const int per_query = job.n_heads / job.groups * runs;
    for (size_t task = begin; task < end; ++task) {
      const int i = static_cast<int>(task / per_query);
      const int rest = static_cast<int>(task % per_query);
      const int kvh = rest / runs;
      const int h0 = kvh * job.groups + (rest % runs) * kMaxGroupHeads;
      const int h1 = std::min((kvh + 1) * job.groups, h0 + kMaxGroupHeads);
      const size_t kv_off = static_cast<size_t>(kvh) * job.hd;
      AttendGroupArgs a;
      a.heads = h1 - h0;
      for (int h = h0; h < h1; ++h) {
        a.q[h - h0] = job.q + i * job.q_stride + static_cast<size_t>(h) * job.hd;
        a.out[h - h0] = job.out + i * job.q_stride + static_cast<size_t>(h) * job.hd;
      }
      a.k = job.kb + kv_off;
      a.v = job.vb + kv_off;
      a.n_ctx = job.self->length_ + i + 1;
      a.head_dim = job.hd;
      a.kv_stride = job.self->kv_dim_;
      a.scale = job.self->shape_.scale;
      attend_head_group(a, job.self->kernels_);
    }
  });
  return ok_status();
}

Status DenseKv::commit(int n) {
  if (n < 1) return invalid_argument("dense kv: commit of a non-positive token count");
  for (int l = 0; l < shape_.n_layers; ++l)
    if (pending_[l] != n)
      return invalid_argument("dense kv: commit(" + std::to_string(n) + ") but layer " +
                              std::to_string(l) + " has " + std::to_string(pending_[l]) +
                              " tokens appended");
  length_ += n;
  std::fill(pending_.begin(), pending_.end(), 0);
  return ok_status();
}

size_t DenseKv::bytes_used() const {
  return static_cast<size_t>(length_) * kv_dim_ * 2 * sizeof(float) * shape_.n_layers;
}

void DenseKv::clear() {
  length_ = 0;
  std::fill(pending_.begin(), pending_.end(), 0);
}

}  // namespace tq::kv
