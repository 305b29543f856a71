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

namespace {

std::unique_ptr<tq::model::Tokenizer> g_tok;
bool g_has_piece[256];  // byte b survives a round trip (found at start-up, one probe a byte)

// Strict UTF-8: shortest forms only, no surrogates, nothing past U+10FFFF. `complete`: the last
// sequence is whole (false when the text ends inside one, which is still a valid prefix).
bool valid_utf8(std::string_view s, bool* complete) {
  *complete = true;
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    int n = 0;
    uint32_t cp = 0, min = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      n = 1, cp = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      n = 2, cp = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      n = 3, cp = c & 0x07, min = 0x10000;
    } else {
      return false;
    }
    if (i + n >= s.size()) {  // the text ends inside this sequence
      for (size_t k = i + 1; k < s.size(); ++k)
        if ((static_cast<unsigned char>(s[k]) & 0xC0) != 0x80) return false;
      *complete = false;
      return true;
    }
    for (int k = 1; k <= n; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (b & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
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
