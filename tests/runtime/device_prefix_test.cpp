// Prefix reuse on the device path (runtime::DeviceStepModel, run on the CPU through
// tests/runtime/cpu_device_model.h): a new prompt takes over the free slot that holds its
// longest prefix (no copy), copies it from a slot in use (a page or more), and is cut to the
// common length; with an f16 window only a slot's whole contents are kept; free slots are handed
// out empty ones first, then the least recently freed. The logits after a reused prefix equal
// those of the same tokens computed in full (f16 K/V: the stand-in recomputes the kept
// positions, and every row's numbers are independent of the pass it is in, so the tolerance
// 1e-5 only allows for summation order).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <span>
#include <vector>

#include "runtime/cpu_device_model.h"
#include "runtime/device_test_util.h"
#include "runtime/scheduler_test_util.h"
#include "tq/runtime/device_step_model.h"
#include "tq/runtime/scheduler.h"

namespace tq::runtime {
namespace {

using test::collect;
using test::greedy_request;
using test::prompt_of;

std::vector<int32_t> concat(std::initializer_list<std::span<const int32_t>> parts) {
  std::vector<int32_t> out;
  for (auto p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// Runs `tokens` through `seq` as one step row; the last token's logits.
std::vector<float> run(DeviceStepModel& step, StepSequence& seq, std::span<const int32_t> tokens) {
  std::vector<float> logits(static_cast<size_t>(step.vocab()));
  StepRow r;
  r.seq = &seq;
  r.tokens = tokens.data();
  r.n = static_cast<int>(tokens.size());
  r.logits = logits.data();
  const Status st = step.forward({&r, 1});
  EXPECT_TRUE(st.ok()) << st.to_string();
  return logits;
}

// A prompt, then decode tokens one at a time (each a forward_batch row), then more tokens.
std::vector<float> run_turn(DeviceStepModel& step, StepSequence& seq, std::span<const int32_t> p,
                            std::span<const int32_t> decoded) {
  std::vector<float> logits = run(step, seq, p);
  for (int32_t t : decoded) logits = run(step, seq, {&t, 1});
  return logits;
}

void expect_same_logits(const std::vector<float>& got, const std::vector<float>& want) {
  ASSERT_EQ(got.size(), want.size());
  float worst = 0.0f;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::fabs(got[i] - want[i]));
  EXPECT_LE(worst, 1e-5f);
}

// A tiny model on the stand-in device (`slots` slots of `context` tokens) and its step model,
// prefix reuse on.
struct Rig {
  std::unique_ptr<model::Model> m = test::tiny();
  std::unique_ptr<test::CpuDeviceModel> dm;
  std::unique_ptr<DeviceStepModel> step;
  Rig(const kv::KvConfig& kv, int slots, int context) {
    if (m) dm = test::device(*m, kv, slots, context);
    if (!dm) return;
    auto s = DeviceStepModel::create(*dm, *m);
    EXPECT_TRUE(s.ok()) << s.status().to_string();
    if (s.ok()) step = std::move(s).value();
  }
  bool ok() const { return step != nullptr; }
};

TEST(DevicePrefix, TakesOverTheFreeSlotHoldingAConversation) {
  Rig rig(test::kv_config("f16", "f16"), 2, 128);
  ASSERT_TRUE(rig.ok());
  DeviceStepModel& sm = *rig.step;
  test::CpuDeviceModel* dm = rig.dm.get();
  const std::vector<int32_t> p = prompt_of(30, 1, 290), d = prompt_of(5, 2, 290),
                             x = prompt_of(6, 3, 290);
  {
    auto s0 = sm.new_sequence(128);
    ASSERT_TRUE(s0.ok());
    EXPECT_EQ((*s0)->reuse_prefix(p).value(), 0);  // nothing held yet
    run_turn(sm, **s0, p, d);
    EXPECT_EQ(dm->length(0), 35);
  }
  // Ended: the slot keeps its 35 tokens, and they count as free.
  EXPECT_EQ(dm->length(0), 35);
  EXPECT_EQ(sm.kv_stats().pages_used, 0);

  const std::vector<int32_t> next = concat({p, d, x});
  auto s1 = sm.new_sequence(128);  // the empty slot 1 ...
  ASSERT_TRUE(s1.ok());
  EXPECT_EQ(dm->length(1), 0);
  EXPECT_EQ((*s1)->reuse_prefix(next).value(), 35);  // ... moves to slot 0, as it is
  EXPECT_EQ((*s1)->length(), 35);
  EXPECT_EQ(dm->copies.load(), 0);
  EXPECT_EQ(sm.kv_stats().pages_used, 3);  // 35 tokens in pages of 16
  EXPECT_EQ(sm.kv_stats().prefix_hit_tokens, 35);
  const std::vector<float> got = run(sm, **s1, x);

  auto s2 = sm.new_sequence(128);  // slot 1, still empty: the same tokens computed in full
  ASSERT_TRUE(s2.ok());
  EXPECT_EQ(dm->length(1), 0);
  run_turn(sm, **s2, p, d);
  expect_same_logits(got, run(sm, **s2, x));
}

TEST(DevicePrefix, CopiesAPrefixFromASlotInUse) {
  Rig rig(test::kv_config("f16", "f16"), 3, 128);
  ASSERT_TRUE(rig.ok());
  DeviceStepModel& sm = *rig.step;
  test::CpuDeviceModel* dm = rig.dm.get();
  const std::vector<int32_t> system = prompt_of(40, 4, 290), y = prompt_of(7, 5, 290);
  auto s0 = sm.new_sequence(128);
  ASSERT_TRUE(s0.ok());
  run(sm, **s0, system);

  const std::vector<int32_t> asked = concat({std::span(system).first(33), y});
  auto s1 = sm.new_sequence(128);
  ASSERT_TRUE(s1.ok());
  EXPECT_EQ((*s1)->reuse_prefix(asked).value(), 33);
  EXPECT_EQ(dm->copies.load(), 1);
  EXPECT_EQ(dm->length(1), 33);
  EXPECT_EQ(dm->length(0), 40);  // the source goes on untouched
  const std::vector<float> got = run(sm, **s1, y);

  // Less than a page in common with the slots in use: not worth a copy.
  auto s2 = sm.new_sequence(128);
  ASSERT_TRUE(s2.ok());
  EXPECT_EQ((*s2)->reuse_prefix(concat({std::span(system).first(10), y})).value(), 0);
  EXPECT_EQ(dm->copies.load(), 1);
  expect_same_logits(got, run(sm, **s2, asked));
  // The source still decodes.
  const int32_t t = 7;
  run(sm, **s0, {&t, 1});
  EXPECT_EQ(dm->length(0), 41);
}

// With a window a cut leaves at least a window of prompt tokens to compute (the CPU prefix
// cache's rule), and until the window is whole again the slot's single tokens go through
// forward(), which reads the positions before the cut compressed (the stand-in refuses them in
// forward_batch, as the device does).
TEST(DevicePrefix, WithAWindowACutLeavesAWindowToCompute) {
  kv::KvConfig kv = test::kv_config("tq4", "tq3");
  kv.window = 8;
  Rig rig(kv, 2, 128);
  ASSERT_TRUE(rig.ok());
  DeviceStepModel& sm = *rig.step;
  test::CpuDeviceModel* dm = rig.dm.get();
  const std::vector<int32_t> p = prompt_of(30, 6, 290), z = prompt_of(9, 7, 290);
  {
    auto s0 = sm.new_sequence(128);
    ASSERT_TRUE(s0.ok());
    run(sm, **s0, p);
  }
  auto s1 = sm.new_sequence(128);
  ASSERT_TRUE(s1.ok());
  // 20 tokens in common, 3 more asked: a cut leaves 8 to compute, so 15 are kept.
  EXPECT_EQ((*s1)->reuse_prefix(concat({std::span(p).first(20), std::span(z).first(3)})).value(),
            15);
  EXPECT_EQ(dm->refill_until(0), 15 + 8);
  s1->reset();
  auto s2 = sm.new_sequence(128);
  ASSERT_TRUE(s2.ok());
  EXPECT_EQ((*s2)->reuse_prefix(concat({std::span(p).first(15), z})).value(), 15);  // 24 asked
  EXPECT_EQ((*s2)->length(), 15);
  const int64_t batches = dm->forward_batch_calls.load();
  for (int i = 0; i < 8; ++i) run(sm, **s2, std::span(z).subspan(static_cast<size_t>(i), 1));
  EXPECT_EQ(dm->forward_batch_calls.load(), batches);  // all through forward()
  EXPECT_EQ(dm->refill_until(0), 0);                   // 23 tokens: the window is whole
  run(sm, **s2, std::span(z).subspan(8, 1));
  EXPECT_EQ(dm->forward_batch_calls.load(), batches + 1);  // and decodes in a batch again
  EXPECT_EQ((*s2)->length(), 24);
  EXPECT_EQ(dm->copies.load(), 0);
}

TEST(DevicePrefix, EmptySlotsFirstThenTheLeastRecentlyFreed) {
  Rig rig(test::kv_config("f16", "f16"), 3, 64);
  ASSERT_TRUE(rig.ok());
  DeviceStepModel& sm = *rig.step;
  test::CpuDeviceModel* dm = rig.dm.get();
  const std::vector<int32_t> a = prompt_of(20, 8, 290), b = prompt_of(20, 9, 290),
                             c = prompt_of(20, 12, 290);
  {
    auto s0 = sm.new_sequence(64);
    auto s1 = sm.new_sequence(64);
    ASSERT_TRUE(s0.ok() && s1.ok());
    run(sm, **s0, a);
    run(sm, **s1, b);
    s0->reset();  // slot 0 freed first
  }
  auto s2 = sm.new_sequence(64);  // the empty slot 2 first
  ASSERT_TRUE(s2.ok());
  run(sm, **s2, c);               // (no reuse_prefix: it settles on slot 2 when it runs)
  auto s3 = sm.new_sequence(64);  // then the older of the two ended: slot 0 ...
  ASSERT_TRUE(s3.ok());
  EXPECT_EQ((*s3)->reuse_prefix(concat({b, a})).value(), 20);  // ... but it takes slot 1 over
  EXPECT_EQ(dm->length(0), 20);                                // slot 0 is left as it was
  EXPECT_EQ(dm->length(1), 20);
  auto s4 = sm.new_sequence(64);  // slot 0, the only free one, whose tokens it reuses in place
  ASSERT_TRUE(s4.ok());
  EXPECT_EQ((*s4)->reuse_prefix(concat({a, c})).value(), 20);
  EXPECT_EQ(dm->copies.load(), 0);
  EXPECT_EQ(sm.new_sequence(64).status().code(), StatusCode::kResourceExhausted);
  s4->reset();
  auto s5 = sm.new_sequence(64);  // slot 0 again; asked for nothing of it, so emptied
  ASSERT_TRUE(s5.ok());
  EXPECT_EQ((*s5)->reuse_prefix(prompt_of(20, 13, 290)).value(), 0);
  EXPECT_EQ(dm->length(0), 0);
}

// Two turns of a conversation through the scheduler: the second turn's prompt repeats the
// first prompt and answer, which its slot still holds; the tokens equal a run without reuse.
TEST(DevicePrefix, ASecondTurnReusesTheFirstThroughTheScheduler) {
  auto m = test::tiny();
  ASSERT_NE(m, nullptr);
  const kv::KvConfig kv = test::kv_config("f16", "f16");
  const std::vector<int32_t> p = prompt_of(24, 10, 290), u = prompt_of(8, 11, 290);
  std::vector<test::Result> turns[2];
  for (const bool reuse : {true, false}) {
    SCOPED_TRACE(reuse ? "reuse" : "no reuse");
    auto dm = test::device(*m, kv, 2, 128);
    ASSERT_NE(dm, nullptr);
    auto step = DeviceStepModel::create(*dm, *m, reuse);
    ASSERT_TRUE(step.ok()) << step.status().to_string();
    auto sched = Scheduler::create(**step, test::options(2, 128));
    ASSERT_TRUE(sched.ok()) << sched.status().to_string();
    auto first = (*sched)->submit(greedy_request(p, 6));
    ASSERT_TRUE(first.ok());
    const test::Result r1 = collect(**first);
    ASSERT_EQ(r1.tokens.size(), 6u);
    // The slot holds the prompt and the first 5 answer tokens (the 6th was never fed back).
    auto second =
        (*sched)->submit(greedy_request(concat({p, std::span(r1.tokens).first(5), u}), 6));
    ASSERT_TRUE(second.ok());
    const test::Result r2 = collect(**second);
    EXPECT_EQ(r2.done.cached_tokens, reuse ? 29 : 0);
    EXPECT_EQ((*sched)->stats().prompt_cached_tokens, reuse ? 29 : 0);
    turns[reuse ? 0 : 1] = {r1, r2};
  }
  EXPECT_EQ(turns[0][0].tokens, turns[1][0].tokens);
  EXPECT_EQ(turns[0][1].tokens, turns[1][1].tokens);
}

}  // namespace
}  // namespace tq::runtime
