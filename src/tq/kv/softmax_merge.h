// The merge of two online-softmax states over disjoint key ranges for the same query: running
// maxima m, sums l and accumulators, each side rescaled to the larger maximum. One rule for
// every CPU attention that splits a sequence (paged_attention.cpp's tiles, dense_kv.cpp's
// position ranges).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

namespace tq::kv {

// Folds the other side's (om, ol) into (m, l) and sets the factors of this side's accumulator
// (*c) and the other's (*co): acc = acc * c + other_acc * co. Returns false, changing nothing,
// when the other side saw no key (om = -inf). L: float or double sums.
template <class L>
inline bool merge_softmax_state(float& m, L& l, float om, L ol, float* c, float* co) {
  if (om == -std::numeric_limits<float>::infinity()) return false;
  const float m_new = std::max(m, om);
  *c = std::exp(m - m_new);  // (0 when this side is empty: exp(-inf))
  *co = std::exp(om - m_new);
  l = l * *c + ol * *co;
  m = m_new;
  return true;
}

// acc[0..n) = acc * c + other[0..n) * co.
inline void merge_accumulator(float* acc, const float* other, int n, float c, float co) {
  for (int e = 0; e < n; ++e) acc[e] = acc[e] * c + other[e] * co;
}

}  // namespace tq::kv
