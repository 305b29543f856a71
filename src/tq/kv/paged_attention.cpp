#include "tq/kv/paged_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "tq/core/prefetch.h"
#include "tq/kv/softmax_merge.h"

namespace tq::kv {
namespace {

// Query heads scored together per tile: enough to amortize unpacking a block, few enough that
// the tile's scores and accumulators stay in L1/L2.
constexpr int kTileHeads = 64;
// Exact f16 rows are merged this many at a time (bounds the score buffer for long windows).
constexpr int kExactChunk = 64;
// One decode query (a single tile) gives only n_kv_heads work items, 3 for SmolLM2, which two
// threads split 2:1. Such calls also split the compressed blocks into ranges, so that there are
// about kMinItems items, each range at least kMinSplitBlocks blocks; the ranges' partial
// softmax states are merged afterwards. The split depends on the shape and length only, never on
// the thread count, so results do not change with -t.
constexpr int kMinItems = 12;
constexpr int kMinSplitBlocks = 4;
// The walk prefetches this KV head's K and V bytes of the block this many blocks ahead into L2
// (core/prefetch.h): on the development VM decode at depth 4096 went from 61 to ~120 tokens/s with
// tq4/tq4 and from 50 to ~78 with f16 (weights prefetched in both); 1 block ahead did as well for
// tq4, less for f16, whose blocks are 4 KiB a head.
constexpr int kPrefetchBlocks = 2;
// And the next block's K and V bytes of the head into L1, where they are small: tq4/tq4 at
// depth 4096 on one thread 1.03x (1.02-1.09 in 5 of 5 interleaved rounds; tq4/tq3 1.03x), f16
// (8 KiB a block and head at head dim 64) 0.99x, so not for blocks that size.
constexpr size_t kL1NextMaxBytes = 6144;

// The state of one (KV head, query tile) work item: prepared queries, online-softmax running
// max/sum, and two accumulators (the V codec's domain, and exact f16 rows in the original one).
struct Tile {
  const PagedAttentionArgs* a = nullptr;
  int kv_head = 0;
  int i0 = 0, i1 = 0;      // queries [i0, i1)
  int b0 = 0, b1 = -1;     // compressed blocks [b0, b1) this item walks (-1: to the end)
  bool with_exact = true;  // and the exact (sink, window) rows
  int group = 0;           // query heads per KV head
  int nq = 0;              // (i1 - i0) * group rows, row r = (query i0 + r / group, head r % group)
  int k_state = 0, f_state = 0, v_acc = 0, f_acc = 0;
  std::vector<float> kst, fst;                                 // [nq][k_state], [nq][f_state]
  std::vector<float> m, l;                                     // [nq] running max and sum
  std::vector<float> acc_v, acc_f;                             // [nq][v_acc], [nq][f_acc]
  std::vector<float> sc;                                       // [nq][cnt] scores, then weights
  quant::OnlineSoftmaxFn softmax = quant::online_softmax_ref;  // the K codec's table's

  // Scores positions [p0, p0 + cnt) for the queries that see p0, folds them into the running
  // softmax and accumulates V. Returns false when no query of the tile sees p0 (nor any later
  // position, so the caller can stop walking that source).
  template <typename ScoreFn, typename AccFn>
  bool merge(int p0, int cnt, const float* states, int state_size, float* acc, int acc_size,
             ScoreFn&& score, AccFn&& accumulate) {
    const int ia = std::max(i0, p0 - a->q_pos0);
    if (ia >= i1) return false;
    const int r0 = (ia - i0) * group;
    const int nqa = nq - r0;
    float* s = sc.data();
    score(states + static_cast<size_t>(r0) * state_size, nqa, cnt, s);
    for (int r = 0; r < nqa; ++r) {
      const int t = a->q_pos0 + ia + r / group;  // the query's position
      const int visible = std::min(cnt, t - p0 + 1);
      float* row = s + static_cast<size_t>(r) * cnt;
      const size_t rr = static_cast<size_t>(r0 + r);
      const float c = softmax(row, visible, cnt, &m[rr], &l[rr]);
      if (c != 1.0f) {
        float* av = acc_v.data() + rr * static_cast<size_t>(v_acc);
        for (int e = 0; e < v_acc; ++e) av[e] *= c;
        float* af = acc_f.data() + rr * static_cast<size_t>(f_acc);
        for (int e = 0; e < f_acc; ++e) af[e] *= c;
      }
    }
    accumulate(s, nqa, cnt, acc + static_cast<size_t>(r0) * acc_size);
    return true;
  }

