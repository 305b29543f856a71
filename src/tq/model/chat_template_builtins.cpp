// Filters, tests, methods and functions for the chat-template interpreter.
#include "tq/model/chat_template_builtins.h"

#include <algorithm>
#include <cmath>
#include <ctime>

namespace tq::model::jinja {
namespace {

Status arg_error(const std::string& what, const std::string& msg) {
  return invalid_argument(what + ": " + msg);
}

Expected<std::string> string_arg(const CallArgs& a, size_t i, std::string_view name,
                                 const std::string& what, const char* def = nullptr) {
  const Value* v = a.get(i, name);
  if (!v) {
    if (def) return std::string(def);
    return arg_error(what, "missing argument '" + std::string(name) + "'");
  }
  if (!v->is_string())
    return arg_error(what, "argument '" + std::string(name) + "' must be a string");
  return v->s;
}

Expected<int64_t> int_arg(const CallArgs& a, size_t i, std::string_view name, int64_t def) {
  const Value* v = a.get(i, name);
  if (!v || v->is_none()) return def;
  if (v->kind == Value::Kind::kInt) return v->i;
  if (v->kind == Value::Kind::kBool) return int64_t{v->b};
  return invalid_argument("argument '" + std::string(name) + "' must be an integer");
}

Expected<Value> replace_all(const std::string& s, const std::string& from, const std::string& to,
                            int64_t count) {
  if (from.empty()) return Value::string(s);  // Python inserts between characters; unneeded
  std::string out;
  size_t pos = 0;
  for (int64_t done = 0; count < 0 || done < count; ++done) {
    const size_t hit = s.find(from, pos);
    if (hit == std::string::npos) break;
    TQ_RETURN_IF_ERROR(check_string_bytes(out.size() + (hit - pos) + to.size()));
    out.append(s, pos, hit - pos);
    out += to;
    pos = hit + from.size();
  }
  TQ_RETURN_IF_ERROR(check_string_bytes(out.size() + (s.size() - pos)));
  out.append(s, pos, std::string::npos);
  return Value::string(std::move(out));
}

// Appends piece to out unless that passes kMaxStringBytes.
Status append_bounded(std::string& out, const std::string& piece) {
  TQ_RETURN_IF_ERROR(check_string_bytes(out.size() + piece.size()));
  out += piece;
  return ok_status();
}

std::vector<std::string> py_split(const std::string& s, const Value* sep, int64_t maxsplit) {
  std::vector<std::string> out;
  if (!sep || sep->is_none()) {  // whitespace runs, no empty pieces
    std::string cur;
    bool in_word = false;
    for (const std::string& c : utf8_chars(s)) {
      const bool ws = py_strip(c, "", true, false).empty();
      if (ws && in_word && (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit)) {
        out.push_back(cur);
        cur.clear();
        in_word = false;
      } else if (!ws || in_word) {
        cur += c;
        in_word = true;
      }
    }
    if (in_word) out.push_back(py_strip(cur, "", false, true));
    return out;
  }
  size_t pos = 0;
  while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
    const size_t hit = sep->s.empty() ? std::string::npos : s.find(sep->s, pos);
    if (hit == std::string::npos) break;
    out.push_back(s.substr(pos, hit - pos));
    pos = hit + sep->s.size();
  }
  out.push_back(s.substr(pos));
  return out;
}

std::string title_case(const std::string& s, bool only_first) {
  std::string out = only_first ? ascii_lower(s) : s;
  bool start = true;
  for (char& c : out) {
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (alpha) {
      if (start)
        c = ascii_upper(std::string(1, c))[0];
      else if (!only_first)
        c = ascii_lower(std::string(1, c))[0];
      start = false;
    } else if (!only_first) {
      start = true;
    }
  }
  return out;
}

Value items_of(const Value& d) {
  ValueList items;
  for (const auto& [k, v] : *d.dict) items.push_back(Value::new_list({Value::string(k), v}));
  return Value::new_list(std::move(items));
}

Expected<Value> attribute_of(const Value& v, const std::string& attr) {
  if (v.is_mapping()) {
    const Value* x = v.find(attr);
    return x ? *x : Value::undefined();
  }
  return Value::undefined();
}

// select/reject/selectattr/rejectattr: args[first_test_arg] names the test, the rest are its
// arguments.
Expected<Value> filter_by_test(const Value& in, const CallArgs& args, bool keep, bool by_attr) {
  TQ_ASSIGN_OR_RETURN(ValueList items, iterate(in));
  size_t k = 0;
  std::string attr;
  if (by_attr) {
    if (args.pos.empty() || !args.pos[0].is_string())
      return invalid_argument("selectattr: missing attribute");
    attr = args.pos[0].s;
    k = 1;
  }
  std::string test = "truthy";
  if (k < args.pos.size()) {
    if (!args.pos[k].is_string()) return invalid_argument("select: the test name must be a string");
    test = args.pos[k].s;
  }
  CallArgs test_args;
  for (size_t j = k + 1; j < args.pos.size(); ++j) test_args.pos.push_back(args.pos[j]);
  ValueList out;
  for (const Value& item : items) {
    Value subject = item;
    if (by_attr) {
      TQ_ASSIGN_OR_RETURN(subject, attribute_of(item, attr));
    }
    bool pass = truthy(subject);
    if (test != "truthy") {
      TQ_ASSIGN_OR_RETURN(pass, apply_test(test, subject, test_args));
    }
    if (pass == keep) out.push_back(item);
  }
  return Value::new_list(std::move(out));
}

}  // namespace

