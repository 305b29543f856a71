// Split-K plan of decode attention: into how many CTAs ("splits") one (sequence, KV head)
// pair's tokens are cut. Host arithmetic only (no CUDA headers), so the CPU tests check it.
#pragma once

#include <algorithm>

namespace tq::backend::cuda {

// The merge kernel keeps two floats a split in shared memory: far below its 48 KB at this.
inline constexpr int kMaxSplits = 4096;

struct SplitPlan {
  int tokens_per_split = 0;
  int splits = 0;  // 0: nothing to attend (tokens_per_split is then one unit)
};

// `slots` CTAs are resident at once (SMs x CTAs per SM); every split is a multiple of `unit`
// tokens. CTAs run in waves of `slots`, so the call takes about waves(s) x (the split's tokens +
// `fixed`, the CTA's fixed work in tokens' worth: tables, page list, first loads, the partial's
// write); the plan takes the split count s with the least of that, the fewer splits on a tie
// (less to merge). One wave that leaves slots empty is not free: 256 pairs on 396 slots in one
// split each keep a third of the SMs' CTA slots idle for the whole call, while 3 splits each
// fill two waves. `fixed` was measured (H200, tq4/tq4 at 32k, docs/benchmarks.md session 16):
// batch 8 cut into 12, 24 and 43 splits took 1.10x, 1.27x and 1.48x the time of 6, and batch 32
// into 12 splits 1.15x that of 3, which the model gives with fixed = 490 +- 10 tokens (about 8
// us of a tq CTA); an f16 token takes ~4x longer, so the same time is ~1 unit of f16 tokens.
inline SplitPlan plan_splits(int max_len, int pairs, int slots, int unit, int fixed,
                             int max_splits) {
  unit = std::max(unit, 1);
  fixed = std::max(fixed, 0);
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
    const long long cost = waves * (per + fixed);
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      p.tokens_per_split = static_cast<int>(per);
      p.splits = static_cast<int>(splits);
    }
  }
  return p;
}

}  // namespace tq::backend::cuda
