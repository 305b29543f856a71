#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <thread>
#include <vector>

#include "tq/core/fp16.h"
#include "tq/core/rng.h"
#include "tq/core/status.h"
#include "tq/core/thread_pool.h"

namespace tq {
namespace {

Expected<int> parse_positive(int x) {
  if (x <= 0) return invalid_argument("not positive: " + std::to_string(x));
  return x;
}

Status use_parse(int x, int* out) {
  TQ_ASSIGN_OR_RETURN(*out, parse_positive(x));
  return ok_status();
}

TEST(Status, ExpectedCarriesValueOrError) {
  int v = 0;
  EXPECT_TRUE(use_parse(3, &v).ok());
  EXPECT_EQ(v, 3);
  const Status s = use_parse(-1, &v);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.to_string(), "InvalidArgument: not positive: -1");
  EXPECT_EQ(s.with_context("flag --n").message(), "flag --n: not positive: -1");
}

TEST(Fp16, RoundTripsEveryHalf) {
  // Every finite half converts to float and back exactly.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint16_t x = static_cast<uint16_t>(h);
    if ((x & 0x7c00) == 0x7c00 && (x & 0x3ff)) continue;  // NaN payloads may change
    ASSERT_EQ(f32_to_f16(f16_to_f32(x)), x) << "h=" << h;
  }
}

TEST(Fp16, RoundsToNearestEven) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f16_to_f32(f32_to_f16(65504.0f)), 65504.0f);
  EXPECT_TRUE(std::isinf(f16_to_f32(f32_to_f16(70000.0f))));
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(NAN))));
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even (1.0).
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(f32_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  // Random floats: the relative error is at most 2^-11 in the normal range.
  Rng rng(7);
  for (int i = 0; i < 100000; ++i) {
    const float f = static_cast<float>(rng.normal() * 100.0);
    const float back = f16_to_f32(f32_to_f16(f));
    if (std::fabs(f) > 6.2e-5f) {
      ASSERT_LE(std::fabs(back - f), std::fabs(f) * 0x1.0p-11f) << f;
    }
  }
}

TEST(Bf16, Rounds) {
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f)), 1.0f);
  EXPECT_NEAR(bf16_to_f32(f32_to_bf16(3.14159f)), 3.14159f, 3.14159f * 0x1.0p-8f);
}

TEST(Rng, IsDeterministicAndNormal) {
  Rng a(42), b(42);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(a.next_u64(), b.next_u64());
  Rng r(1);
  double sum = 0, sum2 = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double x = r.normal();
    sum += x;
    sum2 += x * x;
  }
  EXPECT_NEAR(sum / n, 0.0, 5.0 / std::sqrt(n));
  EXPECT_NEAR(sum2 / n, 1.0, 0.02);
}

TEST(ThreadPool, CoversEveryIndexOnce) {
  ThreadPool pool(3);
  for (size_t n : {1u, 7u, 64u, 1000u}) {
    std::vector<std::atomic<int>> hits(n);
    pool.parallel_for(n, 4, [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i) hits[i]++;
    });
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n=" << n << " i=" << i;
  }
}

// Many short jobs back to back (the hand-off a decode step makes hundreds of times), with
// pauses longer than the spin time between some of them, so that workers and caller also take
// the sleeping path; every index is still covered exactly once.
TEST(ThreadPool, BackToBackJobsAcrossSpinAndSleep) {
  ThreadPool pool(4);
  std::vector<std::atomic<int>> hits(64);
  constexpr int kJobs = 2000;
  for (int job = 0; job < kJobs; ++job) {
    pool.parallel_for(hits.size(), 1, [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i) hits[i]++;
    });
    if (job % 500 == 499) std::this_thread::sleep_for(3 * ThreadPool::kSpinTime);
  }
  for (size_t i = 0; i < hits.size(); ++i) ASSERT_EQ(hits[i].load(), kJobs) << "i=" << i;
}

// Chunks slower than the spin time: the caller finishes its own share, then sleeps until the
// last worker wakes it.
TEST(ThreadPool, CallerSleepsUntilSlowWorkersFinish) {
  ThreadPool pool(3);
  std::atomic<size_t> covered{0};
  pool.parallel_for(6, 1, [&](size_t b, size_t e) {  // three chunks of two
    std::this_thread::sleep_for(2 * ThreadPool::kSpinTime);
    covered += e - b;
  });
  EXPECT_EQ(covered.load(), 6u);
}

// Destruction with workers never started, spinning after a job, or asleep.
TEST(ThreadPool, DestroysInEveryWorkerState) {
  std::atomic<size_t> total{0};
  const auto count = [&](size_t b, size_t e) { total += e - b; };
  { ThreadPool unused(3); }
  {
    ThreadPool spinning(3);
    spinning.parallel_for(100, 1, count);
  }
  {
    ThreadPool sleeping(3);
    sleeping.parallel_for(100, 1, count);
    std::this_thread::sleep_for(3 * ThreadPool::kSpinTime);
  }
  EXPECT_EQ(total.load(), 200u);
}

// A count from a user (-t) is clamped to [1, kMaxThreads], not spawned as asked: two billion
// threads would fill the machine's process table.
TEST(ThreadPool, ClampsItsThreadCount) {
  EXPECT_EQ(ThreadPool(0).size(), 1);
  EXPECT_EQ(ThreadPool(-5).size(), 1);
  ThreadPool huge(2'000'000'000);
  EXPECT_EQ(huge.size(), kMaxThreads);
  std::atomic<size_t> total{0};
  huge.parallel_for(5000, 1, [&](size_t b, size_t e) { total += e - b; });
  EXPECT_EQ(total.load(), 5000u);
}

}  // namespace
}  // namespace tq
