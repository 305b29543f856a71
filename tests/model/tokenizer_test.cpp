// Tokenizer tests: ids equal to the HF reference tokenizer on the default model (goldens from
// scripts/fixtures/make_tokenizer_fixtures.py), the hand-written pre-tokenizer regexes equal to
// HF's regex engine, round trips, the streaming decoder, and speed on the whole novel.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <ctime>
#include <fstream>
#include <sstream>

#include "test_env.h"
#include "tq/model/gguf.h"
#include "tq/model/tokenizer.h"
#include "tq/model/unicode.h"

namespace tq::model {
namespace {

nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  EXPECT_TRUE(f.good()) << "cannot open " << path;
  std::stringstream ss;
  ss << f.rdbuf();
  return nlohmann::json::parse(ss.str());
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// First index where two id lists differ, for a readable failure.
std::string first_diff(const std::vector<int32_t>& got, const std::vector<int32_t>& want) {
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  std::ostringstream os;
  os << "first difference at index " << i << " of " << got.size() << " (got) / " << want.size()
     << " (want):";
  for (size_t k = i; k < i + 6 && k < got.size(); ++k) os << " got[" << k << "]=" << got[k];
  for (size_t k = i; k < i + 6 && k < want.size(); ++k) os << " want[" << k << "]=" << want[k];
  return os.str();
}

bool is_complete_utf8(const std::string& s) {
  for (size_t pos = 0; pos < s.size();) {
    size_t len = 1;
    const uint32_t cp = utf8_decode(s, pos, &len);
    if (cp == 0xFFFD && s.compare(pos, 3, "\xEF\xBF\xBD") != 0) return false;
    pos += len;
  }
  return true;
}

// Loads the default model's tokenizer once for the suite (ASan builds take ~1 s per load).
class SmolLm2Tokenizer : public ::testing::Test {
 protected:
  static void TearDownTestSuite() { shared_.reset(); }
  void SetUp() override {
    TQ_REQUIRE_FILE(tq::test::model_path());
    if (!shared_) {
      auto g = GgufFile::open(tq::test::model_path());
      ASSERT_TRUE(g.ok()) << g.status().to_string();
      auto t = load_tokenizer(**g);
      ASSERT_TRUE(t.ok()) << t.status().to_string();
      shared_ = std::move(t).value();
    }
    tok_ = shared_.get();
  }
  static std::unique_ptr<Tokenizer> shared_;
  const Tokenizer* tok_ = nullptr;
};
std::unique_ptr<Tokenizer> SmolLm2Tokenizer::shared_;

TEST_F(SmolLm2Tokenizer, MetadataAndSpecialIds) {
  EXPECT_EQ(tok_->vocab_size(), 49152);
  EXPECT_EQ(tok_->model(), TokenizerModel::kBpe);
  EXPECT_EQ(tok_->bos_id(), 1);
  EXPECT_EQ(tok_->eos_id(), 2);
  EXPECT_EQ(tok_->eot_id(), 2);  // <|im_end|>, guessed from the text: the GGUF has no eot key
  EXPECT_FALSE(tok_->add_bos_default());
  EXPECT_TRUE(tok_->is_eog(2));  // <|im_end|>
  EXPECT_TRUE(tok_->is_eog(0));  // <|endoftext|>
  EXPECT_FALSE(tok_->is_eog(1));
  EXPECT_FALSE(tok_->is_eog(100));
  EXPECT_EQ(tok_->token_to_piece(1), "<|im_start|>");
  EXPECT_EQ(tok_->token_text(216), "\xC4\xA0");  // "Ġ"
  EXPECT_EQ(tok_->token_to_piece(216), " ");
  EXPECT_EQ(tok_->token_to_piece(-1), "");
  EXPECT_EQ(tok_->token_to_piece(49152), "");
  EXPECT_NE(tok_->chat_template().find("<|im_start|>"), std::string::npos);
  EXPECT_EQ(tok_->encode("", true, true), std::vector<int32_t>{1});
}

// Every golden case: exact ids, and decode(encode(x)) == x.
TEST_F(SmolLm2Tokenizer, MatchesReferenceTokenizer) {
  const nlohmann::json fx = read_json(tq::test::fixture_path("tokenizer_smollm2.json"));
  ASSERT_GE(fx["cases"].size(), 20u);
  for (const auto& c : fx["cases"]) {
    const std::string name = c["name"];
    const std::string text = c["text"];
    const std::vector<int32_t> want = c["ids"].get<std::vector<int32_t>>();
    const std::vector<int32_t> got = tok_->encode(text, false, c["parse_special"].get<bool>());
    EXPECT_EQ(got, want) << "case " << name << ": " << first_diff(got, want);
    EXPECT_EQ(tok_->decode(got), text) << "round trip of case " << name;
  }
}

TEST_F(SmolLm2Tokenizer, SpecialTokensOnlyWhenParsing) {
  const std::string text = "<|im_start|>user\nHi<|im_end|>";
  const auto on = tok_->encode(text, false, true);
  const auto off = tok_->encode(text, false, false);
  ASSERT_GE(on.size(), 3u);
  EXPECT_EQ(on.front(), 1);
  EXPECT_EQ(on.back(), 2);
  for (int32_t id : off) EXPECT_GT(id, 16) << "control token matched with parse_special off";
  EXPECT_EQ(tok_->decode(on), text);
  EXPECT_EQ(tok_->decode(off), text);
}

// Byte-level BPE is lossless for any bytes the vocabulary has, not only valid UTF-8; bytes it
// lacks (0xFF never occurs in UTF-8, SmolLM2 has no token for it) are dropped, as in HF.
TEST_F(SmolLm2Tokenizer, InvalidUtf8RoundTrips) {
  const std::string text =
      std::string("ok \xC3 trunc \xE2\x82 x \x80\x80 ") + std::string("\0nul", 4) + " \xF0\x9F\x98";
  const auto ids = tok_->encode(text, false, false);
  EXPECT_FALSE(ids.empty());
  EXPECT_EQ(tok_->decode(ids), text);
  EXPECT_EQ(tok_->decode(tok_->encode("a\xFF\xFE"
                                      "b",
                                      false, false)),
            "ab");
}

TEST_F(SmolLm2Tokenizer, StreamDecoderHoldsPartialUtf8) {
  const std::string text = "Emoji 😀👍🏽 CJK 你好 accents é and ✨ end";
  const auto ids = tok_->encode(text, false, false);
  TokenStreamDecoder dec(*tok_);
  std::string joined;
  size_t held_back = 0;
  for (int32_t id : ids) {
    const std::string piece = tok_->token_to_piece(id);
    const std::string chunk = dec.push(id);
    EXPECT_TRUE(is_complete_utf8(chunk)) << "chunk with a partial sequence after id " << id;
    if (chunk.size() < piece.size()) ++held_back;
    joined += chunk;
  }
  joined += dec.flush();
  EXPECT_EQ(joined, text);
  EXPECT_GT(held_back, 0u) << "the text should contain tokens that split a code point";
  // A truncated sequence at the end of the stream comes out of flush().
  TokenStreamDecoder dec2(*tok_);
  const auto partial = tok_->encode("\xE4\xBD", false, false);
  std::string out;
  for (int32_t id : partial) out += dec2.push(id);
  EXPECT_EQ(out, "");
  EXPECT_EQ(dec2.flush(), "\xE4\xBD");
}

// The whole novel: token count and a position-weighted checksum equal to the reference, the
// round trip, and the speed (docs/tokenizer.md quotes the printed line).
TEST_F(SmolLm2Tokenizer, WholeNovel) {
  TQ_REQUIRE_FILE(tq::test::novel_path());
  const std::string novel = read_file(tq::test::novel_path());
  const nlohmann::json fx = read_json(tq::test::fixture_path("tokenizer_smollm2.json"));
  // CPU time as well as wall time: the test machine is often shared and loaded.
  const auto t0 = std::chrono::steady_clock::now();
  const std::clock_t c0 = std::clock();
  const std::vector<int32_t> ids = tok_->encode(novel, false, false);
  const double cpu = static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::clock_t c1 = std::clock();
  const std::string back = tok_->decode(ids);
  const double dcpu = static_cast<double>(std::clock() - c1) / CLOCKS_PER_SEC;
  std::printf(
      "novel: %zu bytes -> %zu tokens, encode %.3f s cpu / %.3f s wall (%.2f M tokens/s "
      "cpu), decode %.3f s cpu\n",
      novel.size(), ids.size(), cpu, secs, ids.size() / cpu / 1e6, dcpu);
  EXPECT_EQ(back, novel);
  ASSERT_TRUE(fx.contains("novel_full"));
  EXPECT_EQ(ids.size(), fx["novel_full"]["tokens"].get<size_t>());
  uint64_t sum = 0;
  constexpr uint64_t kMod = uint64_t{1} << 61;
  for (size_t i = 0; i < ids.size(); ++i)
    sum = (sum + (i + 1) * static_cast<uint64_t>(ids[i])) % kMod;
  EXPECT_EQ(sum, fx["novel_full"]["weighted_sum"].get<uint64_t>());
  // Generous: sanitizer builds run several times slower than the ~0.1-0.3 s of a release build.
  EXPECT_LT(secs, 20.0);
}

// The allocation-free merge for short pieces gives the heap reference's ids on every piece of
// the novel's first 150 kB, and the long pieces of a synthetic text exercise the heap path inside
// encode().
TEST_F(SmolLm2Tokenizer, ShortPiecePathMatchesHeapReference) {
  TQ_REQUIRE_FILE(tq::test::novel_path());
  std::string text = read_file(tq::test::novel_path()).substr(0, 150000);  // ~37k tokens
  text += " " + std::string(200, '=') + " " + std::string(64, 'x') + "\n\n\n" +
          "\xE4\xBD\xA0\xE5\xA5\xBD\xE4\xB8\x96\xE7\x95\x8C" + std::string(90, ' ') + "z";
  const std::vector<uint32_t> b = pretokenize(PreTokenizerKind::kSmollm, text);
  std::vector<int32_t> ref;
  size_t long_pieces = 0;
  for (size_t i = 0; i + 1 < b.size(); ++i) {
    const auto r = tok_->bpe_piece_ref(std::string_view(text).substr(b[i], b[i + 1] - b[i]));
    ref.insert(ref.end(), r.begin(), r.end());
    long_pieces += b[i + 1] - b[i] > 48;
  }
  EXPECT_GE(long_pieces, 3u);
  const auto got = tok_->encode(text, false, false);
  EXPECT_EQ(got, ref) << first_diff(got, ref);
}

// The hand-written regexes split exactly as HF tokenizers' regex engine does with llama.cpp's
// patterns, for every pre-tokenizer (the model above only exercises "smollm").
TEST(PreTokenizer, MatchesReferenceRegexes) {
  const nlohmann::json fx = read_json(tq::test::fixture_path("tokenizer_pretok.json"));
  const std::pair<const char*, PreTokenizerKind> kinds[] = {
      {"gpt2", PreTokenizerKind::kGpt2},       {"llama3", PreTokenizerKind::kLlama3},
      {"qwen2", PreTokenizerKind::kQwen2},     {"smollm", PreTokenizerKind::kSmollm},
      {"default", PreTokenizerKind::kDefault},
  };
  for (const auto& [name, kind] : kinds) {
    ASSERT_TRUE(fx["pretokenizers"].contains(name)) << name;
    for (const auto& c : fx["pretokenizers"][name]) {
      const std::string text = c["text"];
      const auto want = c["pieces"].get<std::vector<std::string>>();
      const std::vector<uint32_t> b = pretokenize(kind, text);
      std::vector<std::string> got;
      for (size_t i = 0; i + 1 < b.size(); ++i) got.push_back(text.substr(b[i], b[i + 1] - b[i]));
      EXPECT_EQ(got, want) << name << " / " << c["name"].get<std::string>();
    }
  }
}

TEST(PreTokenizer, NamesMapToKinds) {
  EXPECT_EQ(pre_tokenizer_from_name("smollm").value(), PreTokenizerKind::kSmollm);
  EXPECT_EQ(pre_tokenizer_from_name("llama-bpe").value(), PreTokenizerKind::kLlama3);
  EXPECT_EQ(pre_tokenizer_from_name("qwen2").value(), PreTokenizerKind::kQwen2);
  EXPECT_EQ(pre_tokenizer_from_name("gpt2").value(), PreTokenizerKind::kGpt2);
  EXPECT_EQ(pre_tokenizer_from_name("default").value(), PreTokenizerKind::kDefault);
  const auto bad = pre_tokenizer_from_name("no-such-pre");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kUnsupported);
}

TEST(Unicode, CategoriesAndWhitespace) {
  EXPECT_EQ(unicode_category('a'), UnicodeCategory::kLetter);
  EXPECT_EQ(unicode_category(0x00E9), UnicodeCategory::kLetter);       // é
  EXPECT_EQ(unicode_category(0x4F60), UnicodeCategory::kLetter);       // 你
  EXPECT_EQ(unicode_category(0x0663), UnicodeCategory::kNumber);       // Arabic-Indic 3
  EXPECT_EQ(unicode_category(0x00BD), UnicodeCategory::kNumber);       // ½
  EXPECT_EQ(unicode_category(0x0301), UnicodeCategory::kMark);         // combining acute
  EXPECT_EQ(unicode_category(0x1F600), UnicodeCategory::kSymbol);      // 😀
  EXPECT_EQ(unicode_category(0x3002), UnicodeCategory::kPunctuation);  // 。
  EXPECT_EQ(unicode_category(0x10FFFF), UnicodeCategory::kOther);
  EXPECT_EQ(unicode_category(0x110000), UnicodeCategory::kOther);
  EXPECT_TRUE(unicode_is_whitespace(0x3000));
  EXPECT_TRUE(unicode_is_whitespace(0x85));
  EXPECT_FALSE(unicode_is_whitespace(0x200B));  // zero width space is not White_Space
}

// Byte-level BPE on a tiny hand-made vocabulary: merge order by rank, leftmost on ties.
TokenizerData tiny_bpe() {
  TokenizerData d;
  d.model = TokenizerModel::kBpe;
  d.pre = PreTokenizerKind::kGpt2;
  for (int c = 0; c < 256; ++c) d.tokens.push_back("");  // filled below by byte-level text
  // GPT-2 byte map for the printable bytes used here is the identity; space is "Ġ" (U+0120).
  for (int c = 0; c < 256; ++c) d.tokens[c] = "<unused" + std::to_string(c) + ">";
  for (char c : std::string("abcd")) d.tokens[static_cast<uint8_t>(c)] = std::string(1, c);
  d.tokens[' '] = "\xC4\xA0";
  d.tokens.push_back("aa");   // 256
  d.tokens.push_back("ab");   // 257
  d.tokens.push_back("abc");  // 258
  d.tokens.push_back(
      "\xC4\xA0"
      "a");                     // 259 "Ġa"
  d.tokens.push_back("<ctl>");  // 260
  d.tokens.push_back("<usr>");  // 261
  d.token_types.assign(d.tokens.size(), 1);
  d.token_types[260] = 3;
  d.token_types[261] = 4;
  d.merges = {"a b", "a a", "ab c", "\xC4\xA0 a"};
  d.eos_id = 260;
  return d;
}

TEST(BpeTokenizer, MergesByRankLeftmostFirst) {
  auto t = Tokenizer::create(tiny_bpe());
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  const Tokenizer& tok = **t;
  // "aaab": (a,b) has rank 0 so it merges first; then (a,a) leftmost; "abc" needs ab+c.
  EXPECT_EQ(tok.encode("aaab", false, false), (std::vector<int32_t>{256, 257}));
  EXPECT_EQ(tok.encode("aaa", false, false), (std::vector<int32_t>{256, 'a'}));
  EXPECT_EQ(tok.encode("abcd", false, false), (std::vector<int32_t>{258, 'd'}));
  EXPECT_EQ(tok.encode("b a", false, false), (std::vector<int32_t>{'b', 259}));
  // Control tokens only with parse_special; user-defined ones always (as HF and llama.cpp).
  EXPECT_EQ(tok.encode("a<ctl>", false, true), (std::vector<int32_t>{'a', 260}));
  EXPECT_EQ(tok.encode("<usr>a", false, false), (std::vector<int32_t>{261, 'a'}));
  EXPECT_NE(tok.encode("a<ctl>", false, false).back(), 260);
  EXPECT_TRUE(tok.is_eog(260));
  EXPECT_EQ(tok.decode({'b', 259, 260}), "b a<ctl>");
}

TEST(BpeTokenizer, RejectsInconsistentData) {
  TokenizerData d = tiny_bpe();
  d.token_types.pop_back();
  EXPECT_EQ(Tokenizer::create(d).status().code(), StatusCode::kInvalidArgument);
  d = tiny_bpe();
  d.bos_id = 100000;
  EXPECT_EQ(Tokenizer::create(d).status().code(), StatusCode::kInvalidArgument);
  d = tiny_bpe();
  d.tokens.clear();
  d.token_types.clear();
  EXPECT_EQ(Tokenizer::create(d).status().code(), StatusCode::kInvalidArgument);
  d = tiny_bpe();
  d.merges.push_back("nospace");
  d.merges.push_back("zz qq");  // unknown tokens: skipped with a warning, not an error
  EXPECT_TRUE(Tokenizer::create(d).ok());
}

// SentencePiece BPE on a synthetic vocabulary (no Llama-2 model is around); ids checked by hand:
// 0 <unk>, 1 <s>, 2 </s>, 3..258 <0x00>..<0xFF>, then the pieces below with their scores.
TokenizerData tiny_spm() {
  TokenizerData d;
  d.model = TokenizerModel::kSpm;
  d.tokens = {"<unk>", "<s>", "</s>"};
  d.token_types = {2, 3, 3};
  d.scores = {0, 0, 0};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
    d.tokens.push_back(buf);
    d.token_types.push_back(6);
    d.scores.push_back(0);
  }
  const std::pair<const char*, float> pieces[] = {
      {"\xE2\x96\x81", -10.0f},  // 259 "▁"
      {"a", -5.0f},              // 260
      {"b", -5.0f},              // 261
      {"c", -5.0f},              // 262
      {"ab", -1.0f},             // 263
      {"bc", -0.5f},             // 264
      {"\xE2\x96\x81"
       "a",
       -2.0f},         // 265 "▁a"
      {"abc", -0.1f},  // 266
      {"\xE2\x96\x81"
       "ab",
       -3.0f},              // 267 "▁ab"
      {"\xC3\xA9", -6.0f},  // 268 "é"
      {"aa", -1.5f},        // 269
  };
  for (const auto& [text, score] : pieces) {
    d.tokens.push_back(text);
    d.token_types.push_back(1);
    d.scores.push_back(score);
  }
  d.bos_id = 1;
  d.eos_id = 2;
  d.unk_id = 0;
  d.add_bos = true;
  d.add_space_prefix = true;
  return d;
}

