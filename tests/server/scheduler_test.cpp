// The continuous-batching scheduler on a small random model over the paged cache: a request
// alone gives the Generator's greedy tokens; many interleaved requests each give what they
// give alone; a shared prompt prefix is reused from the prefix cache; cancellation, a full
// pool, a full queue and draining end requests cleanly and leave no page held.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "runtime/nan_model.h"
#include "runtime/scheduler_test_util.h"
#include "tq/backend/cpu/tq_kernels.h"
#include "tq/kv/paged_kv.h"
#include "tq/model/gguf_writer.h"
#include "tq/model/random_model.h"
#include "tq/quant/format.h"
#include "tq/runtime/generator.h"
#include "tq/runtime/scheduler.h"

namespace tq::runtime {
namespace {

using test::collect;
using test::eventually;
using test::greedy_request;
using test::prompt_of;
using test::Result;

using namespace std::chrono_literals;

std::unique_ptr<model::Model> tiny_model() {
  model::RandomModelSpec s;
  s.n_layers = 2;
  s.dim = 64;
  s.ffn_dim = 96;
  s.n_heads = 4;
  s.n_kv_heads = 2;
  s.vocab_size = 400;
  s.seed = 11;
  model::GgufWriter w;
  EXPECT_TRUE(model::build_random_model(s, w).ok());
  auto m = model::Model::from_bytes(std::move(w.serialize()).value());
  EXPECT_TRUE(m.ok()) << m.status().to_string();
  return std::move(m).value();
}

// A cache of `pages` pages of 16 tokens in `format`.
std::unique_ptr<kv::PagedKvCache> make_cache(const model::Model& m, int pages,
                                             quant::Format format = quant::kFormatF16) {
  kv::PagedKvCacheOptions o;
  o.shape = m.attention_shape();
  o.config.k_format = format;
  o.config.v_format = format;
  o.config.block_tokens = 16;
  auto blocks = kv::kv_block_bytes(o.config, o.shape);
  EXPECT_TRUE(blocks.ok());
  size_t page = 0;
  for (size_t b : *blocks) page += b;
  o.pool_bytes = page * static_cast<size_t>(pages);
  o.kernels = &backend::cpu::cpu_kernel_table();
  auto c = kv::PagedKvCache::create(o);
  EXPECT_TRUE(c.ok()) << c.status().to_string();
  return std::move(c).value();
}

SchedulerOptions small_options() {
  SchedulerOptions o;
  o.max_sessions = 4;
  o.max_queue = 16;
  o.context = 128;
  o.prefill_chunk = 8;
  o.step_tokens = 16;
  return o;
}

// For tests that act on a request while it runs: a context long enough that its ~1000 decode
// steps outlast any wall-clock gap in the test, however fast the machine (batched steps of the
// tiny model take microseconds).
constexpr int kLongContext = 1024;
constexpr int kLongTokens = 1000;
SchedulerOptions long_options() {
  SchedulerOptions o = small_options();
  o.context = kLongContext;
  return o;
}

TEST(Scheduler, AloneEqualsGenerator) {
  auto m = tiny_model();
  ThreadPool pool(2);
  auto cache = make_cache(*m, 64);
  const std::vector<int32_t> prompt = prompt_of(21, 1, 390);
  std::vector<int32_t> want;
  {
    ThreadPool gpool(2);
    Generator gen(*m, gpool);
    auto seq = cache->new_sequence(128);
    ASSERT_TRUE(seq.ok());
    GenerateOptions o;
    o.max_tokens = 12;
    o.prefill_batch = 8;  // the scheduler's prefill chunk
    o.sampler.temperature = 0.0f;
    o.stop_at_eog = false;
    auto st = gen.generate(prompt, **seq, o, nullptr);
    ASSERT_TRUE(st.ok()) << st.status().to_string();
    want = st->tokens;
  }
  auto sched = Scheduler::create(*m, *cache, pool, small_options());
  ASSERT_TRUE(sched.ok()) << sched.status().to_string();
  auto ch = (*sched)->submit(greedy_request(prompt, 12));
  ASSERT_TRUE(ch.ok());
  const Result r = collect(**ch);
  EXPECT_EQ(r.tokens, want);
  EXPECT_EQ(r.done.finish, FinishReason::kLength);
  EXPECT_EQ(r.done.completion_tokens, 12);
  EXPECT_EQ(r.done.prompt_tokens, 21);
  EXPECT_EQ(r.text, m->tokenizer().decode(want));
}

// With a compressed cache too: a prompt's first chunk fixes its key means (PagedKv's key
// centering), and the scheduler keeps that chunk's size independent of what else runs.
TEST(Scheduler, InterleavedRequestsMatchTheirSoloRuns) {
  auto m = tiny_model();
  ThreadPool pool(2);
  const int kRequests = 7;
  for (const char* format : {"f16", "tq3"}) {
    SCOPED_TRACE(std::string("KV format ") + format);
    const quant::Format f = quant::parse_format(format).value();
    std::vector<std::vector<int32_t>> solo(kRequests);
    {
      auto cache = make_cache(*m, 64, f);
      auto sched = Scheduler::create(*m, *cache, pool, small_options());
      ASSERT_TRUE(sched.ok());
      for (int i = 0; i < kRequests; ++i) {
        auto ch = (*sched)->submit(greedy_request(prompt_of(5 + 9 * i, i, 390), 6 + i));
        ASSERT_TRUE(ch.ok());
        solo[static_cast<size_t>(i)] = collect(**ch).tokens;
      }
    }
    auto cache = make_cache(*m, 64, f);
    auto sched = Scheduler::create(*m, *cache, pool, small_options());
    ASSERT_TRUE(sched.ok());
    std::vector<std::shared_ptr<RequestChannel>> chans;
    for (int i = 0; i < kRequests; ++i) {
      auto ch = (*sched)->submit(greedy_request(prompt_of(5 + 9 * i, i, 390), 6 + i));
      ASSERT_TRUE(ch.ok());
      chans.push_back(*ch);
    }
    for (int i = 0; i < kRequests; ++i) {
      const Result r = collect(*chans[static_cast<size_t>(i)]);
      EXPECT_EQ(r.tokens, solo[static_cast<size_t>(i)]) << "request " << i;
      EXPECT_EQ(r.done.completion_tokens, 6 + i);
    }
    const SchedulerStats st = (*sched)->stats();
    // 7 requests, 4 slots: batches held several sequences (fewer steps than a serial run).
    int64_t serial_steps = 0;
    for (int i = 0; i < kRequests; ++i) serial_steps += (5 + 9 * i + 7) / 8 + (6 + i) - 1;
    EXPECT_LT(st.steps, serial_steps);
    EXPECT_EQ(st.generated_tokens, 7 * 6 + 21);
    EXPECT_TRUE(eventually([&] { return cache->stats().pages_used == 0; }));
    EXPECT_TRUE(cache->check_invariants().ok());
  }
}

TEST(Scheduler, SharedPrefixIsReused) {
  auto m = tiny_model();
  ThreadPool pool(2);
  auto cache = make_cache(*m, 64);
  auto sched = Scheduler::create(*m, *cache, pool, small_options());
  ASSERT_TRUE(sched.ok());
  std::vector<int32_t> system = prompt_of(40, 9, 390);  // two full pages of 16 and a bit
  std::vector<int32_t> a = system, b = system;
  a.insert(a.end(), {7, 8, 9});
  b.insert(b.end(), {10, 11, 12, 13});
  auto ch_a = (*sched)->submit(greedy_request(a, 4));
  ASSERT_TRUE(ch_a.ok());
  const Result ra = collect(**ch_a);
  auto ch_b = (*sched)->submit(greedy_request(b, 4));
  ASSERT_TRUE(ch_b.ok());
  const Result rb = collect(**ch_b);
  EXPECT_EQ(ra.done.cached_tokens, 0);
  EXPECT_EQ(rb.done.cached_tokens, 32);  // the two full pages of the shared prefix
  EXPECT_EQ((*sched)->stats().prompt_cached_tokens, 32);
  EXPECT_EQ(rb.done.completion_tokens, 4);
}

TEST(Scheduler, SimultaneousSharedPrefixIsComputedOnce) {
  auto m = tiny_model();
  ThreadPool pool(2);
  auto cache = make_cache(*m, 64);
  auto sched = Scheduler::create(*m, *cache, pool, small_options());
  ASSERT_TRUE(sched.ok());
  const std::vector<int32_t> system = prompt_of(40, 5, 390);
  std::vector<std::shared_ptr<RequestChannel>> chans;
  for (int i = 0; i < 3; ++i) {
    std::vector<int32_t> p = system;
    p.insert(p.end(), {20 + i, 30 + i});
    auto ch = (*sched)->submit(greedy_request(p, 3));
    ASSERT_TRUE(ch.ok());
    chans.push_back(*ch);
  }
  std::vector<int> cached;
  for (auto& ch : chans) cached.push_back(collect(*ch).done.cached_tokens);
  // The first computes the system prompt; the others wait for its two full pages.
  EXPECT_EQ(cached, (std::vector<int>{0, 32, 32}));
  EXPECT_EQ((*sched)->stats().prompt_tokens, 3 * 42);
  EXPECT_EQ((*sched)->stats().prompt_cached_tokens, 64);
}

TEST(Scheduler, CancelFreesPages) {
  auto m = tiny_model();
  ThreadPool pool(2);
  auto cache = make_cache(*m, 128);
  auto sched = Scheduler::create(*m, *cache, pool, long_options());
  ASSERT_TRUE(sched.ok());
  auto ch = (*sched)->submit(greedy_request(prompt_of(50, 3, 390), kLongTokens));
  ASSERT_TRUE(ch.ok());
  std::vector<StreamEvent> ev;
  while (ev.empty()) (*ch)->pop_all(ev, 50ms);  // it is running
  EXPECT_GT(cache->stats().pages_used, 0);
  (*ch)->cancel();
  const Result r = collect(**ch);
  EXPECT_EQ(r.done.finish, FinishReason::kCancelled);
  EXPECT_LT(r.done.completion_tokens, kLongTokens);
  EXPECT_TRUE(eventually([&] { return cache->stats().pages_used == 0; }));
  EXPECT_TRUE(eventually([&] { return (*sched)->stats().running == 0; }));
  EXPECT_TRUE(cache->check_invariants().ok());
}

TEST(Scheduler, FullPoolQueuesInsteadOfFailing) {
  auto m = tiny_model();
  ThreadPool pool(2);
  // 8 pages of 16 tokens + one: room for two reservations of 4 pages (prompt 30 + 30 new).
  auto cache = make_cache(*m, 9, quant::kFormatF16);
  auto sched = Scheduler::create(*m, *cache, pool, small_options());
  ASSERT_TRUE(sched.ok()) << sched.status().to_string();
  std::vector<std::shared_ptr<RequestChannel>> chans;
  for (int i = 0; i < 5; ++i) {
    auto ch = (*sched)->submit(greedy_request(prompt_of(30, 20 + i, 390), 30));
    ASSERT_TRUE(ch.ok());
    chans.push_back(*ch);
  }
  int max_running = 0;
  for (int i = 0; i < 200 && (*sched)->stats().finished[1] < 5; ++i) {
    max_running = std::max(max_running, (*sched)->stats().running);
    std::this_thread::sleep_for(5ms);
  }
  for (auto& ch : chans) {
    const Result r = collect(*ch);
    EXPECT_EQ(r.done.finish, FinishReason::kLength) << r.done.error;
    EXPECT_EQ(r.done.completion_tokens, 30);
  }
  EXPECT_LE(max_running, 2);
  EXPECT_TRUE(eventually([&] { return cache->stats().pages_used == 0; }));
  EXPECT_TRUE(cache->check_invariants().ok());
}

TEST(Scheduler, RefusesWhatCanNeverRunAndAFullQueue) {
  auto m = tiny_model();
  ThreadPool pool(2);
  auto cache = make_cache(*m, 128);
  SchedulerOptions o = long_options();
  o.max_sessions = 1;
  o.max_queue = 1;
  auto sched = Scheduler::create(*m, *cache, pool, o);
  ASSERT_TRUE(sched.ok());
  auto too_long = (*sched)->submit(greedy_request(prompt_of(1100, 1, 390), 4));
  EXPECT_EQ(too_long.status().code(), StatusCode::kInvalidArgument);
  auto bad_id = (*sched)->submit(greedy_request({1, 2, 400}, 4));
  EXPECT_EQ(bad_id.status().code(), StatusCode::kInvalidArgument);

  // `a` holds the only slot: its first token proves it runs, and its ~1000 remaining steps
  // leave ample time to queue `b` and be refused `c` (no wall-clock race on a fast machine).
  auto a = (*sched)->submit(greedy_request(prompt_of(10, 1, 390), kLongTokens));
  ASSERT_TRUE(a.ok());
  std::vector<StreamEvent> first;
  ASSERT_TRUE((*a)->pop_all(first, 10000ms));
  ASSERT_NE(first.front().kind, StreamEvent::Kind::kDone) << first.front().error;
  auto b = (*sched)->submit(greedy_request(prompt_of(10, 2, 390), 5));
  ASSERT_TRUE(b.ok());  // waits in the queue
  auto c = (*sched)->submit(greedy_request(prompt_of(10, 3, 390), 5));
  ASSERT_FALSE((*a)->done()) << "the long request ended before the queue was tested";
  EXPECT_EQ(c.status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ((*sched)->stats().rejected, 1);
  (*a)->cancel();
  EXPECT_EQ(collect(**a).done.finish, FinishReason::kCancelled);
  EXPECT_EQ(collect(**b).done.completion_tokens, 5);
  EXPECT_TRUE(eventually([&] { return cache->stats().pages_used == 0; }));
}

// NaN logits (a corrupt model file): greedy and sampled requests end with an error that says so,
// not with token 0 (or the vocabulary's last token) generated until max_tokens.
TEST(Scheduler, LogitsWithNoTokenToPickEndTheRequest) {
  auto m = test::model_with_nan_logits();
  ThreadPool pool(2);
  auto cache = make_cache(*m, 64);
  auto sched = Scheduler::create(*m, *cache, pool, small_options());
  ASSERT_TRUE(sched.ok());
  GenerationRequest sampled = greedy_request(prompt_of(9, 2, 250), 8);
  sampled.sampler.temperature = 0.8f;
  for (GenerationRequest r : {greedy_request(prompt_of(9, 1, 250), 8), sampled}) {
    auto ch = (*sched)->submit(std::move(r));
    ASSERT_TRUE(ch.ok());
    const auto got = collect(**ch);
    EXPECT_EQ(got.done.finish, FinishReason::kError);
    EXPECT_TRUE(got.tokens.empty());
    EXPECT_NE(got.done.error.find("logits hold no token to pick"), std::string::npos)
        << got.done.error;
  }
  EXPECT_TRUE(eventually([&] { return cache->stats().pages_used == 0; }));
}

// The server sizes its HTTP workers from max_sessions + max_queue: both are bounded.
TEST(Scheduler, OptionsOutOfRangeAreRefused) {
  SchedulerOptions o;
  EXPECT_TRUE(o.validate().ok());
  o.max_queue = SchedulerOptions::kMaxQueue;
  EXPECT_TRUE(o.validate().ok());
  o.max_queue = SchedulerOptions::kMaxQueue + 1;
  EXPECT_NE(o.validate().message().find("queue size must be in [0, 4096]"), std::string::npos)
      << o.validate().to_string();
  o.max_queue = -1;
  EXPECT_EQ(o.validate().code(), StatusCode::kInvalidArgument);
  o = SchedulerOptions{};
  o.max_sessions = 2'000'000'000;
  o.step_tokens = o.max_sessions;
  EXPECT_NE(o.validate().message().find("max_sessions must be in [1, 4096]"), std::string::npos)
      << o.validate().to_string();
  o.max_sessions = 0;
  EXPECT_EQ(o.validate().code(), StatusCode::kInvalidArgument);
}

TEST(Scheduler, DrainCancelsWhatIsLeft) {
  auto m = tiny_model();
  ThreadPool pool(2);
  auto cache = make_cache(*m, 128);
  auto sched = Scheduler::create(*m, *cache, pool, long_options());
  ASSERT_TRUE(sched.ok());
  auto quick = (*sched)->submit(greedy_request(prompt_of(5, 1, 390), 2));
  auto slow = (*sched)->submit(greedy_request(prompt_of(5, 2, 390), kLongTokens));
  ASSERT_TRUE(quick.ok() && slow.ok());
  EXPECT_EQ(collect(**quick).done.finish, FinishReason::kLength);
  ASSERT_FALSE((*slow)->done()) << "the long request ended before drain()";
  EXPECT_EQ((*sched)->drain(0ms), 1);
  EXPECT_EQ(collect(**slow).done.finish, FinishReason::kCancelled);
  auto late = (*sched)->submit(greedy_request(prompt_of(5, 3, 390), 2));
  EXPECT_EQ(late.status().code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(eventually([&] { return cache->stats().pages_used == 0; }));
}

TEST(Scheduler, StopStringsAndLogprobs) {
  auto m = tiny_model();
  ThreadPool pool(2);
  auto cache = make_cache(*m, 64, quant::kFormatF16);
  auto sched = Scheduler::create(*m, *cache, pool, small_options());
  ASSERT_TRUE(sched.ok());
  const std::vector<int32_t> prompt = prompt_of(12, 4, 390);
  auto first = (*sched)->submit(greedy_request(prompt, 10));
  ASSERT_TRUE(first.ok());
  const Result full = collect(**first);
  ASSERT_GE(full.text.size(), 4u);
  // Stop at a string from the middle of the greedy text: the text ends right before it.
  const std::string stop = full.text.substr(full.text.size() / 2, 2);
  GenerationRequest r = greedy_request(prompt, 10);
  r.stop_strings = {stop};
  r.logprobs = 3;
  auto second = (*sched)->submit(std::move(r));
  ASSERT_TRUE(second.ok());
  std::vector<StreamEvent> ev;
  std::string text;
  StreamEvent done;
  for (bool end = false; !end;) {
    std::vector<StreamEvent> got;
    (*second)->pop_all(got, 50ms);
    for (auto& e : got) {
      if (e.kind == StreamEvent::Kind::kDone) {
        done = e;
        end = true;
      } else {
        text += e.text;
        ev.push_back(e);
      }
    }
  }
  EXPECT_EQ(done.finish, FinishReason::kStop);
  EXPECT_EQ(text, full.text.substr(0, full.text.find(stop)));
  for (const auto& e : ev) {
    if (e.token < 0) continue;
    ASSERT_TRUE(e.has_logprob);
    ASSERT_EQ(e.logprob.top.size(), 3u);
    EXPECT_EQ(e.logprob.top[0].first, e.token);  // greedy picks the most likely
    EXPECT_LE(e.logprob.logprob, 0.0f);
  }
}

}  // namespace
}  // namespace tq::runtime
