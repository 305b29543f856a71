// KvConfig parsing and validation, and the bytes-per-token formula against the formats' own
// bytes_per_vector and against what the paged cache really allocates.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "kv/kv_test_util.h"
#include "tq/kv/kv_bytes.h"
#include "tq/kv/kv_config.h"
#include "tq/kv/paged_kv.h"

namespace tq::kv {
namespace {

using Opts = std::vector<std::pair<std::string, std::string>>;

TEST(KvConfig, ParsesCliOptions) {
  const Opts opts = {{"-ctk", "tq4"},
                     {"--cache-type-v", "tq3j"},
                     {"--kv-window", "128"},
                     {"kv-sinks", "4"},
                     {"--kv-boundary-layers", "2"},
                     {"--kv-boundary-type", "q8_0"},
                     {"--kv-norm-correction", "off"},
                     {"--kv-block-tokens", "16"},
                     {"--kv-seed", "0x2a"}};
  auto c = parse_kv_options(opts);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->k_format.name(), "tq4");
  EXPECT_EQ(c->v_format.name(), "tq3j");
  EXPECT_EQ(c->window, 128);
  EXPECT_EQ(c->sinks, 4);
  EXPECT_EQ(c->boundary_layers, 2);
  EXPECT_EQ(c->boundary_format.name(), "q8_0");
  EXPECT_FALSE(c->norm_correction);
  EXPECT_EQ(c->block_tokens, 16);
  EXPECT_EQ(c->seed, 42u);
  EXPECT_EQ(c->to_string(),
            "k=tq4 v=tq3j window=128 sinks=4 boundary=2:q8_0 norm_correction=off "
            "key_centering=on block=16 seed=0x000000000000002a");
  // Every table row is accepted by apply_kv_option under its long name.
  for (const KvOption& o : kv_option_table()) {
    KvConfig x;
    const std::string value =
        o.long_name == "--kv-layer-types"                            ? "0:q4_0"
        : std::string(o.long_name).find("type") != std::string::npos ? "q4_0"
        : o.long_name == "--kv-norm-correction" || o.long_name == "--kv-key-centering" ||
                o.long_name == "--kv-key-scaling" || o.long_name == "--kv-value-scaling"
            ? "on"
            : "8";
    EXPECT_TRUE(apply_kv_option(x, o.long_name, value).ok()) << o.long_name;
    EXPECT_FALSE(o.help.empty());
  }
}

TEST(KvConfig, RejectsBadOptionsWithClearErrors) {
  const std::pair<Opts, const char*> bad[] = {
      {{{"-ctk", "q5_1"}}, "unknown KV format 'q5_1'"},
      {{{"--kv-window", "-3"}}, "out of range"},
      {{{"--kv-window", "12x"}}, "not an integer"},
      {{{"--kv-sinks", ""}}, "not an integer"},
      {{{"--kv-norm-correction", "maybe"}}, "not a boolean"},
      {{{"--kv-block-tokens", "0"}}, "out of range"},
      {{{"--kv-seed", "0xzz"}}, "not a 64-bit integer"},
      {{{"--kv-bogus", "1"}}, "unknown KV cache option"},
  };
  for (const auto& [opts, needle] : bad) {
    auto c = parse_kv_options(opts);
    ASSERT_FALSE(c.ok()) << opts[0].first << "=" << opts[0].second;
    EXPECT_NE(c.status().message().find(needle), std::string::npos) << c.status().to_string();
  }
  KvConfig c;
  c.k_format = *quant::parse_format("q4_0");
  EXPECT_EQ(c.validate_for(4, 80).code(), StatusCode::kUnsupported);  // 80 % 32 != 0
  EXPECT_TRUE(c.validate_for(4, 96).ok());
}

TEST(KvConfig, ParsesOneConfigurationInCliWords) {
  KvConfig base;
  base.window = 64;  // a common flag the spec overrides or keeps
  auto c = parse_kv_spec(
      "  tq4/tq3   --kv-sinks 4 --kv-key-scaling=on --kv-layer-types 0-1:q8_0,29:tq4 ", base);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->k_format.name(), "tq4");
  EXPECT_EQ(c->v_format.name(), "tq3");
  EXPECT_EQ(c->window, 64);
  EXPECT_EQ(c->sinks, 4);
  EXPECT_TRUE(c->key_scaling);
  ASSERT_EQ(c->layer_types.size(), 2u);
  EXPECT_EQ(c->layer_types[1].first, 29);
  EXPECT_EQ(c->layer_types[1].formats.v.name(), "tq4");
  // One name for both; a later flag wins over the pair.
  auto both = parse_kv_spec("q8_0 -ctv tq2 --kv-window 0", base);
  ASSERT_TRUE(both.ok()) << both.status().to_string();
  EXPECT_EQ(both->k_format.name(), "q8_0");
  EXPECT_EQ(both->v_format.name(), "tq2");
  EXPECT_EQ(both->window, 0);

