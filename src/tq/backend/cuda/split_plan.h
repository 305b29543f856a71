// Split-K plan of decode attention: into how many CTAs ("splits") one (sequence, KV head)
// pair's tokens are cut. Host arithmetic only (no CUDA headers), so the CPU tests check it.
#pragma once

#include <algorithm>

#ifdef __CUDACC__
#define TQ_SPLIT_HD __host__ __device__
#else
#define TQ_SPLIT_HD
#endif

namespace tq::backend::cuda {

// Splits are multiples of this many tokens: what a CTA's 4 warps divide evenly in 32-token steps
// (and whole pages of every supported page size).
inline constexpr int kSplitUnit = 128;

// The merge kernel keeps two floats a split in shared memory: far below its 48 KB at this.
inline constexpr int kMaxSplits = 4096;

struct SplitPlan {
  int tokens_per_split = 0;
  int splits = 0;  // 0: nothing to attend (tokens_per_split is then one unit)
};

// What a cut costs, in nanoseconds of an H200 (docs/benchmarks.md, session 16, forced cuts):
// a token of a split (per CTA, 3 CTAs to an SM), a CTA's fixed work (tables, page list, first
// loads, the partial's write: ~8 us), and a split's share of the merge (its partial read back in
// the merge's chain: ~0.34 us).
struct SplitCost {
  int unit = 128;  // splits are multiples of this many tokens
  int token_ns = 16;
  int fixed_ns = 8000;
  int split_ns = 340;
};
inline constexpr SplitCost kTqSplitCost{128, 16, 8000, 340};
inline constexpr SplitCost kF16SplitCost{128, 64, 8000, 340};  // an f16 token takes ~4x as long

// `slots` CTAs are resident at once (SMs x CTAs per SM). CTAs run in waves of `slots`, so a cut
// into s splits takes about waves(s) x (fixed + the split's tokens) + s x the merge's share;
// the plan takes the cheapest s (fewer splits on a tie). One wave that leaves slots empty is
// not free: 256 pairs on 396 slots in one split each keep a third of the SMs' CTA slots idle for
// the whole call, while 3 splits each fill two waves. The costs were measured by forcing cuts:
// tq4/tq4 at 32k batch 8 in 12, 24 and 43 splits took 1.10x, 1.27x and 1.48x the time of 6, and
// batch 32 in 12 splits 1.15x that of 3 (fixed work: 490 +- 10 tokens, ~8 us); at 4k batch 1,
// 32 / 16 / 8 splits took 19.5 / 16.2 / 17.5 us (the merge's share: 21 tokens, ~0.34 us).
inline SplitPlan plan_splits(int max_len, int pairs, int slots, const SplitCost& c,
                             int max_splits) {
  const int unit = std::max(c.unit, 1);
  SplitPlan p{unit, 0};
  if (max_len <= 0 || pairs <= 0) return p;
  slots = std::max(slots, 1);
  const long long units = (max_len + unit - 1) / unit;
  // Every cut is tried (plans are cached per capacity; a few thousand integer steps at most).
  long long limit = std::min<long long>(units, kMaxSplits);
  if (max_splits > 0) limit = std::min<long long>(limit, max_splits);
  limit = std::max<long long>(limit, 1);
  long long best_cost = -1;
  for (long long s = 1; s <= limit; ++s) {
    const long long per = ((max_len + s - 1) / s + unit - 1) / unit * unit;
    const long long splits = (max_len + per - 1) / per;
    if (splits != s) continue;  // the same cut as a smaller s
    const long long waves = (static_cast<long long>(pairs) * splits + slots - 1) / slots;
    const long long cost =
        waves * (c.fixed_ns + per * c.token_ns) + splits * static_cast<long long>(c.split_ns);
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      p.tokens_per_split = static_cast<int>(per);
      p.splits = static_cast<int>(splits);
    }
  }
  return p;
}