const Value* CallArgs::get(size_t i, std::string_view name) const {
  if (i < pos.size()) return &pos[i];
  for (const auto& [k, v] : kw)
    if (k == name) return &v;
  return nullptr;
}

Expected<Value> apply_filter(const std::string& name, const Value& in, const CallArgs& args) {
  const std::string what = "filter '" + name + "'";
  auto need_string = [&]() -> Status {
    if (!in.is_string())
      return arg_error(what, std::string("expects a string, got ") + kind_name(in.kind));
    return ok_status();
  };
  if (name == "trim") {
    TQ_RETURN_IF_ERROR(need_string());
    TQ_ASSIGN_OR_RETURN(const std::string chars, string_arg(args, 0, "chars", what, ""));
    return Value::string(py_strip(in.s, chars, true, true));
  }
  if (name == "length" || name == "count") {
    TQ_ASSIGN_OR_RETURN(const int64_t n, length(in));
    return Value::integer(n);
  }
  if (name == "upper" || name == "lower" || name == "capitalize" || name == "title") {
    const std::string s = to_output(in);
    if (name == "upper") return Value::string(ascii_upper(s));
    if (name == "lower") return Value::string(ascii_lower(s));
    return Value::string(title_case(s, name == "capitalize"));
  }
  if (name == "default" || name == "d") {
    const Value* def = args.get(0, "default_value");
    const Value* boolean = args.get(1, "boolean");
    const bool use_default = in.is_undefined() || (boolean && truthy(*boolean) && !truthy(in));
    if (use_default) return def ? *def : Value::string("");
    return in;
  }
  if (name == "first" || name == "last") {
    TQ_ASSIGN_OR_RETURN(const ValueList items, iterate(in));
    if (items.empty()) return Value::undefined();
    return name == "first" ? items.front() : items.back();
  }
  if (name == "join") {
    TQ_ASSIGN_OR_RETURN(const ValueList items, iterate(in));
    TQ_ASSIGN_OR_RETURN(const std::string sep, string_arg(args, 0, "d", what, ""));
    const Value* attr = args.get(1, "attribute");
    std::string out;
    for (size_t k = 0; k < items.size(); ++k) {
      if (k) TQ_RETURN_IF_ERROR(append_bounded(out, sep));
      if (attr && attr->is_string()) {
        TQ_ASSIGN_OR_RETURN(const Value v, attribute_of(items[k], attr->s));
        TQ_RETURN_IF_ERROR(append_bounded(out, to_output(v)));
      } else {
        TQ_RETURN_IF_ERROR(append_bounded(out, to_output(items[k])));
      }
    }
    return Value::string(std::move(out));
  }
  if (name == "replace") {
    TQ_RETURN_IF_ERROR(need_string());
    TQ_ASSIGN_OR_RETURN(const std::string from, string_arg(args, 0, "old", what));
    TQ_ASSIGN_OR_RETURN(const std::string to, string_arg(args, 1, "new", what));
    TQ_ASSIGN_OR_RETURN(const int64_t count, int_arg(args, 2, "count", -1));
    return replace_all(in.s, from, to, count);
  }
  if (name == "string") return Value::string(to_output(in));
  if (name == "safe") return in;
  if (name == "int") {
    if (in.kind == Value::Kind::kFloat) return Value::integer(static_cast<int64_t>(in.f));
    if (in.kind == Value::Kind::kInt || in.kind == Value::Kind::kBool)
      return Value::integer(in.kind == Value::Kind::kInt ? in.i : in.b);
    if (in.is_string()) {
      char* end = nullptr;
      const std::string t = py_strip(in.s, "", true, true);
      const long long v = std::strtoll(t.c_str(), &end, 10);
      return Value::integer(end && *end == '\0' && !t.empty() ? v : 0);
    }
    return Value::integer(0);
  }
  if (name == "float") {
    if (in.kind == Value::Kind::kFloat) return in;
    if (in.kind == Value::Kind::kInt) return Value::real(static_cast<double>(in.i));
    if (in.is_string()) return Value::real(std::strtod(in.s.c_str(), nullptr));
    return Value::real(0.0);
  }
  if (name == "abs") {
    if (in.kind == Value::Kind::kInt) return Value::integer(in.i < 0 ? -in.i : in.i);
    if (in.kind == Value::Kind::kFloat) return Value::real(std::fabs(in.f));
    return arg_error(what, "expects a number");
  }
  if (name == "list") {
    TQ_ASSIGN_OR_RETURN(ValueList items, iterate(in));
    return Value::new_list(std::move(items));
  }
  if (name == "reverse") {
    TQ_ASSIGN_OR_RETURN(ValueList items, iterate(in));
    std::reverse(items.begin(), items.end());
    if (in.is_string()) {
      std::string s;
      for (const Value& c : items) s += c.s;
      return Value::string(std::move(s));
    }
    return Value::new_list(std::move(items));
  }
  if (name == "items") {
    if (!in.is_mapping()) return arg_error(what, "expects a mapping");
    return items_of(in);
  }
  if (name == "tojson") {
    const Value* indent = args.get(0, "indent");
    if (indent && !indent->is_none()) return unsupported(what + ": indent is not supported");
    return Value::string(to_json(in));
  }
  if (name == "map") {
    TQ_ASSIGN_OR_RETURN(const ValueList items, iterate(in));
    ValueList out;
    const Value* attr = args.get(args.pos.empty() ? 0 : 99, "attribute");
    for (const Value& item : items) {
      if (attr) {
        TQ_ASSIGN_OR_RETURN(Value v, attribute_of(item, to_output(*attr)));
        out.push_back(std::move(v));
      } else if (!args.pos.empty() && args.pos[0].is_string()) {
        CallArgs rest;
        rest.pos.assign(args.pos.begin() + 1, args.pos.end());
        TQ_ASSIGN_OR_RETURN(Value v, apply_filter(args.pos[0].s, item, rest));
        out.push_back(std::move(v));
      } else {
        return arg_error(what, "needs a filter name or attribute=");
      }
    }
    return Value::new_list(std::move(out));
  }
  if (name == "select") return filter_by_test(in, args, true, false);
  if (name == "reject") return filter_by_test(in, args, false, false);
  if (name == "selectattr") return filter_by_test(in, args, true, true);
  if (name == "rejectattr") return filter_by_test(in, args, false, true);
  return unsupported("unknown filter '" + name + "'");
}

