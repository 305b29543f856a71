// Hand-written pre-tokenizer regexes (see tokenizer_pretokenize.h). Each regex is a function
// `match(i)` giving the end of the leftmost-alternative match starting at code point i, or i
// when nothing matches there. As in HF tokenizers' Split(Isolated) and llama.cpp's
// unicode_regex_split, text between matches is kept as its own piece, and a sequence of regexes
// applies each one to every piece the previous one produced (lookaheads see piece ends).
#include "tq/model/tokenizer_pretokenize.h"

#include <algorithm>
#include <limits>

#include "tq/model/unicode.h"

namespace tq::model {
namespace {

// Code point classes, as bits.
constexpr uint8_t kLetter = 1;    // \p{L}
constexpr uint8_t kNumber = 2;    // \p{N}
constexpr uint8_t kSpace = 4;     // \s (White_Space)
constexpr uint8_t kPunct = 8;     // [\p{P}$+<=>^~|] (llama.cpp's default first regex)
constexpr uint8_t kDigit = 16;    // [0-9]
constexpr uint8_t kNewline = 32;  // [\r\n]
constexpr uint32_t kUnlimited = std::numeric_limits<uint32_t>::max();

uint8_t classify(uint32_t cp) {
  uint8_t c = 0;
  switch (unicode_category(cp)) {
    case UnicodeCategory::kLetter:
      c |= kLetter;
      break;
    case UnicodeCategory::kNumber:
      c |= kNumber;
      break;
    case UnicodeCategory::kPunctuation:
      c |= kPunct;
      break;
    default:
      break;
  }
  if (unicode_is_whitespace(cp)) c |= kSpace;
  if (cp >= '0' && cp <= '9') c |= kDigit;
  if (cp == '\r' || cp == '\n') c |= kNewline;
  if (cp == '$' || cp == '+' || cp == '<' || cp == '=' || cp == '>' || cp == '^' || cp == '~' ||
      cp == '|')
    c |= kPunct;
  return c;
}

// [^\s\p{L}\p{N}]
inline bool is_other(uint8_t c) { return (c & (kSpace | kLetter | kNumber)) == 0; }

// The view one regex works on: code points and their classes over [begin, end).
struct Span {
  const uint32_t* cps;
  const uint8_t* cls;
  uint32_t end;

