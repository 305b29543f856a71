// GGUF reader and writer: round trips, typed getters, one test per validation rule on
// hand-built files, and the real model (metadata, every tensor, truncations, byte flips).
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "test_env.h"
#include "tq/core/rng.h"
#include "tq/model/gguf.h"
#include "tq/model/gguf_writer.h"
#include "tq/quant/weight_dequant.h"

namespace tq::model {
namespace {

using quant::GgmlType;

// Hand-assembled GGUF bytes, for files the writer refuses to produce.
class Bytes {
 public:
  template <typename T>
  Bytes& put(T v) {
    const size_t n = b_.size();
    b_.resize(n + sizeof(T));
    std::memcpy(b_.data() + n, &v, sizeof(T));
    return *this;
  }
  Bytes& str(const std::string& s) {
    put<uint64_t>(s.size());
    b_.insert(b_.end(), s.begin(), s.end());
    return *this;
  }
  Bytes& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    return put<uint32_t>(0x46554747).put<uint32_t>(version).put(n_tensors).put(n_kv);
  }
  Bytes& kv_u32(const std::string& k, uint32_t v) { return str(k).put<uint32_t>(4).put(v); }
  // A 1-D tensor info.
  Bytes& tensor(const std::string& name, uint64_t n, uint32_t type, uint64_t offset) {
    return str(name).put<uint32_t>(1).put(n).put(type).put(offset);
  }
  Bytes& pad(size_t a) {
    b_.resize((b_.size() + a - 1) / a * a, 0);
    return *this;
  }
  Bytes& zeros(size_t n) {
    b_.resize(b_.size() + n, 0);
    return *this;
  }
  const std::vector<uint8_t>& get() const { return b_; }