  const std::pair<const char*, const char*> bad[] = {
      {"", "must start with a K/V format pair"},
      {"--kv-sinks 4", "must start with a K/V format pair"},
      {"tq4/tq3 --kv-sinks", "--kv-sinks needs a value"},
      {"tq4/tq3 4", "expected a flag, got '4'"},
      {"tq4/tq9", "unknown KV format 'tq9'"},
      {"tq4/tq3 --kv-bogus 1", "unknown KV cache option"},
      {"tq4/tq3 --kv-window=-1", "out of range"},
  };
  for (const auto& [spec, needle] : bad) {
    auto r = parse_kv_spec(spec);
    ASSERT_FALSE(r.ok()) << spec;
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().to_string();
  }
}

TEST(KvConfig, SplitsListsOfConfigurations) {
  using V = std::vector<std::string>;
  EXPECT_EQ(split_kv_specs("q8_0/q8_0,tq4/tq3"), (V{"q8_0/q8_0", "tq4/tq3"}));
  // With a ';' anywhere, ';' separates and commas belong to flag values.
  EXPECT_EQ(split_kv_specs("tq4/tq4; tq4/tq4 --kv-layer-types 0-1:q8_0,29:tq3 ;"),
            (V{"tq4/tq4", "tq4/tq4 --kv-layer-types 0-1:q8_0,29:tq3"}));
  EXPECT_EQ(split_kv_specs(" ; ;"), V{});
  EXPECT_EQ(split_kv_specs(", ,"), V{});
  EXPECT_EQ(split_kv_specs(""), V{});
}

TEST(KvConfig, LayerTypesOverrideBoundaryAndDefaults) {
  const Opts opts = {{"-ctk", "tq3"},
                     {"-ctv", "tq2"},
                     {"--kv-boundary-layers", "1"},
                     {"--kv-boundary-type", "q8_0"},
                     {"--kv-layer-types", "0:f16,2-3:tq4/tq4,3:tq8/tq2"}};
  auto c = parse_kv_options(opts);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  ASSERT_EQ(c->layer_types.size(), 3u);
  EXPECT_EQ(c->layer_types[1].first, 2);
  EXPECT_EQ(c->layer_types[1].last, 3);
  const int n = 5;
  // Layer 0: the range beats the boundary; 1: -ctk/-ctv; 2: its range; 3: the later range
  // wins; 4: boundary.
  const char* want[n][2] = {
      {"f16", "f16"}, {"tq3", "tq2"}, {"tq4", "tq4"}, {"tq8", "tq2"}, {"q8_0", "q8_0"}};
  for (int l = 0; l < n; ++l) {
    EXPECT_EQ(c->formats_for(l, n).k.name(), want[l][0]) << l;
    EXPECT_EQ(c->formats_for(l, n).v.name(), want[l][1]) << l;
  }
  // Layer 0 stores f16 keys: no centering there.
  EXPECT_FALSE(c->centers_keys(0, n));
  EXPECT_TRUE(c->centers_keys(1, n));
  EXPECT_TRUE(c->validate_for(n, 64).ok());
  EXPECT_EQ(c->to_string(),
            "k=tq3 v=tq2 window=0 sinks=0 boundary=1:q8_0 layers=0:f16/f16,2-3:tq4/tq4,3:tq8/tq2 "
            "norm_correction=on key_centering=on block=32 seed=0x7475726271756e74");
  // A layer past the model's is an error naming the model's layers.
  const Status s = c->validate_for(3, 64);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("layer 3 does not exist (the model has 3 layers, 0-2)"),
            std::string::npos)
      << s.to_string();
  // "none" clears an earlier list.
  KvConfig x = *c;
  ASSERT_TRUE(apply_kv_option(x, "--kv-layer-types", "none").ok());
  EXPECT_TRUE(x.layer_types.empty());
  EXPECT_EQ(x.formats_for(0, n).k.name(), "q8_0");
}

