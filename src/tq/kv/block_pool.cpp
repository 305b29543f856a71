#include "tq/kv/block_pool.h"

#include <algorithm>
#include <new>
#include <string>
#include <utility>

namespace tq::kv {

Expected<std::unique_ptr<BlockPool>> BlockPool::create(std::vector<size_t> block_bytes,
                                                       size_t budget_bytes) {
  if (block_bytes.empty()) return invalid_argument("block pool needs at least one slab");
  size_t page_bytes = 0;
  for (size_t b : block_bytes) {
    if (b == 0) return invalid_argument("block pool: a slab has zero-byte blocks");
    page_bytes += b;
  }
  const size_t n_pages = budget_bytes / page_bytes;
  if (n_pages == 0)
    return resource_exhausted("KV pool budget of " + std::to_string(budget_bytes) +
                              " bytes is smaller than one page (" + std::to_string(page_bytes) +
                              " bytes)");
  if (n_pages > static_cast<size_t>(1) << 30)
    return invalid_argument("KV pool budget gives too many pages (" + std::to_string(n_pages) +
                            ")");

  std::unique_ptr<BlockPool> pool(new BlockPool());
  pool->n_pages_ = static_cast<int>(n_pages);
  pool->page_bytes_ = page_bytes;
  pool->slab_offset_.resize(block_bytes.size());
  size_t offset = 0;
  for (size_t s = 0; s < block_bytes.size(); ++s) {
    pool->slab_offset_[s] = offset;
    offset += block_bytes[s] * n_pages;
  }
  pool->block_bytes_ = std::move(block_bytes);
  // Left uninitialized on purpose: untouched pages cost no physical memory.
  pool->arena_.reset(new (std::nothrow) uint8_t[offset]);
  if (!pool->arena_)
    return resource_exhausted("cannot allocate a KV pool of " + std::to_string(offset) + " bytes");
  pool->pages_.resize(n_pages);
  pool->free_.reserve(n_pages);
  // Reversed so that allocation hands out pages 0, 1, 2, ... (reads well in tests and dumps).
  for (int p = pool->n_pages_ - 1; p >= 0; --p) pool->free_.push_back(p);
  return pool;
}

int BlockPool::allocate_free() {
  if (free_.empty()) return kNoPage;
  const int page = free_.back();
  free_.pop_back();
  pages_[static_cast<size_t>(page)].refs = 1;
  return page;
}

int BlockPool::evict_lru() {
  if (lru_.empty()) return kNoPage;
  const int page = lru_.front();
  lru_.pop_front();
  PageState& st = pages_[static_cast<size_t>(page)];
  st.cached = false;
  st.refs = 1;
  return page;
}

void BlockPool::retain(int page) {
  PageState& st = pages_[static_cast<size_t>(page)];
  if (st.refs == 0) {
    // Only a cached page can be revived from zero: it leaves the evictable list.
    TQ_DCHECK(st.cached);
    lru_.erase(st.lru_pos);
  }
  ++st.refs;
}

void BlockPool::release(int page) {
  PageState& st = pages_[static_cast<size_t>(page)];
  TQ_DCHECK(st.refs > 0);
  if (--st.refs > 0) return;
  if (st.cached) {
    st.lru_pos = lru_.insert(lru_.end(), page);
  } else {
    free_.push_back(page);
  }
}

void BlockPool::set_cached(int page, bool cached) {
  PageState& st = pages_[static_cast<size_t>(page)];
  if (st.cached == cached) return;
  if (st.refs == 0) {
    // Unreferenced pages only lose the mark (eviction of a stale entry): back to free.
    TQ_DCHECK(!cached);
    lru_.erase(st.lru_pos);
    st.cached = false;
    free_.push_back(page);
    return;
  }
  st.cached = cached;
}

Status BlockPool::check_invariants() const {
  std::vector<int> where(pages_.size(), 0);  // 1 free, 2 lru
  for (int p : free_) {
    if (where[static_cast<size_t>(p)] != 0) return internal_error("page listed twice (free)");
    where[static_cast<size_t>(p)] = 1;
  }
  for (int p : lru_) {
    if (where[static_cast<size_t>(p)] != 0) return internal_error("page listed twice (lru)");
    where[static_cast<size_t>(p)] = 2;
  }
  for (size_t p = 0; p < pages_.size(); ++p) {
    const PageState& st = pages_[p];
    const std::string id = "page " + std::to_string(p);
    if (st.refs < 0) return internal_error(id + " has a negative refcount");
    if (st.refs > 0 && where[p] != 0) return internal_error(id + " is referenced but listed");
    if (st.refs == 0 && st.cached && where[p] != 2)
      return internal_error(id + " is cached and unreferenced but not evictable");
    if (st.refs == 0 && !st.cached && where[p] != 1)
      return internal_error(id + " is unreferenced but not free");
  }
  return ok_status();
}

}  // namespace tq::kv
