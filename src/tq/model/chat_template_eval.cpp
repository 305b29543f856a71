// The chat-template tree walker (see chat_template_eval.h).
#include "tq/model/chat_template_eval.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <unordered_map>

namespace tq::model::jinja {
namespace {

using K = Value::Kind;

Status at_line(int line, const Status& s) {
  if (s.ok() || s.message().rfind("chat template line", 0) == 0) return s;
  return s.with_context("chat template line " + std::to_string(line));
}

// Python's slice index normalisation.
void slice_bounds(int64_t n, const Value* start, const Value* stop, int64_t step, int64_t* b,
                  int64_t* e) {
  auto clamp = [&](const Value* v, int64_t def) {
    if (!v || v->is_none()) return def;
    int64_t x = v->i;
    if (x < 0) x += n;
    if (step > 0) return std::clamp<int64_t>(x, 0, n);
    return std::clamp<int64_t>(x, -1, n - 1);
  };
  *b = clamp(start, step > 0 ? 0 : n - 1);
  *e = clamp(stop, step > 0 ? n : -1);
}

// Integers are int64 (Python's are unbounded): a result outside int64 is an error, not a wrap.
Status int_overflow(const std::string& op) {
  return invalid_argument("integer overflow in '" + op + "'");
}

Expected<int64_t> int_power(int64_t x, int64_t y) {  // y >= 0
  if (x == 0) return int64_t{y == 0 ? 1 : 0};
  if (x == 1) return int64_t{1};
  if (x == -1) return int64_t{(y & 1) ? -1 : 1};
  int64_t r = 1;
  for (int64_t k = 0; k < y; ++k)  // |x| >= 2: overflows within 63 steps
    if (__builtin_mul_overflow(r, x, &r)) return int_overflow("**");
  return r;
}

Expected<Value> arithmetic(const std::string& op, const Value& a, const Value& b) {
  if (a.is_undefined() || b.is_undefined())
    return invalid_argument("undefined value in '" + op + "' expression");
  if (op == "+") {
    if (a.is_string() && b.is_string()) {
      TQ_RETURN_IF_ERROR(check_string_bytes(a.s.size() + b.s.size()));
      return Value::string(a.s + b.s);
    }
    if (a.is_list() && b.is_list()) {
      if (a.list->size() + b.list->size() > kMaxListItems)
        return too_large("list items", a.list->size() + b.list->size(), kMaxListItems);
      const size_t bytes = value_bytes(a) + value_bytes(b);
      if (bytes > kMaxListBytes) return too_large("list bytes", bytes, kMaxListBytes);
      ValueList out = *a.list;
      out.insert(out.end(), b.list->begin(), b.list->end());
      return Value::new_list(std::move(out));
    }
  }
  if (op == "*") {
    const Value* seq = a.is_string() || a.is_list()   ? &a
                       : b.is_string() || b.is_list() ? &b
                                                      : nullptr;
    const Value* num = seq == &a ? &b : &a;
    if (seq && num->kind == K::kInt) {
      const uint64_t len = seq->is_string() ? seq->s.size() : seq->list->size();
      const uint64_t limit = seq->is_string() ? kMaxStringBytes : kMaxListItems;
      const uint64_t bytes = seq->is_string() ? len : value_bytes(*seq);
      const uint64_t n = num->i > 0 ? static_cast<uint64_t>(num->i) : 0;
      if ((len > 0 && n > limit / len) || (bytes > 0 && n > kMaxListBytes / bytes))
        return resource_exhausted("sequence repetition too large");
      // An empty sequence passes any size check: n copies of it must not take n steps.
      if (len == 0) return seq->is_string() ? Value::string("") : Value::new_list({});
      if (seq->is_string()) {
        std::string out;
        for (int64_t k = 0; k < num->i; ++k) out += seq->s;
        return Value::string(std::move(out));
      }
      ValueList out;
      for (int64_t k = 0; k < num->i; ++k)
        out.insert(out.end(), seq->list->begin(), seq->list->end());
      return Value::new_list(std::move(out));
    }
  }
  if (!a.is_number() || !b.is_number())
    return invalid_argument(std::string("unsupported operand types for ") + op + ": " +
                            kind_name(a.kind) + " and " + kind_name(b.kind));
  const bool ints = a.kind != K::kFloat && b.kind != K::kFloat;
  const int64_t x = a.kind == K::kBool ? a.b : a.i, y = b.kind == K::kBool ? b.b : b.i;
  const double fx = a.kind == K::kFloat ? a.f : static_cast<double>(x);
  const double fy = b.kind == K::kFloat ? b.f : static_cast<double>(y);
  if (op == "/") {
    if (fy == 0.0) return invalid_argument("division by zero");
    return Value::real(fx / fy);
  }
  if (op == "//" || op == "%") {
    if (fy == 0.0) return invalid_argument("division by zero");
    if (ints) {                         // Python floors toward negative infinity
      if (x == INT64_MIN && y == -1) {  // the one quotient int64 cannot hold (and x / y traps)
        if (op == "//") return int_overflow(op);
        return Value::integer(0);
      }
      int64_t q = x / y, r = x % y;
      if (r != 0 && ((r < 0) != (y < 0))) --q, r += y;
      return Value::integer(op == "//" ? q : r);
    }
    const double q = std::floor(fx / fy);
    return Value::real(op == "//" ? q : fx - q * fy);
  }
  if (op == "**") {
    if (ints && y >= 0) {
      TQ_ASSIGN_OR_RETURN(const int64_t r, int_power(x, y));
      return Value::integer(r);
    }
    return Value::real(std::pow(fx, fy));
  }
  if (ints) {
    int64_t r = 0;
    const bool overflow = op == "+"   ? __builtin_add_overflow(x, y, &r)
                          : op == "-" ? __builtin_sub_overflow(x, y, &r)
                                      : __builtin_mul_overflow(x, y, &r);
    if (overflow) return int_overflow(op);
    return Value::integer(r);
  }
  return Value::real(op == "+" ? fx + fy : op == "-" ? fx - fy : fx * fy);
}

enum class Flow { kNormal, kBreak, kContinue };

class Renderer {
 public:
  Renderer(const ValueDict& globals, const BuiltinEnv& env, const RenderLimits& limits)
      : env_(env), limits_(limits) {
    scopes_.emplace_back();
    for (const auto& [k, v] : globals) scopes_.back()[k] = v;
  }

