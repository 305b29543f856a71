// Prefix sharing through the paged cache: sequences with a common prompt prefix store its full
// pages once, diverge correctly after it, survive each other's end, and leave no pages held.
// Also: random interleavings of append/attend/commit across sequences stay consistent.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "kv/kv_test_util.h"
#include "tq/kv/paged_kv.h"

namespace tq::kv {
namespace {

using test::KvData;

constexpr double kFusedVsDecodedTol = 2e-5;  // as in paged_kv_test.cpp

AttentionShape shape() {
  AttentionShape s;
  s.n_layers = 2;
  s.n_heads = 4;
  s.n_kv_heads = 2;
  s.head_dim = 64;
  s.scale = 0.125f;
  return s;
}

// K/V/Q of a token depend on (token id, position) only here, so two prompts agree exactly on
// their common prefix, as a deterministic model's K/V would.
KvData data_for_tokens(const AttentionShape& s, const std::vector<int32_t>& ids) {
  KvData d = test::make_kv_data(s, static_cast<int>(ids.size()), 0);
  for (size_t p = 0; p < ids.size(); ++p) {
    const KvData one = test::make_kv_data(s, 1, static_cast<uint64_t>(ids[p]) * 7919 + p);
    for (int l = 0; l < s.n_layers; ++l) {
      const size_t lk = static_cast<size_t>(s.n_kv_heads) * s.head_dim;
      const size_t lq = static_cast<size_t>(s.n_heads) * s.head_dim;
      const size_t L = static_cast<size_t>(l);
      std::copy_n(one.k[L].begin(), lk, d.k[L].begin() + p * lk);
      std::copy_n(one.v[L].begin(), lk, d.v[L].begin() + p * lk);
      std::copy_n(one.q[L].begin(), lq, d.q[L].begin() + p * lq);
    }
  }
  return d;
}

std::vector<int32_t> prompt(int common, int own, int32_t salt) {
  std::vector<int32_t> ids;
  for (int i = 0; i < common; ++i) ids.push_back(1000 + i);
  for (int i = 0; i < own; ++i) ids.push_back(salt * 100 + i);
  return ids;
}

std::unique_ptr<PagedKvCache> make_cache(const KvConfig& c, size_t pool_bytes, bool prefix) {
  PagedKvCacheOptions o;
  o.shape = shape();
  o.config = c;
  o.pool_bytes = pool_bytes;
  o.prefix_caching = prefix;
  auto cache = PagedKvCache::create(o);
  EXPECT_TRUE(cache.ok()) << cache.status().to_string();
  return std::move(cache).value();
}

// Feeds ids[from..] to kv (token ids too) in chunks; returns every attention output in order.
std::vector<std::vector<float>> feed(PagedKv& kv, const KvData& d, const std::vector<int32_t>& ids,
                                     std::vector<int> chunks, ThreadPool& pool) {
  const AttentionShape& s = d.shape;
  std::vector<std::vector<float>> outs;
  EXPECT_TRUE(kv.add_tokens(std::span<const int32_t>(ids).subspan(kv.tokens().size())).ok());
  test::run_chunks(kv, d, chunks, pool, [&](int, int, int n, const float* out) {
    outs.emplace_back(out, out + static_cast<size_t>(n) * s.n_heads * s.head_dim);
  });
  return outs;
}

void common_prefix_case(bool key_scaling, bool value_scaling = false) {
  KvConfig c;
  c.k_format = *quant::parse_format("tq4");
  c.v_format = *quant::parse_format("tq3");
  c.key_scaling = key_scaling;      // the key means (and scales) travel with the first page
  c.value_scaling = value_scaling;  // so do the value scales
  c.sinks = 4;
  c.block_tokens = 16;
  const AttentionShape s = shape();
  auto cache = make_cache(c, size_t{4} << 20, true);
  auto plain = make_cache(c, size_t{4} << 20, false);  // reference: no sharing
  ThreadPool pool(2);

  const auto ids_a = prompt(100, 37, 1), ids_b = prompt(100, 23, 2);
  const KvData da = data_for_tokens(s, ids_a), db = data_for_tokens(s, ids_b);
  auto a = cache->new_sequence(200);
  ASSERT_TRUE(a.ok());
  feed(**a, da, ids_a, {64, 9}, pool);
  EXPECT_EQ(cache->stats().pages_used, static_cast<int>((*a)->pages().size()));

  auto b = cache->new_sequence(200);
  ASSERT_TRUE(b.ok());
  auto reused = (*b)->reuse_prefix(ids_b);
  ASSERT_TRUE(reused.ok());
  // Sinks + 6 full pages of 16 = exactly the 100 common tokens.
  EXPECT_EQ(*reused, 100);
  EXPECT_EQ((*b)->length(), 100);
  for (int p = 0; p < 6; ++p) EXPECT_EQ((*b)->pages()[p], (*a)->pages()[p]) << p;
  const auto out_b = feed(**b, db, ids_b, {5, 18}, pool);

  // Shared pages are held once: pool pages = |A| + |B| - 6.
  const KvPoolStats st = cache->stats();
  EXPECT_EQ(st.pages_used, static_cast<int>((*a)->pages().size() + (*b)->pages().size()) - 6);
  EXPECT_EQ(st.prefix_hit_tokens, 100);
  EXPECT_TRUE(cache->check_invariants().ok());

  // B's outputs equal those of a sequence that computed everything itself, starting with the
  // same first chunk as A (the key means come from a sequence's first chunk and travel with
  // the shared first page).
  auto ref = plain->new_sequence(200);
  ASSERT_TRUE(ref.ok());
  const auto out_ref_all = feed(**ref, db, ids_b, {64, 36, 5, 18}, pool);
  const std::vector<std::vector<float>> out_ref(out_ref_all.begin() + 2 * s.n_layers,
                                                out_ref_all.end());
  ASSERT_EQ(out_ref.size(), out_b.size());
  for (size_t i = 0; i < out_b.size(); ++i)
    for (size_t e = 0; e < out_b[i].size(); ++e)
      ASSERT_NEAR(out_b[i][e], out_ref[i][e], 1e-5) << "output " << i << " element " << e;

  // Ending A keeps B intact: its next token still matches the reference.
  a->reset();
  EXPECT_TRUE(cache->check_invariants().ok());
  const auto ids_b2 = prompt(100, 24, 2);
  const KvData db2 = data_for_tokens(s, ids_b2);
  const auto next_b = feed(**b, db2, ids_b2, {1}, pool);
  const auto next_ref = feed(**ref, db2, ids_b2, {1}, pool);
  for (size_t i = 0; i < next_b.size(); ++i)
    for (size_t e = 0; e < next_b[i].size(); ++e) ASSERT_NEAR(next_b[i][e], next_ref[i][e], 1e-5);

  // After every sequence ends nothing is held; the cached pages are reclaimable.
  b->reset();
  const KvPoolStats end = cache->stats();
  EXPECT_EQ(end.pages_used, 0);
  EXPECT_EQ(end.sequences, 0);
  EXPECT_EQ(end.tokens, 0);
  EXPECT_GT(end.pages_cached, 0);
  EXPECT_EQ(end.pages_cached + end.pages_free, end.pages_total);
  EXPECT_TRUE(cache->check_invariants().ok());
  ref->reset();
}

TEST(PrefixSharing, CommonPrefixStoredOnceSuffixesDiverge) { common_prefix_case(false); }
TEST(PrefixSharing, CommonPrefixWithKeyScaling) { common_prefix_case(true); }
TEST(PrefixSharing, CommonPrefixWithKeyAndValueScaling) { common_prefix_case(true, true); }

TEST(PrefixSharing, ReuseLeavesTheWindowToBeRecomputed) {
  KvConfig c;
  c.k_format = c.v_format = *quant::parse_format("tq4");
  c.window = 20;
  c.block_tokens = 8;
  const AttentionShape s = shape();
  auto cache = make_cache(c, size_t{2} << 20, true);
  ThreadPool pool(1);
  const auto ids = prompt(60, 0, 0);
  const KvData d = data_for_tokens(s, ids);
  auto a = cache->new_sequence(64);
  feed(**a, d, ids, {60}, pool);  // 40 compressed = 5 pages
  auto b = cache->new_sequence(64);
  auto reused = (*b)->reuse_prefix(ids);
  ASSERT_TRUE(reused.ok());
  // At most 60 - window = 40 tokens may come from the cache.
  EXPECT_EQ(*reused, 40);
  feed(**b, d, ids, {20}, pool);
  EXPECT_EQ((*b)->window_tokens(0), 20);
  EXPECT_EQ((*b)->compressed_tokens(1), 40);
}

TEST(PrefixSharing, EvictsCachedPagesWhenThePoolRunsOut) {
  KvConfig c;
  c.k_format = c.v_format = *quant::parse_format("tq3");
  c.block_tokens = 8;
  const AttentionShape s = shape();
  auto probe = make_cache(c, size_t{1} << 20, true);
  const size_t page = probe->page_bytes();
  auto cache = make_cache(c, page * 10, true);  // 10 pages = 80 tokens
  ThreadPool pool(1);
  const auto ids1 = prompt(0, 64, 1), ids2 = prompt(0, 79, 2);
  {
    auto a = cache->new_sequence(80);
    feed(**a, data_for_tokens(s, ids1), ids1, {64}, pool);
  }
  EXPECT_EQ(cache->stats().pages_cached, 8);
  auto b = cache->new_sequence(100);
  feed(**b, data_for_tokens(s, ids2), ids2, {79}, pool);  // needs all 10 pages: evicts 8
  EXPECT_EQ(cache->stats().pages_used, 10);
  EXPECT_TRUE(cache->check_invariants().ok());
  // Full: the next token does not fit, and the failed append changes nothing.
  const KvData more = test::make_kv_data(s, 2, 3);
  EXPECT_EQ((*b)->append(0, 2, more.k[0].data(), more.v[0].data()).code(),
            StatusCode::kResourceExhausted);
  EXPECT_EQ((*b)->compressed_tokens(0), 79);
}

// Several sequences, random chunk sizes and orders, some ending and new ones reusing a shared
// system prompt: every attention output matches float64 attention over what that sequence
// stores, and the pool's books balance at every step.
TEST(PagedKvInterleaving, RandomOpsStayConsistent) {
  const uint64_t seed = 20261123;
  Rng rng(seed);
  KvConfig c;
  c.k_format = *quant::parse_format("tq4j");
  c.v_format = *quant::parse_format("q4_0");
  c.window = 5;
  c.sinks = 2;
  c.block_tokens = 8;
  const AttentionShape s = shape();
  auto cache = make_cache(c, size_t{4} << 20, true);
  ThreadPool pool(2);
  const size_t hd = static_cast<size_t>(s.head_dim);

  struct Seq {
    std::unique_ptr<PagedKv> kv;
    std::vector<int32_t> ids;
    KvData data;
  };
  std::vector<Seq> seqs(3);
  int32_t next_salt = 1;
  const auto start = [&](Seq& q) {
    q.ids = prompt(40, 30 + static_cast<int>(rng.next_u32() % 20), next_salt++);
    q.data = data_for_tokens(s, q.ids);
    q.kv = std::move(cache->new_sequence(128)).value();
    auto r = q.kv->reuse_prefix(q.ids);
    ASSERT_TRUE(r.ok());
    ASSERT_TRUE(
        q.kv->add_tokens(std::span<const int32_t>(q.ids).subspan(q.kv->tokens().size())).ok());
  };
  for (auto& q : seqs) start(q);

  std::vector<float> out;
  for (int step = 0; step < 120; ++step) {
    Seq& q = seqs[rng.next_u32() % seqs.size()];
    const int len = q.kv->length();
    if (len >= q.data.tokens) {  // done: end it and start another
      q.kv.reset();
      start(q);
      continue;
    }
    const int n = std::min(1 + static_cast<int>(rng.next_u32() % 9), q.data.tokens - len);
    out.assign(static_cast<size_t>(n) * s.n_heads * hd, 0.0f);
    for (int l = 0; l < s.n_layers; ++l) {
      const size_t L = static_cast<size_t>(l);
      const size_t ko = static_cast<size_t>(len) * s.n_kv_heads * hd;
      const size_t qo = static_cast<size_t>(len) * s.n_heads * hd;
      ASSERT_TRUE(q.kv->append(l, n, q.data.k[L].data() + ko, q.data.v[L].data() + ko).ok());
      ASSERT_TRUE(q.kv->attend(l, n, q.data.q[L].data() + qo, out.data(), pool).ok());
      std::vector<double> ref(out.size());
      test::exact_attention_stored(*q.kv, s, l, len + n, n, q.data.q[L].data() + qo, ref.data());
      ASSERT_LT(test::rel_l2(out.data(), ref.data(), out.size()), kFusedVsDecodedTol)
          << "seed " << seed << " step " << step << " layer " << l;
    }
    ASSERT_TRUE(q.kv->commit(n).ok());
    ASSERT_TRUE(cache->check_invariants().ok()) << "step " << step;
    size_t held = 0;
    std::vector<int> pages;
    for (const auto& x : seqs) {
      held += x.kv->exact_bytes();
      pages.insert(pages.end(), x.kv->pages().begin(), x.kv->pages().end());
    }
    std::sort(pages.begin(), pages.end());
    pages.erase(std::unique(pages.begin(), pages.end()), pages.end());
    const KvPoolStats st = cache->stats();
    ASSERT_EQ(st.pages_used, static_cast<int>(pages.size())) << "step " << step;
    ASSERT_EQ(st.exact_bytes, held) << "step " << step;
  }
  EXPECT_GT(cache->stats().prefix_hit_tokens, 0);
  for (auto& q : seqs) q.kv.reset();
  const KvPoolStats end = cache->stats();
  EXPECT_EQ(end.pages_used, 0);
  EXPECT_TRUE(cache->check_invariants().ok());
}

}  // namespace
}  // namespace tq::kv