Expected<bool> apply_test(const std::string& name, const Value& v, const CallArgs& args) {
  using K = Value::Kind;
  const Value* arg = args.get(0, "value");
  auto need_arg = [&]() -> Status {
    if (!arg) return invalid_argument("test '" + name + "' needs an argument");
    return ok_status();
  };
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "boolean") return v.kind == K::kBool;
  if (name == "true") return v.kind == K::kBool && v.b;
  if (name == "false") return v.kind == K::kBool && !v.b;
  if (name == "string") return v.is_string();
  if (name == "number") return v.kind == K::kInt || v.kind == K::kFloat;
  if (name == "integer") return v.kind == K::kInt;
  if (name == "float") return v.kind == K::kFloat;
  if (name == "mapping") return v.is_mapping();
  if (name == "iterable") return v.is_string() || v.is_list() || v.is_mapping();
  if (name == "sequence") return v.is_string() || v.is_list() || v.is_mapping();
  if (name == "callable") return v.kind == K::kFunction;
  if (name == "lower") return v.is_string() && ascii_lower(v.s) == v.s;
  if (name == "upper") return v.is_string() && ascii_upper(v.s) == v.s;
  if (name == "even" || name == "odd" || name == "divisibleby") {
    if (v.kind != K::kInt) return invalid_argument("test '" + name + "' expects an integer");
    int64_t d = 2;
    if (name == "divisibleby") {
      TQ_RETURN_IF_ERROR(need_arg());
      if (arg->kind != K::kInt || arg->i == 0)
        return invalid_argument("divisibleby needs a non-zero integer");
      d = arg->i;
    }
    const bool div = v.i % d == 0;
    return name == "odd" ? !div : div;
  }
  if (name == "eq" || name == "equalto" || name == "==" || name == "ne" || name == "!=") {
    TQ_RETURN_IF_ERROR(need_arg());
    const bool eq = equals(v, *arg);
    return (name == "ne" || name == "!=") ? !eq : eq;
  }
  if (name == "sameas") {
    TQ_RETURN_IF_ERROR(need_arg());
    if (v.is_list() || v.is_mapping())
      return v.kind == arg->kind && v.list == arg->list && v.dict == arg->dict;
    return v.kind == arg->kind && equals(v, *arg);
  }
  if (name == "lt" || name == "gt" || name == "le" || name == "ge" || name == "<" || name == ">" ||
      name == "<=" || name == ">=") {
    TQ_RETURN_IF_ERROR(need_arg());
    TQ_ASSIGN_OR_RETURN(const int c, compare(v, *arg));
    if (name == "lt" || name == "<") return c < 0;
    if (name == "gt" || name == ">") return c > 0;
    if (name == "le" || name == "<=") return c <= 0;
    return c >= 0;
  }
  if (name == "in") {
    TQ_RETURN_IF_ERROR(need_arg());
    if (arg->is_string()) return v.is_string() && arg->s.find(v.s) != std::string::npos;
    TQ_ASSIGN_OR_RETURN(const ValueList items, iterate(*arg));
    for (const Value& x : items)
      if (equals(v, x)) return true;
    return false;
  }
  return unsupported("unknown test '" + name + "'");
}

