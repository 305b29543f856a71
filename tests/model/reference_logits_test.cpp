// tq's forward pass on the default model (SmolLM2-135M-Instruct Q4_1) against HF transformers'
// logits and greedy continuations (tests/data/logits_smollm2.*, written by
// scripts/fixtures/make_logits_fixtures.py). HF dequantizes every weight to float32.
//  - Exactness: the same weights dequantized to float32 inside tq (a float matmul) must give
//    HF's logits to float rounding and HF's greedy tokens for 32 steps.
//  - The quantized path: tq multiplies the Q4_1/Q8_0 blocks with q8-quantized activations, as
//    llama.cpp does. That rounding (one scale per 32 activations) is noise of a few percent of
//    the logits' spread, more at tokens with outlier activations; simulating it inside HF gives
//    the same size of difference. So the quantized path is held to statistical tolerances,
//    and its greedy check is teacher-forced (HF's tokens fed back) so that a flipped near tie
//    does not derail the rest of the sequence.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>
#include <vector>

#include "test_env.h"
#include "tq/backend/cpu/ops.h"
#include "tq/kv/dense_kv.h"
#include "tq/model/gguf_writer.h"
#include "tq/model/llama.h"
#include "tq/quant/weight_dequant.h"

namespace tq::model {
namespace {

// Float weights: the same function as HF up to float32 summation order.
constexpr double kFloatMaxRelStd = 1e-3;  // max |tq - HF| / std(HF logits of the position)
constexpr int kGreedySteps = 32;          // free-running greedy tokens equal to HF's
// Quantized weights x q8 activations (observed on the fixture: rms 0.034..0.063 at six
// positions, 0.27 at the seventh, a newline after <|im_end|> with outlier activations).
constexpr double kQuantRmsRelStd = 0.35;        // rms |tq - HF| / std, every position
constexpr double kQuantMedianRmsRelStd = 0.08;  // the median position
constexpr double kQuantMaxRelStd = 0.8;         // max |tq - HF| / std, every position
constexpr int kTop5Overlap = 4;                 // of HF's top 5, at least 4 in tq's top 5
// Teacher-forced greedy: where HF's top-1 leads its top-2 by this many logits (several times
// the quantization noise), tq must pick the same token; everywhere HF's token is in tq's top 3.
constexpr double kDecisiveMargin = 0.5;
constexpr int kNearTieRank = 3;
// prefill vs step-by-step decode on the same engine.
constexpr double kPrefillRelStd = 1e-4;

struct Fixture {
  nlohmann::json index;
  std::vector<float> rows;  // [row][vocab]
  size_t vocab = 0;
  const float* row(size_t r) const { return &rows[r * vocab]; }
};

Fixture load_fixture() {
  Fixture f;
  std::ifstream js(test::fixture_path("logits_smollm2.json"));
  f.index = nlohmann::json::parse(js);
  f.vocab = f.index["vocab"].get<size_t>();
  std::ifstream bin(test::fixture_path("logits_smollm2.bin"), std::ios::binary | std::ios::ate);
  const size_t bytes = static_cast<size_t>(bin.tellg());
  f.rows.resize(bytes / sizeof(float));
  bin.seekg(0);
  bin.read(reinterpret_cast<char*>(f.rows.data()), static_cast<std::streamsize>(bytes));
  return f;
}

// The model with every tensor dequantized to float32 (metadata unchanged).
std::unique_ptr<Model> float_copy(const Model& q) {
  GgufWriter w;
  for (const GgufKv& kv : q.gguf().metadata()) w.set(kv.key, kv.value);
  std::vector<float> buf;
  for (const GgufTensor& t : q.gguf().tensors()) {
    buf.resize(t.n_elements());
    EXPECT_TRUE(quant::dequantize_row_ref(t.type, t.data, buf.data(), buf.size()).ok());
    EXPECT_TRUE(w.add_tensor_from_f32(t.name, t.shape, quant::GgmlType::kF32, buf.data()).ok());
  }
  auto bytes = w.serialize();
  EXPECT_TRUE(bytes.ok());
  auto m = Model::from_bytes(std::move(bytes).value());
  EXPECT_TRUE(m.ok()) << m.status().to_string();
  return m.ok() ? std::move(m).value() : nullptr;
}

struct RowDiff {
  double max_rel = 0.0, rms_rel = 0.0;
  int top1_ref = -1, top1_mine = -1, top5_overlap = 0;
};

std::vector<int> top_k(const float* x, size_t n, int k) {
  std::vector<int> idx(n);
  for (size_t i = 0; i < n; ++i) idx[i] = static_cast<int>(i);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [&](int a, int b) { return x[a] > x[b]; });
  idx.resize(k);
  return idx;
}

RowDiff compare_row(const float* mine, const float* ref, size_t v) {
  double mean = 0.0, var = 0.0, max_d = 0.0, sq_d = 0.0;
  for (size_t i = 0; i < v; ++i) mean += ref[i];
  mean /= v;
  for (size_t i = 0; i < v; ++i) {
    var += (ref[i] - mean) * (ref[i] - mean);
    const double d = std::fabs(static_cast<double>(mine[i]) - ref[i]);
    max_d = std::max(max_d, d);
    sq_d += d * d;
  }
  const double sd = std::sqrt(var / v);
  RowDiff r;
  r.max_rel = max_d / sd;
  r.rms_rel = std::sqrt(sq_d / v) / sd;
  const auto t_ref = top_k(ref, v, 5), t_mine = top_k(mine, v, 5);
  r.top1_ref = t_ref[0];
  r.top1_mine = t_mine[0];
  const std::set<int> a(t_ref.begin(), t_ref.end());
  for (int id : t_mine) r.top5_overlap += static_cast<int>(a.count(id));
  return r;
}

class ReferenceLogitsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(test::model_path())) return;
    auto m = Model::load(test::model_path());
    ASSERT_TRUE(m.ok()) << m.status().to_string();
    model_ = std::move(m).value().release();
    fixture_ = new Fixture(load_fixture());
  }
  static void TearDownTestSuite() {
    delete model_;
    delete fixture_;
    model_ = nullptr;
    fixture_ = nullptr;
  }
  void SetUp() override {
    TQ_REQUIRE_FILE(test::model_path());
    ASSERT_NE(model_, nullptr);
    ASSERT_EQ(static_cast<size_t>(model_->config().vocab_size), fixture_->vocab);
  }

  // Logits of every position of `ids`, n_chunk tokens per forward pass.
  static std::vector<float> logits_all(const Model& m, const std::vector<int32_t>& ids,
                                       int n_chunk) {
    ThreadPool pool(default_thread_count());
    auto kv = kv::DenseKv::create(m.attention_shape(), 512, backend::cpu::dense_kv_kernels());
    EXPECT_TRUE(kv.ok());
    ForwardScratch scratch;
    const size_t v = fixture_->vocab;
    std::vector<float> out(ids.size() * v);
    for (size_t done = 0; done < ids.size();) {
      const int n = static_cast<int>(std::min<size_t>(n_chunk, ids.size() - done));
      ForwardArgs a{ids.data() + done,    n, kv->get(), &pool, &scratch, LogitsMode::kAll,
                    out.data() + done * v};
      const Status st = m.forward(a);
      EXPECT_TRUE(st.ok()) << st.to_string();
      done += n;
    }
    return out;
  }

  static inline Model* model_ = nullptr;
  static inline Fixture* fixture_ = nullptr;
};