TEST(KvConfig, RejectsBadLayerTypes) {
  const std::pair<const char*, const char*> bad[] = {
      {"", "is not RANGE:FORMAT"},      {"3", "is not RANGE:FORMAT"},
      {":q8_0", "is not RANGE:FORMAT"}, {"1:q8_0,", "is not RANGE:FORMAT"},
      {"5-2:q8_0", "is empty"},         {"x:q8_0", "not an integer"},
      {"1-:q8_0", "not an integer"},    {"4096:q8_0", "out of range"},
      {"-1:q8_0", "they count from 0"}, {"1:q5_1", "unknown KV format 'q5_1'"},
      {"1:tq4/", "unknown KV format"},
  };
  for (const auto& [value, needle] : bad) {
    auto c = parse_kv_options(Opts{{"--kv-layer-types", value}});
    ASSERT_FALSE(c.ok()) << value;
    EXPECT_NE(c.status().message().find(needle), std::string::npos)
        << value << ": " << c.status().to_string();
  }
}

TEST(KvConfig, BoundaryLayersAndSeeds) {
  KvConfig c;
  c.k_format = *quant::parse_format("tq3");
  c.v_format = *quant::parse_format("tq2");
  c.boundary_layers = 2;
  c.boundary_format = *quant::parse_format("tq8");
  const int n = 7;
  for (int l = 0; l < n; ++l) {
    const bool b = l < 2 || l >= n - 2;
    EXPECT_EQ(c.formats_for(l, n).k.name(), b ? "tq8" : "tq3") << l;
    EXPECT_EQ(c.formats_for(l, n).v.name(), b ? "tq8" : "tq2") << l;
  }
  EXPECT_NE(c.layer_seed(0), c.layer_seed(1));
  EXPECT_EQ(c.layer_seed(3), KvConfig(c).layer_seed(3));
  // Up to the model's layer count (2N > n overlaps: every layer); past it, refused by name.
  c.boundary_layers = n;
  EXPECT_TRUE(c.validate_for(n, 64).ok());
  c.boundary_layers = 1000;
  const Status st = c.validate_for(n, 64);
  EXPECT_NE(st.message().find("--kv-boundary-layers 1000: the model has 7 layers"),
            std::string::npos)
      << st.to_string();
}

AttentionShape shape_128() {
  AttentionShape s;
  s.n_layers = 3;
  s.n_heads = 8;
  s.n_kv_heads = 2;
  s.head_dim = 128;
  s.scale = 1.0f / std::sqrt(128.0f);
  return s;
}

