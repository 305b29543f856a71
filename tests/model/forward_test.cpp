// The forward pass on small random-weight models (tq make-model's builder): deterministic per
// seed, equal to a float64 re-implementation of the Llama/Qwen2 math and to HF transformers
// loading the same files (tests/data/logits_random.*), prefill == step-by-step decode, and
// clear errors for bad configs and bad inputs.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <vector>

#include "model/tiny_model.h"
#include "test_env.h"
#include "tq/backend/cpu/ops.h"
#include "tq/kv/dense_kv.h"
#include "tq/model/gguf_writer.h"
#include "tq/model/llama.h"
#include "tq/model/random_model.h"
#include "tq/quant/weight_dequant.h"

namespace tq::model {
namespace {

// F16 weights multiply as floats: only float32 rounding separates tq from float64.
constexpr double kF16Tol = 1e-4;
// Q8_0 weights run against q8 activations (llama.cpp's scheme): each activation block carries
// ~0.5% (of its rms) rounding noise, ~22 matmuls add it up to ~2.5% rms on the logits, and the
// worst of 3300 logits sits ~3.5 sigma out.
constexpr double kQ8Tol = 1e-1;
// F32 weights against HF transformers' float32 forward of the same GGUF.
constexpr double kHfF32Tol = 1e-4;
// Prefill vs single-token decode: the same math, blocked differently.
constexpr double kPrefillTol = 1e-4;

using test::build_bytes;
using test::build_model;
using test::tiny_spec;

std::unique_ptr<kv::DenseKv> make_kv(const Model& m, int capacity) {
  auto kv = kv::DenseKv::create(m.attention_shape(), capacity, backend::cpu::dense_kv_kernels());
  EXPECT_TRUE(kv.ok());
  return std::move(kv).value();
}

// Logits of every position of `ids`, in chunks of `chunk` tokens per forward pass.
std::vector<float> run(const Model& m, const std::vector<int32_t>& ids, int chunk, int threads) {
  ThreadPool pool(threads);
  auto kv = make_kv(m, 256);
  ForwardScratch scratch;
  const size_t vocab = m.config().vocab_size;
  std::vector<float> logits(ids.size() * vocab);
  for (size_t done = 0; done < ids.size();) {
    const int n = static_cast<int>(std::min<size_t>(chunk, ids.size() - done));
    ForwardArgs a{ids.data() + done,           n, kv.get(), &pool, &scratch, LogitsMode::kAll,
                  logits.data() + done * vocab};
    const Status st = m.forward(a);
    EXPECT_TRUE(st.ok()) << st.to_string();
    done += n;
  }
  return logits;
}

std::vector<double> dequant(const backend::cpu::WeightView& w) {
  std::vector<float> row(w.cols);
  std::vector<double> out;
  const size_t rb = quant::ggml_row_bytes(w.type, w.cols);
  for (int64_t r = 0; r < w.rows; ++r) {
    EXPECT_TRUE(quant::dequantize_row_ref(w.type, w.data + rb * r, row.data(), w.cols).ok());
    out.insert(out.end(), row.begin(), row.end());
  }
  return out;
}

std::vector<double> matvec(const std::vector<double>& w, const std::vector<double>& x, int rows) {
  const size_t cols = x.size();
  std::vector<double> y(rows, 0.0);
  for (int r = 0; r < rows; ++r)
    for (size_t c = 0; c < cols; ++c) y[r] += w[r * cols + c] * x[c];
  return y;
}

std::vector<double> rmsnorm(const std::vector<double>& x, const std::vector<float>& w, double eps) {
  double ss = 0.0;
  for (double v : x) ss += v * v;
  const double s = 1.0 / std::sqrt(ss / x.size() + eps);
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * s * w[i];
  return y;
}

// The model's math in float64, token by token, written from the HF/llama.cpp definitions
// independently of llama.cpp-style batching: logits [n][vocab].
std::vector<double> forward_ref(const Model& m, const std::vector<int32_t>& ids) {
  const ModelConfig& c = m.config();
  const ModelWeights& W = m.weights();
  const int hd = c.head_dim, half = c.rope_dims / 2, groups = c.n_heads / c.n_kv_heads;
  const auto emb = dequant(W.token_embd), out_w = dequant(W.output);
  struct L {
    std::vector<double> q, k, v, o, g, u, d;
  };
  std::vector<L> layers;
  for (const auto& lw : W.layers)
    layers.push_back({dequant(lw.wq), dequant(lw.wk), dequant(lw.wv), dequant(lw.wo),
                      dequant(lw.w_gate), dequant(lw.w_up), dequant(lw.w_down)});
  std::vector<std::vector<std::vector<double>>> kc(c.n_layers), vc(c.n_layers);
  std::vector<double> logits;
  auto rope = [&](std::vector<double>& v, int n_heads, int pos) {
    for (int h = 0; h < n_heads; ++h)
      for (int i = 0; i < half; ++i) {
        const double a =
            pos * std::pow(static_cast<double>(c.rope_freq_base), -2.0 * i / c.rope_dims);
        const bool neox = c.arch == Arch::kQwen2;
        const int i0 = h * hd + (neox ? i : 2 * i), i1 = h * hd + (neox ? i + half : 2 * i + 1);
        const double x0 = v[i0], x1 = v[i1];
        v[i0] = x0 * std::cos(a) - x1 * std::sin(a);
        v[i1] = x0 * std::sin(a) + x1 * std::cos(a);
      }
  };
  for (size_t pos = 0; pos < ids.size(); ++pos) {
    std::vector<double> x(emb.begin() + ids[pos] * c.dim, emb.begin() + (ids[pos] + 1) * c.dim);
    for (int l = 0; l < c.n_layers; ++l) {
      const LayerWeights& lw = W.layers[l];
      auto xn = rmsnorm(x, lw.attn_norm, c.rms_eps);
      auto q = matvec(layers[l].q, xn, c.q_dim());
      auto k = matvec(layers[l].k, xn, c.kv_dim());
      auto v = matvec(layers[l].v, xn, c.kv_dim());
      for (int i = 0; i < static_cast<int>(lw.bq.size()); ++i) q[i] += lw.bq[i];
      for (int i = 0; i < static_cast<int>(lw.bk.size()); ++i) k[i] += lw.bk[i];
      for (int i = 0; i < static_cast<int>(lw.bv.size()); ++i) v[i] += lw.bv[i];
      rope(q, c.n_heads, static_cast<int>(pos));
      rope(k, c.n_kv_heads, static_cast<int>(pos));
      kc[l].push_back(k);
      vc[l].push_back(v);
      std::vector<double> att(c.q_dim(), 0.0);
      for (int h = 0; h < c.n_heads; ++h) {
        const int kvh = h / groups;
        std::vector<double> s(pos + 1);
        double mx = -1e300, z = 0.0;
        for (size_t j = 0; j <= pos; ++j) {
          double d = 0.0;
          for (int e = 0; e < hd; ++e) d += q[h * hd + e] * kc[l][j][kvh * hd + e];
          s[j] = d / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, s[j]);
        }
        for (auto& e : s) z += (e = std::exp(e - mx));
        for (size_t j = 0; j <= pos; ++j)
          for (int e = 0; e < hd; ++e) att[h * hd + e] += s[j] / z * vc[l][j][kvh * hd + e];
      }
      const auto o = matvec(layers[l].o, att, c.dim);
      for (int i = 0; i < c.dim; ++i) x[i] += o[i];
      xn = rmsnorm(x, lw.ffn_norm, c.rms_eps);
      auto g = matvec(layers[l].g, xn, c.ffn_dim);
      const auto u = matvec(layers[l].u, xn, c.ffn_dim);
      for (int i = 0; i < c.ffn_dim; ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
      const auto d = matvec(layers[l].d, g, c.dim);
      for (int i = 0; i < c.dim; ++i) x[i] += d[i];
    }
    const auto lg = matvec(out_w, rmsnorm(x, W.output_norm, c.rms_eps), c.vocab_size);
    logits.insert(logits.end(), lg.begin(), lg.end());
  }
  return logits;
}

double stddev(const double* x, size_t n) {
  double m = 0.0, s = 0.0;
  for (size_t i = 0; i < n; ++i) m += x[i];
  m /= n;
  for (size_t i = 0; i < n; ++i) s += (x[i] - m) * (x[i] - m);
  return std::sqrt(s / n);
}

// max |a - b| over each row / std of the reference row, the worst row.
template <typename A, typename B>
double max_rel_diff(const A& a, const B& ref, size_t vocab) {
  double worst = 0.0;
  for (size_t r = 0; r < ref.size() / vocab; ++r) {
    std::vector<double> row(ref.begin() + r * vocab, ref.begin() + (r + 1) * vocab);
    double md = 0.0;
    for (size_t i = 0; i < vocab; ++i) md = std::max(md, std::fabs(a[r * vocab + i] - row[i]));
    worst = std::max(worst, md / stddev(row.data(), vocab));
  }
  return worst;
}

const std::vector<int32_t> kIds = {5, 77, 299, 0, 123, 256, 42, 42, 7, 180, 33};

TEST(ForwardTest, RandomModelIsDeterministicPerSeed) {
  const auto spec = tiny_spec(Arch::kLlama, quant::GgmlType::kQ8_0, 9);
  EXPECT_EQ(build_bytes(spec), build_bytes(spec));
  auto m1 = build_model(spec);
  auto m2 = build_model(tiny_spec(Arch::kLlama, quant::GgmlType::kQ8_0, 10));
  ASSERT_TRUE(m1 && m2);
  const auto a = run(*m1, kIds, 16, 2), b = run(*m1, kIds, 16, 1), c = run(*m2, kIds, 16, 2);
  EXPECT_EQ(a, b) << "thread count must not change the logits";
  EXPECT_NE(a, c) << "another seed, another model";
  std::vector<double> last(a.end() - 300, a.end());
  const double sd = stddev(last.data(), last.size());
  EXPECT_GT(sd, 0.2) << "activations collapsed";
  EXPECT_LT(sd, 20.0) << "activations blew up";
  for (float x : a) ASSERT_TRUE(std::isfinite(x));
}

TEST(ForwardTest, MatchesFloat64ReferenceLlamaAndQwen2) {
  for (Arch arch : {Arch::kLlama, Arch::kQwen2}) {
    for (auto [type, tol] :
         {std::pair{quant::GgmlType::kF16, kF16Tol}, std::pair{quant::GgmlType::kQ8_0, kQ8Tol}}) {
      const auto spec = tiny_spec(arch, type, 21);
      SCOPED_TRACE(spec.to_string());
      auto m = build_model(spec);
      ASSERT_TRUE(m);
      const auto got = run(*m, kIds, 4, 2);
      const auto ref = forward_ref(*m, kIds);
      const double rel = max_rel_diff(got, ref, spec.vocab_size);
      EXPECT_LT(rel, tol) << "max |tq - float64| / std(logits)";
      for (size_t r = 0; r < kIds.size(); ++r) {
        const size_t v = spec.vocab_size;
        const auto top = [&](const auto& x) {
          return std::max_element(x.begin() + r * v, x.begin() + (r + 1) * v) - (x.begin() + r * v);
        };
        EXPECT_EQ(top(got), top(ref)) << "top-1 of position " << r;
      }
    }
  }
}

TEST(ForwardTest, MatchesTransformersOnRandomModels) {
  std::ifstream js(test::fixture_path("logits_random.json"));
  ASSERT_TRUE(js) << "tests/data/logits_random.json missing";
  const auto index = nlohmann::json::parse(js);
  std::ifstream bin(test::fixture_path("logits_random.bin"), std::ios::binary | std::ios::ate);
  std::vector<float> rows(static_cast<size_t>(bin.tellg()) / sizeof(float));
  bin.seekg(0);
  bin.read(reinterpret_cast<char*>(rows.data()), static_cast<std::streamsize>(rows.size() * 4));
  const auto ids = index["ids"].get<std::vector<int32_t>>();
  for (const auto& entry : index["models"]) {
    const auto& j = entry["spec"];
    RandomModelSpec s;  // the fields tq make-model leaves at their defaults stay default here
    s.arch = j["arch"] == "qwen2" ? Arch::kQwen2 : Arch::kLlama;
    s.n_layers = j["layers"];
    s.dim = j["dim"];
    s.ffn_dim = j["ffn"];
    s.n_heads = j["heads"];
    s.n_kv_heads = j["kv_heads"];
    s.vocab_size = j["vocab"];
    ASSERT_EQ(j["type"], "f32");
    s.type = quant::GgmlType::kF32;
    s.seed = j["seed"];
    SCOPED_TRACE(s.to_string());
    auto m = build_model(s);
    ASSERT_TRUE(m);
    const auto got = run(*m, ids, 4, 2);
    const size_t v = s.vocab_size;
    const size_t first = entry["first_row"].get<size_t>() * v;
    const std::vector<double> ref(rows.begin() + first, rows.begin() + first + ids.size() * v);
    EXPECT_LT(max_rel_diff(got, ref, v), kHfF32Tol) << "max |tq - HF| / std(logits)";
  }
}

TEST(ForwardTest, PrefillEqualsStepByStepDecode) {
  for (Arch arch : {Arch::kLlama, Arch::kQwen2}) {
    auto m = build_model(tiny_spec(arch, quant::GgmlType::kQ8_0, 33));
    ASSERT_TRUE(m);
    const auto prefill = run(*m, kIds, 64, 2);
    const auto steps = run(*m, kIds, 1, 2);
    const auto mixed = run(*m, kIds, 3, 2);
    std::vector<double> ref(steps.begin(), steps.end());
    EXPECT_LT(max_rel_diff(prefill, ref, 300), kPrefillTol);
    EXPECT_LT(max_rel_diff(mixed, ref, 300), kPrefillTol);
  }
}

TEST(ForwardTest, RejectsBadInputsAndLeavesTheCacheAlone) {
  auto m = build_model(tiny_spec(Arch::kLlama, quant::GgmlType::kQ8_0, 1));
  ASSERT_TRUE(m);
  ThreadPool pool(1);
  auto kv = make_kv(*m, 4);
  ForwardScratch scratch;
  std::vector<float> logits(300);
  const std::vector<int32_t> bad = {1, 300}, five = {1, 2, 3, 4, 5};
  ForwardArgs a{bad.data(), 2, kv.get(), &pool, &scratch, LogitsMode::kLast, logits.data()};
  EXPECT_EQ(m->forward(a).code(), StatusCode::kInvalidArgument);
  a.tokens = five.data();
  a.n = 5;
  EXPECT_EQ(m->forward(a).code(), StatusCode::kResourceExhausted);
  a.n = 0;
  EXPECT_FALSE(m->forward(a).ok());
  a.n = 4;
  a.logits = nullptr;
  EXPECT_FALSE(m->forward(a).ok());
  EXPECT_EQ(kv->length(), 0);
  a.logits = logits.data();
  EXPECT_TRUE(m->forward(a).ok());
  EXPECT_EQ(kv->length(), 4);
}

TEST(ForwardTest, ConfigAndWeightErrorsAreClear) {
  auto load_with = [](auto edit) {
    GgufWriter w;
    EXPECT_TRUE(build_random_model(tiny_spec(Arch::kLlama, quant::GgmlType::kQ8_0, 1), w).ok());
    edit(w);
    auto bytes = w.serialize();
    return Model::from_bytes(std::move(bytes).value());
  };
  auto r = load_with([](GgufWriter& w) { w.set_u32("llama.attention.head_count_kv", 4); });
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("head_count_kv"), std::string::npos)
      << r.status().to_string();
  r = load_with([](GgufWriter& w) { w.set_string("general.architecture", "gpt-neox"); });
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnsupported);
  r = load_with([](GgufWriter& w) { w.set_u32("llama.embedding_length", 192); });
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("token_embd.weight"), std::string::npos)
      << r.status().to_string();
  r = load_with([](GgufWriter& w) { w.set_string("llama.rope.scaling.type", "yarn"); });
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnsupported);
  EXPECT_FALSE(Model::load("/nonexistent/model.gguf").ok());
}

