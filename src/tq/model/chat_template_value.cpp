// Python-compatible behaviour of template values (see chat_template_value.h).
#include "tq/model/chat_template_value.h"

#include <charconv>
#include <cmath>
#include <cstdio>

#include "tq/model/unicode.h"

namespace tq::model::jinja {
namespace {

// repr(float): shortest round-trip digits, fixed for 1e-4 <= |x| < 1e16, else d.ddde+XX.
std::string float_repr(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), x, std::chars_format::scientific);
  std::string sci(buf, r.ptr);  // "-3.5e+00"
  const size_t e = sci.find('e');
  std::string mant = sci.substr(0, e);
  const int exp = std::stoi(sci.substr(e + 1));
  const bool neg = mant[0] == '-';
  if (neg) mant.erase(0, 1);
  std::string digits;
  for (char c : mant)
    if (c != '.') digits.push_back(c);
  std::string out = neg ? "-" : "";
  if (exp >= -4 && exp < 16) {
    const size_t int_digits = exp < 0 ? 0 : static_cast<size_t>(exp) + 1;
    if (exp < 0) {
      out.append("0.").append(static_cast<size_t>(-exp - 1), '0').append(digits);
    } else if (int_digits >= digits.size()) {
      out.append(digits).append(int_digits - digits.size(), '0').append(".0");
    } else {
      out.append(digits, 0, int_digits).append(1, '.').append(digits, int_digits);
    }
    return out;
  }
  out.append(digits, 0, 1);
  if (digits.size() > 1) out.append(1, '.').append(digits, 1);
  char eb[16];
  std::snprintf(eb, sizeof(eb), "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
  return out + eb;
}

// repr(str): single quotes unless the string has a single quote and no double quote.
std::string string_repr(const std::string& s) {
  const bool dq = s.find('\'') != std::string::npos && s.find('"') == std::string::npos;
  const char q = dq ? '"' : '\'';
  std::string out(1, q);
  for (char c : s) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c == q) {
          out += '\\';
          out += c;
        } else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
          char b[8];
          std::snprintf(b, sizeof(b), "\\x%02x", static_cast<unsigned char>(c));
          out += b;
        } else {
          out += c;
        }
    }
  }
  return out + q;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char b[8];
          std::snprintf(b, sizeof(b), "\\u%04x", static_cast<unsigned char>(c));
          out += b;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

bool py_is_space(uint32_t cp) { return unicode_is_whitespace(cp) || (cp >= 0x1C && cp <= 0x1F); }

}  // namespace

const Value* Value::find(std::string_view key) const {
  if (!dict) return nullptr;
  for (const auto& [k, v] : *dict)
    if (k == key) return &v;
  return nullptr;
}

void Value::set(const std::string& key, Value v) {
  if (!dict) return;
  note_item(v);
  for (auto& [k, old] : *dict) {
    if (k == key) {
      old = std::move(v);
      return;
    }
  }
  dict->emplace_back(key, std::move(v));
}

const char* kind_name(Value::Kind k) {
  switch (k) {
    case Value::Kind::kUndefined:
      return "undefined";
    case Value::Kind::kNone:
      return "none";
    case Value::Kind::kBool:
      return "bool";
    case Value::Kind::kInt:
      return "int";
    case Value::Kind::kFloat:
      return "float";
    case Value::Kind::kString:
      return "string";
    case Value::Kind::kList:
      return "list";
    case Value::Kind::kDict:
      return "dict";
    case Value::Kind::kNamespace:
      return "namespace";
    case Value::Kind::kFunction:
      return "function";
  }
  return "?";
}

Status too_large(const char* what, size_t n, size_t limit) {
  return resource_exhausted(std::string("chat template ") + what + ": " + std::to_string(n) +
                            " (at most " + std::to_string(limit) + ")");
}

Status check_string_bytes(size_t n) {
  return n > kMaxStringBytes ? too_large("string bytes", n, kMaxStringBytes) : ok_status();
}

