// Renders a parsed chat template with Jinja2's semantics for the supported subset: scoping
// (a for loop body is its own scope, if is not), the loop object, break/continue, undefined
// values that print as "" but fail on attribute access, and Python's operators.
#pragma once

#include <string>

#include "tq/core/status.h"
#include "tq/model/chat_template_builtins.h"
#include "tq/model/chat_template_parse.h"

namespace tq::model::jinja {

struct RenderLimits {
  size_t max_output_bytes = size_t{16} << 20;
  int64_t max_loop_iterations = int64_t{1} << 20;
  size_t max_work_bytes = size_t{1} << 30;  // text made by all expressions of one render
};

Expected<std::string> render_template(const Template& tmpl, const ValueDict& globals,
                                      const BuiltinEnv& env, const RenderLimits& limits = {});

}  // namespace tq::model::jinja
