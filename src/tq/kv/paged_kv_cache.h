// The shared side of the paged, compressed KV cache: one per model and KV configuration. It
// owns the codecs of every (layer, K or V), the block pool (one arena sized in bytes) and the
// prefix cache, and hands out PagedKv sequences that draw pages from the pool. Page allocation,
// release and prefix lookups are serialized under one mutex; attention and encoding run
// without it (a page is written only by the one sequence that allocated it, and a page is
// shared only once it is full and immutable). The cache must outlive its sequences.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "tq/core/status.h"
#include "tq/kv/block_pool.h"
#include "tq/kv/kv_bytes.h"
#include "tq/kv/kv_config.h"
#include "tq/kv/prefix_cache.h"
#include "tq/kv/sequence_kv.h"
#include "tq/quant/codebook.h"
#include "tq/quant/codec.h"

namespace tq::kv {

class PagedKv;

struct PagedKvCacheOptions {
  AttentionShape shape;
  KvConfig config;
  size_t pool_bytes = size_t{256} << 20;  // the arena; pages = pool_bytes / page_bytes
  bool prefix_caching = true;             // index full pages by token hash chain and reuse them
  // Fused attention kernels for the codecs (backend/cpu's cpu_kernel_table()); nullptr =
  // the scalar reference.
  const quant::KernelTable* kernels = nullptr;
  // For KvConfig::value_scaling: [layer][kv_head][head_dim], w = the norm of the output
  // projection's columns that read channel j of a KV head's attention output (the root of the
  // sum of squares over the query heads that share it; model::Model::value_output_weights).
  // Empty: w = 1 (the scales then follow the values' spread alone).
  std::vector<float> value_weights;
};

struct KvFormatBytes {
  std::string what;  // "K tq4", "V f16"
  size_t bytes = 0;  // bytes of that format in pages held by sequences
};

// What the server reports about the pool.
struct KvPoolStats {
  int pages_total = 0;
  int pages_used = 0;    // held by at least one sequence
  int pages_cached = 0;  // held only by the prefix cache (reclaimed when the pool runs out)
  int pages_free = 0;
  int block_tokens = 0;
  size_t page_bytes = 0;
  size_t arena_bytes = 0;
  size_t used_bytes = 0;         // pages_used * page_bytes
  size_t cached_bytes = 0;       // pages_cached * page_bytes
  size_t exact_bytes = 0;        // f16 windows and sinks of live sequences
  size_t prefix_sink_bytes = 0;  // f16 sink snapshots kept by the prefix cache
  std::vector<KvFormatBytes> per_format;
  int sequences = 0;
  int64_t tokens = 0;  // tokens held by live sequences (a shared prefix counts per sequence)
  // f16 bytes of one page's tokens / page_bytes (the formats alone).
  double formats_ratio_vs_f16 = 0.0;
  // f16 bytes of every live token / (used_bytes + exact_bytes): includes window, sinks,
  // partly filled pages and the savings of shared prefixes.
  double effective_ratio_vs_f16 = 0.0;
  int64_t prefix_hit_tokens = 0;     // tokens taken from the prefix cache
  int64_t prefix_lookup_tokens = 0;  // prompt tokens offered to the prefix cache

  std::string to_string() const;
};

class PagedKvCache {
 public:
  static Expected<std::unique_ptr<PagedKvCache>> create(const PagedKvCacheOptions& options);
  ~PagedKvCache();
  PagedKvCache(const PagedKvCache&) = delete;
  PagedKvCache& operator=(const PagedKvCache&) = delete;

  // A new, empty sequence of at most `capacity` tokens. Pages are taken as tokens arrive.
  Expected<std::unique_ptr<PagedKv>> new_sequence(int capacity);

  const AttentionShape& shape() const { return options_.shape; }
  const KvConfig& config() const { return options_.config; }
  bool prefix_caching() const { return options_.prefix_caching; }
  const quant::VectorCodec& codec(int layer, bool value) const {
    return *codecs_[static_cast<size_t>(2 * layer + (value ? 1 : 0))];
  }
  const quant::VectorCodec& f16_codec() const { return *f16_codec_; }
  // options.value_weights of `layer` ([kv_head][head_dim]), or null when none were given.
  const float* value_weights(int layer) const {
    return options_.value_weights.empty()
               ? nullptr
               : options_.value_weights.data() + static_cast<size_t>(layer) *
                                                     static_cast<size_t>(shape().n_kv_heads) *
                                                     static_cast<size_t>(shape().head_dim);
  }
  int block_tokens() const { return options_.config.block_tokens; }
  size_t page_bytes() const { return pool_->page_bytes(); }
  // Hashes the config into the prefix chain's root, so caches of different configs never mix.
  uint64_t fingerprint() const { return fingerprint_; }

  KvPoolStats stats() const;
  // Pool and prefix-cache consistency (tests).
  Status check_invariants() const;

 private:
  friend class PagedKv;
  explicit PagedKvCache(const PagedKvCacheOptions& options) : options_(options) {}

  // Appends n fresh pages (refcount 1) to `pages`, evicting cached pages if the free list runs
  // out; on failure appends none.
  Status allocate_pages(int n, std::vector<int>& pages);
  void release_pages(std::span<const int> pages);
  // Indexes a full page of a sequence under its chain hash (no-op if the hash is taken).
  void index_page(uint64_t hash, uint64_t parent, bool root, std::span<const int32_t> tokens,
                  int page, std::shared_ptr<const SinkSnapshot> sinks,
                  std::shared_ptr<const KeyMeans> key_means);
  // Walks the chain from `root` over tokens (B per page, at most max_pages), retaining each
  // page found and appending it to `pages`, and the key means of the first one (when the
  // config centers keys; a first page without them is not reused). Returns the chain hash of
  // the last page found.
  uint64_t acquire_prefix(uint64_t root, std::span<const int32_t> tokens, int max_pages,
                          std::vector<int>& pages, std::shared_ptr<const SinkSnapshot>& sinks,
                          std::shared_ptr<const KeyMeans>& key_means);
  const uint8_t* block(int page, int slab) const { return pool_->block(page, slab); }
  uint8_t* block(int page, int slab) { return pool_->block(page, slab); }

  PagedKvCacheOptions options_;
  uint64_t fingerprint_ = 0;
  bool needs_key_means_ = false;  // some layer centers its keys or scales its values
  // Declared before the codecs: they point into it and must die after them.
  std::unique_ptr<quant::CodebookCache> books_;
  std::vector<std::unique_ptr<quant::VectorCodec>> codecs_;  // [2 * layer + (V ? 1 : 0)]
  std::unique_ptr<quant::VectorCodec> f16_codec_;

  mutable std::mutex mu_;
  std::unique_ptr<BlockPool> pool_;  // guarded by mu_ (block addresses are immutable)
  PrefixCache prefix_;               // guarded by mu_

  std::atomic<int> sequences_{0};
  std::atomic<int64_t> live_tokens_{0};
  std::atomic<int64_t> exact_bytes_{0};
  std::atomic<int64_t> prefix_hit_tokens_{0};
  std::atomic<int64_t> prefix_lookup_tokens_{0};
};

}  // namespace tq::kv
