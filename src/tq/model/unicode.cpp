// UTF-8 helpers and Unicode property lookups (see unicode.h).
#include "tq/model/unicode.h"

#include <algorithm>

namespace tq::model {

namespace unicode_detail {
extern const uint32_t kCategoryRuns[];
extern const size_t kCategoryRunCount;
}  // namespace unicode_detail

namespace {

// ASCII is most of the text the tokenizer sees: answer it from a small table.
constexpr UnicodeCategory ascii_category(uint32_t c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return UnicodeCategory::kLetter;
  if (c >= '0' && c <= '9') return UnicodeCategory::kNumber;
  if (c == ' ') return UnicodeCategory::kSeparator;
  if (c < 0x20 || c == 0x7f) return UnicodeCategory::kOther;
  if (c == '$' || c == '+' || c == '<' || c == '=' || c == '>' || c == '^' || c == '`' ||
      c == '|' || c == '~')
    return UnicodeCategory::kSymbol;
  return UnicodeCategory::kPunctuation;
}

}  // namespace

UnicodeCategory unicode_category(uint32_t cp) {
  if (cp < 0x80) return ascii_category(cp);
  if (cp > 0x10FFFF) return UnicodeCategory::kOther;
  const uint32_t* begin = unicode_detail::kCategoryRuns;
  const uint32_t* end = begin + unicode_detail::kCategoryRunCount;
  // First run whose start is > cp, then step back one.
  const uint32_t key = (cp << 8) | 0xFFu;
  const uint32_t* it = std::upper_bound(begin, end, key);
  if (it == begin) return UnicodeCategory::kOther;
  return static_cast<UnicodeCategory>(*(it - 1) & 0xFFu);
}

bool unicode_is_whitespace(uint32_t cp) {
  if (cp < 0x80) return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

size_t utf8_sequence_length(uint8_t lead) {
  if (lead < 0x80) return 1;
  if ((lead & 0xE0) == 0xC0) return 2;
  if ((lead & 0xF0) == 0xE0) return 3;
  if ((lead & 0xF8) == 0xF0) return 4;
  return 1;
}

uint32_t utf8_decode(std::string_view s, size_t pos, size_t* len) {
  constexpr uint32_t kReplacement = 0xFFFD;
  const auto b0 = static_cast<uint8_t>(s[pos]);
  *len = 1;
  if (b0 < 0x80) return b0;
  const size_t n = utf8_sequence_length(b0);
  if (n == 1 || pos + n > s.size()) return kReplacement;
  uint32_t cp = b0 & (0x7Fu >> n);
  for (size_t i = 1; i < n; ++i) {
    const auto b = static_cast<uint8_t>(s[pos + i]);
    if ((b & 0xC0) != 0x80) return kReplacement;
    cp = (cp << 6) | (b & 0x3Fu);
  }
  // Overlong forms and surrogates are invalid UTF-8.
  static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return kReplacement;
  *len = n;
  return cp;
}

void utf8_append(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

CodepointText utf8_to_codepoints(std::string_view s) {
  CodepointText t;
  t.cps.reserve(s.size());
  t.offsets.reserve(s.size() + 1);
  size_t pos = 0;
  while (pos < s.size()) {
    size_t len = 1;
    t.cps.push_back(utf8_decode(s, pos, &len));
    t.offsets.push_back(static_cast<uint32_t>(pos));
    pos += len;
  }
  t.offsets.push_back(static_cast<uint32_t>(s.size()));
  return t;
}

}  // namespace tq::model
