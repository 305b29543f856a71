// The dense float32 KV cache and its exact attention.
#include "tq/kv/dense_kv.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "tq/core/prefetch.h"
#include "tq/kv/softmax_merge.h"

namespace tq::kv {
namespace {

// Positions scored at once: the score block lives on the stack.
constexpr int kBlock = 128;
// The K (V) row this many positions ahead is prefetched while a row is scored (accumulated):
// a head's rows are strided by the other heads', a pattern the development VM's hardware
// prefetchers do not run ahead on (core/prefetch.h).
constexpr int kPrefetchRows = 8;
// Decode steps with fewer (KV head, run) tasks than kMinItems split their positions into ranges
// of at least kMinRangeRows (see DenseKv::attend).
constexpr int kMinItems = 12;
constexpr int kMinRangeRows = 512;

float dot_scalar(const float* a, const float* b, int n) {
  float s = 0.0f;
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

void axpy_scalar(float a, const float* x, float* y, int n) {
  for (int i = 0; i < n; ++i) y[i] += a * x[i];
}

}  // namespace

namespace {

// The online-softmax state of a group's heads over some positions: running max m, normalizer l
// and the unnormalized output acc (rescaled whenever the max grows, so no exp ever sees a
// positive argument).
struct GroupState {
  float m[kMaxGroupHeads];
  double l[kMaxGroupHeads];
  float acc[kMaxGroupHeads][kMaxAttnHeadDim];
};

// Folds positions [p0, p1) into st, in blocks of kBlock from p0.
void attend_range(const AttendGroupArgs& a, const DenseKernels& kernels, int p0, int p1,
                  GroupState& st) {
  const auto dot = kernels.dot ? kernels.dot : dot_scalar;
  const auto axpy = kernels.axpy ? kernels.axpy : axpy_scalar;
  const int g_n = a.heads;
  float scores[kMaxGroupHeads][kBlock];
  const size_t row_bytes = static_cast<size_t>(a.head_dim) * sizeof(float);
  for (int b0 = p0; b0 < p1; b0 += kBlock) {
    const int nb = std::min(kBlock, p1 - b0);
    const int ahead = std::min(nb, p1 - b0 - kPrefetchRows);  // rows with one to prefetch
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
      if (bm[g] > st.m[g]) {
        const float alpha = std::isinf(st.m[g]) ? 0.0f : std::exp(st.m[g] - bm[g]);
        for (int d = 0; d < a.head_dim; ++d) st.acc[g][d] *= alpha;
        st.l[g] *= alpha;
        st.m[g] = bm[g];
      }
    }
    for (int j = 0; j < nb; ++j) {
      if (j < ahead) prefetch_l2(a.v + (b0 + j + kPrefetchRows) * a.kv_stride, row_bytes);
      const float* vr = a.v + (b0 + j) * a.kv_stride;
      for (int g = 0; g < g_n; ++g) {
        const float p = std::exp(scores[g][j] - st.m[g]);
        st.l[g] += p;
        axpy(p, vr, st.acc[g], a.head_dim);
      }
    }
  }
}

void init_state(GroupState& st, int heads, int head_dim) {
  for (int g = 0; g < heads; ++g) {
    std::fill(st.acc[g], st.acc[g] + head_dim, 0.0f);
    st.m[g] = -std::numeric_limits<float>::infinity();
    st.l[g] = 0.0;
  }
}

void write_out(const AttendGroupArgs& a, const GroupState& st) {
  for (int g = 0; g < a.heads; ++g) {
    const float inv = st.l[g] > 0.0 ? static_cast<float>(1.0 / st.l[g]) : 0.0f;
    for (int d = 0; d < a.head_dim; ++d) a.out[g][d] = st.acc[g][d] * inv;
  }
}

// Folds another range's state into st (the merge of two online softmaxes).
void absorb(GroupState& st, const GroupState& o, int heads, int head_dim) {
  for (int g = 0; g < heads; ++g) {
    float c, co;
    if (merge_softmax_state(st.m[g], st.l[g], o.m[g], o.l[g], &c, &co))
      merge_accumulator(st.acc[g], o.acc[g], head_dim, c, co);
  }
}

}  // namespace

void attend_head_group(const AttendGroupArgs& a, const DenseKernels& kernels) {
  GroupState st;
  init_state(st, a.heads, a.head_dim);
  attend_range(a, kernels, 0, a.n_ctx, st);
  write_out(a, st);
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
  // Tasks: (query, KV head, a run of at most kMaxGroupHeads of its query heads), so each K/V row
  // is read once per run rather than once per query head.
  const int groups = shape_.n_heads / shape_.n_kv_heads, hd = shape_.head_dim;
  const size_t q_stride = static_cast<size_t>(shape_.n_heads) * hd;
  const int runs = (groups + kMaxGroupHeads - 1) / kMaxGroupHeads;
  const int per_query = shape_.n_kv_heads * runs;
  const size_t tasks = static_cast<size_t>(n) * per_query;
  const float* const kb = k_[layer].data();
  const float* const vb = v_[layer].data();
  const auto args_of = [=, this](size_t task) {
    const int i = static_cast<int>(task / per_query);
    const int rest = static_cast<int>(task % per_query);
    const int kvh = rest / runs;
    const int h0 = kvh * groups + (rest % runs) * kMaxGroupHeads;
    const int h1 = std::min((kvh + 1) * groups, h0 + kMaxGroupHeads);
    const size_t kv_off = static_cast<size_t>(kvh) * hd;
    AttendGroupArgs a;
    a.heads = h1 - h0;
    for (int h = h0; h < h1; ++h) {
      a.q[h - h0] = q + i * q_stride + static_cast<size_t>(h) * hd;
      a.out[h - h0] = out + i * q_stride + static_cast<size_t>(h) * hd;
    }
    a.k = kb + kv_off;
    a.v = vb + kv_off;
    a.n_ctx = length_ + i + 1;
    a.head_dim = hd;
    a.kv_stride = kv_dim_;
    a.scale = shape_.scale;
    return a;
  };
  // A decode step has only KV-head tasks (3 for SmolLM2, which two threads run 2:1): long contexts
  // are also cut into position ranges whose softmax states are merged afterwards. The cut depends
  // on the shape and length only, never on the thread count.
  const int n_ctx = length_ + n;
  const int max_ranges = std::max(1, n_ctx / kMinRangeRows);
  const int ranges =
      n == 1 ? std::min((kMinItems + static_cast<int>(tasks) - 1) / static_cast<int>(tasks),
                        max_ranges)
             : 1;
  if (ranges > 1) {
    // The calling thread's scratch (16 KB a part), handed to the workers by pointer: a
    // thread_local named inside the lambda would be each worker's own.
    thread_local std::vector<GroupState> scratch;
    scratch.resize(tasks * static_cast<size_t>(ranges));
    GroupState* const parts = scratch.data();
    const size_t n_parts = scratch.size();
    const int per = (n_ctx + ranges - 1) / ranges;
    pool.parallel_for(n_parts, 1, [&](size_t begin, size_t end) {
      for (size_t it = begin; it < end; ++it) {
        const AttendGroupArgs a = args_of(it % tasks);
        const int r = static_cast<int>(it / tasks);
        init_state(parts[it], a.heads, a.head_dim);
        attend_range(a, kernels_, r * per, std::min(a.n_ctx, (r + 1) * per), parts[it]);
      }
    });
    for (size_t t = 0; t < tasks; ++t) {
      const AttendGroupArgs a = args_of(t);
      for (int r = 1; r < ranges; ++r)
        absorb(parts[t], parts[static_cast<size_t>(r) * tasks + t], a.heads, a.head_dim);
      write_out(a, parts[t]);
    }
    return ok_status();
  }
  // (Two captured pointers: the lambda fits std::function's small buffer, no allocation a call.)
  pool.parallel_for(tasks, 1, [&args_of, this](size_t begin, size_t end) {
    for (size_t task = begin; task < end; ++task) attend_head_group(args_of(task), kernels_);
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