TEST(KvBytes, FormulaMatchesBytesPerVectorForEveryFormat) {
  const AttentionShape s = shape_128();
  const char* names[] = {"f16", "q8_0", "q4_0", "tq1",  "tq2",  "tq3",  "tq4", "tq5",
                         "tq6", "tq7",  "tq8",  "tq2j", "tq3j", "tq4j", "tq8j"};
  for (const char* name : names) {
    KvConfig c;
    c.k_format = c.v_format = *quant::parse_format(name);
    auto b = kv_bytes_per_token(c, s, 512);
    ASSERT_TRUE(b.ok()) << name;
    const double bpv = static_cast<double>(c.k_format.bytes_per_vector(s.head_dim));
    EXPECT_DOUBLE_EQ(b->compressed, s.n_layers * s.n_kv_heads * 2 * bpv) << name;
    // Key means: 4 bytes per element of one key per layer and KV head, once per sequence.
    const size_t means = c.k_format == quant::kFormatF16 ? 0 : 3 * 2 * 128 * 4;
    EXPECT_EQ(b->sequence, means) << name;
    EXPECT_DOUBLE_EQ(b->amortized, b->compressed + static_cast<double>(means) / 512) << name;
    EXPECT_DOUBLE_EQ(b->f16, s.n_layers * s.n_kv_heads * 2 * 256.0);
    EXPECT_DOUBLE_EQ(b->k_bits_per_element, c.k_format.bits_per_element(s.head_dim)) << name;
    auto blocks = kv_block_bytes(c, s);
    ASSERT_TRUE(blocks.ok());
    for (size_t slab : *blocks) EXPECT_EQ(slab, static_cast<size_t>(32 * 2 * bpv)) << name;
  }
  // quality-method.md's table: tq4 is 66 B per vector at d = 128, 3.88x less than f16.
  KvConfig c;
  c.k_format = c.v_format = *quant::parse_format("tq4");
  EXPECT_NEAR(kv_bytes_per_token(c, s, 512)->formats_ratio_vs_f16(), 256.0 / 66.0, 1e-12);
}

TEST(KvBytes, WindowAndSinksAmortizedAndBoundaryCounted) {
  const AttentionShape s = shape_128();
  KvConfig c;
  c.k_format = *quant::parse_format("tq4");
  c.v_format = *quant::parse_format("tq3");
  c.window = 96;
  c.sinks = 4;
  c.boundary_layers = 1;  // layers 0 and 2 in q8_0, layer 1 tq4/tq3
  c.boundary_format = *quant::parse_format("q8_0");
  auto b = kv_bytes_per_token(c, s, 1000);
  ASSERT_TRUE(b.ok());
  const double compressed = s.n_kv_heads * (2 * (136 + 136) + (66 + 50));
  EXPECT_DOUBLE_EQ(b->compressed, compressed);
  EXPECT_EQ(b->exact_tokens, 100);
  // Every layer compresses (and so centers) its keys: one f32 key mean per layer and KV head.
  EXPECT_EQ(b->sequence, size_t{3 * 2 * 128 * 4});
  EXPECT_DOUBLE_EQ(b->amortized, (900 * compressed + 100 * b->f16 + 3072) / 1000);
  // A context shorter than window + sinks is all f16 (plus the key means).
  EXPECT_DOUBLE_EQ(kv_bytes_per_token(c, s, 50)->amortized, b->f16 + 3072.0 / 50);
}

TEST(KvBytes, LayerTypesCounted) {
  const AttentionShape s = shape_128();  // 3 layers, 2 KV heads, d 128
  KvConfig c;
  c.k_format = *quant::parse_format("tq4");
  c.v_format = *quant::parse_format("tq3");
  c.layer_types = {{0, 0, {quant::kFormatF16, *quant::parse_format("q8_0")}},
                   {2, 2, {*quant::parse_format("tq2"), *quant::parse_format("tq2")}}};
  auto b = kv_bytes_per_token(c, s, 512);
  ASSERT_TRUE(b.ok());
  // Per KV head: layer 0 f16 K (256) + q8_0 V (136), layer 1 tq4 + tq3 (66 + 50), layer 2
  // tq2 + tq2 (34 + 34).
  EXPECT_DOUBLE_EQ(b->compressed, s.n_kv_heads * ((256 + 136) + (66 + 50) + (34 + 34)));
  // Key means only where keys are compressed: layers 1 and 2.
  EXPECT_EQ(b->sequence, size_t{2 * 2 * 128 * 4});
}