  void run() {
    walk();
    write_out();
  }

  // Prepares the queries and folds this item's sources into m, l, acc_v, acc_f.
  void walk() {
    const AttentionShape& sh = a->shape;
    const int d = sh.head_dim;
    const quant::VectorCodec& kc = *a->k_codec;
    const quant::VectorCodec& vc = *a->v_codec;
    const quant::VectorCodec& fc = *a->f16_codec;
    group = sh.n_heads / sh.n_kv_heads;
    nq = (i1 - i0) * group;
    if (kc.kernels().online_softmax) softmax = kc.kernels().online_softmax;
    k_state = kc.query_state_size();
    f_state = fc.query_state_size();
    v_acc = vc.acc_dim();
    f_acc = fc.acc_dim();
    const bool has_exact = with_exact && (a->exact[0].count > 0 || a->exact[1].count > 0);
    const size_t unq = static_cast<size_t>(nq);
    kst.assign(unq * k_state, 0.0f);
    if (has_exact) fst.assign(unq * f_state, 0.0f);
    m.assign(unq, -std::numeric_limits<float>::infinity());
    l.assign(unq, 0.0f);
    acc_v.assign(unq * v_acc, 0.0f);
    acc_f.assign(unq * f_acc, 0.0f);
    const int exact_chunk = std::max(a->block_tokens, kExactChunk);
    sc.assign(unq * static_cast<size_t>(exact_chunk), 0.0f);

    // Scale folded into the query once, then rotated once per head.
    std::vector<float> qs(static_cast<size_t>(d));
    for (int r = 0; r < nq; ++r) {
      const int i = i0 + r / group;
      const int head = kv_head * group + r % group;
      const float* q = a->q + (static_cast<size_t>(i) * sh.n_heads + head) * d;
      for (int e = 0; e < d; ++e) qs[static_cast<size_t>(e)] = q[e] * sh.scale;
      kc.prepare_query(qs.data(), kst.data() + static_cast<size_t>(r) * k_state);
      if (has_exact) fc.prepare_query(qs.data(), fst.data() + static_cast<size_t>(r) * f_state);
    }

    for (const ExactRows& x : a->exact) {
      if (!with_exact) break;
      for (int r = 0; r < x.count; r += exact_chunk) {
        const int cnt = std::min(exact_chunk, x.count - r);
        // An f16 "block" is just rows of head_dim halves, so a run of rows is a block whose
        // capacity is its row count.
        const size_t row = kv_head * x.head_stride + static_cast<size_t>(r) * d;
        const auto* kb = reinterpret_cast<const uint8_t*>(x.k + row);
        const auto* vb = reinterpret_cast<const uint8_t*>(x.v + row);
        const bool any = merge(
            x.pos0 + r, cnt, fst.data(), f_state, acc_f.data(), f_acc,
            [&](const float* st, int nqa, int c, float* out) { fc.score(st, nqa, kb, c, c, out); },
            [&](const float* w, int nqa, int c, float* acc) {
              fc.accumulate(w, nqa, vb, c, c, acc);
            });
        if (!any) break;
      }
    }

    const int bt = a->block_tokens;
    const size_t k_block_bytes = kc.block_bytes(bt), v_block_bytes = vc.block_bytes(bt);
    const size_t k_head_bytes = k_block_bytes * static_cast<size_t>(kv_head);
    const size_t v_head_bytes = v_block_bytes * static_cast<size_t>(kv_head);
    const int n_blocks = (a->compressed + bt - 1) / bt;
    const int last = b1 < 0 ? n_blocks : std::min(b1, n_blocks);
    const bool l1_next = k_block_bytes + v_block_bytes <= kL1NextMaxBytes;
    for (int b = b0; b < last; ++b) {
      const int cnt = std::min(bt, a->compressed - b * bt);
      const uint8_t* kb = a->k_blocks[static_cast<size_t>(b)] + k_head_bytes;
      const uint8_t* vb = a->v_blocks[static_cast<size_t>(b)] + v_head_bytes;
      if (b + kPrefetchBlocks < last) {  // pool blocks are scattered: no stream to follow
        const auto ahead = static_cast<size_t>(b + kPrefetchBlocks);
        prefetch_l2(a->k_blocks[ahead] + k_head_bytes, k_block_bytes);
        prefetch_l2(a->v_blocks[ahead] + v_head_bytes, v_block_bytes);
      }
      if (l1_next && b + 1 < last) {  // (in L2 already: the hint of two blocks back)
        prefetch_l1(a->k_blocks[static_cast<size_t>(b) + 1] + k_head_bytes, k_block_bytes);
        prefetch_l1(a->v_blocks[static_cast<size_t>(b) + 1] + v_head_bytes, v_block_bytes);
      }
      const bool any = merge(
          a->compressed_pos0 + b * bt, cnt, kst.data(), k_state, acc_v.data(), v_acc,
          [&](const float* st, int nqa, int c, float* out) { kc.score(st, nqa, kb, bt, c, out); },
          [&](const float* w, int nqa, int c, float* acc) {
            vc.accumulate(w, nqa, vb, bt, c, acc);
          });
      if (!any) break;  // later blocks are later positions: nobody in the tile sees them
    }
  }

