// The paged KV pool: one byte arena cut into pages. A page holds `block_tokens` tokens of every
// layer's K and V: for each (layer, K or V) "slab" it has one fixed-size block, which stores
// those tokens for all KV heads in the layer's codec layout. The arena is slab-major, so one
// layer's K blocks of every page sit together (as vLLM's per-layer cache tensors):
//
//   arena: [slab 0: page 0 block | page 1 block | ...][slab 1: ...] ... [slab 2L-1: ...]
//   slab s = 2*layer + (0 for K, 1 for V); block = [kv_head][codec block of block_tokens]
//
// Pages are reference counted: a sequence holds each page of its block table once, and a page
// that several sequences share (a cached prompt prefix) is counted by each. An unreferenced
// page goes back to the free list, or, if the prefix cache still indexes it, to an LRU list of
// evictable pages that allocation reclaims only when the free list is empty.
// Not thread-safe: PagedKvCache serializes every call under its mutex.
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <vector>

#include "tq/core/status.h"

namespace tq::kv {

inline constexpr int kNoPage = -1;

class BlockPool {
 public:
  // block_bytes[s]: bytes of one block of slab s. The pool gets as many pages as fit in
  // budget_bytes (at least one, or an error).
  static Expected<std::unique_ptr<BlockPool>> create(std::vector<size_t> block_bytes,
                                                     size_t budget_bytes);
  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  int n_pages() const { return n_pages_; }
  int n_slabs() const { return static_cast<int>(block_bytes_.size()); }
  size_t page_bytes() const { return page_bytes_; }
  size_t block_bytes(int slab) const { return block_bytes_[static_cast<size_t>(slab)]; }
  size_t arena_bytes() const { return page_bytes_ * static_cast<size_t>(n_pages_); }

  uint8_t* block(int page, int slab) {
    return arena_.get() + slab_offset_[static_cast<size_t>(slab)] +
           static_cast<size_t>(page) * block_bytes_[static_cast<size_t>(slab)];
  }
  const uint8_t* block(int page, int slab) const {
    return arena_.get() + slab_offset_[static_cast<size_t>(slab)] +
           static_cast<size_t>(page) * block_bytes_[static_cast<size_t>(slab)];
  }

  // A page with refcount 1 from the free list, else kNoPage (the caller may then evict).
  int allocate_free();
  // The least recently released cached page (refcount 0), given refcount 1 and uncached;
  // kNoPage when there is none. The caller must drop it from the prefix cache.
  int evict_lru();
  void retain(int page);
  // Drops one reference. At zero the page is parked in the LRU list if cached, else freed.
  void release(int page);
  // Marks a page as indexed by the prefix cache (or not). An unreferenced page that loses the
  // mark is freed.
  void set_cached(int page, bool cached);

  int refcount(int page) const { return pages_[static_cast<size_t>(page)].refs; }
  bool cached(int page) const { return pages_[static_cast<size_t>(page)].cached; }
  int n_free() const { return static_cast<int>(free_.size()); }
  int n_evictable() const { return static_cast<int>(lru_.size()); }
  int n_referenced() const { return n_pages_ - n_free() - n_evictable(); }

  // Checks refcounts, the free list and the LRU list agree (tests, debug).
  Status check_invariants() const;

 private:
  BlockPool() = default;

  struct PageState {
    int refs = 0;
    bool cached = false;
    std::list<int>::iterator lru_pos;  // valid while refs == 0 && cached
  };

  std::vector<size_t> block_bytes_;  // [slab]
  std::vector<size_t> slab_offset_;  // [slab] byte offset of the slab in the arena
  size_t page_bytes_ = 0;
  int n_pages_ = 0;
  std::unique_ptr<uint8_t[]> arena_;
  std::vector<PageState> pages_;
  std::vector<int> free_;  // a stack: the most recently freed page is reused first (warm)
  std::list<int> lru_;     // cached, unreferenced pages; front = least recently released
};

}  // namespace tq::kv
