// Tokens of a chat template (see chat_template_lex.cpp for the whitespace rules).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tq/core/status.h"
#include "tq/model/unicode.h"

namespace tq::model::jinja {

struct Token {
  enum class Kind {
    kText,
    kExprBegin,
    kExprEnd,
    kStmtBegin,
    kStmtEnd,
    kName,
    kString,
    kInt,
    kFloat,
    kOp,
    kEof
  };
  Kind kind;
  std::string text;  // kText, kName, kString (unescaped), kOp, numbers as written
  int64_t i;         // kInt
  double f;          // kFloat
  int line;
};

Expected<std::vector<Token>> lex_template(std::string_view source);

}  // namespace tq::model::jinja