Status check_size(const Value& v) {
  if (v.kind == Value::Kind::kString) TQ_RETURN_IF_ERROR(check_string_bytes(v.s.size()));
  if (v.kind == Value::Kind::kList && v.list && v.list->size() > kMaxListItems)
    return too_large("list items", v.list->size(), kMaxListItems);
  if (v.nesting > kMaxNesting)
    return too_large("nesting", static_cast<size_t>(v.nesting), kMaxNesting);
  return ok_status();
}

size_t value_bytes(const Value& v) {
  size_t n = v.s.size();
  if (v.list)
    for (const Value& x : *v.list) n += sizeof(Value) + value_bytes(x);
  if (v.dict)
    for (const auto& [k, x] : *v.dict) n += k.size() + sizeof(Value) + value_bytes(x);
  return n;
}

bool truthy(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone:
      return false;
    case Value::Kind::kBool:
      return v.b;
    case Value::Kind::kInt:
      return v.i != 0;
    case Value::Kind::kFloat:
      return v.f != 0.0;
    case Value::Kind::kString:
      return !v.s.empty();
    case Value::Kind::kList:
      return !v.list->empty();
    case Value::Kind::kDict:
      return !v.dict->empty();
    case Value::Kind::kNamespace:
    case Value::Kind::kFunction:
      return true;
  }
  return false;
}

std::string python_repr(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kString:
      return string_repr(v.s);
    case Value::Kind::kList: {
      std::string out = "[";
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) out += ", ";
        out += python_repr((*v.list)[k]);
      }
      return out + "]";
    }
    case Value::Kind::kDict: {
      std::string out = "{";
      bool first = true;
      for (const auto& [k, x] : *v.dict) {
        if (!first) out += ", ";
        first = false;
        out += string_repr(k) + ": " + python_repr(x);
      }
      return out + "}";
    }
    default:
      return to_output(v);
  }
}

std::string to_output(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
      return "";
    case Value::Kind::kNone:
      return "None";
    case Value::Kind::kBool:
      return v.b ? "True" : "False";
    case Value::Kind::kInt:
      return std::to_string(v.i);
    case Value::Kind::kFloat:
      return float_repr(v.f);
    case Value::Kind::kString:
      return v.s;
    case Value::Kind::kNamespace:
      return "<Namespace>";
    case Value::Kind::kFunction:
      return "<function " + v.s + ">";
    default:
      return python_repr(v);
  }
}

std::string to_json(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone:
      return "null";
    case Value::Kind::kBool:
      return v.b ? "true" : "false";
    case Value::Kind::kString:
      return json_string(v.s);
    case Value::Kind::kFloat:
      if (std::isnan(v.f)) return "NaN";
      if (std::isinf(v.f)) return v.f > 0 ? "Infinity" : "-Infinity";
      return float_repr(v.f);
    case Value::Kind::kList: {
      std::string out = "[";
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) out += ", ";
        out += to_json((*v.list)[k]);
      }
      return out + "]";
    }
    case Value::Kind::kDict:
    case Value::Kind::kNamespace: {
      std::string out = "{";
      bool first = true;
      for (const auto& [k, x] : *v.dict) {
        if (!first) out += ", ";
        first = false;
        out += json_string(k) + ": " + to_json(x);
      }
      return out + "}";
    }
    default:
      return to_output(v);
  }
}

bool equals(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    const bool fa = a.kind == Value::Kind::kFloat, fb = b.kind == Value::Kind::kFloat;
    const auto ia = a.kind == Value::Kind::kBool ? int64_t{a.b} : a.i;
    const auto ib = b.kind == Value::Kind::kBool ? int64_t{b.b} : b.i;
    if (!fa && !fb) return ia == ib;
    return (fa ? a.f : static_cast<double>(ia)) == (fb ? b.f : static_cast<double>(ib));
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone:
      return true;
    case Value::Kind::kString:
    case Value::Kind::kFunction:
      return a.s == b.s;
    case Value::Kind::kList:
      if (a.list->size() != b.list->size()) return false;
      for (size_t k = 0; k < a.list->size(); ++k)
        if (!equals((*a.list)[k], (*b.list)[k])) return false;
      return true;
    case Value::Kind::kDict:
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [k, x] : *a.dict) {
        const Value* y = b.find(k);
        if (!y || !equals(x, *y)) return false;
      }
      return true;
    default:
      return a.dict == b.dict;  // namespaces compare by identity
  }
}