TEST(SpmTokenizer, MergesByScoreWithByteFallback) {
  auto t = Tokenizer::create(tiny_spm());
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  const Tokenizer& tok = **t;
  using Ids = std::vector<int32_t>;
  // "▁abc": bc (-0.5) beats ab (-1) and ▁a (-2); then a+bc = abc (-0.1); "▁abc" is no token.
  EXPECT_EQ(tok.encode("abc", false, false), (Ids{259, 266}));
  EXPECT_EQ(tok.encode("abc", true, false), (Ids{1, 259, 266}));
  // "▁ab▁c": ab first, then ▁+ab = ▁ab (-3); "▁c" is no token.
  EXPECT_EQ(tok.encode("ab c", false, false), (Ids{267, 259, 262}));
  // Equal scores: the leftmost pair merges first ("▁" "aa" "a", not "▁" "a" "aa").
  EXPECT_EQ(tok.encode("aaa", false, false), (Ids{259, 269, 260}));
  // Characters outside the vocabulary fall back to <0xXX>: 'x' = 0x78 -> 3 + 0x78.
  EXPECT_EQ(tok.encode("x", false, false), (Ids{259, 3 + 0x78}));
  EXPECT_EQ(tok.encode("\xC3\xA9", false, false), (Ids{259, 268}));                 // é
  EXPECT_EQ(tok.encode("\xC3\xBC", false, false), (Ids{259, 3 + 0xC3, 3 + 0xBC}));  // ü
  // Special tokens: the text after one gets the space prefix again, as in llama.cpp.
  EXPECT_EQ(tok.encode("a</s>a", false, true), (Ids{265, 2, 265}));
  EXPECT_EQ(tok.encode("a</s>a", false, false).size(), 6u);  // ▁a < / s > a as pieces/bytes
  EXPECT_EQ(tok.encode("", true, false), (Ids{1}));
  // Decode: "▁" is a space, bytes are bytes, the prefix space is removed from the first token.
  EXPECT_EQ(tok.decode({259, 266}), "abc");
  EXPECT_EQ(tok.decode({1, 259, 266}), "<s> abc");
  EXPECT_EQ(tok.token_to_piece(3 + 0xC3), "\xC3");
  EXPECT_EQ(tok.token_to_piece(267), " ab");
  for (const char* text :
       {"abc", "ab c", "aaa", "x", "\xC3\xBC and \xC3\xA9!", " lead", "two  sp"}) {
    EXPECT_EQ(tok.decode(tok.encode(text, false, false)), text) << text;
  }
  EXPECT_TRUE(tok.is_eog(2));
  EXPECT_EQ(tok.eot_id(), -1);
}

TEST(SpmTokenizer, MissingByteTokensBecomeUnk) {
  TokenizerData d = tiny_spm();
  d.token_types[3 + 'x'] = 1;  // no longer a byte token
  d.tokens[3 + 'x'] = "<not-a-byte>";
  auto t = Tokenizer::create(d);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ((*t)->encode("x", false, false), (std::vector<int32_t>{259, 0}));
}

}  // namespace
}  // namespace tq::model
