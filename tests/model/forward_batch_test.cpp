// Model::forward_batch against separate Model::forward calls: several sequences of different
// lengths in one pass (prefill chunks, decode tokens, kNone / kLast / kAll rows), on the dense
// cache and on the paged compressed cache (tq4 K, tq3 V), with the logits either in one contiguous
// buffer or scattered; and rejected batches, which must leave every cache unchanged.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <vector>

#include "model/tiny_model.h"
#include "tq/backend/cpu/ops.h"
#include "tq/backend/cpu/tq_kernels.h"
#include "tq/kv/dense_kv.h"
#include "tq/kv/kv_bytes.h"
#include "tq/kv/paged_kv.h"
#include "tq/model/gguf_writer.h"
#include "tq/model/llama.h"
#include "tq/model/random_model.h"
#include "tq/quant/format.h"

namespace tq::model {
namespace {

// max |batched - separate| / std(separate's logits row): the same math with the rows grouped
// differently in the matmuls, so only float summation order may differ.
constexpr double kBatchTol = 1e-4;
constexpr int kVocab = 300;
constexpr int kCapacity = 64;

std::unique_ptr<Model> build_model(Arch arch, uint64_t seed) {
  return test::build_model(test::tiny_spec(arch, quant::GgmlType::kQ8_0, seed));
}

// Makes empty sequences of one cache kind.
using KvFactory = std::function<std::unique_ptr<kv::SequenceKv>(int capacity)>;

KvFactory dense_factory(const Model& m) {
  return [&m](int capacity) -> std::unique_ptr<kv::SequenceKv> {
    auto kv = kv::DenseKv::create(m.attention_shape(), capacity, backend::cpu::dense_kv_kernels());
    EXPECT_TRUE(kv.ok()) << kv.status().to_string();
    return kv.ok() ? std::move(kv).value() : nullptr;
  };
}

// A paged tq4/tq3 cache (window 0: every token is compressed as it is appended) with room for
// `sequences` full sequences.
std::unique_ptr<kv::PagedKvCache> make_paged(const Model& m, int sequences) {
  kv::PagedKvCacheOptions o;
  o.shape = m.attention_shape();
  o.config.k_format = quant::parse_format("tq4").value();
  o.config.v_format = quant::parse_format("tq3").value();
  o.config.block_tokens = 16;
  o.prefix_caching = false;
  auto blocks = kv::kv_block_bytes(o.config, o.shape);
  EXPECT_TRUE(blocks.ok());
  size_t page = 0;
  for (size_t b : *blocks) page += b;
  o.pool_bytes = page * static_cast<size_t>(sequences * (kCapacity / 16 + 1));
  o.kernels = &backend::cpu::cpu_kernel_table();
  auto c = kv::PagedKvCache::create(o);
  EXPECT_TRUE(c.ok()) << c.status().to_string();
  return std::move(c).value();
}

KvFactory paged_factory(kv::PagedKvCache& cache) {
  return [&cache](int capacity) -> std::unique_ptr<kv::SequenceKv> {
    auto kv = cache.new_sequence(capacity);
    EXPECT_TRUE(kv.ok()) << kv.status().to_string();
    return kv.ok() ? std::move(kv).value() : nullptr;
  };
}

// Token i of sequence s: a fixed stream per sequence.
int32_t token(int s, int i) { return (17 * s + 31 * i + 5) % kVocab; }

// One sequence's part of one batched call.
struct Step {
  int seq;
  int n;
  LogitsMode mode;
};

// Four sequences over four batched calls: prompts of 11, 5, 18 and 6 tokens in chunks, decode
// tokens, rows with no logits, the last row's or all rows'; the order within a call varies.
const std::vector<std::vector<Step>> kPlan = {
    {{0, 8, LogitsMode::kNone}, {1, 5, LogitsMode::kLast}, {2, 6, LogitsMode::kNone}},
    {{0, 3, LogitsMode::kLast},
     {1, 1, LogitsMode::kLast},
     {2, 6, LogitsMode::kAll},
     {3, 1, LogitsMode::kLast}},
    {{2, 6, LogitsMode::kLast},
     {0, 1, LogitsMode::kLast},
     {3, 5, LogitsMode::kAll},
     {1, 1, LogitsMode::kNone}},
    {{0, 1, LogitsMode::kLast},
     {1, 1, LogitsMode::kLast},
     {2, 1, LogitsMode::kLast},
     {3, 1, LogitsMode::kLast}},
};
constexpr int kSeqs = 4;

int rows_of(const Step& s) {
  return s.mode == LogitsMode::kNone ? 0 : s.mode == LogitsMode::kLast ? 1 : s.n;
}

double row_std(const float* x, int n) {
  double m = 0.0, v = 0.0;
  for (int i = 0; i < n; ++i) m += x[i];
  m /= n;
  for (int i = 0; i < n; ++i) v += (x[i] - m) * (x[i] - m);
  return std::sqrt(v / n);
}

// Runs kPlan batched (each call one forward_batch) and separately (one forward per step, each
// sequence on its own cache) and returns the worst max |diff| / std over every logits row.
double batched_vs_separate(const Model& m, const KvFactory& make, bool contiguous) {
  ThreadPool pool(2);
  ForwardScratch batch_scratch, one_scratch;
  std::vector<std::unique_ptr<kv::SequenceKv>> batched, separate;
  for (int s = 0; s < kSeqs; ++s) {
    batched.push_back(make(kCapacity));
    separate.push_back(make(kCapacity));
  }
  std::vector<int> done(kSeqs, 0);
  double worst = 0.0;
  for (const auto& call : kPlan) {
    std::vector<std::vector<int32_t>> ids(call.size());
    std::vector<BatchSequence> items;
    std::vector<std::vector<float>> got(call.size()), want(call.size());
    std::vector<float> flat;  // every step's rows one after another, in call order
    size_t total_rows = 0;
    for (const Step& s : call) total_rows += static_cast<size_t>(rows_of(s));
    flat.assign(total_rows * kVocab, 0.0f);
    size_t row = 0;
    for (size_t i = 0; i < call.size(); ++i) {
      const Step& s = call[i];
      for (int t = 0; t < s.n; ++t)
        ids[i].push_back(token(s.seq, done[static_cast<size_t>(s.seq)] + t));
      got[i].assign(static_cast<size_t>(rows_of(s)) * kVocab, 0.0f);
      want[i].assign(got[i].size(), 0.0f);
      float* dst = s.mode == LogitsMode::kNone ? nullptr
                   : contiguous                ? flat.data() + row * kVocab
                                               : got[i].data();
      items.push_back(BatchSequence{ids[i].data(), s.n, batched[static_cast<size_t>(s.seq)].get(),
                                    s.mode, dst});
      row += static_cast<size_t>(rows_of(s));
    }
    const Status st = m.forward_batch(items, pool, batch_scratch);
    EXPECT_TRUE(st.ok()) << st.to_string();
    row = 0;
    for (size_t i = 0; i < call.size(); ++i) {
      const Step& s = call[i];
      if (contiguous) std::copy_n(flat.data() + row * kVocab, got[i].size(), got[i].begin());
      row += static_cast<size_t>(rows_of(s));
      ForwardArgs a{ids[i].data(), s.n,    separate[static_cast<size_t>(s.seq)].get(), &pool,
                    &one_scratch,  s.mode, want[i].empty() ? nullptr : want[i].data()};
      const Status one = m.forward(a);
      EXPECT_TRUE(one.ok()) << one.to_string();
      for (int r = 0; r < rows_of(s); ++r) {
        const float* w = want[i].data() + static_cast<size_t>(r) * kVocab;
        const float* g = got[i].data() + static_cast<size_t>(r) * kVocab;
        const double sd = row_std(w, kVocab);
        EXPECT_GT(sd, 0.1) << "sequence " << s.seq << ": flat reference logits";
        double md = 0.0;
        for (int v = 0; v < kVocab; ++v)
          md = std::max(md, std::fabs(static_cast<double>(g[v]) - w[v]));
        worst = std::max(worst, md / sd);
      }
      done[static_cast<size_t>(s.seq)] += s.n;
    }
  }
  for (int s = 0; s < kSeqs; ++s)
    EXPECT_EQ(batched[static_cast<size_t>(s)]->length(),
              separate[static_cast<size_t>(s)]->length());
  return worst;
}

TEST(ForwardBatchTest, EqualsSeparateForwardCallsOnDenseAndPagedCaches) {
  for (Arch arch : {Arch::kLlama, Arch::kQwen2}) {
    auto m = build_model(arch, 41);
    ASSERT_TRUE(m);
    auto paged = make_paged(*m, 2 * kSeqs);
    for (bool contiguous : {true, false}) {
      SCOPED_TRACE(std::string(arch == Arch::kLlama ? "llama" : "qwen2") +
                   (contiguous ? " contiguous logits" : " scattered logits"));
      EXPECT_LT(batched_vs_separate(*m, dense_factory(*m), contiguous), kBatchTol) << "dense";
      EXPECT_LT(batched_vs_separate(*m, paged_factory(*paged), contiguous), kBatchTol)
          << "paged tq4/tq3";
    }
  }
}

// Lengths and bytes of every cache, to prove a rejected call changed nothing.
std::vector<std::pair<int, size_t>> snapshot(
    const std::vector<std::unique_ptr<kv::SequenceKv>>& kvs) {
  std::vector<std::pair<int, size_t>> out;
  for (const auto& kv : kvs) out.emplace_back(kv->length(), kv->bytes_used());
  return out;
}

TEST(ForwardBatchTest, RejectsBadItemsAndLeavesEveryCacheAlone) {
  auto m = build_model(Arch::kLlama, 7);
  ASSERT_TRUE(m);
  auto paged = make_paged(*m, 8);
  for (const bool use_paged : {false, true}) {
    SCOPED_TRACE(use_paged ? "paged tq4/tq3" : "dense");
    const KvFactory make = use_paged ? paged_factory(*paged) : dense_factory(*m);
    ThreadPool pool(2);
    ForwardScratch scratch;
    // Sequences a, b (roomy) and c (capacity 4, holding 3 tokens), and twins that never see a
    // rejected call.
    std::vector<std::unique_ptr<kv::SequenceKv>> kvs, twins;
    for (int cap : {kCapacity, kCapacity, 4}) {
      kvs.push_back(make(cap));
      twins.push_back(make(cap));
    }
    const std::vector<int32_t> warm = {3, 1, 4};
    std::vector<float> logits(3 * kVocab), twin_logits(3 * kVocab);
    for (size_t s = 0; s < kvs.size(); ++s)
      for (auto* kv : {kvs[s].get(), twins[s].get()}) {
        ForwardArgs a{warm.data(), static_cast<int>(s) + 1, kv,     &pool,
                      &scratch,    LogitsMode::kNone,       nullptr};
        ASSERT_TRUE(m->forward(a).ok());
      }
    ASSERT_EQ(kvs[2]->length(), 3);
    const auto before = snapshot(kvs);

    const std::vector<int32_t> ok2 = {5, 9}, bad = {7, kVocab}, neg = {-1};
    auto item = [&](size_t s, const std::vector<int32_t>& ids, int n, LogitsMode mode) {
      return BatchSequence{ids.data(), n, kvs[s].get(), mode,
                           mode == LogitsMode::kNone ? nullptr : logits.data() + s * kVocab};
    };
    // A bad token id in the last item: the first two would be valid.
    std::vector<BatchSequence> b1 = {item(0, ok2, 2, LogitsMode::kLast),
                                     item(2, ok2, 1, LogitsMode::kNone),
                                     item(1, bad, 2, LogitsMode::kLast)};
    EXPECT_EQ(m->forward_batch(b1, pool, scratch).code(), StatusCode::kInvalidArgument);
    b1[2] = item(1, neg, 1, LogitsMode::kLast);
    EXPECT_EQ(m->forward_batch(b1, pool, scratch).code(), StatusCode::kInvalidArgument);
    // c at capacity: 3 + 2 > 4.
    const std::vector<BatchSequence> b2 = {item(0, ok2, 2, LogitsMode::kLast),
                                           item(1, ok2, 1, LogitsMode::kLast),
                                           item(2, ok2, 2, LogitsMode::kNone)};
    EXPECT_EQ(m->forward_batch(b2, pool, scratch).code(), StatusCode::kResourceExhausted);
    // One cache twice, an empty item, a missing logits buffer, no items at all.
    const std::vector<BatchSequence> b3 = {item(0, ok2, 1, LogitsMode::kNone),
                                           item(0, ok2, 1, LogitsMode::kLast)};
    EXPECT_EQ(m->forward_batch(b3, pool, scratch).code(), StatusCode::kInvalidArgument);
    std::vector<BatchSequence> b4 = {item(0, ok2, 1, LogitsMode::kLast),
                                     item(1, ok2, 0, LogitsMode::kLast)};
    EXPECT_EQ(m->forward_batch(b4, pool, scratch).code(), StatusCode::kInvalidArgument);
    b4[1] = item(1, ok2, 1, LogitsMode::kLast);
    b4[1].logits = nullptr;
    EXPECT_EQ(m->forward_batch(b4, pool, scratch).code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(m->forward_batch({}, pool, scratch).code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(snapshot(kvs), before);

    // The caches still work and hold exactly what the twins hold: same logits.
    const std::vector<BatchSequence> good = {item(0, ok2, 2, LogitsMode::kLast),
                                             item(1, ok2, 1, LogitsMode::kLast),
                                             item(2, ok2, 1, LogitsMode::kLast)};
    ASSERT_TRUE(m->forward_batch(good, pool, scratch).ok());
    EXPECT_EQ(kvs[2]->length(), 4);
    for (size_t s = 0; s < 3; ++s) {
      ForwardArgs a{ok2.data(),
                    s == 0 ? 2 : 1,
                    twins[s].get(),
                    &pool,
                    &scratch,
                    LogitsMode::kLast,
                    twin_logits.data() + s * kVocab};
      ASSERT_TRUE(m->forward(a).ok());
      const float* w = twin_logits.data() + s * kVocab;
      const float* g = logits.data() + s * kVocab;
      double md = 0.0;
      for (int v = 0; v < kVocab; ++v)
        md = std::max(md, std::fabs(static_cast<double>(g[v]) - w[v]));
      EXPECT_LT(md / row_std(w, kVocab), kBatchTol) << "sequence " << s;
    }
  }
}

}  // namespace
}  // namespace tq::model
