// The sampler on known logit vectors: exactly the right kept sets for top-k / top-p / min-p,
// probabilities against float64 softmax, penalties on the right tokens, seeds reproduce, and
// empirical frequencies match the distribution.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <vector>

#include "tq/core/rng.h"
#include "tq/runtime/sampler.h"

namespace tq::runtime {
namespace {

constexpr double kProbTol = 1e-6;  // float probabilities vs float64 softmax

SamplerConfig no_filters(float temp = 1.0f) {
  SamplerConfig c;
  c.temperature = temp;
  c.top_k = 0;
  c.top_p = 1.0f;
  c.min_p = 0.0f;
  return c;
}

std::set<int32_t> kept_ids(const Sampler& s) {
  std::set<int32_t> ids;
  for (const Candidate& c : s.last_candidates()) ids.insert(c.id);
  return ids;
}

// Logits whose softmax is exactly p (up to float rounding).
std::vector<float> logits_of(const std::vector<double>& p) {
  std::vector<float> l;
  for (double x : p) l.push_back(static_cast<float>(std::log(x)));
  return l;
}

TEST(SamplerTest, ValidateRejectsBadConfigs) {
  SamplerConfig c;
  EXPECT_TRUE(c.validate().ok());
  c.temperature = -1.0f;
  EXPECT_FALSE(c.validate().ok());
  c = {};
  c.top_p = 0.0f;
  EXPECT_FALSE(c.validate().ok());
  c = {};
  c.min_p = 1.5f;
  EXPECT_FALSE(c.validate().ok());
  c = {};
  c.top_k = -3;
  EXPECT_FALSE(c.validate().ok());
  c = {};
  c.repeat_penalty = 0.0f;
  EXPECT_FALSE(Sampler::create(c).ok());
}

// Temperatures down to the smallest subnormal draw the largest logit (logit / T alone overflowed
// to inf, and the NaN softmax let the draw fall to the last candidate).
TEST(SamplerTest, TinyTemperaturesDrawTheLargest) {
  const std::vector<float> logits = {1.0f, 7.5f, -3.0f, 7.25f, 2.0f, -20.0f};
  for (float t : {1e-3f, 1e-30f, 1e-38f, 1e-45f}) {
    auto s = Sampler::create(no_filters(t));
    ASSERT_TRUE(s.ok());
    for (int draw = 0; draw < 20; ++draw)
      EXPECT_EQ(s->sample(logits.data(), static_cast<int>(logits.size())), 1) << t;
  }
}

TEST(SamplerTest, TopKKeepsTheKLargest) {
  const std::vector<float> l = {0.1f, 3.0f, -1.0f, 2.5f, 2.9f, 0.0f, 7.0f};
  SamplerConfig c = no_filters();
  c.top_k = 3;
  auto s = Sampler::create(c);
  ASSERT_TRUE(s.ok());
  s->sample(l.data(), 7);
  EXPECT_EQ(kept_ids(*s), (std::set<int32_t>{6, 1, 4}));
  // Probabilities renormalized over the kept set, most likely first.
  const double z = std::exp(7.0) + std::exp(3.0) + std::exp(2.9);
  const auto cands = s->last_candidates();
  EXPECT_EQ(cands[0].id, 6);
  EXPECT_NEAR(cands[0].p, std::exp(7.0) / z, kProbTol);
  EXPECT_NEAR(cands[2].p, std::exp(2.9) / z, kProbTol);
}

TEST(SamplerTest, TopPKeepsTheSmallestNucleus) {
  // p = .4 .3 .2 .1 (ids shuffled); thresholds away from the cumulative sums .4 .7 .9 1.
  const std::vector<double> p = {0.2, 0.4, 0.1, 0.3};
  const auto l = logits_of(p);
  for (auto [top_p, want] : std::vector<std::pair<float, std::set<int32_t>>>{
           {0.35f, {1}}, {0.65f, {1, 3}}, {0.75f, {1, 3, 0}}, {0.95f, {1, 3, 0, 2}}}) {
    SamplerConfig c = no_filters();
    c.top_p = top_p;
    auto s = Sampler::create(c);
    ASSERT_TRUE(s.ok());
    s->sample(l.data(), 4);
    EXPECT_EQ(kept_ids(*s), want) << "top_p=" << top_p;
  }
}

TEST(SamplerTest, TopPOnALargeVocabSortsOnlyWhatItNeeds) {
  // 5000 tokens, a flat tail: the nucleus at 0.5 is a long prefix (beyond the first 64).
  Rng rng(3);
  std::vector<float> l(5000);
  for (auto& x : l) x = static_cast<float>(rng.normal() * 0.5);
  SamplerConfig c = no_filters();
  c.top_p = 0.5f;
  auto s = Sampler::create(c);
  ASSERT_TRUE(s.ok());
  s->sample(l.data(), 5000);
  // float64 reference nucleus.
  std::vector<int> order(5000);
  for (int i = 0; i < 5000; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](int a, int b) { return l[a] > l[b]; });
  double z = 0.0;
  for (float x : l) z += std::exp(static_cast<double>(x));
  std::set<int32_t> want;
  double cum = 0.0;
  for (int id : order) {
    want.insert(id);
    cum += std::exp(static_cast<double>(l[id])) / z;
    if (cum >= 0.5) break;
  }
  EXPECT_GT(want.size(), 64u);
  EXPECT_EQ(kept_ids(*s), want);
}

TEST(SamplerTest, MinPThresholdIsRelativeToTheMax) {
  const std::vector<double> p = {0.5, 0.2, 0.05, 0.15, 0.1};
  const auto l = logits_of(p);
  SamplerConfig c = no_filters();
  c.min_p = 0.25f;  // keep p >= 0.125: ids 0 (.5), 1 (.2), 3 (.15)
  auto s = Sampler::create(c);
  ASSERT_TRUE(s.ok());
  s->sample(l.data(), 5);
  EXPECT_EQ(kept_ids(*s), (std::set<int32_t>{0, 1, 3}));
  const auto cands = s->last_candidates();
  EXPECT_NEAR(cands[0].p, 0.5 / 0.85, kProbTol);
  EXPECT_NEAR(cands[2].p, 0.15 / 0.85, kProbTol);
}

TEST(SamplerTest, TemperatureScalesTheDistribution) {
  const std::vector<float> l = {1.0f, 2.0f, 0.5f};
  SamplerConfig c = no_filters(0.5f);
  auto s = Sampler::create(c);
  ASSERT_TRUE(s.ok());
  s->sample(l.data(), 3);
  const double z = std::exp(2.0) + std::exp(4.0) + std::exp(1.0);
  for (const Candidate& cand : s->last_candidates())
    EXPECT_NEAR(cand.p, std::exp(l[cand.id] / 0.5) / z, kProbTol) << "id " << cand.id;
}

TEST(SamplerTest, TemperatureZeroIsGreedy) {
  Rng rng(11);
  std::vector<float> l(1000);
  for (auto& x : l) x = static_cast<float>(rng.normal());
  const int32_t best = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
  SamplerConfig c;  // default filters, temperature 0
  c.temperature = 0.0f;
  auto s = Sampler::create(c);
  ASSERT_TRUE(s.ok());
  for (int i = 0; i < 5; ++i) EXPECT_EQ(s->sample(l.data(), 1000), best);
}

TEST(SamplerTest, SeedReproducesAndDiffers) {
  Rng rng(5);
  std::vector<float> l(300);
  for (auto& x : l) x = static_cast<float>(rng.normal());
  auto draw = [&](uint64_t seed) {
    SamplerConfig c = no_filters();
    c.seed = seed;
    auto s = Sampler::create(c);
    std::vector<int32_t> out;
    for (int i = 0; i < 50; ++i) out.push_back(s->sample(l.data(), 300));
    s->reset();
    EXPECT_EQ(s->sample(l.data(), 300), out[0]) << "reset reseeds";
    return out;
  };
  EXPECT_EQ(draw(123), draw(123));
  EXPECT_NE(draw(123), draw(124));
}

TEST(SamplerTest, EmpiricalFrequenciesMatchTheDistribution) {
  const std::vector<double> p = {0.5, 0.3, 0.15, 0.05};
  const auto l = logits_of(p);
  auto s = Sampler::create(no_filters());
  ASSERT_TRUE(s.ok());
  const int n = 40000;
  std::vector<int> count(4, 0);
  for (int i = 0; i < n; ++i) ++count[s->sample(l.data(), 4)];
  for (int i = 0; i < 4; ++i) {
    // 5 standard deviations of a binomial proportion: fails by chance ~1e-6 (seed 42).
    const double sd = std::sqrt(p[i] * (1 - p[i]) / n);
    EXPECT_NEAR(count[i] / static_cast<double>(n), p[i], 5 * sd) << "token " << i;
  }
}

TEST(SamplerTest, PenaltiesHitOnlyTheTokensInTheWindow) {
  const std::vector<float> l = {2.0f, -2.0f, 1.0f, 0.5f, 3.0f};
  SamplerConfig c = no_filters();
  c.repeat_penalty = 2.0f;
  c.presence_penalty = 0.25f;
  c.frequency_penalty = 0.125f;
  c.repeat_last_n = 3;
  auto s = Sampler::create(c);
  ASSERT_TRUE(s.ok());
  // History 4 4 | 0 1 1: the window (last 3) is 0 1 1; token 4 has left it.
  for (int32_t t : {4, 4, 0, 1, 1}) s->accept(t);
  s->sample(l.data(), 5);
  std::vector<double> want = {2.0 / 2 - 0.25 - 0.125,       // positive logit divided
                              -2.0 * 2 - 0.25 - 2 * 0.125,  // negative multiplied, twice
                              1.0, 0.5, 3.0};
  double z = 0.0;
  for (double x : want) z += std::exp(x);
  for (const Candidate& cand : s->last_candidates())
    EXPECT_NEAR(cand.p, std::exp(want[cand.id]) / z, kProbTol) << "id " << cand.id;
  // Greedy sees the penalties too: the raw argmax (token 4) penalized falls below token 0.
  SamplerConfig g = c;
  g.temperature = 0.0f;
  auto sg = Sampler::create(g);
  ASSERT_TRUE(sg.ok());
  sg->accept(4);
  EXPECT_EQ(sg->sample(l.data(), 5), 0);  // 3.0 -> 1.5 - 0.25 - 0.125 < 2.0
}

}  // namespace
}  // namespace tq::runtime