// Value scales are one f32 per element of a value per layer (with compressed values) and KV
// head, per sequence, like the key means and key scales; the pool's count agrees.
TEST(KvBytes, ValueScalesCounted) {
  const AttentionShape s = shape_128();
  KvConfig c;
  c.k_format = *quant::parse_format("f16");
  c.v_format = *quant::parse_format("tq3");
  c.value_scaling = true;
  // In the config's string, and so in the prefix cache's fingerprint.
  EXPECT_NE(c.to_string().find(" value_scaling=on "), std::string::npos) << c.to_string();
  EXPECT_EQ(kv_bytes_per_token(c, s, 512)->sequence, size_t{3 * 2 * 128 * 4});
  c.k_format = *quant::parse_format("tq4");
  c.key_scaling = true;
  c.block_tokens = 16;
  const auto b = kv_bytes_per_token(c, s, 64);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->sequence, size_t{3 * 3 * 2 * 128 * 4});  // key means, key scales, value scales
  PagedKvCacheOptions o;
  o.shape = s;
  o.config = c;
  o.pool_bytes = size_t{8} << 20;
  auto cache = PagedKvCache::create(o);
  ASSERT_TRUE(cache.ok());
  const test::KvData d = test::make_kv_data(s, 64, 22);
  auto seq = (*cache)->new_sequence(64);
  ASSERT_TRUE(seq.ok());
  ThreadPool pool(1);
  test::run_chunks(**seq, d, {40, 24}, pool, [](int, int, int, const float*) {});
  EXPECT_DOUBLE_EQ(static_cast<double>((*seq)->bytes_used()), b->amortized * 64);
  EXPECT_EQ((*cache)->stats().exact_bytes, b->sequence);
  // Weights of the wrong size are refused with the sizes named.
  o.value_weights.assign(5, 1.0f);
  auto bad = PagedKvCache::create(o);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().to_string().find("768"), std::string::npos) << bad.status().to_string();
}

TEST(KvBytes, SequenceBytesUsedMatchesFormulaAndPool) {
  const AttentionShape s = shape_128();
  KvConfig c;
  c.k_format = *quant::parse_format("tq4");
  c.v_format = *quant::parse_format("tq3j");
  c.window = 24;
  c.sinks = 4;
  c.block_tokens = 16;
  PagedKvCacheOptions o;
  o.shape = s;
  o.config = c;
  o.pool_bytes = size_t{8} << 20;
  auto cache = PagedKvCache::create(o);
  ASSERT_TRUE(cache.ok());
  // T = sinks + window + 5 full blocks: the formula is exact (no partly filled page).
  const int T = 4 + 24 + 5 * 16;
  const test::KvData d = test::make_kv_data(s, T, 21);
  auto seq = (*cache)->new_sequence(T);
  ASSERT_TRUE(seq.ok());
  ThreadPool pool(1);
  test::run_chunks(**seq, d, {7, 30}, pool, [](int, int, int, const float*) {});
  auto b = kv_bytes_per_token(c, s, T);
  ASSERT_TRUE(b.ok());
  EXPECT_DOUBLE_EQ(static_cast<double>((*seq)->bytes_used()), b->amortized * T);
  const KvPoolStats st = (*cache)->stats();
  EXPECT_EQ(st.used_bytes, (*seq)->pages().size() * (*cache)->page_bytes());
  EXPECT_EQ(st.used_bytes + st.exact_bytes, (*seq)->bytes_used());
  EXPECT_EQ(st.tokens, T);
  EXPECT_NEAR(st.effective_ratio_vs_f16, b->ratio_vs_f16(), 1e-9);
  size_t per_format = 0;
  for (const auto& f : st.per_format) per_format += f.bytes;
  EXPECT_EQ(per_format, st.used_bytes);
}

}  // namespace
}  // namespace tq::kv
