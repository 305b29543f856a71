// BlockPool: arena layout, allocation, reference counts, the evictable LRU of cached pages, and
// no leaks once every holder lets go.
#include <gtest/gtest.h>

#include <set>
#include <vector>

#include "tq/kv/block_pool.h"
#include "tq/kv/prefix_cache.h"

namespace tq::kv {
namespace {

TEST(BlockPool, LayoutIsSlabMajorAndSizedInBytes) {
  const std::vector<size_t> blocks = {100, 60, 36};
  auto pool = BlockPool::create(blocks, 196 * 5 + 150);  // 5 pages, the rest unused
  ASSERT_TRUE(pool.ok());
  BlockPool& p = **pool;
  EXPECT_EQ(p.n_pages(), 5);
  EXPECT_EQ(p.page_bytes(), 196u);
  EXPECT_EQ(p.arena_bytes(), 980u);
  // Slab s of page i at slab_offset(s) + i * block_bytes(s); slabs do not overlap.
  EXPECT_EQ(p.block(1, 0) - p.block(0, 0), 100);
  EXPECT_EQ(p.block(0, 1) - p.block(0, 0), 500);
  EXPECT_EQ(p.block(0, 2) - p.block(4, 1), 60);
  EXPECT_FALSE(BlockPool::create(blocks, 195).ok());  // not even one page
  EXPECT_FALSE(BlockPool::create({}, 1000).ok());
}

TEST(BlockPool, AllocateReleaseRefcountNoLeaks) {
  auto pool = BlockPool::create(std::vector<size_t>(1, 64), 64 * 7);
  ASSERT_TRUE(pool.ok());
  BlockPool& p = **pool;
  std::set<int> got;
  for (int i = 0; i < 7; ++i) {
    const int page = p.allocate_free();
    ASSERT_NE(page, kNoPage);
    EXPECT_TRUE(got.insert(page).second) << "page handed out twice";
    EXPECT_EQ(p.refcount(page), 1);
  }
  EXPECT_EQ(p.allocate_free(), kNoPage);
  EXPECT_EQ(p.n_referenced(), 7);
  p.retain(3);
  EXPECT_EQ(p.refcount(3), 2);
  p.release(3);
  EXPECT_EQ(p.refcount(3), 1);
  EXPECT_EQ(p.n_free(), 0);
  for (int page : got) p.release(page);
  EXPECT_EQ(p.n_free(), 7);
  EXPECT_EQ(p.n_referenced(), 0);
  EXPECT_TRUE(p.check_invariants().ok());
}

TEST(BlockPool, CachedPagesAreEvictedLeastRecentlyReleasedFirst) {
  auto pool = BlockPool::create({32, 32}, 64 * 3);
  ASSERT_TRUE(pool.ok());
  BlockPool& p = **pool;
  const int a = p.allocate_free(), b = p.allocate_free(), c = p.allocate_free();
  p.set_cached(a, true);
  p.set_cached(b, true);
  p.release(b);  // released first: evicted first
  p.release(a);
  p.release(c);  // not cached: free
  EXPECT_EQ(p.n_free(), 1);
  EXPECT_EQ(p.n_evictable(), 2);
  EXPECT_TRUE(p.check_invariants().ok());
  // A cached page can be revived by a new holder: it leaves the LRU list.
  p.retain(a);
  EXPECT_EQ(p.n_evictable(), 1);
  EXPECT_EQ(p.allocate_free(), c);
  EXPECT_EQ(p.allocate_free(), kNoPage);
  EXPECT_EQ(p.evict_lru(), b);
  EXPECT_FALSE(p.cached(b));
  EXPECT_EQ(p.evict_lru(), kNoPage);
  EXPECT_TRUE(p.check_invariants().ok());
  p.release(a);
  EXPECT_EQ(p.n_evictable(), 1);
  p.set_cached(a, false);  // uncached while unreferenced: straight to free
  EXPECT_EQ(p.n_free(), 1);
  p.release(b);
  p.release(c);
  EXPECT_EQ(p.n_free(), 3);
  EXPECT_TRUE(p.check_invariants().ok());
}

TEST(PrefixCache, FindsOnlyExactTokensUnderTheRightParent) {
  PrefixCache pc;
  const std::vector<int32_t> t1 = {5, 6, 7, 8}, t2 = {5, 6, 7, 9};
  const uint64_t root = prefix_root_hash(1, {});
  const uint64_t h1 = prefix_block_hash(root, t1);
  EXPECT_NE(h1, prefix_block_hash(root, t2));
  EXPECT_NE(root, prefix_root_hash(2, {}));  // another config never shares
  EXPECT_NE(root, prefix_root_hash(1, std::vector<int32_t>{1}));
  ASSERT_TRUE(pc.insert(h1, root, true, t1, 4));
  EXPECT_FALSE(pc.insert(h1, root, true, t1, 5));  // hash taken
  EXPECT_EQ(pc.find(h1, root, t1), 4);
  EXPECT_EQ(pc.find(h1, root, t2), kNoPage);  // collision guard: tokens compared
  EXPECT_EQ(pc.find(h1, root + 1, t1), kNoPage);
  pc.put_sinks(root, std::make_shared<const SinkSnapshot>(SinkSnapshot(10, 1)));
  EXPECT_EQ(pc.sink_bytes(), 20u);
  pc.erase_page(4);
  EXPECT_EQ(pc.find(h1, root, t1), kNoPage);
  EXPECT_EQ(pc.sinks(root), nullptr);  // the root's last first page is gone
  EXPECT_EQ(pc.size(), 0u);
}

}  // namespace
}  // namespace tq::kv