  Status exec_body(const std::vector<Stmt>& body, std::string* out) {
    for (const Stmt& s : body) {
      TQ_RETURN_IF_ERROR(at_line(s.line, exec(s, out)));
      if (flow_ != Flow::kNormal) return ok_status();
      if (out->size() > limits_.max_output_bytes)
        return resource_exhausted("chat template output too large");
    }
    return ok_status();
  }

 private:
  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return f->second;
    }
    if (is_builtin_function(name)) return Value::function(name);
    Value u = Value::undefined();
    u.s = name;  // remembered for "'x' is undefined" messages
    return u;
  }

  Status exec(const Stmt& s, std::string* out) {
    switch (s.kind) {
      case Stmt::Kind::kText:
        out->append(s.text);
        return ok_status();
      case Stmt::Kind::kOutput: {
        TQ_ASSIGN_OR_RETURN(const Value v, eval(*s.expr));
        out->append(to_output(v));
        return ok_status();
      }
      case Stmt::Kind::kIf:
        for (size_t k = 0; k < s.conds.size(); ++k) {
          TQ_ASSIGN_OR_RETURN(const Value c, eval(*s.conds[k]));
          if (truthy(c)) return exec_body(s.bodies[k], out);
        }
        if (s.bodies.size() > s.conds.size()) return exec_body(s.bodies.back(), out);
        return ok_status();
      case Stmt::Kind::kFor:
        return exec_for(s, out);
      case Stmt::Kind::kSet: {
        TQ_ASSIGN_OR_RETURN(Value v, eval(*s.expr));
        if (s.targets.size() == 1) {
          scopes_.back()[s.targets[0]] = std::move(v);
          return ok_status();
        }
        Value ns = lookup(s.targets[0]);
        if (ns.kind != K::kNamespace)
          return invalid_argument("cannot set an attribute of '" + s.targets[0] +
                                  "': not a namespace");
        // What keeps values acyclic and shallow (kMaxNesting).
        if (v.has_namespace)
          return invalid_argument("a namespace attribute cannot hold a namespace");
        if (v.nesting + 1 > kMaxNesting)
          return too_large("nesting", static_cast<size_t>(v.nesting) + 1, kMaxNesting);
        ns.set(s.targets[1], std::move(v));
        return ok_status();
      }
      case Stmt::Kind::kSetBlock: {
        std::string captured;
        TQ_RETURN_IF_ERROR(exec_body(s.bodies[0], &captured));
        scopes_.back()[s.targets[0]] = Value::string(std::move(captured));
        return ok_status();
      }
      case Stmt::Kind::kBreak:
        flow_ = Flow::kBreak;
        return ok_status();
      case Stmt::Kind::kContinue:
        flow_ = Flow::kContinue;
        return ok_status();
      case Stmt::Kind::kScope:
        return exec_body(s.bodies[0], out);
    }
    return internal_error("unknown statement");
  }

