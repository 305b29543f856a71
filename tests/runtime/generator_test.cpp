// The generation loop on a small random model: greedy equals a hand-written argmax loop, token
// limits, stop strings (also split across tokens), caller stop, reproducible sampling, and the
// errors for prompts that do not fit.
#include <gtest/gtest.h>

#include <vector>

#include "runtime/nan_model.h"
#include "tq/backend/cpu/ops.h"
#include "tq/kv/dense_kv.h"
#include "tq/model/gguf_writer.h"
#include "tq/model/random_model.h"
#include "tq/runtime/generator.h"
#include "tq/runtime/sampler.h"

namespace tq::runtime {
namespace {

std::unique_ptr<model::Model> tiny_model() {
  model::RandomModelSpec s;
  s.n_layers = 2;
  s.dim = 64;
  s.ffn_dim = 96;
  s.n_heads = 4;
  s.n_kv_heads = 2;
  s.vocab_size = 400;
  s.seed = 5;
  model::GgufWriter w;
  EXPECT_TRUE(model::build_random_model(s, w).ok());
  auto m = model::Model::from_bytes(std::move(w.serialize()).value());
  EXPECT_TRUE(m.ok()) << m.status().to_string();
  return std::move(m).value();
}

std::unique_ptr<kv::DenseKv> new_kv(const model::Model& m, int capacity = 128) {
  return std::move(
             kv::DenseKv::create(m.attention_shape(), capacity, backend::cpu::dense_kv_kernels()))
      .value();
}

GenerateOptions greedy(int n) {
  GenerateOptions o;
  o.max_tokens = n;
  o.sampler.temperature = 0.0f;
  o.stop_at_eog = false;  // random weights: an EOG token may come any time
  return o;
}

TEST(StopStringFilterTest, HoldsBackPossibleStartsOnly) {
  const std::vector<std::string> stops = {"world", "abc"};
  StopStringFilter f(stops);
  EXPECT_EQ(f.push("Hel"), "Hel");
  EXPECT_EQ(f.push("lo wo"), "lo ");  // "wo" may start "world"
  EXPECT_EQ(f.push("rld!"), "");
  EXPECT_TRUE(f.stopped());
  EXPECT_EQ(f.push("more"), "");

  StopStringFilter g(stops);
  EXPECT_EQ(g.push("xab"), "x");
  EXPECT_EQ(g.push("d"), "abd");  // false alarm released
  EXPECT_EQ(g.push("ab"), "");
  EXPECT_EQ(g.flush(), "ab");
  EXPECT_FALSE(g.stopped());

  const std::vector<std::string> none;
  StopStringFilter h(none);
  EXPECT_EQ(h.push("anything"), "anything");
}

TEST(GeneratorTest, GreedyEqualsAnArgmaxLoop) {
  auto m = tiny_model();
  ThreadPool pool(2);
  const std::vector<int32_t> prompt = {10, 200, 31, 7, 7, 99};
  // By hand: prefill, then argmax and decode one token at a time.
  std::vector<int32_t> want;
  {
    auto kv = new_kv(*m);
    model::ForwardScratch scratch;
    std::vector<float> logits(400);
    model::ForwardArgs a{prompt.data(), 6, kv.get(), &pool, &scratch, model::LogitsMode::kLast,
                         logits.data()};
    ASSERT_TRUE(m->forward(a).ok());
    for (int i = 0; i < 12; ++i) {
      int32_t t = backend::cpu::argmax(logits.data(), 400);
      want.push_back(t);
      a.tokens = &t;
      a.n = 1;
      ASSERT_TRUE(m->forward(a).ok());
    }
  }
  Generator gen(*m, pool);
  auto kv = new_kv(*m);
  std::vector<int32_t> streamed;
  std::string text;
  GenerateOptions o = greedy(12);
  o.prefill_batch = 4;  // two prefill passes
  auto st = gen.generate(prompt, *kv, o, [&](int32_t id, std::string_view piece) {
    if (id >= 0) streamed.push_back(id);
    text += piece;
    return true;
  });
  ASSERT_TRUE(st.ok()) << st.status().to_string();
  EXPECT_EQ(st->tokens, want);
  EXPECT_EQ(streamed, want);
  EXPECT_EQ(st->generated_tokens, 12);
  EXPECT_EQ(st->prompt_tokens, 6);
  EXPECT_EQ(st->stop_reason, StopReason::kMaxTokens);
  EXPECT_EQ(text, st->text);
  EXPECT_EQ(text, m->tokenizer().decode(want));
  EXPECT_EQ(kv->length(), 6 + 11);  // the last token needs no pass
}

TEST(GeneratorTest, StopsAtStopStringsAndOnRequest) {
  auto m = tiny_model();
  ThreadPool pool(1);
  Generator gen(*m, pool);
  const std::vector<int32_t> prompt = {3, 4, 5};
  auto kv = new_kv(*m);
  auto full = gen.generate(prompt, *kv, greedy(24), nullptr);
  ASSERT_TRUE(full.ok());
  ASSERT_GE(full->text.size(), 8u);
  // A stop string from the middle of the greedy text, likely spanning tokens.
  GenerateOptions o = greedy(24);
  const size_t cut = full->text.size() / 2;
  o.stop_strings = {full->text.substr(cut, 3)};
  const size_t first = full->text.find(o.stop_strings[0]);
  kv = new_kv(*m);
  auto stopped = gen.generate(prompt, *kv, o, nullptr);
  ASSERT_TRUE(stopped.ok());
  EXPECT_EQ(stopped->stop_reason, StopReason::kStopString);
  EXPECT_EQ(stopped->text, full->text.substr(0, first));

  kv = new_kv(*m);
  int calls = 0;
  auto by_caller =
      gen.generate(prompt, *kv, greedy(24), [&](int32_t, std::string_view) { return ++calls < 3; });
  ASSERT_TRUE(by_caller.ok());
  EXPECT_EQ(by_caller->stop_reason, StopReason::kCallback);
  EXPECT_EQ(by_caller->generated_tokens, 3);
}

TEST(GeneratorTest, SamplingReproducesPerSeedAndContextEnds) {
  auto m = tiny_model();
  ThreadPool pool(2);
  Generator gen(*m, pool);
  const std::vector<int32_t> prompt = {1, 2, 3};
  auto sample = [&](uint64_t seed) {
    GenerateOptions o = greedy(16);
    o.sampler = SamplerConfig{};  // temperature 0.8, top-k 40, top-p 0.95, min-p 0.05
    o.sampler.temperature = 1.5f;
    o.sampler.seed = seed;
    auto kv = new_kv(*m);
    return std::move(gen.generate(prompt, *kv, o, nullptr)).value().tokens;
  };
  EXPECT_EQ(sample(7), sample(7));
  EXPECT_NE(sample(7), sample(8));

  auto small = new_kv(*m, 8);
  auto st = gen.generate(prompt, *small, greedy(100), nullptr);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->stop_reason, StopReason::kContextFull);
  EXPECT_EQ(small->length(), 8);
  EXPECT_EQ(st->generated_tokens, 6);  // 3 + 5 cached, the 6th sampled from the last logits
}

// A step that gives top candidates (ForwardStep::run_top, what a GPU gives) generates the tokens
// the logits rows give, sampled with penalties or greedy; a sampler that needs whole rows (top-k
// off) keeps to them.
TEST(GeneratorTest, TopCandidatesGiveTheSameTokensAsLogitRows) {
  auto m = tiny_model();
  ThreadPool pool(2);
  model::ForwardScratch scratch;
  const std::vector<int32_t> prompt = {1, 2, 3, 4, 5};
  const int vocab = m->config().vocab_size;
  for (int variant = 0; variant < 3; ++variant) {
    GenerateOptions o = greedy(24);
    if (variant > 0) {
      o.sampler = SamplerConfig{};
      o.sampler.temperature = 1.3f;
      o.sampler.repeat_penalty = 1.2f;
      o.sampler.seed = 99;
      if (variant == 2) o.sampler.top_k = 0;  // top-p over whole rows
    }
    SCOPED_TRACE(o.sampler.to_string());
    std::vector<int32_t> got[2];
    int top_calls = 0;
    for (const bool with_top : {false, true}) {
      auto kv = new_kv(*m);
      ForwardStep step;
      std::vector<float> row(static_cast<size_t>(vocab));
      step.run = [&](const int32_t* t, int n, bool want, float* logits) {
        model::ForwardArgs a{t,        n,
                             kv.get(), &pool,
                             &scratch, want ? model::LogitsMode::kLast : model::LogitsMode::kNone,
                             logits};
        return m->forward(a);
      };
      if (with_top)
        step.run_top = [&](const int32_t* t, int n, int count, int32_t* ids, float* values) {
          ++top_calls;
          TQ_RETURN_IF_ERROR(step.run(t, n, true, row.data()));
          top_logits(row.data(), vocab, count, ids, values);
          return ok_status();
        };
      step.room = [&] { return kv->capacity() - kv->length(); };
      std::vector<float> logits;
      auto st = run_generation(m->tokenizer(), vocab, prompt, o, step, logits, nullptr);
      ASSERT_TRUE(st.ok()) << st.status().to_string();
      got[with_top ? 1 : 0] = st->tokens;
    }
    EXPECT_EQ(got[0].size(), 24u);
    EXPECT_EQ(got[0], got[1]);
    EXPECT_EQ(top_calls, variant == 2 ? 0 : 24);  // the last prefill pass and 23 decodes
  }
}

TEST(GeneratorTest, RejectsPromptsThatDoNotFit) {
  auto m = tiny_model();
  ThreadPool pool(1);
  Generator gen(*m, pool);
  auto kv = new_kv(*m, 4);
  EXPECT_FALSE(gen.generate({}, *kv, greedy(4), nullptr).ok());
  EXPECT_FALSE(gen.generate({1, 2, 3, 4}, *kv, greedy(4), nullptr).ok());  // no room to generate
  EXPECT_FALSE(gen.generate({1, 999}, *kv, greedy(4), nullptr).ok());      // id outside vocab
  GenerateOptions bad = greedy(4);
  bad.stop_strings = {""};
  EXPECT_FALSE(gen.generate({1}, *kv, bad, nullptr).ok());
  EXPECT_EQ(kv->length(), 0);
}

// A model file with NaN weights (here the final norm's, f32) gives NaN logits: generate says so
// instead of sampling token 0 forever.
TEST(GeneratorTest, RefusesLogitsWithNothingFinite) {
  auto m = test::model_with_nan_logits();
  ThreadPool pool(1);
  Generator gen(*m, pool);
  auto kv = new_kv(*m);
  for (float temperature : {0.0f, 0.8f}) {
    GenerateOptions o = greedy(4);
    o.sampler.temperature = temperature;
    auto r = gen.generate({1, 2, 3}, *kv, o, nullptr);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("logits hold no token to pick"), std::string::npos)
        << r.status().to_string();
    kv->clear();
  }
}

}  // namespace
}  // namespace tq::runtime
