#include "tq/kv/paged_kv_cache.h"

#include <cmath>
#include <cstdio>
#include <map>
#include <utility>

#include "tq/core/log.h"
#include "tq/core/rng.h"
#include "tq/kv/paged_kv.h"

namespace tq::kv {

std::string KvPoolStats::to_string() const {
  char buf[400];
  std::snprintf(
      buf, sizeof buf,
      "pages %d used + %d cached + %d free of %d (%zu B each, %d tokens); "
      "used %.2f MiB, exact %.2f MiB; %d sequences, %lld tokens; "
      "formats %.2fx, effective %.2fx vs f16; prefix hits %lld/%lld tokens",
      pages_used, pages_cached, pages_free, pages_total, page_bytes, block_tokens,
      static_cast<double>(used_bytes) / (1 << 20), static_cast<double>(exact_bytes) / (1 << 20),
      sequences, static_cast<long long>(tokens), formats_ratio_vs_f16, effective_ratio_vs_f16,
      static_cast<long long>(prefix_hit_tokens), static_cast<long long>(prefix_lookup_tokens));
  return buf;
}

Expected<std::unique_ptr<PagedKvCache>> PagedKvCache::create(const PagedKvCacheOptions& o) {
  const AttentionShape& sh = o.shape;
  TQ_ASSIGN_OR_RETURN(std::vector<size_t> block_bytes, kv_block_bytes(o.config, sh));
  if (!(sh.scale > 0.0f)) return invalid_argument("attention scale must be positive");
  if (!o.value_weights.empty()) {
    const size_t want = static_cast<size_t>(sh.n_layers) * static_cast<size_t>(sh.n_kv_heads) *
                        static_cast<size_t>(sh.head_dim);
    if (o.value_weights.size() != want)
      return invalid_argument(
          "value weights: " + std::to_string(o.value_weights.size()) +
          " floats, expected n_layers * n_kv_heads * head_dim = " + std::to_string(want));
    for (float w : o.value_weights)
      if (!std::isfinite(w) || w < 0.0f)
        return invalid_argument("value weights must be finite and non-negative");
  }

  std::unique_ptr<PagedKvCache> c(new PagedKvCache(o));
  c->books_ = std::make_unique<quant::CodebookCache>();
  c->codecs_.reserve(block_bytes.size());
  for (int l = 0; l < sh.n_layers; ++l) {
    const LayerFormats f = o.config.formats_for(l, sh.n_layers);
    quant::CodecOptions co;
    co.seed = o.config.layer_seed(l);
    co.norm_correction = o.config.norm_correction;
    co.kernels = o.kernels;
    for (const quant::Format& fmt : {f.k, f.v}) {
      TQ_ASSIGN_OR_RETURN(auto codec, quant::make_codec(fmt, sh.head_dim, co, *c->books_));
      const size_t slab = c->codecs_.size();
      if (codec->block_bytes(o.config.block_tokens) * static_cast<size_t>(sh.n_kv_heads) !=
          block_bytes[slab])
        return internal_error("codec " + fmt.name() +
                              " block size disagrees with the format's "
                              "bytes per vector");
      c->codecs_.push_back(std::move(codec));
    }
  }
  quant::CodecOptions fo;
  fo.kernels = o.kernels;
  TQ_ASSIGN_OR_RETURN(c->f16_codec_,
                      quant::make_codec(quant::kFormatF16, sh.head_dim, fo, *c->books_));
  TQ_ASSIGN_OR_RETURN(c->pool_, BlockPool::create(std::move(block_bytes), o.pool_bytes));

  // Everything that changes what a page holds goes into the prefix chain's root.
  c->fingerprint_ = o.config.hash(derive_seed(static_cast<uint64_t>(sh.n_layers),
                                              static_cast<uint64_t>(sh.n_kv_heads),
                                              static_cast<uint64_t>(sh.head_dim)));
  for (int l = 0; l < sh.n_layers; ++l)
    c->needs_key_means_ = c->needs_key_means_ || o.config.centers_keys(l, sh.n_layers) ||
                          o.config.scales_values(l, sh.n_layers);
  TQ_LOG(kDebug, "KV pool: %d pages of %zu bytes (%s)", c->pool_->n_pages(), c->pool_->page_bytes(),
         o.config.to_string().c_str());
  return c;
}

PagedKvCache::~PagedKvCache() {
  if (sequences_.load() != 0)
    TQ_LOG(kError, "PagedKvCache destroyed with %d live sequences", sequences_.load());
}

Expected<std::unique_ptr<PagedKv>> PagedKvCache::new_sequence(int capacity) {
  if (capacity < 1) return invalid_argument("sequence capacity must be positive");
  return std::unique_ptr<PagedKv>(new PagedKv(this, capacity));
}

Status PagedKvCache::allocate_pages(int n, std::vector<int>& pages) {
  std::lock_guard<std::mutex> lock(mu_);
  const size_t first = pages.size();
  for (int i = 0; i < n; ++i) {
    int page = pool_->allocate_free();
    if (page == kNoPage) {
      page = pool_->evict_lru();
      if (page != kNoPage) prefix_.erase_page(page);
    }
    if (page == kNoPage) {
      for (size_t j = first; j < pages.size(); ++j) pool_->release(pages[j]);
      pages.resize(first);
      return resource_exhausted("KV pool out of pages (" + std::to_string(pool_->n_pages()) +
                                " pages of " + std::to_string(pool_->page_bytes()) +
                                " bytes, all held by sequences)");
    }
    pages.push_back(page);
  }
  return ok_status();
}

void PagedKvCache::release_pages(std::span<const int> pages) {
  std::lock_guard<std::mutex> lock(mu_);
  for (int p : pages) pool_->release(p);
}

void PagedKvCache::index_page(uint64_t hash, uint64_t parent, bool root,
                              std::span<const int32_t> tokens, int page,
                              std::shared_ptr<const SinkSnapshot> sinks,
                              std::shared_ptr<const KeyMeans> key_means) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!prefix_.insert(hash, parent, root, tokens, page, std::move(key_means))) return;
  pool_->set_cached(page, true);
  if (root && sinks) prefix_.put_sinks(parent, std::move(sinks));
}

