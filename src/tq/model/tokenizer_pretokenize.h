// Pre-tokenizers: split a text fragment into the pieces that BPE merges within, exactly as the
// regexes of GPT-2, Llama-3, Qwen2 and friends (and llama.cpp's sequence of them) would, but
// written by hand over code-point classes: std::regex is slow and has no \p{L}.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace tq::model {

// tokenizer.ggml.pre values map onto these; several names share one splitter.
enum class PreTokenizerKind {
  kDefault,  // llama.cpp's fallback: punctuation runs, GPT-2 regex, \p{N}+, [0-9]{3}
  kGpt2,     // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)
  kLlama3,   // case-insensitive contractions, [^\r\n\p{L}\p{N}]?\p{L}+, \p{N}{1,3}, newlines
  kQwen2,    // as kLlama3 with \p{N} (single digits)
  kSmollm,   // \p{N} split first (each digit alone), then the GPT-2 regex on each stretch
};

// Splits `text` into consecutive pieces; returns the byte offsets of piece boundaries
// (first 0, last text.size(); empty text gives {0}). Invalid UTF-8 bytes stay in some piece.
std::vector<uint32_t> pretokenize(PreTokenizerKind kind, std::string_view text);

}  // namespace tq::model
