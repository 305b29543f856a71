// Automatic prefix caching (as vLLM's): every full, immutable page of a sequence is indexed by
// a hash chain over token ids, h_p = H(h_{p-1}, tokens of page p), with h_{-1} = H(config,
// sink tokens). A new sequence whose prompt starts with the same tokens walks the chain from
// the root and reuses the pages it finds instead of recomputing and storing them again. The
// entry keeps the page's tokens and parent hash and both are compared on lookup, so a 64-bit
// hash collision cannot hand out the wrong page.
//
// Sink tokens live outside the pool (exact f16), so the root entry also keeps a snapshot of
// their K/V that a reusing sequence copies.
// Not thread-safe: PagedKvCache serializes every call under its mutex.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "tq/kv/block_pool.h"

namespace tq::kv {

// f16 K/V of the sink tokens of every layer: [layer][K, V][kv_head][sink][head_dim].
using SinkSnapshot = std::vector<uint16_t>;
// The key means of a sequence (PagedKv, key centering): [layer][kv_head][head_dim], followed by
// the key scales in the same layout when the cache scales keys. Every page of a sequence is
// stored relative to them, so they travel with its first page.
using KeyMeans = std::vector<float>;

uint64_t prefix_root_hash(uint64_t config_fingerprint, std::span<const int32_t> sink_tokens);
uint64_t prefix_block_hash(uint64_t parent, std::span<const int32_t> tokens);

class PrefixCache {
 public:
  // The page indexed under `hash` if its parent and tokens match exactly, else kNoPage.
  int find(uint64_t hash, uint64_t parent, std::span<const int32_t> tokens) const;
  // Indexes `page` under `hash`; false (and nothing changes) if the hash is already taken or
  // the page is already indexed. `root` says the parent is a root hash.
  bool insert(uint64_t hash, uint64_t parent, bool root, std::span<const int32_t> tokens, int page,
              std::shared_ptr<const KeyMeans> key_means = nullptr);
  // The key means a first page was indexed with (nullptr if none or not indexed).
  std::shared_ptr<const KeyMeans> key_means(int page) const;
  // Forgets the entry of `page` (eviction); no-op if it has none.
  void erase_page(int page);
  bool contains_page(int page) const { return by_page_.count(page) != 0; }
  size_t size() const { return by_hash_.size(); }

  // Sink snapshots per root hash, kept while some first page of that root is indexed.
  void put_sinks(uint64_t root, std::shared_ptr<const SinkSnapshot> sinks);
  std::shared_ptr<const SinkSnapshot> sinks(uint64_t root) const;
  size_t sink_bytes() const;

 private:
  struct Entry {
    int page = kNoPage;
    uint64_t parent = 0;
    bool root = false;
    std::vector<int32_t> tokens;
    std::shared_ptr<const KeyMeans> key_means;  // first pages of centered caches
  };
  struct Root {
    std::shared_ptr<const SinkSnapshot> sinks;
    int children = 0;  // indexed first pages under this root
  };

  std::unordered_map<uint64_t, Entry> by_hash_;
  std::unordered_map<int, uint64_t> by_page_;
  std::unordered_map<uint64_t, Root> roots_;
};

}  // namespace tq::kv