  Status bind_targets(const Stmt& s, const Value& item,
                      std::unordered_map<std::string, Value>* scope) {
    if (s.targets.size() == 1) {
      (*scope)[s.targets[0]] = item;
      return ok_status();
    }
    TQ_ASSIGN_OR_RETURN(const ValueList parts, iterate(item));
    if (parts.size() != s.targets.size())
      return invalid_argument("cannot unpack " + std::to_string(parts.size()) + " values into " +
                              std::to_string(s.targets.size()) + " loop variables");
    for (size_t k = 0; k < parts.size(); ++k) (*scope)[s.targets[k]] = parts[k];
    return ok_status();
  }

  Status exec_for(const Stmt& s, std::string* out) {
    TQ_ASSIGN_OR_RETURN(const Value seq, eval(*s.expr));
    TQ_ASSIGN_OR_RETURN(ValueList items, iterate(seq));
    if (!s.conds.empty()) {  // {% for x in xs if cond %}: filtered before loop.* is computed
      ValueList kept;
      for (const Value& item : items) {
        scopes_.emplace_back();
        Status st = bind_targets(s, item, &scopes_.back());
        Expected<Value> c = st.ok() ? eval(*s.conds[0]) : Expected<Value>(st);
        scopes_.pop_back();
        if (!c.ok()) return c.status();
        if (truthy(*c)) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) return s.bodies.size() > 1 ? exec_body(s.bodies[1], out) : ok_status();
    const auto n = static_cast<int64_t>(items.size());
    for (int64_t k = 0; k < n; ++k) {
      if (++iterations_ > limits_.max_loop_iterations)
        return resource_exhausted("chat template loops too long");
      scopes_.emplace_back();
      auto& scope = scopes_.back();
      TQ_RETURN_IF_ERROR(bind_targets(s, items[k], &scope));
      Value loop = Value::new_dict({
          {"index0", Value::integer(k)},
          {"index", Value::integer(k + 1)},
          {"revindex0", Value::integer(n - k - 1)},
          {"revindex", Value::integer(n - k)},
          {"first", Value::boolean(k == 0)},
          {"last", Value::boolean(k == n - 1)},
          {"length", Value::integer(n)},
          {"previtem", k > 0 ? items[k - 1] : Value::undefined()},
          {"nextitem", k + 1 < n ? items[k + 1] : Value::undefined()},
      });
      scope["loop"] = std::move(loop);
      Status st = exec_body(s.bodies[0], out);
      scopes_.pop_back();
      TQ_RETURN_IF_ERROR(st);
      const Flow f = flow_;
      flow_ = Flow::kNormal;
      if (f == Flow::kBreak) break;
    }
    return ok_status();
  }

  Expected<CallArgs> eval_args(const Expr& e) {
    CallArgs a;
    for (size_t k = 1; k < e.args.size(); ++k) {
      TQ_ASSIGN_OR_RETURN(Value v, eval(*e.args[k]));
      const std::string& kw = k - 1 < e.kwarg_names.size() ? e.kwarg_names[k - 1] : std::string();
      if (kw.empty())
        a.pos.push_back(std::move(v));
      else
        a.kw.emplace_back(kw, std::move(v));
    }
    return a;
  }

  static Status undefined_error(const Value& v) {
    return invalid_argument("'" + (v.s.empty() ? std::string("value") : v.s) + "' is undefined");
  }

  // Every expression's value: within the size bounds, and the text they make together within
  // max_work_bytes (a loop of 2^20 copies of a 16 MiB string is 16 TiB of work).
  Expected<Value> eval(const Expr& e) {
    TQ_ASSIGN_OR_RETURN(Value v, eval_expr(e));
    TQ_RETURN_IF_ERROR(check_size(v));
    // Strings are copied wherever they go; a list or dict is copied only where an expression
    // makes one (a name or an item shares the storage).
    const bool made = e.kind != Expr::Kind::kName && e.kind != Expr::Kind::kAttr &&
                      e.kind != Expr::Kind::kItem && e.kind != Expr::Kind::kLiteral;
    work_bytes_ += v.kind == K::kString ? v.s.size() : made ? value_bytes(v) : 0;
    if (work_bytes_ > limits_.max_work_bytes)
      return resource_exhausted("chat template makes more than " +
                                std::to_string(limits_.max_work_bytes) + " bytes of values");
    return v;
  }

  Expected<Value> eval_expr(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::kLiteral:
        return e.literal;
      case Expr::Kind::kName:
        return lookup(e.name);
      case Expr::Kind::kAttr: {
        TQ_ASSIGN_OR_RETURN(const Value obj, eval(*e.args[0]));
        if (obj.is_undefined()) return undefined_error(obj);
        if (obj.is_mapping()) {
          const Value* v = obj.find(e.name);
          if (v) return *v;
        }
        Value u = Value::undefined();
        u.s = e.name;
        return u;
      }
      case Expr::Kind::kItem: {
        TQ_ASSIGN_OR_RETURN(const Value obj, eval(*e.args[0]));
        TQ_ASSIGN_OR_RETURN(const Value key, eval(*e.args[1]));
        return index(obj, key);
      }
      case Expr::Kind::kSlice:
        return eval_slice(e);
      case Expr::Kind::kCall: {
        TQ_ASSIGN_OR_RETURN(const CallArgs args, eval_args(e));
        const Expr& callee = *e.args[0];
        if (callee.kind == Expr::Kind::kAttr) {
          TQ_ASSIGN_OR_RETURN(const Value obj, eval(*callee.args[0]));
          if (obj.is_undefined()) return undefined_error(obj);
          return call_method(obj, callee.name, args);
        }
        TQ_ASSIGN_OR_RETURN(const Value f, eval(callee));
        if (f.kind != K::kFunction) {
          if (f.is_undefined()) return unsupported("unknown function '" + f.s + "'");
          return invalid_argument(std::string("a ") + kind_name(f.kind) + " is not callable");
        }
        return call_function(f.s, args, env_);
      }
      case Expr::Kind::kFilter: {
        TQ_ASSIGN_OR_RETURN(const Value in, eval(*e.args[0]));
        TQ_ASSIGN_OR_RETURN(const CallArgs args, eval_args(e));
        return apply_filter(e.name, in, args);
      }
      case Expr::Kind::kTest: {
        TQ_ASSIGN_OR_RETURN(const Value v, eval(*e.args[0]));
        TQ_ASSIGN_OR_RETURN(const CallArgs args, eval_args(e));
        TQ_ASSIGN_OR_RETURN(const bool r, apply_test(e.name, v, args));
        return Value::boolean(r != e.negated);
      }
      case Expr::Kind::kNot: {
        TQ_ASSIGN_OR_RETURN(const Value v, eval(*e.args[0]));
        return Value::boolean(!truthy(v));
      }
      case Expr::Kind::kNeg: {
        TQ_ASSIGN_OR_RETURN(const Value v, eval(*e.args[0]));
        return arithmetic("-", Value::integer(0), v);
      }
      case Expr::Kind::kBinary:
        return eval_binary(e);
      case Expr::Kind::kCond: {
        TQ_ASSIGN_OR_RETURN(const Value c, eval(*e.args[0]));
        if (truthy(c)) return eval(*e.args[1]);
        if (!e.args[2]) return Value::undefined();
        return eval(*e.args[2]);
      }
      case Expr::Kind::kList: {
        ValueList items;
        for (const auto& a : e.args) {
          TQ_ASSIGN_OR_RETURN(Value v, eval(*a));
          items.push_back(std::move(v));
        }
        return Value::new_list(std::move(items));
      }
      case Expr::Kind::kDict: {
        Value d = Value::new_dict();
        for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
          TQ_ASSIGN_OR_RETURN(const Value key, eval(*e.args[k]));
          TQ_ASSIGN_OR_RETURN(Value v, eval(*e.args[k + 1]));
          if (!key.is_string()) return unsupported("dict keys other than strings");
          d.set(key.s, std::move(v));
        }
        return d;
      }
    }
    return internal_error("unknown expression");
  }

  static Expected<Value> index(const Value& obj, const Value& key) {
    if (obj.is_undefined()) return undefined_error(obj);
    if (obj.is_mapping()) {
      if (key.is_string()) {
        if (const Value* v = obj.find(key.s)) return *v;
      }
      Value u = Value::undefined();
      u.s = to_output(key);
      return u;
    }
    if ((obj.is_list() || obj.is_string()) && key.kind == K::kInt) {
      const std::vector<std::string> chars =
          obj.is_string() ? utf8_chars(obj.s) : std::vector<std::string>{};
      const auto n = static_cast<int64_t>(obj.is_list() ? obj.list->size() : chars.size());
      const int64_t k = key.i < 0 ? key.i + n : key.i;
      if (k < 0 || k >= n) return Value::undefined();
      return obj.is_list() ? (*obj.list)[k] : Value::string(chars[k]);
    }
    return Value::undefined();
  }

  Expected<Value> eval_slice(const Expr& e) {
    TQ_ASSIGN_OR_RETURN(const Value obj, eval(*e.args[0]));
    Value parts[3];
    for (int k = 0; k < 3; ++k) {
      if (!e.args[k + 1]) {
        parts[k] = Value::none();
        continue;
      }
      TQ_ASSIGN_OR_RETURN(parts[k], eval(*e.args[k + 1]));
      if (parts[k].kind != K::kInt && !parts[k].is_none())
        return invalid_argument("slice indices must be integers");
    }
    const int64_t step = parts[2].is_none() ? 1 : parts[2].i;
    if (step == 0) return invalid_argument("slice step cannot be zero");
    if (obj.is_undefined()) return undefined_error(obj);
    std::vector<std::string> chars;
    if (obj.is_string())
      chars = utf8_chars(obj.s);
    else if (!obj.is_list())
      return invalid_argument(std::string("cannot slice a ") + kind_name(obj.kind));
    const auto n = static_cast<int64_t>(obj.is_list() ? obj.list->size() : chars.size());
    int64_t b = 0, end = 0;
    slice_bounds(n, &parts[0], &parts[1], step, &b, &end);
    ValueList items;
    std::string s;
    for (int64_t k = b; step > 0 ? k < end : k > end; k += step) {
      if (obj.is_list())
        items.push_back((*obj.list)[k]);
      else
        s += chars[k];
    }
    return obj.is_list() ? Value::new_list(std::move(items)) : Value::string(std::move(s));
  }

  Expected<Value> eval_binary(const Expr& e) {
    const std::string& op = e.name;
    TQ_ASSIGN_OR_RETURN(const Value a, eval(*e.args[0]));
    if (op == "and") return truthy(a) ? eval(*e.args[1]) : a;
    if (op == "or") return truthy(a) ? a : eval(*e.args[1]);
    TQ_ASSIGN_OR_RETURN(const Value b, eval(*e.args[1]));
    if (op == "==") return Value::boolean(equals(a, b));
    if (op == "!=") return Value::boolean(!equals(a, b));
    if (op == "<" || op == ">" || op == "<=" || op == ">=") {
      TQ_ASSIGN_OR_RETURN(const int c, compare(a, b));
      return Value::boolean(op == "<" ? c < 0 : op == ">" ? c > 0 : op == "<=" ? c <= 0 : c >= 0);
    }
    if (op == "in" || op == "not in") {
      CallArgs args;
      args.pos.push_back(b);
      TQ_ASSIGN_OR_RETURN(const bool in, apply_test("in", a, args));
      return Value::boolean(in != (op == "not in"));
    }
    if (op == "~") {
      std::string sa = to_output(a), sb = to_output(b);
      TQ_RETURN_IF_ERROR(check_string_bytes(sa.size() + sb.size()));
      return Value::string(std::move(sa) + sb);
    }
    return arithmetic(op, a, b);
  }

  std::vector<std::unordered_map<std::string, Value>> scopes_;
  const BuiltinEnv& env_;
  const RenderLimits& limits_;
  Flow flow_ = Flow::kNormal;
  int64_t iterations_ = 0;
  size_t work_bytes_ = 0;
};

}  // namespace

Expected<std::string> render_template(const Template& tmpl, const ValueDict& globals,
                                      const BuiltinEnv& env, const RenderLimits& limits) {
  Renderer r(globals, env, limits);
  std::string out;
  TQ_RETURN_IF_ERROR(r.exec_body(tmpl.body, &out));
  return out;
}

}  // namespace tq::model::jinja
