// Jinja lexer for chat templates: splits the source into text and tag tokens, applying
// Jinja's whitespace control exactly as transformers configures it (trim_blocks,
// lstrip_blocks, "-" and "+" modifiers, newline normalisation, no trailing newline).
#include "tq/model/chat_template_lex.h"

#include <cstdlib>

namespace tq::model::jinja {
namespace {

bool is_ws(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}
bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

Status lex_error(int line, const std::string& msg) {
  return invalid_argument("chat template line " + std::to_string(line) + ": " + msg);
}

// Appends one escape of a string literal (after the backslash) to out; Python's rules.
size_t lex_escape(std::string_view s, size_t p, std::string* out) {
  const char c = s[p];
  auto hex = [&](size_t n) -> size_t {
    uint32_t v = 0;
    for (size_t k = 1; k <= n; ++k) {
      if (p + k >= s.size()) return 0;
      const char h = s[p + k];
      const int d = is_digit(h)              ? h - '0'
                    : (h >= 'a' && h <= 'f') ? h - 'a' + 10
                    : (h >= 'A' && h <= 'F') ? h - 'A' + 10
                                             : -1;
      if (d < 0) return 0;
      v = v * 16 + static_cast<uint32_t>(d);
    }
    if (v > 0x10FFFF) return 0;
    utf8_append(v, out);
    return n + 1;
  };
  switch (c) {
    case 'n':
      *out += '\n';
      return 1;
    case 't':
      *out += '\t';
      return 1;
    case 'r':
      *out += '\r';
      return 1;
    case '\\':
      *out += '\\';
      return 1;
    case '\'':
      *out += '\'';
      return 1;
    case '"':
      *out += '"';
      return 1;
    case '0':
      *out += '\0';
      return 1;
    case 'a':
      *out += '\a';
      return 1;
    case 'b':
      *out += '\b';
      return 1;
    case 'f':
      *out += '\f';
      return 1;
    case 'v':
      *out += '\v';
      return 1;
    case '\n':
      return 1;  // line continuation
    case 'x':
      if (size_t n = hex(2)) return n;
      break;
    case 'u':
      if (size_t n = hex(4)) return n;
      break;
    case 'U':
      if (size_t n = hex(8)) return n;
      break;
    default:
      break;
  }
  *out += '\\';  // unknown escapes stay as written, as in Python
  *out += c;
  return 1;
}

}  // namespace

Expected<std::vector<Token>> lex_template(std::string_view raw) {
  // Jinja normalises newlines to "\n" and drops one trailing newline (keep_trailing_newline off).
  std::string src;
  src.reserve(raw.size());
  for (size_t k = 0; k < raw.size(); ++k) {
    if (raw[k] == '\r') {
      src += '\n';
      if (k + 1 < raw.size() && raw[k + 1] == '\n') ++k;
    } else {
      src += raw[k];
    }
  }
  if (!src.empty() && src.back() == '\n') src.pop_back();

  std::vector<Token> out;
  const size_t n = src.size();
  size_t pos = 0;
  int line = 1;
  bool strip_next = false;
  auto count_lines = [&](size_t from, size_t to) {
    for (size_t k = from; k < to && k < n; ++k) line += src[k] == '\n';
  };
  while (pos < n) {
    size_t tag = pos;
    while ((tag = src.find('{', tag)) != std::string::npos) {
      if (tag + 1 < n && (src[tag + 1] == '{' || src[tag + 1] == '%' || src[tag + 1] == '#')) break;
      ++tag;
    }
    const size_t text_end = tag == std::string::npos ? n : tag;
    std::string text = src.substr(pos, text_end - pos);
    const int text_line = line;
    count_lines(pos, text_end);
    if (strip_next) {
      size_t k = 0;
      while (k < text.size() && is_ws(text[k])) ++k;
      text.erase(0, k);
      strip_next = false;
    }
    if (tag != std::string::npos) {
      const char kind = src[tag + 1];
      const char mod = tag + 2 < n ? src[tag + 2] : '\0';
      if (mod == '-') {
        while (!text.empty() && is_ws(text.back())) text.pop_back();
      } else if (mod != '+' && kind != '{') {
        // lstrip_blocks: spaces and tabs between the line start and a block or comment tag.
        size_t k = text.size();
        while (k > 0 && (text[k - 1] == ' ' || text[k - 1] == '\t')) --k;
        const bool line_start = k > 0 ? text[k - 1] == '\n' : (pos == 0 || src[pos - 1] == '\n');
        if (line_start) text.resize(k);
      }
    }
    if (!text.empty()) out.push_back(Token{Token::Kind::kText, std::move(text), 0, 0.0, text_line});
    if (tag == std::string::npos) break;

    const char kind = src[tag + 1];
    size_t p = tag + 2;
    if (p < n && (src[p] == '-' || src[p] == '+')) ++p;
    if (kind == '#') {
      const size_t end = src.find("#}", p);
      if (end == std::string::npos) return lex_error(line, "unterminated comment");
      count_lines(tag, end);
      pos = end + 2;
      if (end > p && src[end - 1] == '-')
        strip_next = true;
      else if (!(end > p && src[end - 1] == '+') && pos < n && src[pos] == '\n')
        ++pos, ++line;
      continue;
    }
    const bool is_stmt = kind == '%';
    const int tag_line = line;
    out.push_back(
        Token{is_stmt ? Token::Kind::kStmtBegin : Token::Kind::kExprBegin, "", 0, 0.0, line});
    const char close = is_stmt ? '%' : '}';
    int depth = 0;  // brackets open inside the tag: "}}" in "{{ {'a': {}}}}" is not the end
    bool closed = false;
    while (p < n) {
      const char c = src[p];
      if (is_ws(c)) {
        line += c == '\n';
        ++p;
        continue;
      }
      if (depth == 0) {
        size_t q = p;
        char m = '\0';
        if ((c == '-' || (c == '+' && is_stmt)) && p + 1 < n && src[p + 1] == close) m = c, ++q;
        if (q + 1 < n && src[q] == close && src[q + 1] == '}') {
          out.push_back(
              Token{is_stmt ? Token::Kind::kStmtEnd : Token::Kind::kExprEnd, "", 0, 0.0, line});
          pos = q + 2;
          if (m == '-')
            strip_next = true;
          else if (is_stmt && m != '+' && pos < n && src[pos] == '\n')
            ++pos, ++line;
          closed = true;
          break;
        }
      }
      if (is_name_start(c)) {
        size_t e = p;
        while (e < n && (is_name_start(src[e]) || is_digit(src[e]))) ++e;
        out.push_back(Token{Token::Kind::kName, src.substr(p, e - p), 0, 0.0, line});
        p = e;
      } else if (is_digit(c)) {
        size_t e = p;
        while (e < n && (is_digit(src[e]) || src[e] == '_')) ++e;
        bool is_float = false;
        if (e + 1 < n && src[e] == '.' && is_digit(src[e + 1])) {
          is_float = true;
          for (++e; e < n && is_digit(src[e]);) ++e;
        }
        if (e < n && (src[e] == 'e' || src[e] == 'E')) {
          size_t f = e + 1;
          if (f < n && (src[f] == '+' || src[f] == '-')) ++f;
          if (f < n && is_digit(src[f])) {
            is_float = true;
            for (e = f; e < n && is_digit(src[e]);) ++e;
          }
        }
        std::string num;
        for (size_t k = p; k < e; ++k)
          if (src[k] != '_') num += src[k];
        Token t{is_float ? Token::Kind::kFloat : Token::Kind::kInt, num, 0, 0.0, line};
        if (is_float)
          t.f = std::strtod(num.c_str(), nullptr);
        else
          t.i = std::strtoll(num.c_str(), nullptr, 10);
        out.push_back(std::move(t));
        p = e;
      } else if (c == '\'' || c == '"') {
        std::string s;
        size_t e = p + 1;
        while (e < n && src[e] != c) {
          if (src[e] == '\\' && e + 1 < n) {
            e += 1 + lex_escape(src, e + 1, &s);
          } else {
            line += src[e] == '\n';
            s += src[e++];
          }
        }
        if (e >= n) return lex_error(line, "unterminated string literal");
        out.push_back(Token{Token::Kind::kString, std::move(s), 0, 0.0, line});
        p = e + 1;
      } else {
        static constexpr std::string_view kOps2[] = {"//", "**", "==", "!=", "<=", ">="};
        std::string op(1, c);
        for (std::string_view o : kOps2)
          if (src.compare(p, 2, o) == 0) op = std::string(o);
        if (op.size() == 1 && std::string_view("+-*/%~|.,:()[]{}<>=").find(c) == std::string::npos)
          return lex_error(line, std::string("unexpected character '") + c + "' in tag");
        if (c == '(' || c == '[' || c == '{') ++depth;
        if ((c == ')' || c == ']' || c == '}') && depth > 0) --depth;
        out.push_back(Token{Token::Kind::kOp, op, 0, 0.0, line});
        p += op.size();
      }
    }
    if (!closed) return lex_error(tag_line, is_stmt ? "unclosed {% tag" : "unclosed {{ tag");
  }
  out.push_back(Token{Token::Kind::kEof, "", 0, 0.0, line});
  return out;
}

}  // namespace tq::model::jinja
