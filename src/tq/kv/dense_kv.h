// The dense reference KV cache: float32 keys and values per layer, exact causal attention
// (blocked online softmax, numerically stable), multi-threaded over (query, KV head), a decode
// step also over position ranges. The compressed paged cache is checked against it, and the
// forward-pass tests run on it.
// The kv layer sits below the backend, so SIMD dot/axpy come in as a table (DenseKernels);
// backend/cpu/ops.h provides one, and nullptr fields fall back to the scalar loops here.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "tq/kv/sequence_kv.h"

namespace tq::kv {

// Causal attention of query heads that share one KV head, over keys/values laid out
// [pos][n_kv_heads][head_dim] (the KV head's vectors at stride kv_stride floats): out_g =
// softmax(scale * K q_g) V over positions [0, n_ctx), each row of K and V read once for all the
// heads. Blocked online softmax; no allocation; head_dim <= kMaxAttnHeadDim, at most
// kMaxGroupHeads heads a call. Each head's arithmetic is the same, in the same order, whether it
// runs alone or in a group.
inline constexpr int kMaxAttnHeadDim = 512;
inline constexpr int kMaxGroupHeads = 8;

struct DenseKernels {
  float (*dot)(const float* a, const float* b, int n) = nullptr;     // sum a[i] b[i]
  void (*axpy)(float a, const float* x, float* y, int n) = nullptr;  // y += a x
};

struct AttendGroupArgs {
  const float* q[kMaxGroupHeads] = {};  // [head_dim] each
  float* out[kMaxGroupHeads] = {};      // [head_dim] each
  int heads = 0;                        // 1 .. kMaxGroupHeads
  const float* k = nullptr;             // first key of the KV head; position p at k + p * kv_stride
  const float* v = nullptr;             // first value of the KV head, same stride
  int n_ctx = 0;                        // positions attended: [0, n_ctx)
  int head_dim = 0;
  size_t kv_stride = 0;  // floats between positions
  float scale = 0.0f;
};
void attend_head_group(const AttendGroupArgs& a, const DenseKernels& kernels);

class DenseKv final : public SequenceKv {
 public:
  // InvalidArgument for a bad shape (counts < 1, n_heads % n_kv_heads, head_dim too large or
  // odd, scale not positive) or capacity < 1. Memory grows as tokens arrive, up to capacity.
  static Expected<std::unique_ptr<DenseKv>> create(const AttentionShape& shape, int capacity,
                                                   DenseKernels kernels = {});

  int length() const override { return length_; }
  int capacity() const override { return capacity_; }
  Status append(int layer, int n, const float* k, const float* v) override;
  Status attend(int layer, int n, const float* q, float* out, ThreadPool& pool) override;
  Status commit(int n) override;
  size_t bytes_used() const override;

  // Forgets every token (keeps the memory).
  void clear();

 private:
  DenseKv(const AttentionShape& shape, int capacity, DenseKernels kernels);
  Status check_layer(int layer, int n) const;

  AttentionShape shape_;
  DenseKernels kernels_;
  int capacity_ = 0;
  int length_ = 0;
  size_t kv_dim_ = 0;                  // n_kv_heads * head_dim
  std::vector<std::vector<float>> k_;  // [layer][pos][kv_head][head_dim]
  std::vector<std::vector<float>> v_;  // [layer][pos][kv_head][head_dim]
  std::vector<int> pending_;           // [layer] tokens appended, not yet committed
};

}  // namespace tq::kv