Expected<Value> call_method(const Value& obj, const std::string& name, const CallArgs& args) {
  const std::string what = std::string(kind_name(obj.kind)) + "." + name + "()";
  if (obj.is_string()) {
    const std::string& s = obj.s;
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      const Value* chars = args.get(0, "chars");
      const std::string set = chars && chars->is_string() ? chars->s : "";
      return Value::string(py_strip(s, set, name != "rstrip", name != "lstrip"));
    }
    if (name == "upper") return Value::string(ascii_upper(s));
    if (name == "lower") return Value::string(ascii_lower(s));
    if (name == "title") return Value::string(title_case(s, false));
    if (name == "capitalize") return Value::string(title_case(s, true));
    if (name == "startswith" || name == "endswith") {
      const Value* p = args.get(0, "prefix");
      if (!p) return arg_error(what, "missing argument");
      ValueList options = p->is_list() ? *p->list : ValueList{*p};
      for (const Value& o : options) {
        if (!o.is_string()) return arg_error(what, "argument must be a string");
        const bool hit =
            name == "startswith"
                ? s.compare(0, o.s.size(), o.s) == 0
                : s.size() >= o.s.size() && s.compare(s.size() - o.s.size(), o.s.size(), o.s) == 0;
        if (hit) return Value::boolean(true);
      }
      return Value::boolean(false);
    }
    if (name == "split") {
      TQ_ASSIGN_OR_RETURN(const int64_t maxsplit, int_arg(args, 1, "maxsplit", -1));
      ValueList out;
      for (auto& piece : py_split(s, args.get(0, "sep"), maxsplit))
        out.push_back(Value::string(std::move(piece)));
      return Value::new_list(std::move(out));
    }
    if (name == "replace") {
      TQ_ASSIGN_OR_RETURN(const std::string from, string_arg(args, 0, "old", what));
      TQ_ASSIGN_OR_RETURN(const std::string to, string_arg(args, 1, "new", what));
      TQ_ASSIGN_OR_RETURN(const int64_t count, int_arg(args, 2, "count", -1));
      return replace_all(s, from, to, count);
    }
    if (name == "find" || name == "count") {
      TQ_ASSIGN_OR_RETURN(const std::string sub, string_arg(args, 0, "sub", what));
      if (name == "find") {
        const size_t hit = s.find(sub);
        if (hit == std::string::npos) return Value::integer(-1);
        return Value::integer(static_cast<int64_t>(utf8_chars(s.substr(0, hit)).size()));
      }
      int64_t count = 0;
      for (size_t p = s.find(sub); !sub.empty() && p != std::string::npos;
           p = s.find(sub, p + sub.size()))
        ++count;
      return Value::integer(count);
    }
    if (name == "join") {
      const Value* items = args.get(0, "iterable");
      if (!items) return arg_error(what, "missing argument");
      TQ_ASSIGN_OR_RETURN(const ValueList list, iterate(*items));
      std::string out;
      for (size_t k = 0; k < list.size(); ++k) {
        if (k) TQ_RETURN_IF_ERROR(append_bounded(out, s));
        TQ_RETURN_IF_ERROR(append_bounded(out, to_output(list[k])));
      }
      return Value::string(std::move(out));
    }
  }
  if (obj.kind == Value::Kind::kDict) {
    if (name == "items") return items_of(obj);
    if (name == "keys" || name == "values") {
      ValueList out;
      for (const auto& [k, v] : *obj.dict) out.push_back(name == "keys" ? Value::string(k) : v);
      return Value::new_list(std::move(out));
    }
    if (name == "get") {
      const Value* key = args.get(0, "key");
      if (!key || !key->is_string()) return arg_error(what, "needs a string key");
      if (const Value* v = obj.find(key->s)) return *v;
      const Value* def = args.get(1, "default");
      return def ? *def : Value::none();
    }
  }
  return unsupported("unknown method " + what);
}