// Splits by length (a batch of mixed lengths): one plan for the longest sequence gives every
// sequence its splits, so the CTAs of short ones end early and leave their SMs idle. Instead a
// call has a budget of CTAs per KV head (n_seqs x the longest's splits: equal lengths cut
// exactly as before) and every sequence takes ceil(len / T) of them, for the smallest T (a
// multiple of the unit) that fits: T follows the batch's total, not its longest sequence, and no
// CTA crosses a sequence. The attention and merge kernels compute T from the lengths on the
// device (a CUDA graph's lengths change every step), with this search and a warp's counts.

// The smallest u in units (T = u x unit) with count(u) = {sum_i ceil(L_i / u), max_i ceil(L_i /
// u)} within {budget, cap}, L_i the lengths in units: `total` their sum, `longest` their
// maximum, `nonempty` how many are not 0 (budget >= nonempty, cap >= 1). count is non-increasing
// in u. Bracket: sum_i ceil(L_i / u) >= total / u, so u >= total / budget (and longest / cap);
// sum_i ceil(L_i / u) < total / u + nonempty, so u = total / (budget - nonempty) fits the budget.
// The lower end is tried first: equal lengths with a budget of n x s splits fit it (one count).
struct SplitCount {
  int sum;
  int max;
};
template <class Count>
TQ_SPLIT_HD int by_length_units(int total, int longest, int nonempty, int budget, int cap,
                                Count count) {
  if (longest <= 0) return 1;
  int lo = (total + budget - 1) / budget;
  const int lo_cap = (longest + cap - 1) / cap;
  if (lo < lo_cap) lo = lo_cap;
  if (lo < 1) lo = 1;
  int hi = longest;  // one split a sequence
  if (budget > nonempty) {
    const int fits = (total + (budget - nonempty) - 1) / (budget - nonempty);
    if (fits < hi) hi = fits;
  }
  if (hi < lo) hi = lo;
  const auto fits = [&](int u) {
    const SplitCount c = count(u);
    return c.sum <= budget && c.max <= cap;
  };
  if (fits(lo)) return lo;
  ++lo;  // the smallest fitting u in (lo, hi]; hi fits unless the cap binds (then lo_cap did)
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (fits(mid))
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

// Sequences a lane of the planning warp holds: a warp plans batches of up to 128 (larger ones,
// prefill passes of many queries, take the longest's plan).
inline constexpr int kByLengthPerLane = 4;
inline constexpr int kByLengthMaxSeqs = 32 * kByLengthPerLane;
// Splits by length only where the longest's splits hold at least this many tokens (~33 us of a
// CTA's loop at 16 ns a token): finding the plan in every CTA and merge block costs ~1.5 us a
// call (at 1k batch 8, 256-token splits: 0.92x on equal lengths).
inline constexpr int kByLengthMinTokens = 2048;

// A call's budget of CTAs per KV head for splits by length (0: every sequence cut as the longest)
// and the most of them one sequence takes.
struct ByLengthPlan {
  int budget = 0;
  int cap = 0;
};

// Where splits by length pay (measured on an H200, docs/benchmarks.md session 18): 2..128
// sequences whose longest is cut into at least 2 splits of at least kByLengthMinTokens, in at most
// two waves of `slots` CTAs (past that the next wave's CTAs take the SMs that short sequences
// free: a ragged batch of 64 at 32k and 128k 0.98-1.03x by length), of at most max_tokens (the
// kernel's limit, 0: any). The budget is the longest's cut for every sequence, so no split gets
// more tokens than that cut's (the smallest fitting T is at most its tokens a split); the cap is
// max_splits (a caller's cap, 0: none) but never below the longest's own splits.
inline ByLengthPlan plan_by_length(const SplitPlan& longest, int n_seqs, int pairs, int slots,
                                   int max_splits, int max_tokens) {
  ByLengthPlan b;
  if (n_seqs < 2 || n_seqs > kByLengthMaxSeqs || longest.splits < 2 ||
      longest.tokens_per_split < kByLengthMinTokens ||
      static_cast<long long>(pairs) * longest.splits > 2LL * slots ||
      (max_tokens > 0 && longest.tokens_per_split > max_tokens))
    return b;
  b.budget = n_seqs * longest.splits;
  b.cap = max_splits > 0 ? std::max(max_splits, longest.splits) : b.budget;
  return b;
}

}  // namespace tq::backend::cuda
