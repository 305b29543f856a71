// Software prefetch of the bytes a streaming loop reads next (weights in a decode GEMV, the next
// KV pages of an attention walk). Hardware prefetchers follow one sequential stream within a 4 KiB
// page, but on some machines (the 2-vCPU development VM: docs/benchmarks.md, "Software prefetch")
// they barely run ahead at all, and a decode step that streams ~100 MB of weights waited on
// memory for two thirds of its time. The streams' hints go to L2, not L1: a prefetched f16 KV
// page is 4 KiB a head, and pulling the next ones into L1 evicted the lines the current one still
// needed; only the next block of a small (compressed) page goes to L1 (paged_attention.cpp).
#pragma once

#include <cstddef>
#include <cstdint>

namespace tq {

inline constexpr size_t kCacheLine = 64;

// Prefetches the cache lines of [p, p + bytes) with __builtin_prefetch's locality kLocality
// (2: L2 and below, 3: L1 too). A hint only: it never faults and changes no result.
template <int kLocality>
inline void prefetch_lines(const void* p, size_t bytes) {
  const auto* c = static_cast<const char*>(p);
  for (size_t o = 0; o < bytes; o += kCacheLine) __builtin_prefetch(c + o, 0, kLocality);
}

// Into L2: the streams' hints.
inline void prefetch_l2(const void* p, size_t bytes) { prefetch_lines<2>(p, bytes); }

// Into L1 (and the levels below): for the few KiB a loop reads next.
inline void prefetch_l1(const void* p, size_t bytes) { prefetch_lines<3>(p, bytes); }

// Prefetches the `bytes` bytes that start `ahead` bytes after offset `at` of a buffer of `size`
// bytes at `base`, clipped to the buffer (offsets, so no pointer is formed past its end).
inline void prefetch_l2_ahead(const uint8_t* base, size_t size, size_t at, size_t ahead,
                              size_t bytes) {
  const size_t from = at + ahead;
  if (from >= size) return;
  prefetch_l2(base + from, bytes < size - from ? bytes : size - from);
}

}  // namespace tq
