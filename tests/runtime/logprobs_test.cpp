// Logprobs from a GPU's top candidates and log partition (runtime::token_logprob_top) equal
// those from the whole row (runtime::token_logprob) exactly: both subtract the same double
// log_partition from the same float logit. Rows with ties (values on a 0.25 grid) and -inf;
// NaN counts as -inf in the partition.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "tq/core/rng.h"
#include "tq/runtime/logprobs.h"
#include "tq/runtime/sampler.h"

namespace tq::runtime {
namespace {

TEST(Logprobs, FromTopCandidatesEqualFromTheRow) {
  constexpr int kVocab = 500, kCount = 40;
  Rng rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<float> row(kVocab);
    for (float& x : row) x = std::round(rng.uniform_f(-20.0f, 20.0f) * 4) / 4;
    row[static_cast<size_t>(trial * 7 % kVocab)] = -std::numeric_limits<float>::infinity();
    std::vector<int32_t> ids(kCount);
    std::vector<float> values(kCount);
    top_logits(row.data(), kVocab, kCount, ids.data(), values.data());
    const double log_z = log_partition(row.data(), kVocab);
    for (const int top_k : {0, 1, 5, 20})
      for (const int pick : {0, 3, kCount - 1}) {
        const int32_t token = ids[static_cast<size_t>(pick)];
        const TokenLogprob want = token_logprob(row.data(), kVocab, token, top_k);
        const TokenLogprob got =
            token_logprob_top(ids.data(), values.data(), kCount, log_z, token, top_k);
        EXPECT_EQ(got.token, token);
        EXPECT_EQ(got.logprob, want.logprob) << "trial " << trial << " token " << token;
        EXPECT_EQ(got.top, want.top) << "trial " << trial << " top_k " << top_k;
      }
    // A token the candidates do not hold has no logprob there.
    int32_t outside = 0;
    while (std::find(ids.begin(), ids.end(), outside) != ids.end()) ++outside;
    EXPECT_EQ(token_logprob_top(ids.data(), values.data(), kCount, log_z, outside, 3).logprob,
              -std::numeric_limits<float>::infinity());
  }
}

TEST(Logprobs, LogPartitionSkipsNaNAndMinusInfinity) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::nanf("");
  const std::vector<float> row = {1.0f, nan, -inf, 1.0f, -2.0f};
  const double want = std::log(2.0 * std::exp(1.0) + std::exp(-2.0));  // float64 reference
  EXPECT_NEAR(log_partition(row.data(), static_cast<int>(row.size())), want, 1e-12);
  const std::vector<float> none = {-inf, nan};
  EXPECT_EQ(log_partition(none.data(), 2), -inf);
  // The logprob of the best token: log(e / (2e + e^-2)).
  EXPECT_NEAR(token_logprob(row.data(), 5, 0, 0).logprob, 1.0 - want, 1e-6);
}

}  // namespace
}  // namespace tq::runtime
