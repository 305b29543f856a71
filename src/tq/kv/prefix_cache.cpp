#include "tq/kv/prefix_cache.h"

#include <algorithm>
#include <utility>

#include "tq/core/rng.h"

namespace tq::kv {
namespace {

uint64_t mix_tokens(uint64_t h, std::span<const int32_t> tokens) {
  // splitmix64 per token: every token changes every output bit (order-sensitive).
  for (int32_t t : tokens) {
    uint64_t s = h ^ (static_cast<uint64_t>(static_cast<uint32_t>(t)) * 0x9e3779b97f4a7c15ull);
    h = splitmix64(s);
  }
  uint64_t s = h ^ tokens.size();
  return splitmix64(s);
}

}  // namespace

uint64_t prefix_root_hash(uint64_t config_fingerprint, std::span<const int32_t> sink_tokens) {
  return mix_tokens(derive_seed(config_fingerprint, 0x726f6f74u /* "root" */), sink_tokens);
}

uint64_t prefix_block_hash(uint64_t parent, std::span<const int32_t> tokens) {
  return mix_tokens(parent, tokens);
}

int PrefixCache::find(uint64_t hash, uint64_t parent, std::span<const int32_t> tokens) const {
  const auto it = by_hash_.find(hash);
  if (it == by_hash_.end()) return kNoPage;
  const Entry& e = it->second;
  if (e.parent != parent ||
      !std::equal(e.tokens.begin(), e.tokens.end(), tokens.begin(), tokens.end()))
    return kNoPage;
  return e.page;
}

bool PrefixCache::insert(uint64_t hash, uint64_t parent, bool root, std::span<const int32_t> tokens,
                         int page, std::shared_ptr<const KeyMeans> key_means) {
  if (by_hash_.count(hash) != 0 || by_page_.count(page) != 0) return false;
  Entry e;
  e.page = page;
  e.parent = parent;
  e.root = root;
  e.tokens.assign(tokens.begin(), tokens.end());
  e.key_means = std::move(key_means);
  by_hash_.emplace(hash, std::move(e));
  by_page_.emplace(page, hash);
  if (root) ++roots_[parent].children;
  return true;
}

std::shared_ptr<const KeyMeans> PrefixCache::key_means(int page) const {
  const auto it = by_page_.find(page);
  if (it == by_page_.end()) return nullptr;
  const auto e = by_hash_.find(it->second);
  return e == by_hash_.end() ? nullptr : e->second.key_means;
}

void PrefixCache::erase_page(int page) {
  const auto it = by_page_.find(page);
  if (it == by_page_.end()) return;
  const auto e = by_hash_.find(it->second);
  if (e != by_hash_.end()) {
    if (e->second.root) {
      const auto r = roots_.find(e->second.parent);
      if (r != roots_.end() && --r->second.children <= 0) roots_.erase(r);
    }
    by_hash_.erase(e);
  }
  by_page_.erase(it);
}

void PrefixCache::put_sinks(uint64_t root, std::shared_ptr<const SinkSnapshot> sinks) {
  const auto r = roots_.find(root);
  if (r != roots_.end() && !r->second.sinks) r->second.sinks = std::move(sinks);
}

std::shared_ptr<const SinkSnapshot> PrefixCache::sinks(uint64_t root) const {
  const auto r = roots_.find(root);
  return r == roots_.end() ? nullptr : r->second.sinks;
}

size_t PrefixCache::sink_bytes() const {
  size_t bytes = 0;
  for (const auto& [hash, r] : roots_)
    if (r.sinks) bytes += r.sinks->size() * sizeof(uint16_t);
  return bytes;
}

}  // namespace tq::kv