TEST(ForwardTest, Llama3RopeFactorsFollowMetasFormula) {
  ModelConfig c;
  c.rope_dims = 128;
  c.rope_freq_base = 500000.0f;
  c.rope_scaling = RopeScaling::kLlama3;
  c.rope_scale_factor = 8.0f;
  c.rope_low_freq_factor = 1.0f;
  c.rope_high_freq_factor = 4.0f;
  c.rope_original_context = 8192;
  const auto inv = rope_inv_freqs(c, {});
  for (int i = 0; i < 64; ++i) {
    const double base = std::pow(500000.0, -2.0 * i / 128);
    const double wavelen = 2 * M_PI / base;
    double want;
    if (wavelen < 8192 / 4.0)
      want = base;
    else if (wavelen > 8192 / 1.0)
      want = base / 8;
    else {
      const double smooth = (8192 / wavelen - 1) / (4 - 1);
      want = (1 - smooth) * base / 8 + smooth * base;  // HF's form
    }
    EXPECT_NEAR(inv[i], want, 1e-6 * want) << "pair " << i;
  }
  // A rope_freqs tensor overrides the computation.
  const auto with_tensor = rope_inv_freqs(c, std::vector<float>(64, 2.0f));
  EXPECT_NEAR(with_tensor[3], std::pow(500000.0, -6.0 / 128) / 2, 1e-7);
}

}  // namespace
}  // namespace tq::model
