// The values a chat template computes with (a small model of Jinja2's Python objects): none,
// undefined, bool, int, float, string, list, dict and namespace, plus Python-compatible
// printing, truthiness, comparison and JSON. Lists and dicts share their storage like Python
// references, which is what `{% set ns.x = ... %}` on a namespace relies on.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tq/core/status.h"

namespace tq::model::jinja {

// What a template may build (the template comes from the GGUF file, so it is untrusted): no
// string over kMaxStringBytes, no list over kMaxListItems. Every operation that can grow a value
// checks before it builds; the renderer also bounds the text all expressions make together.
inline constexpr size_t kMaxStringBytes = size_t{16} << 20;
inline constexpr size_t kMaxListItems = size_t{1} << 22;
inline constexpr size_t kMaxListBytes = size_t{64} << 20;  // value_bytes of a list + or * makes
// Lists, dicts and namespaces nested deeper than this are refused (printing, comparing and
// freeing a value recurse through it). A namespace attribute never holds a namespace, so values
// cannot form cycles.
inline constexpr int kMaxNesting = 64;

struct Value;
using ValueList = std::vector<Value>;
using ValueDict = std::vector<std::pair<std::string, Value>>;  // insertion-ordered

struct Value {
  enum class Kind {
    kUndefined,
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kList,
    kDict,
    kNamespace,
    kFunction
  };
  Kind kind = Kind::kUndefined;
  bool b = false;
  int64_t i = 0;
  double f = 0.0;
  std::string s;                    // kString; kFunction: the builtin's name
  std::shared_ptr<ValueList> list;  // kList
  std::shared_ptr<ValueDict> dict;  // kDict, kNamespace
  // Containers: 1 + the deepest item's nesting, as of the value's making (a namespace's grows
  // when set() is called on it, but not in the copies made before); whether the value is or holds
  // a namespace.
  int nesting = 0;
  bool has_namespace = false;

  static Value undefined() { return Value{}; }
  static Value none() {
    Value v;
    v.kind = Kind::kNone;
    return v;
  }
  static Value boolean(bool x) {
    Value v;
    v.kind = Kind::kBool;
    v.b = x;
    return v;
  }
  static Value integer(int64_t x) {
    Value v;
    v.kind = Kind::kInt;
    v.i = x;
    return v;
  }
  static Value real(double x) {
    Value v;
    v.kind = Kind::kFloat;
    v.f = x;
    return v;
  }
  static Value string(std::string x) {
    Value v;
    v.kind = Kind::kString;
    v.s = std::move(x);
    return v;
  }
  static Value new_list(ValueList items = {}) {
    Value v;
    v.kind = Kind::kList;
    v.list = std::make_shared<ValueList>(std::move(items));
    v.nesting = 1;
    for (const Value& x : *v.list) v.note_item(x);
    return v;
  }
  static Value new_dict(ValueDict items = {}, Kind kind = Kind::kDict) {
    Value v;
    v.kind = kind;
    v.dict = std::make_shared<ValueDict>(std::move(items));
    v.nesting = 1;
    v.has_namespace = kind == Kind::kNamespace;
    for (const auto& kv : *v.dict) v.note_item(kv.second);
    return v;
  }
  static Value function(std::string name) {
    Value v;
    v.kind = Kind::kFunction;
    v.s = std::move(name);
    return v;
  }

  bool is_undefined() const { return kind == Kind::kUndefined; }
  bool is_none() const { return kind == Kind::kNone; }
  bool is_string() const { return kind == Kind::kString; }
  bool is_number() const {
    return kind == Kind::kInt || kind == Kind::kFloat || kind == Kind::kBool;
  }
  bool is_list() const { return kind == Kind::kList; }
  bool is_mapping() const { return kind == Kind::kDict || kind == Kind::kNamespace; }

  // A dict's or namespace's entry, or nullptr.
  const Value* find(std::string_view key) const;
  void set(const std::string& key, Value v);  // kDict/kNamespace only

 private:
  void note_item(const Value& x) {
    nesting = nesting > x.nesting + 1 ? nesting : x.nesting + 1;
    has_namespace = has_namespace || x.has_namespace;
  }
};

const char* kind_name(Value::Kind k);
// resource_exhausted "chat template <what>: <n> (at most <limit>)", e.g. what = "string bytes".
Status too_large(const char* what, size_t n, size_t limit);
// too_large when a string of n bytes would pass kMaxStringBytes: checked before building one.
Status check_string_bytes(size_t n);
// resource_exhausted when v is a string, list or nesting over the bounds above.
Status check_size(const Value& v);
// The bytes v's strings and items take, through every list, dict and namespace it holds.
size_t value_bytes(const Value& v);
bool truthy(const Value& v);
// str(v) as Jinja prints it: None, True, 3.5, [1, 'a'], {'k': 'v'}; undefined prints "".
std::string to_output(const Value& v);
std::string python_repr(const Value& v);
std::string to_json(const Value& v);  // json.dumps(v, ensure_ascii=False)
bool equals(const Value& a, const Value& b);
// <0, 0, >0; Unsupported for unorderable kinds (e.g. a string and a number).
Expected<int> compare(const Value& a, const Value& b);
// Python's len(): code points for strings.
Expected<int64_t> length(const Value& v);
// The items `for` iterates: list elements, dict keys, string characters; none for undefined.
Expected<ValueList> iterate(const Value& v);

// UTF-8 string helpers with Python semantics (code points, Unicode whitespace for strip).
std::vector<std::string> utf8_chars(std::string_view s);
std::string py_strip(std::string_view s, std::string_view chars, bool left, bool right);
std::string ascii_upper(std::string s);
std::string ascii_lower(std::string s);

}  // namespace tq::model::jinja
