// The KV cache as the forward pass sees it: one sequence's keys and values, layer by layer.
// The dense reference cache (dense_kv.h) and the paged compressed cache (paged_kv.h) both
// implement it, so the model code never knows how K and V are stored.
#pragma once

#include <cstddef>

#include "tq/core/status.h"
#include "tq/core/thread_pool.h"

namespace tq::kv {

struct AttentionShape {
  int n_layers = 0;
  int n_heads = 0;     // query heads
  int n_kv_heads = 0;  // KV heads; n_heads % n_kv_heads == 0 (GQA groups)
  int head_dim = 0;
  float scale = 0.0f;  // softmax scale, usually 1/sqrt(head_dim)
};

class SequenceKv {
 public:
  virtual ~SequenceKv() = default;

  // Tokens stored and committed (every layer holds them).
  virtual int length() const = 0;
  // The most tokens this sequence may hold.
  virtual int capacity() const = 0;

  // Stores the keys and values of the n tokens at positions length() .. length()+n-1 of one
  // layer. k, v: [n][n_kv_heads][head_dim], keys after RoPE. Fails (and stores nothing) when
  // the cache is full.
  virtual Status append(int layer, int n, const float* k, const float* v) = 0;

  // Called before append() with the queries of the same n tokens ([n][n_heads][head_dim],
  // after RoPE; valid until that append returns). A cache that fixes per-channel statistics at
  // its first append (PagedKv's key scaling) may use them; others ignore them.
  virtual void observe_queries(int layer, int n, const float* q) { (void)layer, (void)n, (void)q; }

  // Causal attention of the n newest queries of `layer` (their K/V already appended):
  // q: [n][n_heads][head_dim]; query i sees positions 0 .. length()+i.
  // out: [n][n_heads][head_dim].
  virtual Status attend(int layer, int n, const float* q, float* out, ThreadPool& pool) = 0;

  // After every layer appended and attended n tokens: they become part of length().
  virtual Status commit(int n) = 0;

  // Bytes this sequence holds in the cache now (all layers, K and V, everything stored).
  virtual size_t bytes_used() const = 0;
};

}  // namespace tq::kv