uint64_t PagedKvCache::acquire_prefix(uint64_t root, std::span<const int32_t> tokens, int max_pages,
                                      std::vector<int>& pages,
                                      std::shared_ptr<const SinkSnapshot>& sinks,
                                      std::shared_ptr<const KeyMeans>& key_means) {
  const size_t bt = static_cast<size_t>(block_tokens());
  std::lock_guard<std::mutex> lock(mu_);
  sinks = prefix_.sinks(root);
  if (options_.config.sinks > 0 && !sinks) return root;  // sinks gone: nothing reusable
  uint64_t parent = root;
  for (int p = 0; p < max_pages && (static_cast<size_t>(p) + 1) * bt <= tokens.size(); ++p) {
    const auto slice = tokens.subspan(static_cast<size_t>(p) * bt, bt);
    const uint64_t h = prefix_block_hash(parent, slice);
    const int page = prefix_.find(h, parent, slice);
    if (page == kNoPage) break;
    if (p == 0 && needs_key_means_) {
      key_means = prefix_.key_means(page);
      if (!key_means) break;
    }
    pool_->retain(page);
    pages.push_back(page);
    parent = h;
  }
  return parent;
}

KvPoolStats PagedKvCache::stats() const {
  KvPoolStats s;
  std::lock_guard<std::mutex> lock(mu_);
  s.pages_total = pool_->n_pages();
  s.pages_free = pool_->n_free();
  s.pages_cached = pool_->n_evictable();
  s.pages_used = pool_->n_referenced();
  s.block_tokens = block_tokens();
  s.page_bytes = pool_->page_bytes();
  s.arena_bytes = pool_->arena_bytes();
  s.used_bytes = static_cast<size_t>(s.pages_used) * s.page_bytes;
  s.cached_bytes = static_cast<size_t>(s.pages_cached) * s.page_bytes;
  s.exact_bytes = static_cast<size_t>(exact_bytes_.load());
  s.prefix_sink_bytes = prefix_.sink_bytes();
  std::map<std::string, size_t> per;
  for (int slab = 0; slab < pool_->n_slabs(); ++slab) {
    const auto& codec = *codecs_[static_cast<size_t>(slab)];
    per[(slab % 2 ? "V " : "K ") + codec.format().name()] +=
        pool_->block_bytes(slab) * static_cast<size_t>(s.pages_used);
  }
  for (auto& [what, bytes] : per) s.per_format.push_back({what, bytes});
  s.sequences = sequences_.load();
  s.tokens = live_tokens_.load();
  const double f16_token = static_cast<double>(kv_f16_token_bytes(shape()));
  s.formats_ratio_vs_f16 = f16_token * block_tokens() / static_cast<double>(s.page_bytes);
  const double held = static_cast<double>(s.used_bytes + s.exact_bytes);
  s.effective_ratio_vs_f16 = held > 0 ? f16_token * static_cast<double>(s.tokens) / held : 0.0;
  s.prefix_hit_tokens = prefix_hit_tokens_.load();
  s.prefix_lookup_tokens = prefix_lookup_tokens_.load();
  return s;
}

Status PagedKvCache::check_invariants() const {
  std::lock_guard<std::mutex> lock(mu_);
  TQ_RETURN_IF_ERROR(pool_->check_invariants());
  for (int p = 0; p < pool_->n_pages(); ++p)
    if (pool_->cached(p) != prefix_.contains_page(p))
      return internal_error("page " + std::to_string(p) + ": pool and prefix cache disagree");
  return ok_status();
}

}  // namespace tq::kv
