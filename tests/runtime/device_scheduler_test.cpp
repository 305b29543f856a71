// The scheduler on the device path (runtime::DeviceStepModel over backend::DeviceModel), run on
// the CPU through tests/runtime/cpu_device_model.h: concurrent greedy requests give exactly the
// CPU path's tokens (same model, same KV formats; the stand-in computes as the CPU does), every
// decode row of a step goes through one forward_batch, slots are reused after requests end and
// freed by cancel, and what does not fit a slot is refused with a clear error. Prefix reuse by
// slot: device_prefix_test.cpp.
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "model/tiny_model.h"
#include "runtime/cpu_device_model.h"
#include "runtime/device_test_util.h"
#include "runtime/scheduler_test_util.h"
#include "tq/backend/cpu/tq_kernels.h"
#include "tq/kv/kv_bytes.h"
#include "tq/quant/format.h"
#include "tq/runtime/device_step_model.h"
#include "tq/runtime/scheduler.h"

namespace tq::runtime {
namespace {

using test::collect;
using test::eventually;
using test::greedy_request;
using test::prompt_of;
using test::Result;

using namespace std::chrono_literals;

using test::device;
using test::kv_config;
using test::options;
using test::tiny;

constexpr int kRequests = 6;
int prompt_len(int i) { return i == 0 ? 1 : 5 + 8 * i; }  // 1, 13, 21, 29, 37, 45
int max_tokens(int i) { return 10 + 2 * i; }

// Request i: greedy, or sampled with its own seed (odd ones with penalties).
GenerationRequest request(int i, bool sampled) {
  GenerationRequest r = greedy_request(prompt_of(prompt_len(i), i, 290), max_tokens(i));
  if (sampled) {
    r.sampler.temperature = 0.9f;
    r.sampler.top_k = 20 + 10 * i;
    r.sampler.top_p = 0.9f;
    r.sampler.min_p = 0.02f;
    r.sampler.seed = 1000 + static_cast<uint64_t>(i);
    if (i % 2 == 1) {
      r.sampler.repeat_penalty = 1.3f;
      r.sampler.presence_penalty = 0.4f;
      r.sampler.frequency_penalty = 0.2f;
      r.sampler.repeat_last_n = 16;
    }
  }
  return r;
}

// Request i as `make` gives it.
using MakeRequest = std::function<GenerationRequest(int)>;

// Submits every request at once and collects them in order.
std::vector<Result> run_all(Scheduler& s, const MakeRequest& make) {
  std::vector<std::shared_ptr<RequestChannel>> chans;
  for (int i = 0; i < kRequests; ++i) {
    auto ch = s.submit(make(i));
    EXPECT_TRUE(ch.ok()) << ch.status().to_string();
    if (ch.ok()) chans.push_back(*ch);
  }
  std::vector<Result> out;
  for (auto& ch : chans) out.push_back(collect(*ch));
  return out;
}

// The same requests on the CPU path: the paged cache with prefix sharing off (the prompts share
// nothing anyway), 4 sessions of 96 tokens.
void cpu_path(const model::Model& m, const kv::KvConfig& kv, const SchedulerOptions& so,
              const MakeRequest& make, std::vector<Result>* out) {
  kv::PagedKvCacheOptions co;
  co.shape = m.attention_shape();
  co.config = kv;
  co.prefix_caching = false;
  co.kernels = &backend::cpu::cpu_kernel_table();
  auto blocks = kv::kv_block_bytes(kv, co.shape);
  ASSERT_TRUE(blocks.ok()) << blocks.status().to_string();
  size_t page = 0;
  for (size_t b : *blocks) page += b;
  co.pool_bytes = page * 6 * 4;
  auto cache = kv::PagedKvCache::create(co);
  ASSERT_TRUE(cache.ok()) << cache.status().to_string();
  ThreadPool pool(2);
  auto sched = Scheduler::create(m, **cache, pool, so);
  ASSERT_TRUE(sched.ok()) << sched.status().to_string();
  *out = run_all(**sched, make);
}

MakeRequest plain(bool sampled) {
  return [sampled](int i) { return request(i, sampled); };
}

// The same requests on the device path: the stand-in device (4 slots of 96 tokens), its step
// model and a scheduler; kept for the tests' counters.
struct DevicePath {
  std::unique_ptr<test::CpuDeviceModel> dm;
  std::unique_ptr<DeviceStepModel> step;
  std::unique_ptr<Scheduler> sched;
};
void device_path(const model::Model& m, const kv::KvConfig& kv, const SchedulerOptions& so,
                 const MakeRequest& make, DevicePath* path, std::vector<Result>* out) {
  path->dm = device(m, kv, 4, 96);
  ASSERT_NE(path->dm, nullptr);
  auto step = DeviceStepModel::create(*path->dm, m);
  ASSERT_TRUE(step.ok()) << step.status().to_string();
  path->step = std::move(step).value();
  auto sched = Scheduler::create(*path->step, so);
  ASSERT_TRUE(sched.ok()) << sched.status().to_string();
  path->sched = std::move(sched).value();
  *out = run_all(*path->sched, make);
}

TEST(DeviceScheduler, ConcurrentGreedyEqualsTheCpuPath) {
  auto m = tiny();
  ASSERT_NE(m, nullptr);
  for (const auto& [k, v] : {std::pair{"f16", "f16"}, std::pair{"tq4", "tq3"}}) {
    SCOPED_TRACE(std::string("K ") + k + ", V " + v);
    const kv::KvConfig kv = kv_config(k, v);
    const SchedulerOptions so = options(4, 96);

    std::vector<Result> want;
    ASSERT_NO_FATAL_FAILURE(cpu_path(*m, kv, so, plain(false), &want));

    DevicePath path;
    std::vector<Result> got;
    ASSERT_NO_FATAL_FAILURE(device_path(*m, kv, so, plain(false), &path, &got));
    EXPECT_TRUE(path.step->prefix_caching());  // on, but these prompts share no first token
    test::CpuDeviceModel* dm = path.dm.get();

    ASSERT_EQ(got.size(), want.size());
    int64_t decode_rows = 0, generated = 0;
    for (int i = 0; i < kRequests; ++i) {
      const auto& g = got[static_cast<size_t>(i)];
      EXPECT_EQ(g.done.finish, FinishReason::kLength) << g.done.error;
      EXPECT_EQ(g.done.completion_tokens, max_tokens(i));
      EXPECT_EQ(g.done.cached_tokens, 0);
      EXPECT_EQ(g.tokens, want[static_cast<size_t>(i)].tokens) << "request " << i;
      decode_rows += max_tokens(i) - 1;  // every token but the first is a decode step's
      generated += max_tokens(i);
    }
    // Greedy requests without logprobs take the model's greedy token: no logits cross.
    EXPECT_EQ(dm->greedy_rows.load(), generated);
    // Decodes went through forward_batch only, at most one call per step, several rows a call.
    const SchedulerStats st = path.sched->stats();
    EXPECT_EQ(dm->single_token_forwards.load(), 0);
    EXPECT_GE(dm->forward_batch_rows.load(), decode_rows);
    EXPECT_LE(dm->forward_batch_calls.load(), st.steps);
    EXPECT_LT(dm->forward_batch_calls.load(), decode_rows);
    // Several decodes shared a pass (all 4 sessions in practice; the exact peak depends on
    // when the engine thread first ran).
    EXPECT_GE(dm->max_batch_rows.load(), 2);
    EXPECT_LE(dm->max_batch_rows.load(), 4);
    EXPECT_TRUE(eventually([&] { return path.step->kv_stats().sequences == 0; }));
    EXPECT_EQ(path.step->kv_stats().pages_used, 0);
  }
}

// Sampled requests (seeded; top-k, top-p, min-p, temperature, half of them with penalties) on
// the device path take the device's top candidates (Sampler::sample_top) instead of the logits
// rows, and draw exactly the tokens the CPU path draws from the whole rows.
TEST(DeviceScheduler, SampledFromTopCandidatesEqualsTheCpuPath) {
  auto m = tiny();
  ASSERT_NE(m, nullptr);
  const kv::KvConfig kv = kv_config("tq4", "tq3");
  const SchedulerOptions so = options(4, 96);
  std::vector<Result> want;
  ASSERT_NO_FATAL_FAILURE(cpu_path(*m, kv, so, plain(true), &want));
  DevicePath path;
  std::vector<Result> got;
  ASSERT_NO_FATAL_FAILURE(device_path(*m, kv, so, plain(true), &path, &got));
  test::CpuDeviceModel* dm = path.dm.get();
  ASSERT_EQ(got.size(), want.size());
  int64_t generated = 0;
  for (int i = 0; i < kRequests; ++i) {
    const auto& g = got[static_cast<size_t>(i)];
    EXPECT_EQ(g.done.finish, FinishReason::kLength) << g.done.error;
    EXPECT_EQ(g.tokens, want[static_cast<size_t>(i)].tokens) << "request " << i;
    generated += max_tokens(i);
  }
  // Every token came from top candidates: no logits row crossed, no greedy pick.
  EXPECT_EQ(dm->top_rows.load(), generated);
  EXPECT_EQ(dm->greedy_rows.load(), 0);
}

// Requests with logprobs (top 0 to 4; greedy and sampled, some with penalties) take them on
// the device path from the top candidates and the device's log partition
// (runtime::token_logprob_top), no logits row: the same tokens and exactly the same logprob
// entries as the CPU path, which computes them from the whole rows.
TEST(DeviceScheduler, LogprobsFromTopCandidatesEqualTheCpuPath) {
  auto m = tiny();
  ASSERT_NE(m, nullptr);
  const kv::KvConfig kv = kv_config("tq4", "tq3");
  const SchedulerOptions so = options(4, 96);
  const MakeRequest make = [](int i) {
    GenerationRequest r = request(i, i % 2 == 1);
    r.logprobs = i % 5;
    return r;
  };
  std::vector<Result> want;
  ASSERT_NO_FATAL_FAILURE(cpu_path(*m, kv, so, make, &want));
  DevicePath path;
  std::vector<Result> got;
  ASSERT_NO_FATAL_FAILURE(device_path(*m, kv, so, make, &path, &got));
  test::CpuDeviceModel* dm = path.dm.get();
  ASSERT_EQ(got.size(), want.size());
  for (int i = 0; i < kRequests; ++i) {
    const Result& g = got[static_cast<size_t>(i)];
    const Result& w = want[static_cast<size_t>(i)];
    EXPECT_EQ(g.tokens, w.tokens) << "request " << i;
    ASSERT_EQ(g.logprobs.size(), static_cast<size_t>(max_tokens(i))) << "request " << i;
    ASSERT_EQ(w.logprobs.size(), g.logprobs.size());
    for (size_t t = 0; t < g.logprobs.size(); ++t) {
      EXPECT_EQ(g.logprobs[t].token, w.logprobs[t].token);
      EXPECT_EQ(g.logprobs[t].logprob, w.logprobs[t].logprob) << "request " << i << " token " << t;
      EXPECT_EQ(g.logprobs[t].top, w.logprobs[t].top) << "request " << i << " token " << t;
      EXPECT_EQ(g.logprobs[t].top.size(), static_cast<size_t>(i % 5));
    }
  }
  EXPECT_EQ(dm->logits_rows.load(), 0);  // every draw and logprob from the candidates
  EXPECT_GT(dm->top_rows.load(), 0);
}

TEST(DeviceScheduler, SlotsAreReusedAndCancelFreesOne) {
  auto m = tiny();
  ASSERT_NE(m, nullptr);
  const kv::KvConfig kv = kv_config("tq4", "tq3");
  auto dm = device(*m, kv, 2, 1024);
  ASSERT_NE(dm, nullptr);
  auto step = DeviceStepModel::create(*dm, *m, /*prefix_caching=*/false);  // slots emptied at once
  ASSERT_TRUE(step.ok()) << step.status().to_string();
  auto sched = Scheduler::create(**step, options(2, 1024));
  ASSERT_TRUE(sched.ok()) << sched.status().to_string();

  // Five requests through two slots: each slot serves several in turn.
  std::vector<std::shared_ptr<RequestChannel>> chans;
  for (int i = 0; i < 5; ++i) {
    auto ch = (*sched)->submit(greedy_request(prompt_of(7 + i, 30 + i, 290), 6));
    ASSERT_TRUE(ch.ok());
    chans.push_back(*ch);
  }
  for (auto& ch : chans) EXPECT_EQ(collect(*ch).done.completion_tokens, 6);
  EXPECT_TRUE(eventually([&] { return (*step)->kv_stats().sequences == 0; }));
  EXPECT_EQ(dm->length(0), 0);  // emptied on release
  EXPECT_EQ(dm->length(1), 0);

  // A long request holds a slot until it is cancelled.
  auto slow = (*sched)->submit(greedy_request(prompt_of(20, 3, 290), 1000));
  ASSERT_TRUE(slow.ok());
  std::vector<StreamEvent> first;
  ASSERT_TRUE((*slow)->pop_all(first, 10000ms));
  ASSERT_NE(first.front().kind, StreamEvent::Kind::kDone) << first.front().error;
  const kv::KvPoolStats busy = (*step)->kv_stats();
  EXPECT_EQ(busy.sequences, 1);
  EXPECT_GE(busy.pages_used, 2);  // 20 prompt tokens in pages of 16
  EXPECT_EQ(busy.pages_total, 2 * 64);
  (*slow)->cancel();
  const Result r = collect(**slow);
  EXPECT_EQ(r.done.finish, FinishReason::kCancelled);
  EXPECT_LT(r.done.completion_tokens, 1000);
  EXPECT_TRUE(eventually([&] { return (*step)->kv_stats().sequences == 0; }));
  EXPECT_EQ((*step)->kv_stats().pages_used, 0);
  EXPECT_EQ(dm->length(0) + dm->length(1), 0);
  // Both slots serve again.
  auto a = (*sched)->submit(greedy_request(prompt_of(9, 1, 290), 3));
  auto b = (*sched)->submit(greedy_request(prompt_of(9, 2, 290), 3));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(collect(**a).done.completion_tokens, 3);
  EXPECT_EQ(collect(**b).done.completion_tokens, 3);
}

TEST(DeviceScheduler, RefusesWhatDoesNotFitASlot) {
  auto m = tiny();
  ASSERT_NE(m, nullptr);
  auto dm = device(*m, kv_config("f16", "f16"), 2, 64);
  ASSERT_NE(dm, nullptr);
  auto step = DeviceStepModel::create(*dm, *m);
  ASSERT_TRUE(step.ok()) << step.status().to_string();
  EXPECT_EQ((*step)->limits().sequences, 2);
  EXPECT_EQ((*step)->limits().context, 64);

  // The scheduler's options must fit the slots.
  auto too_many = Scheduler::create(**step, options(3, 64));
  EXPECT_EQ(too_many.status().code(), StatusCode::kInvalidArgument);
  auto too_long_ctx = Scheduler::create(**step, options(2, 128));
  EXPECT_EQ(too_long_ctx.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(too_long_ctx.status().message().find("64 tokens"), std::string::npos)
      << too_long_ctx.status().message();

  // A sequence longer than a slot, or one more than the slots.
  EXPECT_EQ((*step)->new_sequence(65).status().code(), StatusCode::kInvalidArgument);
  {
    auto s0 = (*step)->new_sequence(64);
    auto s1 = (*step)->new_sequence(64);
    ASSERT_TRUE(s0.ok() && s1.ok());
    EXPECT_EQ((*s0)->reuse_prefix(prompt_of(40, 1, 290)).value(), 0);  // nothing held yet
    auto s2 = (*step)->new_sequence(64);
    EXPECT_EQ(s2.status().code(), StatusCode::kResourceExhausted);
  }

  auto sched = Scheduler::create(**step, options(2, 64));
  ASSERT_TRUE(sched.ok()) << sched.status().to_string();
  auto too_long = (*sched)->submit(greedy_request(prompt_of(64, 1, 290), 4));
  EXPECT_EQ(too_long.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(too_long.status().message().find("context is 64"), std::string::npos)
      << too_long.status().message();
  auto fits = (*sched)->submit(greedy_request(prompt_of(60, 1, 290), 10));  // clipped to the slot
  ASSERT_TRUE(fits.ok());
  const Result r = collect(**fits);
  EXPECT_EQ(r.done.finish, FinishReason::kLength);
  // 60 + 4 tokens fill the slot; the fifth token is sampled from the last logits.
  EXPECT_EQ(r.done.completion_tokens, 5);
}

}  // namespace
}  // namespace tq::runtime