TEST_F(ReferenceLogitsTest, FloatWeightsMatchTransformersExactly) {
  auto fm = float_copy(*model_);
  ASSERT_TRUE(fm);
  const size_t v = fixture_->vocab;
  ThreadPool pool(default_thread_count());
  for (const auto& p : fixture_->index["prompts"]) {
    const std::string name = p["name"].get<std::string>();
    SCOPED_TRACE(name);
    const auto ids = p["ids"].get<std::vector<int32_t>>();
    const auto got = logits_all(*fm, ids, 512);
    for (const auto& r : p["rows"]) {
      const int pos = r["pos"].get<int>();
      const RowDiff d = compare_row(&got[pos * v], fixture_->row(r["row"].get<size_t>()), v);
      EXPECT_LT(d.max_rel, kFloatMaxRelStd) << "position " << pos;
      EXPECT_EQ(d.top1_mine, d.top1_ref) << "position " << pos;
    }
    // Free-running greedy on one prompt (a float32 pass per token is slow): "story", where the
    // quantized path flips a near tie (HF margin 0.06) at step 2.
    if (name != "story") continue;
    const auto want = p["greedy"].get<std::vector<int32_t>>();
    auto kv = kv::DenseKv::create(fm->attention_shape(), 512, backend::cpu::dense_kv_kernels());
    ASSERT_TRUE(kv.ok());
    ForwardScratch scratch;
    std::vector<float> logits(v);
    ForwardArgs a{
        ids.data(),   static_cast<int>(ids.size()), kv->get(), &pool, &scratch, LogitsMode::kLast,
        logits.data()};
    ASSERT_TRUE(fm->forward(a).ok());
    int agree = 0;
    for (int step = 0; step < kGreedySteps; ++step) {
      int32_t next = backend::cpu::argmax(logits.data(), static_cast<int>(v));
      if (next != want[step]) break;
      ++agree;
      a.tokens = &next;
      a.n = 1;
      ASSERT_TRUE(fm->forward(a).ok());
    }
    EXPECT_EQ(agree, kGreedySteps) << "first divergence at step " << agree;
  }
}

