// Decode attention's split-K plan (host arithmetic of the CUDA backend, checked on the CPU).
#include "tq/backend/cuda/split_plan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "tq/core/rng.h"

namespace tq::backend::cuda {
namespace {

constexpr int kUnit = 128;   // 4 warps x 32-token steps
constexpr int kSlots = 396;  // an H100/H200: 132 SMs x 3 CTAs of a tq instance
constexpr SplitCost kCost = kTqSplitCost;

long long modelled(const SplitPlan& p, int pairs, int slots, const SplitCost& c = kCost) {
  const long long waves = (static_cast<long long>(pairs) * p.splits + slots - 1) / slots;
  return waves * (c.fixed_ns + static_cast<long long>(p.tokens_per_split) * c.token_ns) +
         static_cast<long long>(p.splits) * c.split_ns;
}

void expect_covers(const SplitPlan& p, int max_len, int unit) {
  ASSERT_GT(p.splits, 0);
  EXPECT_EQ(p.tokens_per_split % unit, 0);
  EXPECT_GE(static_cast<long long>(p.splits) * p.tokens_per_split, max_len);
  EXPECT_LT(static_cast<long long>(p.splits - 1) * p.tokens_per_split, max_len);
}

TEST(SplitPlan, OneFullWaveWhenThePairsLeaveRoom) {
  // Batch 8 x 8 KV heads at 32k: 6 splits, 384 CTAs on 396 slots (the old plan's choice).
  const SplitPlan p = plan_splits(32768, 64, kSlots, kCost, 0);
  EXPECT_EQ(p.splits, 6);
  EXPECT_EQ(p.tokens_per_split, 5504);
  // Batch 1: 43 splits of 768 tokens (49 would fit in the wave but round to the same cut).
  const SplitPlan b1 = plan_splits(32768, 8, kSlots, kCost, 0);
  EXPECT_EQ(b1.splits, 43);
  EXPECT_EQ(b1.tokens_per_split, 768);
}

TEST(SplitPlan, SplitsToFillWavesWhenOneSplitLeavesSlotsIdle) {
  // Batch 32 (256 pairs): one split each would leave 140 of 396 slots idle for the whole call;
  // 3 splits fill two waves (768 CTAs on 792 slots).
  const SplitPlan b32 = plan_splits(32768, 256, kSlots, kCost, 0);
  EXPECT_EQ(b32.splits, 3);
  expect_covers(b32, 32768, kUnit);
  // Batch 64 (512 pairs): one split each is 1.3 waves (the second a third full); 3 splits are
  // 3.9 waves.
  const SplitPlan b64 = plan_splits(32768, 512, kSlots, kCost, 0);
  EXPECT_EQ(b64.splits, 3);
  EXPECT_LT(modelled(b64, 512, kSlots), modelled({32768, 1}, 512, kSlots));
}

TEST(SplitPlan, EachSplitPaysItsShareOfTheMerge) {
  // 4k at batch 1 (8 pairs): 16 splits of 256, not the 32 of 128 one wave would hold (measured:
  // 16.2 us against 19.5); 16k: 32 of 512, not 43 of 384 (24.6 against 27.6).
  const SplitPlan b4k = plan_splits(4096, 8, kSlots, kCost, 0);
  EXPECT_EQ(b4k.splits, 16);
  EXPECT_EQ(b4k.tokens_per_split, 256);
  EXPECT_EQ(plan_splits(16384, 8, kSlots, kCost, 0).splits, 32);
  // Without that share the plan would fill the wave.
  EXPECT_EQ(plan_splits(4096, 8, kSlots, SplitCost{128, 16, 8000, 0}, 0).splits, 32);
}

TEST(SplitPlan, HonoursTheCapAndEmptySegments) {
  const SplitPlan capped = plan_splits(32768, 8, kSlots, kCost, 4);
  EXPECT_EQ(capped.splits, 4);
  expect_covers(capped, 32768, kUnit);
  EXPECT_EQ(plan_splits(32768, 256, kSlots, kCost, 1).splits, 1);
  const SplitPlan empty = plan_splits(0, 8, kSlots, kCost, 0);
  EXPECT_EQ(empty.splits, 0);
  EXPECT_EQ(empty.tokens_per_split, kUnit);
  const SplitPlan tiny = plan_splits(5, 8, kSlots, kCost, 0);
  EXPECT_EQ(tiny.splits, 1);
  EXPECT_EQ(tiny.tokens_per_split, kUnit);
}

// On a grid of lengths, pair counts and slot counts the plan is the cheapest cut of the model
// (brute force over every split count the length allows), and every plan covers the length.
TEST(SplitPlan, TakesTheCheapestCut) {
  for (int slots : {1, 108, 264, 396, 528})
    for (int pairs : {1, 3, 8, 32, 64, 100, 256, 512, 1024, 4096})
      for (int len : {1, 127, 128, 129, 1000, 4096, 32768, 100000, 131072}) {
        SCOPED_TRACE(testing::Message()
                     << "slots " << slots << " pairs " << pairs << " len " << len);
        const SplitPlan p = plan_splits(len, pairs, slots, kCost, 0);
        expect_covers(p, len, kUnit);
        const long long got = modelled(p, pairs, slots);
        for (int s = 1; s <= (len + kUnit - 1) / kUnit; ++s) {
          const SplitPlan q = plan_splits(len, pairs, slots, kCost, s);
          const int per = ((len + s - 1) / s + kUnit - 1) / kUnit * kUnit;
          const SplitPlan exact{per, (len + per - 1) / per};
          ASSERT_LE(got, modelled(exact, pairs, slots)) << "s " << s;
          ASSERT_LE(q.splits, s);
        }
      }
}

// Splits by length: the search's T is the smallest multiple of the unit whose splits fit the
// budget and the cap (brute force over every T), on random batches of mixed lengths.
SplitCount count_splits(const std::vector<int>& units, int u) {
  SplitCount c{0, 0};
  for (int l : units) {
    const int n = (l + u - 1) / u;
    c.sum += n;
    c.max = std::max(c.max, n);
  }
  return c;
}

int search(const std::vector<int>& units, int budget, int cap) {
  int total = 0, longest = 0, nonempty = 0;
  for (int l : units) total += l, longest = std::max(longest, l), nonempty += l > 0;
  int counts = 0;
  const int u = by_length_units(total, longest, nonempty, budget, cap, [&](int v) {
    ++counts;
    return count_splits(units, v);
  });
  // Equal lengths with a budget of a whole number of splits each: the first count fits.
  if (nonempty == static_cast<int>(units.size()) && budget % nonempty == 0 &&
      std::count(units.begin(), units.end(), units[0]) == nonempty && cap >= budget / nonempty) {
    EXPECT_EQ(counts, 1);
  }
  return u;
}

TEST(SplitsByLength, TakeTheSmallestSplitThatFits) {
  Rng rng(20261204);
  for (int trial = 0; trial < 2000; ++trial) {
    const int n = 1 + static_cast<int>(rng.next_u32() % 64);
    std::vector<int> units(n);
    for (int& l : units) l = static_cast<int>(rng.next_u32() % (trial % 3 == 0 ? 8 : 1024));
    const int budget = n * (1 + static_cast<int>(rng.next_u32() % 12));
    const int cap = trial % 4 == 0 ? 1 + static_cast<int>(rng.next_u32() % 8) : budget;
    SCOPED_TRACE(testing::Message()
                 << "trial " << trial << " n " << n << " budget " << budget << " cap " << cap);
    const int u = search(units, budget, cap);
    ASSERT_GE(u, 1);
    const SplitCount c = count_splits(units, u);
    ASSERT_LE(c.sum, budget);
    ASSERT_LE(c.max, cap);
    if (u > 1) {
      const SplitCount below = count_splits(units, u - 1);
      ASSERT_TRUE(below.sum > budget || below.max > cap) << "u " << u;
    }
  }
}

TEST(SplitsByLength, EqualLengthsCutAsThePlan) {
  // With n equal lengths and a budget of n x the plan's splits, every sequence is cut exactly as
  // plan_splits cuts the longest.
  for (int slots : {108, 396})
    for (int n : {2, 8, 32, 64})
      for (int len : {1, 128, 129, 1000, 4096, 32768, 131072}) {
        SCOPED_TRACE(testing::Message() << "slots " << slots << " n " << n << " len " << len);
        const SplitPlan p = plan_splits(len, n * 8, slots, kCost, 0);
        const int units = (len + kUnit - 1) / kUnit;
        const int u = search(std::vector<int>(n, units), n * p.splits, n * p.splits);
        EXPECT_EQ(u * kUnit, p.tokens_per_split);
        EXPECT_EQ((len + u * kUnit - 1) / (u * kUnit), p.splits);
      }
}

TEST(SplitsByLength, MixedLengthsShareTheBudget) {
  // Batch 8 at 4k..32k (sequence b holds 4k (b + 1)) with the 48 CTAs a KV head of 8 x 32k gets:
  // the longest's plan gives every CTA up to 5504 tokens; by length, 3328, all 48 CTAs.
  std::vector<int> units;
  for (int b = 0; b < 8; ++b) units.push_back(32 * (b + 1));  // 4096 (b + 1) tokens
  const int u = search(units, 48, 48);
  EXPECT_EQ(u * kUnit, 3328);
  EXPECT_EQ(count_splits(units, u).sum, 48);
  EXPECT_EQ(count_splits(units, u).max, 10);
  // Empty sequences take no split; a batch of them only the first unit.
  EXPECT_EQ(search({0, 0, 5}, 3, 3), 2);
  EXPECT_EQ(search({0, 0, 0}, 3, 3), 1);
}

TEST(SplitsByLength, TakenWhereTheyPay) {
  constexpr int kKv = 8;        // the 8B shape
  constexpr int kList = 65536;  // a page-list kernel's longest split
  const auto plan = [&](int len, int n, int max_splits = 0, int max_tokens = 65536) {
    const SplitPlan p = plan_splits(len, n * kKv, kSlots, kCost, max_splits);
    return std::pair{p, plan_by_length(p, n, n * kKv, kSlots, max_splits, max_tokens)};
  };
  // 32k batch 8: 6 splits of 5504, one wave: the budget is 48 a KV head, any one sequence may
  // take all of it.
  auto [p8, b8] = plan(32768, 8);
  EXPECT_EQ(b8.budget, 8 * p8.splits);
  EXPECT_EQ(b8.cap, b8.budget);
  // Batch 32: 3 splits, two waves: taken. Batch 64: 3.9 waves: not.
  EXPECT_GT(plan(32768, 32).second.budget, 0);
  EXPECT_EQ(plan(32768, 64).second.budget, 0);
  // Short splits (1k batch 8: 256 tokens) and one sequence: not.
  EXPECT_EQ(plan(1024, 8).second.budget, 0);
  EXPECT_EQ(plan(32768, 1).second.budget, 0);
  EXPECT_EQ(plan(32768, kByLengthMaxSeqs + 1).second.budget, 0);
  // 128k batch 32: 43k-token splits, within what the kernel lists: taken (1.19x on a ragged
  // batch, 1.04x on equal lengths); past a kernel's limit (32k tokens), not.
  EXPECT_GT(plan(131072, 32).second.budget, 0);
  EXPECT_EQ(plan(131072, 32, 0, 32768).second.budget, 0);
  // A caller's cap never goes below the longest's own splits.
  auto [pc, bc] = plan(32768, 8, 4);
  EXPECT_EQ(pc.splits, 4);
  EXPECT_EQ(bc.cap, 4);
  EXPECT_EQ(plan_by_length(pc, 8, 8 * kKv, kSlots, 2, kList).cap, 4);
}

}  // namespace
}  // namespace tq::backend::cuda
