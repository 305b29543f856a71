// Jinja filters, tests, string/dict methods and global functions for chat templates, each with
// Python's semantics for the values templates pass them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tq/core/status.h"
#include "tq/model/chat_template_value.h"

namespace tq::model::jinja {

struct CallArgs {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
  // Argument i, or the keyword `name`, or nullptr.
  const Value* get(size_t i, std::string_view name) const;
};

// What the global functions may consult besides their arguments.
struct BuiltinEnv {
  int64_t now_unix = 0;  // strftime_now's clock, in seconds (UTC)
};

Expected<Value> apply_filter(const std::string& name, const Value& in, const CallArgs& args);
Expected<bool> apply_test(const std::string& name, const Value& v, const CallArgs& args);
Expected<Value> call_method(const Value& obj, const std::string& name, const CallArgs& args);
// raise_exception, namespace, range, dict, strftime_now. raise_exception returns its message
// as an InvalidArgument status prefixed "raise_exception: ".
Expected<Value> call_function(const std::string& name, const CallArgs& args, const BuiltinEnv& env);
bool is_builtin_function(std::string_view name);

}  // namespace tq::model::jinja
