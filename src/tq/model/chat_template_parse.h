// Lexer and parser for the Jinja2 subset chat templates use. The lexer applies Jinja's
// whitespace rules as transformers' apply_chat_template configures them (trim_blocks and
// lstrip_blocks on, "{%-"/"-%}" strip, "+" opts out, one trailing newline dropped); the parser
// builds a small AST. Anything outside the subset is an Unsupported error naming the construct
// and its line.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tq/core/status.h"
#include "tq/model/chat_template_value.h"

namespace tq::model::jinja {

struct Expr {
  enum class Kind {
    kLiteral,  // literal
    kName,     // name
    kAttr,     // args[0].name
    kItem,     // args[0][args[1]]
    kSlice,    // args[0][args[1]:args[2]:args[3]] (null when omitted)
    kCall,     // args[0](args[1..]), kwarg_names parallel to args[1..] ("" = positional)
    kFilter,   // args[0] | name(args[1..])
    kTest,     // args[0] is [not] name(args[1..])
    kNot,      // not args[0]
    kNeg,      // -args[0]
    kBinary,   // args[0] name args[1]; name is the operator ("+", "and", "in", "not in", ...)
    kCond,     // args[1] if args[0] else args[2] (args[2] null: undefined)
    kList,     // [args...]
    kDict,     // {args[0]: args[1], ...}
  };
  Kind kind = Kind::kLiteral;
  Value literal;
  std::string name;
  std::vector<std::unique_ptr<Expr>> args;
  std::vector<std::string> kwarg_names;
  bool negated = false;
  int line = 1;
  int height = 1;  // levels of this tree: 1 + the tallest child's
};

struct Stmt {
  enum class Kind {
    kText,      // text
    kOutput,    // {{ expr }}
    kIf,        // conds[i] -> bodies[i]; a last extra body is the else branch
    kFor,       // for targets in expr [if conds[0]]: bodies[0], else bodies[1]
    kSet,       // set targets[0] (or targets[0].targets[1]) = expr
    kSetBlock,  // set targets[0] %} bodies[0] {% endset
    kBreak,
    kContinue,
    kScope,  // bodies[0], e.g. HF's {% generation %} block
  };
  Kind kind = Kind::kText;
  std::string text;
  std::unique_ptr<Expr> expr;
  std::vector<std::unique_ptr<Expr>> conds;
  std::vector<std::vector<Stmt>> bodies;
  std::vector<std::string> targets;
  int line = 1;
};

struct Template {
  std::vector<Stmt> body;
};

Expected<Template> parse_template(std::string_view source);

}  // namespace tq::model::jinja
