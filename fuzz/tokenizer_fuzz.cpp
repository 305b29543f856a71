// libFuzzer target for the tokenizer of the default model (SmolLM2's byte-level BPE): prompts
// are input like any other. Any bytes must encode to ids of the vocabulary without crashing,
// with and without special tokens; a text made only of bytes the vocabulary has a piece for must
// come back byte for byte from decode (SmolLM2's vocabulary lacks 21 of the 256 byte pieces,
// e.g. 0x04, 0x1d, 0xff: like HF's tokenizer, encode drops those bytes); the streaming decoder,
// fed one id at a time, must give decode's bytes once flushed, and never a partial code point
// before that where those bytes are valid UTF-8.
//   TQ_FUZZ_MODEL=~/.cache/tq/models/SmolLM2-135M-Instruct.Q4_1.gguf \
//     build-fuzz/tokenizer_fuzz -max_total_time=60 -max_len=2048 CORPUS
// (the model: `bash scripts/fetch-model.sh` prints its path; without it the target exits.)
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tq/core/log.h"
#include "tq/model/gguf.h"
#include "tq/model/tokenizer.h"
#include "tq/model/unicode.h"

namespace {

std::unique_ptr<tq::model::Tokenizer> g_tok;
bool g_has_piece[256];  // byte b survives a round trip (found at start-up, one probe a byte)

// Valid UTF-8 (utf8_decode's rules: shortest forms, no surrogates, nothing past U+10FFFF), but
// for a last sequence the text may stop inside: then *complete is false.
bool valid_utf8(std::string_view s, bool* complete) {
  *complete = true;
  for (size_t i = 0; i < s.size();) {
    size_t len = 1;
    if (tq::model::utf8_decode(s, i, &len) == 0xFFFD && s.compare(i, 3, "\xEF\xBF\xBD") != 0) {
      // invalid, unless a lead byte whose sequence runs past the end, followed by its
      // continuation bytes only
      const size_t n = tq::model::utf8_sequence_length(static_cast<uint8_t>(s[i]));
      if (n == 1 || i + n <= s.size()) return false;
      for (size_t k = i + 1; k < s.size(); ++k)
        if ((static_cast<unsigned char>(s[k]) & 0xC0) != 0x80) return false;
      *complete = false;
      return true;
    }
    i += len;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  tq::set_log_level(tq::LogLevel::kError);
  const char* path = std::getenv("TQ_FUZZ_MODEL");
  if (!path || !*path) {
    std::fprintf(stderr, "tokenizer_fuzz: set TQ_FUZZ_MODEL to the default model's GGUF\n");
    std::exit(1);
  }
  auto g = tq::model::GgufFile::open(path);
  if (!g.ok()) {
    std::fprintf(stderr, "tokenizer_fuzz: %s\n", g.status().to_string().c_str());
    std::exit(1);
  }
  auto t = tq::model::load_tokenizer(**g);
  if (!t.ok()) {
    std::fprintf(stderr, "tokenizer_fuzz: %s\n", t.status().to_string().c_str());
    std::exit(1);
  }
  g_tok = std::move(t).value();
  for (int b = 0; b < 256; ++b) {
    const std::string probe = std::string("a") + static_cast<char>(b) + "b";
    g_has_piece[b] = g_tok->decode(g_tok->encode(probe, false, false)) == probe;
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  bool pieces = true;  // every byte has its piece
  for (unsigned char c : text) pieces = pieces && g_has_piece[c];
  for (bool special : {false, true}) {
    const std::vector<int32_t> ids = g_tok->encode(text, /*add_bos=*/false, special);
    for (int32_t id : ids)
      if (id < 0 || id >= g_tok->vocab_size()) __builtin_trap();
    const std::string back = g_tok->decode(ids);
    if (pieces && back != text) __builtin_trap();
    bool back_complete = true;  // (what decode gives: valid UTF-8 when no byte was dropped)
    const bool back_valid = valid_utf8(back, &back_complete);
    tq::model::TokenStreamDecoder dec(*g_tok);
    std::string joined;
    for (int32_t id : ids) {
      const std::string chunk = dec.push(id);
      bool chunk_complete = true;
      // valid UTF-8 out: whole code points only, until flush
      if (back_valid && (!valid_utf8(chunk, &chunk_complete) || !chunk_complete)) __builtin_trap();
      joined += chunk;
    }
    joined += dec.flush();
    if (joined != back) __builtin_trap();
  }
  return 0;
}