  // Folds another item's state for the same queries and KV head into this one (the merge of
  // two online softmaxes: the smaller running max's side is scaled down).
  void absorb(const Tile& o) {
    for (int r = 0; r < nq; ++r) {
      const size_t rr = static_cast<size_t>(r);
      float c, co;
      if (!merge_softmax_state(m[rr], l[rr], o.m[rr], o.l[rr], &c, &co)) continue;
      merge_accumulator(acc_v.data() + rr * static_cast<size_t>(v_acc),
                        o.acc_v.data() + rr * static_cast<size_t>(v_acc), v_acc, c, co);
      merge_accumulator(acc_f.data() + rr * static_cast<size_t>(f_acc),
                        o.acc_f.data() + rr * static_cast<size_t>(f_acc), f_acc, c, co);
    }
  }

  // Rotates the accumulators back, normalises and writes the tile's outputs.
  void write_out() {
    const AttentionShape& sh = a->shape;
    const int d = sh.head_dim;
    const quant::VectorCodec& vc = *a->v_codec;
    const quant::VectorCodec& fc = *a->f16_codec;
    std::vector<float> tmp(static_cast<size_t>(d)), tmp_f(static_cast<size_t>(d));
    for (int r = 0; r < nq; ++r) {
      const int i = i0 + r / group;
      const int head = kv_head * group + r % group;
      float* out = a->out + (static_cast<size_t>(i) * sh.n_heads + head) * d;
      const size_t rr = static_cast<size_t>(r);
      vc.finish(acc_v.data() + rr * v_acc, tmp.data());
      fc.finish(acc_f.data() + rr * f_acc, tmp_f.data());
      const float inv = l[rr] > 0.0f ? 1.0f / l[rr] : 0.0f;
      for (int e = 0; e < d; ++e)
        out[e] = (tmp[static_cast<size_t>(e)] + tmp_f[static_cast<size_t>(e)]) * inv;
    }
  }
};

Status check_args(const PagedAttentionArgs& a) {
  const AttentionShape& s = a.shape;
  if (s.n_heads < 1 || s.n_kv_heads < 1 || s.n_heads % s.n_kv_heads != 0 || s.head_dim < 1)
    return invalid_argument("paged attention: bad attention shape");
  if (!a.k_codec || !a.v_codec || !a.f16_codec)
    return invalid_argument("paged attention: missing codec");
  for (const quant::VectorCodec* c : {a.k_codec, a.v_codec, a.f16_codec})
    if (c->dim() != s.head_dim)
      return invalid_argument("paged attention: codec dim " + std::to_string(c->dim()) +
                              " != head_dim " + std::to_string(s.head_dim));
  if (a.n < 0 || (a.n > 0 && (!a.q || !a.out)))
    return invalid_argument("paged attention: bad query count or null buffers");
  if (a.compressed < 0 || (a.compressed > 0 && a.block_tokens < 1))
    return invalid_argument("paged attention: bad compressed token count");
  const size_t n_blocks =
      a.compressed > 0 ? static_cast<size_t>((a.compressed + a.block_tokens - 1) / a.block_tokens)
                       : 0;
  if (a.k_blocks.size() < n_blocks || a.v_blocks.size() < n_blocks)
    return internal_error("paged attention: block table shorter than the compressed tokens");
  // The sources must tile [0, end) without gaps, and every query must see stored positions.
  int end = 0, covered = 0;
  for (const ExactRows& x : a.exact) {
    if (x.count < 0) return invalid_argument("paged attention: negative exact row count");
    if (x.count > 0) end = std::max(end, x.pos0 + x.count);
    covered += x.count;
  }
  if (a.compressed > 0) end = std::max(end, a.compressed_pos0 + a.compressed);
  covered += a.compressed;
  if (covered != end)
    return internal_error("paged attention: sources leave a gap (" + std::to_string(covered) +
                          " positions stored, last at " + std::to_string(end - 1) + ")");
  if (a.n > 0 && a.q_pos0 + a.n > end)
    return invalid_argument("paged attention: query at position " +
                            std::to_string(a.q_pos0 + a.n - 1) + " but only " +
                            std::to_string(end) + " positions stored");
  if (a.q_pos0 < 0) return invalid_argument("paged attention: negative query position");
  return ok_status();
}

}  // namespace

Status paged_attention(const PagedAttentionArgs& a, ThreadPool& pool) {
  TQ_RETURN_IF_ERROR(check_args(a));
  if (a.n == 0) return ok_status();
  const int group = a.shape.n_heads / a.shape.n_kv_heads;
  const int tile = std::max(1, kTileHeads / group);
  const int n_tiles = (a.n + tile - 1) / tile;
  const int heads = a.shape.n_kv_heads;
  const int n_blocks = a.compressed > 0 ? (a.compressed + a.block_tokens - 1) / a.block_tokens : 0;
  const int splits =
      n_tiles == 1
          ? std::max(1, std::min((kMinItems + heads - 1) / heads, n_blocks / kMinSplitBlocks))
          : 1;
  if (splits > 1) {
    // Item it: KV head it % heads, blocks of range it / heads (range 0 also takes the exact rows).
    std::vector<Tile> parts(static_cast<size_t>(heads) * static_cast<size_t>(splits));
    const int per = (n_blocks + splits - 1) / splits;
    pool.parallel_for(parts.size(), 1, [&](size_t begin, size_t end) {
      for (size_t it = begin; it < end; ++it) {
        Tile& t = parts[it];
        const int range = static_cast<int>(it / static_cast<size_t>(heads));
        t.a = &a;
        t.kv_head = static_cast<int>(it % static_cast<size_t>(heads));
        t.i0 = 0;
        t.i1 = a.n;
        t.b0 = range * per;
        t.b1 = std::min(n_blocks, t.b0 + per);
        t.with_exact = range == 0;
        t.walk();
      }
    });
    for (int h = 0; h < heads; ++h) {
      Tile& t = parts[static_cast<size_t>(h)];
      for (int r = 1; r < splits; ++r) t.absorb(parts[static_cast<size_t>(r) * heads + h]);
      t.write_out();
    }
    return ok_status();
  }
  const size_t items = static_cast<size_t>(n_tiles) * static_cast<size_t>(heads);
  // Last tiles first: under causal masking they see the most positions, so handing them out
  // early balances the threads.
  pool.parallel_for(items, 1, [&](size_t begin, size_t end) {
    Tile t;
    t.a = &a;
    for (size_t it = begin; it < end; ++it) {
      const int tile_index = n_tiles - 1 - static_cast<int>(it / a.shape.n_kv_heads);
      t.kv_head = static_cast<int>(it % a.shape.n_kv_heads);
      t.i0 = tile_index * tile;
      t.i1 = std::min(a.n, t.i0 + tile);
      t.run();
    }
  });
  return ok_status();
}

}  // namespace tq::kv