Expected<int> compare(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    auto num = [](const Value& v) {
      return v.kind == Value::Kind::kFloat  ? v.f
             : v.kind == Value::Kind::kBool ? static_cast<double>(v.b)
                                            : static_cast<double>(v.i);
    };
    if (a.kind == Value::Kind::kInt && b.kind == Value::Kind::kInt)
      return a.i < b.i ? -1 : a.i > b.i;
    const double x = num(a), y = num(b);
    return x < y ? -1 : x > y;
  }
  if (a.is_string() && b.is_string()) return a.s.compare(b.s) < 0 ? -1 : a.s == b.s ? 0 : 1;
  if (a.is_list() && b.is_list()) {
    for (size_t k = 0; k < a.list->size() && k < b.list->size(); ++k) {
      TQ_ASSIGN_OR_RETURN(const int c, compare((*a.list)[k], (*b.list)[k]));
      if (c != 0) return c;
    }
    return a.list->size() < b.list->size() ? -1 : a.list->size() > b.list->size();
  }
  return unsupported(std::string("cannot order ") + kind_name(a.kind) + " and " +
                     kind_name(b.kind));
}

Expected<int64_t> length(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kString:
      return static_cast<int64_t>(utf8_chars(v.s).size());
    case Value::Kind::kList:
      return static_cast<int64_t>(v.list->size());
    case Value::Kind::kDict:
    case Value::Kind::kNamespace:
      return static_cast<int64_t>(v.dict->size());
    case Value::Kind::kUndefined:
      return int64_t{0};
    default:
      return invalid_argument(std::string("object of type ") + kind_name(v.kind) +
                              " has no length");
  }
}

Expected<ValueList> iterate(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
      return ValueList{};
    case Value::Kind::kList:
      return *v.list;
    case Value::Kind::kDict: {
      ValueList keys;
      for (const auto& kv : *v.dict) keys.push_back(Value::string(kv.first));
      return keys;
    }
    case Value::Kind::kString: {
      ValueList chars;
      for (auto& c : utf8_chars(v.s)) chars.push_back(Value::string(std::move(c)));
      return chars;
    }
    default:
      return invalid_argument(std::string("'") + kind_name(v.kind) + "' is not iterable");
  }
}

std::vector<std::string> utf8_chars(std::string_view s) {
  std::vector<std::string> out;
  for (size_t pos = 0; pos < s.size();) {
    size_t len = 1;
    utf8_decode(s, pos, &len);
    out.emplace_back(s.substr(pos, len));
    pos += len;
  }
  return out;
}

std::string py_strip(std::string_view s, std::string_view chars, bool left, bool right) {
  // chars empty: Unicode whitespace (str.strip()); else any of the given code points.
  const std::vector<std::string> set = utf8_chars(chars);
  auto strip_this = [&](std::string_view c) {
    if (chars.empty()) {
      size_t len = 1;
      return py_is_space(utf8_decode(c, 0, &len));
    }
    for (const auto& x : set)
      if (x == c) return true;
    return false;
  };
  std::vector<std::string> cs = utf8_chars(s);
  size_t b = 0, e = cs.size();
  while (left && b < e && strip_this(cs[b])) ++b;
  while (right && e > b && strip_this(cs[e - 1])) --e;
  std::string out;
  for (size_t k = b; k < e; ++k) out += cs[k];
  return out;
}

std::string ascii_upper(std::string s) {
  for (char& c : s)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 32);
  return s;
}

std::string ascii_lower(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
  return s;
}

}  // namespace tq::model::jinja