 private:
  std::vector<uint8_t> b_;
};

Status parse_status(const std::vector<uint8_t>& b) {
  // An exact-size heap copy, so ASan sees any read past the end.
  std::vector<uint8_t> copy(b);
  auto f = GgufFile::parse(copy.data(), copy.size());
  return f.ok() ? ok_status() : f.status();
}

void expect_error(const std::vector<uint8_t>& b, const std::string& needle) {
  const Status s = parse_status(b);
  EXPECT_FALSE(s.ok()) << "expected an error containing '" << needle << "'";
  EXPECT_NE(s.message().find(needle), std::string::npos) << s.to_string();
}

std::vector<uint8_t> build_sample(GgufWriter& w) {
  w.set_string("general.architecture", "llama");
  w.set_u8("t.u8", 200);
  w.set_i8("t.i8", -100);
  w.set_u16("t.u16", 60000);
  w.set_i16("t.i16", -30000);
  w.set_u32("t.u32", 4000000000u);
  w.set_i32("t.i32", -2000000000);
  w.set_u64("t.u64", 18000000000000000000ull);
  w.set_i64("t.i64", -9000000000000000000ll);
  w.set_f32("t.f32", 0.25f);
  w.set_f64("t.f64", -1.0 / 3.0);
  w.set_bool("t.bool", true);
  w.set_string_array("t.strs", {"a", "", "hello world", "\xe2\x96\x81x"});
  w.set_i32_array("t.i32s", {1, -2, 3});
  w.set_f32_array("t.f32s", {0.5f, -1.5f});
  w.set_u32("t.u32", 7);  // replaces in place
  std::vector<float> vals(64 * 3);
  Rng rng(42);
  for (float& v : vals) v = static_cast<float>(rng.normal());
  EXPECT_TRUE(w.add_tensor_from_f32("w.q4_1", {64, 3}, GgmlType::kQ4_1, vals.data()).ok());
  EXPECT_TRUE(w.add_tensor_from_f32("w.q8_0", {64, 3}, GgmlType::kQ8_0, vals.data()).ok());
  EXPECT_TRUE(w.add_tensor_from_f32("w.f16", {5, 3}, GgmlType::kF16, vals.data()).ok());
  EXPECT_TRUE(w.add_tensor_from_f32("norm", {7}, GgmlType::kF32, vals.data()).ok());
  auto bytes = w.serialize();
  EXPECT_TRUE(bytes.ok());
  return bytes.ok() ? *bytes : std::vector<uint8_t>{};
}

TEST(GgufWriter, RoundTripsEveryValueTypeAndTensor) {
  for (size_t alignment : {32u, 64u, 4096u}) {
    GgufWriter w(alignment);
    const std::vector<uint8_t> bytes = build_sample(w);
    auto f = GgufFile::parse(bytes.data(), bytes.size());
    ASSERT_TRUE(f.ok()) << f.status().to_string();
    const GgufFile& g = **f;
    EXPECT_EQ(g.version(), 3u);
    EXPECT_EQ(g.alignment(), alignment);
    EXPECT_EQ(*g.get_string("general.architecture"), "llama");
    EXPECT_EQ(*g.get_int("t.u8"), 200);
    EXPECT_EQ(*g.get_int("t.i8"), -100);
    EXPECT_EQ(*g.get_int("t.u16"), 60000);
    EXPECT_EQ(*g.get_int("t.i16"), -30000);
    EXPECT_EQ(*g.get_int("t.u32"), 7);
    EXPECT_EQ(*g.get_int("t.i32"), -2000000000);
    EXPECT_EQ(g.find("t.u64")->u, 18000000000000000000ull);
    EXPECT_EQ(*g.get_int("t.i64"), -9000000000000000000ll);
    EXPECT_EQ(*g.get_float("t.f32"), 0.25);
    EXPECT_EQ(*g.get_float("t.f64"), -1.0 / 3.0);
    EXPECT_EQ(*g.get_bool("t.bool"), true);
    EXPECT_EQ(*g.get_string_array("t.strs"),
              (std::vector<std::string>{"a", "", "hello world", "\xe2\x96\x81x"}));
    EXPECT_EQ(*g.get_int_array("t.i32s"), (std::vector<int64_t>{1, -2, 3}));
    EXPECT_EQ(*g.get_float_array("t.f32s"), (std::vector<double>{0.5, -1.5}));
    EXPECT_EQ(*g.get_float_array("t.i32s"), (std::vector<double>{1, -2, 3}));
    ASSERT_EQ(g.tensors().size(), 4u);
    for (const GgufTensor& t : g.tensors()) {
      EXPECT_EQ(t.offset % alignment, 0u) << t.name;
      EXPECT_EQ(static_cast<size_t>(t.data - bytes.data()) % alignment, 0u) << t.name;
    }
    const GgufTensor* q = g.find_tensor("w.q4_1");
    ASSERT_NE(q, nullptr);
    EXPECT_EQ(q->shape, (std::vector<uint64_t>{64, 3}));
    EXPECT_EQ(q->type, GgmlType::kQ4_1);
    EXPECT_EQ(q->nbytes, 3u * 2 * 20);
    EXPECT_EQ(q->n_elements(), 192u);
    const GgufTensor* norm = g.find_tensor("norm");
    ASSERT_NE(norm, nullptr);
    std::vector<float> back(7);
    std::memcpy(back.data(), norm->data, 28);
    Rng rng(42);
    for (float v : back) EXPECT_EQ(v, static_cast<float>(rng.normal()));
    EXPECT_EQ(g.find_tensor("missing"), nullptr);
  }
}

TEST(GgufWriter, WriteFileMatchesSerialize) {
  GgufWriter w(64);
  const std::vector<uint8_t> bytes = build_sample(w);
  const std::string path = ::testing::TempDir() + "/tq_gguf_writer_test.gguf";
  ASSERT_TRUE(w.write_file(path).ok());
  std::ifstream in(path, std::ios::binary);
  const std::vector<uint8_t> file((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(file, bytes);
  auto f = GgufFile::open(path);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ((*f)->tensors().size(), 4u);
  std::remove(path.c_str());
  EXPECT_EQ(GgufFile::open(path).status().code(), StatusCode::kNotFound);
}

// scripts/check_gguf_writer.py runs this test with TQ_GGUF_SAMPLE_OUT set and reads the file
// with the Python gguf package; without the variable the test only checks that it writes.
TEST(GgufWriter, WritesSampleForPythonCheck) {
  const char* out = std::getenv("TQ_GGUF_SAMPLE_OUT");
  const std::string path = out && *out ? out : ::testing::TempDir() + "/tq_gguf_sample.gguf";
  GgufWriter w(64);
  build_sample(w);
  ASSERT_TRUE(w.write_file(path).ok());
  if (!(out && *out)) std::remove(path.c_str());
}

TEST(GgufWriter, RejectsBadTensors) {
  GgufWriter w;
  std::vector<uint8_t> q4(20);
  EXPECT_TRUE(w.add_tensor("a", {32}, GgmlType::kQ4_1, q4).ok());
  EXPECT_FALSE(w.add_tensor("a", {32}, GgmlType::kQ4_1, q4).ok());              // duplicate
  EXPECT_FALSE(w.add_tensor("b", {31}, GgmlType::kQ4_1, q4).ok());              // partial block
  EXPECT_FALSE(w.add_tensor("c", {32, 2}, GgmlType::kQ4_1, q4).ok());           // wrong size
  EXPECT_FALSE(w.add_tensor("d", {32, 1, 1, 1, 1}, GgmlType::kQ4_1, q4).ok());  // 5 dims
  EXPECT_FALSE(w.add_tensor(std::string(64, 'x'), {32}, GgmlType::kQ4_1, q4).ok());
  EXPECT_FALSE(w.add_tensor("e", {32}, static_cast<GgmlType>(77), q4).ok());
  GgufWriter bad(48);
  EXPECT_FALSE(bad.serialize().ok());
}

TEST(GgufGetters, NotFoundAndTypeMismatch) {
  GgufWriter w;
  w.set_u64("big", 1ull << 63);
  w.set_string("s", "x");
  w.set_f32("f", 1.5f);
  w.set_string_array("arr", {"a"});
  const auto bytes = *w.serialize();
  auto f = GgufFile::parse(bytes.data(), bytes.size());
  ASSERT_TRUE(f.ok());
  const GgufFile& g = **f;
  EXPECT_EQ(g.get_int("nope").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(g.get_int("big").status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(g.get_int("s").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(g.get_int("f").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(g.get_string("f").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(g.get_bool("s").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(g.get_int_array("arr").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(g.get_string_array("s").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(*g.get_int_or("nope", 5), 5);
  EXPECT_EQ(*g.get_float_or("nope", 2.5), 2.5);
  EXPECT_EQ(*g.get_float_or("f", 2.5), 1.5);
  EXPECT_FALSE(g.get_int_or("s", 5).ok());
  EXPECT_NE(g.get_int("s").status().message().find("'s' has type string"), std::string::npos);
}

TEST(GgufReader, AcceptsMinimalV2AndV3) {
  for (uint32_t v : {2u, 3u}) {
    Bytes b;
    b.header(1, 1, v).kv_u32("k", 1).tensor("t", 32, 8, 0).pad(32).zeros(34);
    auto f = GgufFile::parse(b.get().data(), b.get().size());
    ASSERT_TRUE(f.ok()) << f.status().to_string();
    EXPECT_EQ((*f)->version(), v);
    EXPECT_EQ((*f)->tensors()[0].nbytes, 34u);
  }
}

TEST(GgufReader, RejectsBadHeaders) {
  expect_error({}, "too small");
  expect_error(Bytes().put<uint32_t>(0x46554748).put<uint32_t>(3).zeros(16).get(), "magic");
  expect_error(Bytes().header(0, 0, 1).get(), "version 1");
  expect_error(Bytes().header(0, 0, 0x03000000).get(), "big-endian");
  expect_error(Bytes().header(0, 1000000).get(), "metadata count 1000000");
  expect_error(Bytes().header(1ull << 60, 0).get(), "tensor count");
}

TEST(GgufReader, RejectsBadMetadata) {
  // String length past the end.
  expect_error(Bytes().header(0, 1).put<uint64_t>(1000).zeros(20).get(), "string length 1000");
  // Unknown value type, named by key.
  expect_error(Bytes().header(0, 1).str("my.key").put<uint32_t>(13).zeros(8).get(),
               "'my.key': unknown value type 13");
  // Duplicate key.
  expect_error(Bytes().header(0, 2).kv_u32("k", 1).kv_u32("k", 2).get(), "duplicate key");
  // An array count larger than the bytes left.
  expect_error(Bytes()
                   .header(0, 1)
                   .str("arr")
                   .put<uint32_t>(9)
                   .put<uint32_t>(5)
                   .put<uint64_t>(1ull << 40)
                   .zeros(64)
                   .get(),
               "array of 1099511627776 i32");
  // Arrays of strings: each element needs its 8-byte length.
  expect_error(Bytes()
                   .header(0, 1)
                   .str("arr")
                   .put<uint32_t>(9)
                   .put<uint32_t>(8)
                   .put<uint64_t>(10)
                   .zeros(40)
                   .get(),
               "needs at least 8 bytes each");
  // Nesting: array of array of array.
  expect_error(Bytes()
                   .header(0, 1)
                   .str("n")
                   .put<uint32_t>(9)
                   .put<uint32_t>(9)
                   .put<uint64_t>(1)
                   .put<uint32_t>(9)
                   .put<uint64_t>(1)
                   .put<uint32_t>(4)
                   .put<uint64_t>(0)
                   .get(),
               "nested deeper");
  // A bool that is not 0 or 1.
  expect_error(Bytes().header(0, 1).str("b").put<uint32_t>(7).put<uint8_t>(2).zeros(8).get(),
               "bool byte is 2");
  // Alignment: not a power of two, and the wrong type.
  expect_error(Bytes().header(0, 1).kv_u32("general.alignment", 48).get(), "power of two");
  expect_error(Bytes().header(0, 1).str("general.alignment").put<uint32_t>(8).str("32").get(),
               "general.alignment has type string");
}

TEST(GgufReader, RejectsBadTensorInfos) {
  const auto base = [] { return Bytes().header(1, 0); };
  expect_error(base().str("t").put<uint32_t>(5).zeros(64).get(), "'t': n_dims 5");
  expect_error(base().str("t").put<uint32_t>(0).zeros(64).get(), "'t': n_dims 0");
  expect_error(base()
                   .str("t")
                   .put<uint32_t>(2)
                   .put<uint64_t>(1ull << 32)
                   .put<uint64_t>(1ull << 32)
                   .put<uint32_t>(0)
                   .put<uint64_t>(0)
                   .zeros(64)
                   .get(),
               "'t': element count overflows");
  expect_error(base().tensor("blk.0.attn_q.weight", 32, 77, 0).zeros(64).get(),
               "tensor 'blk.0.attn_q.weight': unknown ggml type id 77");
  expect_error(base().tensor("t", 33, 2, 0).zeros(64).get(), "'t': row length 33");
  expect_error(base().tensor("t", 32, 2, 16).zeros(64).get(), "not a multiple of the alignment");
  expect_error(Bytes().header(2, 0).tensor("t", 32, 8, 0).tensor("t", 32, 8, 64).zeros(256).get(),
               "duplicate tensor name");
  // Data past the end: the message names the tensor, the byte range and the file size.
  Bytes b = base().tensor("blk.0.attn_q.weight", 32, 8, 0);
  b.pad(32).zeros(33);
  const size_t size = b.get().size();
  expect_error(b.get(), "tensor 'blk.0.attn_q.weight': data [" + std::to_string(size - 33) + ", " +
                            std::to_string(size + 1) + ") past end of file (size " +
                            std::to_string(size) + ")");
  expect_error(base().tensor("t", 32, 8, ~0ull - 31).zeros(64).get(), "overflows");
  // Two q8_0 rows of 34 bytes at offsets 32 and 0 (listed out of order): bytes 32-33 shared.
  expect_error(Bytes().header(2, 0).tensor("a", 32, 8, 32).tensor("b", 32, 8, 0).zeros(256).get(),
               "tensors 'b' and 'a' overlap: data [0, 34) and [32, 66)");
}

TEST(GgufReader, EveryTruncationOfASmallFileFails) {
  GgufWriter w;
  const std::vector<uint8_t> bytes = build_sample(w);
  ASSERT_TRUE(parse_status(bytes).ok());
  // The last tensor's padding is not needed: only cuts inside its data must fail.
  const size_t min_size = bytes.size() - 32 + 28;
  for (size_t n = 0; n < min_size; ++n) {
    const std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + n);
    EXPECT_FALSE(parse_status(cut).ok()) << "prefix of " << n << " bytes parsed";
  }
}

TEST(GgufReader, RandomByteFlipsNeverCrash) {
  GgufWriter w;
  const std::vector<uint8_t> bytes = build_sample(w);
  Rng rng(7);
  int ok = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<uint8_t> m = bytes;
    const int flips = 1 + static_cast<int>(rng.next_u64() % 4);
    for (int k = 0; k < flips; ++k)
      m[rng.next_u64() % m.size()] ^= static_cast<uint8_t>(1u << (rng.next_u64() % 8));
    auto f = GgufFile::parse(m.data(), m.size());
    if (!f.ok()) continue;
    ++ok;
    for (const GgufTensor& t : (*f)->tensors()) {
      ASSERT_GE(t.data, m.data()) << "seed 7 trial " << trial;
      ASSERT_LE(t.data + t.nbytes, m.data() + m.size()) << "seed 7 trial " << trial;
    }
  }
  EXPECT_GT(ok, 0);  // most flips land in tensor data and still parse
}

// --- the real model -------------------------------------------------------------------------

std::vector<uint8_t> read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), {});
}

TEST(GgufModel, SmolLM2MetadataAndTensors) {
  TQ_REQUIRE_FILE(test::model_path());
  auto f = GgufFile::open(test::model_path());
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  const GgufFile& g = **f;
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(*g.get_string("general.architecture"), "llama");
  EXPECT_EQ(*g.get_int("llama.block_count"), 30);
  EXPECT_EQ(*g.get_int("llama.embedding_length"), 576);
  EXPECT_EQ(*g.get_int("llama.feed_forward_length"), 1536);
  EXPECT_EQ(*g.get_int("llama.attention.head_count"), 9);
  EXPECT_EQ(*g.get_int("llama.attention.head_count_kv"), 3);
  EXPECT_EQ(*g.get_bool("tokenizer.ggml.add_bos_token"), false);
  EXPECT_EQ(*g.get_string("tokenizer.ggml.model"), "gpt2");
  EXPECT_NEAR(*g.get_float("llama.attention.layer_norm_rms_epsilon"), 1e-5, 1e-9);
  EXPECT_EQ(g.get_string_array("tokenizer.ggml.tokens")->size(), 49152u);
  EXPECT_EQ(g.get_int_array("tokenizer.ggml.token_type")->size(), 49152u);
  EXPECT_EQ(g.get_string_array("tokenizer.ggml.merges")->size(), 48900u);
  ASSERT_EQ(g.tensors().size(), 2u + 30u * 9u);
  const GgufTensor* emb = g.find_tensor("token_embd.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->type, GgmlType::kQ8_0);
  EXPECT_EQ(emb->shape, (std::vector<uint64_t>{576, 49152}));
  const GgufTensor* wq = g.find_tensor("blk.29.attn_q.weight");
  ASSERT_NE(wq, nullptr);
  EXPECT_EQ(wq->type, GgmlType::kQ4_1);
  EXPECT_EQ(wq->shape, (std::vector<uint64_t>{576, 576}));
  EXPECT_EQ(g.find_tensor("blk.0.ffn_down.weight")->shape, (std::vector<uint64_t>{1536, 576}));
  // Every tensor: a supported type, in bounds, and its first row dequantizes to finite values.
  for (const GgufTensor& t : g.tensors()) {
    ASSERT_TRUE(quant::can_dequantize(t.type)) << t.name;
    EXPECT_EQ(t.nbytes, quant::ggml_row_bytes(t.type, t.shape[0]) * (t.n_elements() / t.shape[0]))
        << t.name;
    std::vector<float> row(t.shape[0]);
    ASSERT_TRUE(quant::dequantize_row_ref(t.type, t.data, row.data(), t.shape[0]).ok()) << t.name;
    for (float v : row) ASSERT_TRUE(std::isfinite(v)) << t.name;
  }
}

// The header (metadata and tensor infos, ~1.8 MB) cut anywhere, and random byte flips in it.
TEST(GgufModel, TruncatedAndFlippedHeadersGiveErrors) {
  TQ_REQUIRE_FILE(test::model_path());
  std::vector<uint8_t> file = read_all(test::model_path());
  auto f = GgufFile::parse(file.data(), file.size());
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  const size_t header_end = static_cast<size_t>((*f)->tensors().front().data - file.data()) -
                            (*f)->tensors().front().offset;
  Rng rng(11);
  std::vector<size_t> cuts;
  for (size_t n = 0; n < 64; ++n) cuts.push_back(n);
  for (int k = 0; k < 20; ++k) cuts.push_back(rng.next_u64() % header_end);
  for (size_t n = header_end - 400; n < header_end; n += 37) cuts.push_back(n);  // tensor infos
  for (size_t n : cuts) {
    const std::vector<uint8_t> cut(file.begin(), file.begin() + n);
    EXPECT_FALSE(parse_status(cut).ok()) << "header cut at " << n << " parsed (seed 11)";
  }
  EXPECT_FALSE(GgufFile::parse(file.data(), file.size() - 1).ok());  // last tensor short by 1
  // Flips: a third anywhere in the header, a third in the first 4 KiB (counts, early keys),
  // a third in the tensor infos. Each mutation is undone before the next trial.
  const size_t infos = header_end - 16 * 1024;
  int parsed = 0;
  for (int trial = 0; trial < 60; ++trial) {
    size_t pos = 0;
    switch (trial % 3) {
      case 0:
        pos = rng.next_u64() % header_end;
        break;
      case 1:
        pos = rng.next_u64() % 4096;
        break;
      default:
        pos = infos + rng.next_u64() % (header_end - infos);
        break;
    }
    const uint8_t saved = file[pos];
    file[pos] ^= static_cast<uint8_t>(1u << (rng.next_u64() % 8));
    auto g = GgufFile::parse(file.data(), file.size());
    if (g.ok()) {
      ++parsed;
      for (const GgufTensor& t : (*g)->tensors())
        ASSERT_LE(t.data + t.nbytes, file.data() + file.size()) << "seed 11 trial " << trial;
    } else {
      EXPECT_FALSE(g.status().message().empty());
    }
    file[pos] = saved;
  }
  EXPECT_GT(parsed, 0);
}

}  // namespace
}  // namespace tq::model