bool is_builtin_function(std::string_view name) {
  return name == "raise_exception" || name == "namespace" || name == "range" || name == "dict" ||
         name == "strftime_now";
}

Expected<Value> call_function(const std::string& name, const CallArgs& args,
                              const BuiltinEnv& env) {
  if (name == "raise_exception") {
    const Value* msg = args.get(0, "message");
    return invalid_argument("raise_exception: " + (msg ? to_output(*msg) : std::string()));
  }
  if (name == "namespace" || name == "dict") {
    ValueDict d;
    if (!args.pos.empty()) {
      if (!args.pos[0].is_mapping())
        return invalid_argument(name + "() takes keyword arguments or a mapping");
      d = *args.pos[0].dict;
    }
    Value v = Value::new_dict(std::move(d),
                              name == "namespace" ? Value::Kind::kNamespace : Value::Kind::kDict);
    for (const auto& [k, x] : args.kw) v.set(k, x);
    return v;
  }
  if (name == "range") {
    int64_t start = 0, stop = 0, step = 1;
    for (const Value& a : args.pos)
      if (a.kind != Value::Kind::kInt) return invalid_argument("range() takes integers");
    if (args.pos.size() == 1)
      stop = args.pos[0].i;
    else if (args.pos.size() >= 2)
      start = args.pos[0].i, stop = args.pos[1].i;
    if (args.pos.size() == 3) step = args.pos[2].i;
    if (args.pos.empty() || args.pos.size() > 3 || step == 0)
      return invalid_argument("bad range() arguments");
    constexpr int64_t kMaxRange = 1 << 20;  // a template never needs more; bounds the work
    ValueList out;
    for (int64_t v = start; step > 0 ? v < stop : v > stop;) {
      if (static_cast<int64_t>(out.size()) >= kMaxRange)
        return resource_exhausted("range() too long");
      out.push_back(Value::integer(v));
      if (__builtin_add_overflow(v, step, &v)) break;  // past int64: past stop as well
    }
    return Value::new_list(std::move(out));
  }
  if (name == "strftime_now") {
    const Value* fmt = args.get(0, "format");
    if (!fmt || !fmt->is_string()) return invalid_argument("strftime_now() needs a format string");
    const std::time_t t = static_cast<std::time_t>(env.now_unix);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[256];
    const size_t n = std::strftime(buf, sizeof(buf), fmt->s.c_str(), &tm);
    return Value::string(std::string(buf, n));
  }
  return unsupported("unknown function '" + name + "'");
}

}  // namespace tq::model::jinja