  uint32_t run(uint32_t i, uint8_t mask) const {
    while (i < end && (cls[i] & mask)) ++i;
    return i;
  }
  uint32_t run_other(uint32_t i) const {
    while (i < end && is_other(cls[i])) ++i;
    return i;
  }
};

inline uint32_t ascii_lower(uint32_t c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

// 's|'t|'re|'ve|'m|'ll|'d, optionally ASCII-case-insensitive.
uint32_t match_contraction(const Span& s, uint32_t i, bool icase) {
  if (s.cps[i] != '\'' || i + 1 >= s.end) return i;
  const uint32_t c1 = icase ? ascii_lower(s.cps[i + 1]) : s.cps[i + 1];
  if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return i + 2;
  if (i + 2 >= s.end) return i;
  const uint32_t c2 = icase ? ascii_lower(s.cps[i + 2]) : s.cps[i + 2];
  if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
    return i + 3;
  return i;
}

// \s+(?!\S): a whitespace run, less its last code point when non-space follows it.
uint32_t match_space_run(const Span& s, uint32_t i) {
  const uint32_t j = s.run(i, kSpace);
  if (j == s.end) return j;
  return j - i >= 2 ? j - 1 : i;
}

// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)
uint32_t match_gpt2(const Span& s, uint32_t i) {
  if (uint32_t m = match_contraction(s, i, false); m > i) return m;
  const uint32_t k = (s.cps[i] == ' ') ? i + 1 : i;
  if (k < s.end) {
    const uint8_t c = s.cls[k];
    if (c & kLetter) return s.run(k, kLetter);
    if (c & kNumber) return s.run(k, kNumber);
    if (is_other(c)) return s.run_other(k);
  }
  if (s.cls[i] & kSpace) return match_space_run(s, i);
  return i;
}

// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max_digits}|
//  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
uint32_t match_llama3(const Span& s, uint32_t i, uint32_t max_digits) {
  if (uint32_t m = match_contraction(s, i, true); m > i) return m;
  const uint8_t c = s.cls[i];
  if (c & kLetter) return s.run(i, kLetter);
  if (!(c & (kNewline | kLetter | kNumber)) && i + 1 < s.end && (s.cls[i + 1] & kLetter))
    return s.run(i + 1, kLetter);
  if (c & kNumber) return std::min(s.run(i, kNumber), i + max_digits);
  const uint32_t k = (s.cps[i] == ' ') ? i + 1 : i;
  if (k < s.end && is_other(s.cls[k])) return s.run(s.run_other(k), kNewline);
  if (c & kSpace) {
    const uint32_t j = s.run(i, kSpace);
    for (uint32_t t = j; t > i; --t)  // \s*[\r\n]+ ends after the run's last newline
      if (s.cls[t - 1] & kNewline) return t;
    const uint32_t m = match_space_run(s, i);
    return m > i ? m : j;  // \s+ when the lookahead form fails
  }
  return i;
}

enum class Stage { kGpt2, kLlama3, kQwen2, kPunctRuns, kEachNumber, kNumberRuns, kDigitTriples };

// Appends the boundaries (after `begin`) of the pieces `stage` cuts [begin, end) into.
void split(Stage stage, const Span& s, uint32_t begin, std::vector<uint32_t>* out) {
  uint32_t gap = begin;  // start of unmatched text not yet emitted
  auto emit = [&](uint32_t from, uint32_t to) {
    if (gap < from) out->push_back(from);
    out->push_back(to);
    gap = to;
  };
  // Runs of `mask` code points, cut into matches of min_len..max_len.
  auto runs = [&](uint8_t mask, uint32_t min_len, uint32_t max_len) {
    uint32_t i = begin;
    while (i < s.end) {
      if (!(s.cls[i] & mask)) {
        ++i;
        continue;
      }
      uint32_t j = i;
      while (j < s.end && (s.cls[j] & mask) && j - i < max_len) ++j;
      if (j - i >= min_len) emit(i, j);
      i = j;  // a shorter tail of the same run cannot match either
    }
  };
  switch (stage) {
    case Stage::kPunctRuns:
      runs(kPunct, 1, kUnlimited);
      break;
    case Stage::kEachNumber:
      runs(kNumber, 1, 1);
      break;
    case Stage::kNumberRuns:
      runs(kNumber, 1, kUnlimited);
      break;
    case Stage::kDigitTriples:
      runs(kDigit, 3, 3);
      break;
    case Stage::kGpt2:
    case Stage::kLlama3:
    case Stage::kQwen2:
      for (uint32_t i = begin; i < s.end;) {
        const uint32_t m = stage == Stage::kGpt2     ? match_gpt2(s, i)
                           : stage == Stage::kLlama3 ? match_llama3(s, i, 3)
                                                     : match_llama3(s, i, 1);
        if (m > i) {
          emit(i, m);
          i = m;
        } else {
          ++i;
        }
      }
      break;
  }
  if (gap < s.end) out->push_back(s.end);
}

std::vector<Stage> stages_for(PreTokenizerKind kind) {
  switch (kind) {
    case PreTokenizerKind::kGpt2:
      return {Stage::kGpt2};
    case PreTokenizerKind::kLlama3:
      return {Stage::kLlama3};
    case PreTokenizerKind::kQwen2:
      return {Stage::kQwen2};
    case PreTokenizerKind::kSmollm:
      return {Stage::kEachNumber, Stage::kGpt2};
    case PreTokenizerKind::kDefault:
      break;
  }
  return {Stage::kPunctRuns, Stage::kGpt2, Stage::kNumberRuns, Stage::kDigitTriples};
}

}  // namespace

std::vector<uint32_t> pretokenize(PreTokenizerKind kind, std::string_view text) {
  const CodepointText t = utf8_to_codepoints(text);
  const auto n = static_cast<uint32_t>(t.cps.size());
  std::vector<uint8_t> cls(n);
  for (uint32_t i = 0; i < n; ++i) cls[i] = classify(t.cps[i]);

  std::vector<uint32_t> bounds = {0};  // code point indices
  if (n > 0) bounds.push_back(n);
  std::vector<uint32_t> next;
  for (Stage stage : stages_for(kind)) {
    next.assign(1, 0);
    for (size_t p = 0; p + 1 < bounds.size(); ++p) {
      const Span span{t.cps.data(), cls.data(), bounds[p + 1]};
      split(stage, span, bounds[p], &next);
    }
    bounds.swap(next);
  }
  for (uint32_t& b : bounds) b = t.offsets[b];
  return bounds;
}

}  // namespace tq::model