namespace tq::runtime {
namespace {

// greedy_token (what a model picks where its logits are) against Sampler::sample with a
// plain-greedy config: the same token on random logits with ties and NaNs, and the edge cases.
TEST(GreedyToken, EqualsTheSamplersGreedyPick) {
  SamplerConfig cfg;
  cfg.temperature = 0.0f;
  ASSERT_TRUE(cfg.plain_greedy());
  auto s = Sampler::create(cfg);
  ASSERT_TRUE(s.ok());
  Rng rng(11);
  std::vector<float> logits(1000);
  for (int trial = 0; trial < 200; ++trial) {
    // Coarse values (many ties), some NaN and -inf.
    for (auto& l : logits) {
      const uint64_t r = rng.next_u64();
      l = r % 97 == 0   ? NAN
          : r % 89 == 0 ? -INFINITY
                        : static_cast<float>(static_cast<int>(r % 23) - 11);
    }
    EXPECT_EQ(greedy_token(logits.data(), 1000), s->sample(logits.data(), 1000)) << trial;
  }
  const float ties[] = {1.0f, 3.0f, NAN, 3.0f};
  EXPECT_EQ(greedy_token(ties, 4), 1);  // the lowest id of equals
  const float nan_first[] = {NAN, -2.0f, -1.0f};
  EXPECT_EQ(greedy_token(nan_first, 3), 2);
  const float none[] = {NAN, -INFINITY, NAN};  // nothing to pick: -1, greedy or drawn
  EXPECT_EQ(greedy_token(none, 3), -1);
  EXPECT_EQ(s->sample(none, 3), -1);
  auto drawn = Sampler::create(no_filters(0.7f));
  ASSERT_TRUE(drawn.ok());
  EXPECT_EQ(drawn->sample(none, 3), -1);
  const float infinite[] = {1.0f, INFINITY, 2.0f};  // greedy takes +inf; a draw has no softmax
  EXPECT_EQ(greedy_token(infinite, 3), 1);
  EXPECT_EQ(drawn->sample(infinite, 3), -1);
  cfg.repeat_penalty = 1.1f;  // penalties need the logits: not plain greedy
  EXPECT_FALSE(cfg.plain_greedy());
}

// top_logits against a full sort by (value desc, id asc), NaN as -inf, on coarse values (ties).
TEST(TopLogits, RanksLikeTheSampler) {
  Rng rng(5);
  std::vector<float> logits(700);
  for (int trial = 0; trial < 50; ++trial) {
    for (auto& l : logits) {
      const uint64_t r = rng.next_u64();
      l = r % 53 == 0   ? NAN
          : r % 47 == 0 ? -INFINITY
                        : static_cast<float>(static_cast<int>(r % 31) - 15) * 0.5f;
    }
    std::vector<int32_t> order(logits.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
    const auto val = [&](int32_t i) { return std::isnan(logits[i]) ? -INFINITY : logits[i]; };
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return val(a) > val(b); });
    for (const int k : {1, 7, 100, 700}) {
      std::vector<int32_t> ids(static_cast<size_t>(k));
      std::vector<float> vals(ids.size());
      top_logits(logits.data(), 700, k, ids.data(), vals.data());
      for (int i = 0; i < k; ++i) {
        ASSERT_EQ(ids[i], order[static_cast<size_t>(i)])
            << "trial " << trial << " k " << k << " rank " << i;
        ASSERT_EQ(vals[i], val(order[static_cast<size_t>(i)]));
      }
    }
  }
}

// Sampler::sample_top on top_logits' candidates draws exactly what sample() draws from the whole
// row, step after step with the same history (penalties on some configs), for configurations
// where top_candidates says it can; 0 where the chain needs the whole row.
TEST(SamplerTest, SampleTopDrawsWhatSampleDraws) {
  std::vector<SamplerConfig> configs;
  SamplerConfig c;  // the defaults: temp 0.8, top_k 40, top_p 0.95, min_p 0.05
  configs.push_back(c);
  c.top_k = 5;
  c.top_p = 0.5f;
  c.min_p = 0.0f;
  c.temperature = 1.5f;
  configs.push_back(c);
  c = SamplerConfig{};
  c.repeat_penalty = 1.3f;
  c.presence_penalty = 0.5f;
  c.frequency_penalty = 0.25f;
  c.repeat_last_n = 24;
  configs.push_back(c);
  c.temperature = 0.0f;  // greedy after penalties
  configs.push_back(c);
  c = SamplerConfig{};
  c.top_k = 1;
  configs.push_back(c);
  constexpr int kVocab = 3000;
  Rng rng(17);
  std::vector<float> logits(kVocab);
  for (size_t ci = 0; ci < configs.size(); ++ci) {
    SCOPED_TRACE("config " + configs[ci].to_string());
    const int need = configs[ci].top_candidates(kVocab);
    ASSERT_GT(need, 0);
    auto full = Sampler::create(configs[ci]);
    auto top = Sampler::create(configs[ci]);
    ASSERT_TRUE(full.ok() && top.ok());
    std::vector<int32_t> ids(static_cast<size_t>(need));
    std::vector<float> vals(ids.size());
    int distinct = 0;
    std::set<int32_t> seen;
    for (int step = 0; step < 300; ++step) {
      // Coarse logits with ties; the previous tokens made likely, so penalties bite.
      for (auto& l : logits) l = static_cast<float>(static_cast<int>(rng.next_u64() % 64)) * 0.125f;
      for (int32_t t : seen) logits[static_cast<size_t>(t)] += 4.0f;
      top_logits(logits.data(), kVocab, need, ids.data(), vals.data());
      const int32_t a = full->sample(logits.data(), kVocab);
      const int32_t b = top->sample_top(ids.data(), vals.data(), need, kVocab);
      ASSERT_EQ(a, b) << "step " << step;
      full->accept(a);
      top->accept(b);
      if (seen.insert(a).second) ++distinct;
      if (seen.size() > 8) seen.erase(seen.begin());
    }
    EXPECT_GT(distinct, 5);  // the draws moved around
    EXPECT_EQ(top->sample_top(ids.data(), vals.data(), need - 1, kVocab), -1);  // too few
  }
  SamplerConfig off;
  off.top_k = 0;  // top-p over the whole row
  EXPECT_EQ(off.top_candidates(kVocab), 0);
  off.top_k = kVocab;
  EXPECT_EQ(off.top_candidates(kVocab), 0);
  off.top_k = 40;
  off.repeat_penalty = 0.9f;  // raises penalised logits: a token outside the candidates may win
  EXPECT_EQ(off.top_candidates(kVocab), 0);
  off.repeat_penalty = 1.0f;
  off.presence_penalty = -0.5f;
  EXPECT_EQ(off.top_candidates(kVocab), 0);
  off.presence_penalty = 0.5f;
  off.repeat_last_n = 64;
  EXPECT_EQ(off.top_candidates(kVocab), 104);
  off.repeat_last_n = 5000;
  EXPECT_EQ(off.top_candidates(kVocab), 0);  // over kMaxTopCandidates
}

}  // namespace
}  // namespace tq::runtime