TEST_F(ReferenceLogitsTest, QuantizedLogitsMatchTransformers) {
  const size_t v = fixture_->vocab;
  std::vector<double> rms;
  for (const auto& p : fixture_->index["prompts"]) {
    const auto ids = p["ids"].get<std::vector<int32_t>>();
    const auto got = logits_all(*model_, ids, 512);
    for (const auto& r : p["rows"]) {
      const int pos = r["pos"].get<int>();
      SCOPED_TRACE(p["name"].get<std::string>() + " position " + std::to_string(pos));
      const RowDiff d = compare_row(&got[pos * v], fixture_->row(r["row"].get<size_t>()), v);
      EXPECT_LT(d.max_rel, kQuantMaxRelStd);
      EXPECT_LT(d.rms_rel, kQuantRmsRelStd);
      EXPECT_EQ(d.top1_mine, d.top1_ref) << "top-1";
      EXPECT_GE(d.top5_overlap, kTop5Overlap);
      rms.push_back(d.rms_rel);
      std::printf("  %-8s pos %2d: max|d|/std %.4f, rms|d|/std %.4f, top-5 overlap %d\n",
                  p["name"].get<std::string>().c_str(), pos, d.max_rel, d.rms_rel, d.top5_overlap);
    }
  }
  std::nth_element(rms.begin(), rms.begin() + rms.size() / 2, rms.end());
  EXPECT_LT(rms[rms.size() / 2], kQuantMedianRmsRelStd) << "median rms |d| / std";
}

TEST_F(ReferenceLogitsTest, QuantizedGreedyTeacherForced) {
  const size_t v = fixture_->vocab;
  for (const auto& p : fixture_->index["prompts"]) {
    SCOPED_TRACE(p["name"].get<std::string>());
    auto seq = p["ids"].get<std::vector<int32_t>>();
    const size_t n_prompt = seq.size();
    const auto want = p["greedy"].get<std::vector<int32_t>>();
    const auto margins = p["greedy_margins"].get<std::vector<double>>();
    seq.insert(seq.end(), want.begin(), want.end() - 1);
    const auto got = logits_all(*model_, seq, 512);
    int decisive = 0;
    for (size_t step = 0; step < want.size(); ++step) {
      const float* row = &got[(n_prompt - 1 + step) * v];
      const auto top = top_k(row, v, kNearTieRank);
      if (margins[step] >= kDecisiveMargin) {
        ++decisive;
        EXPECT_EQ(top[0], want[step]) << "step " << step << ", HF margin " << margins[step];
      }
      EXPECT_NE(std::find(top.begin(), top.end(), want[step]), top.end())
          << "step " << step << ": HF's token not in tq's top " << kNearTieRank;
    }
    EXPECT_GE(decisive, 20) << "too few decisive steps to mean anything";
  }
}

TEST_F(ReferenceLogitsTest, PrefillEqualsStepByStepDecode) {
  const auto& p = fixture_->index["prompts"][1];  // the longest prompt
  const auto ids = p["ids"].get<std::vector<int32_t>>();
  const auto prefill = logits_all(*model_, ids, 512), steps = logits_all(*model_, ids, 1),
             mixed = logits_all(*model_, ids, 5);
  const size_t v = fixture_->vocab;
  for (size_t pos = 0; pos < ids.size(); ++pos) {
    EXPECT_LT(compare_row(&prefill[pos * v], &steps[pos * v], v).max_rel, kPrefillRelStd)
        << "position " << pos;
    EXPECT_LT(compare_row(&mixed[pos * v], &steps[pos * v], v).max_rel, kPrefillRelStd)
        << "position " << pos;
  }
}

}  // namespace
}  // namespace tq::model
