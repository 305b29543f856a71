// Recursive-descent parser for the chat-template Jinja subset, with Jinja2's operator
// precedence: if-else < or < and < not < comparisons/in < + - < ~ < * / // % < ** < unary -
// < postfix (. [] ()) < filters and tests.
#include "tq/model/chat_template_parse.h"

#include <algorithm>
#include <initializer_list>

#include "tq/model/chat_template_lex.h"

namespace tq::model::jinja {
namespace {

using ExprPtr = std::unique_ptr<Expr>;
constexpr int kMaxDepth = 200;   // nesting limit, so hostile templates cannot blow the stack
constexpr int kMaxHeight = 256;  // levels of one expression's tree (Expr::height)

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : t_(std::move(tokens)) {}

  Expected<Template> parse() {
    Template tmpl;
    std::string end;
    TQ_RETURN_IF_ERROR(parse_body(&tmpl.body, {}, &end));
    return tmpl;
  }

 private:
  const Token& cur() const { return t_[p_]; }
  const Token& peek(size_t k = 1) const { return t_[std::min(p_ + k, t_.size() - 1)]; }
  bool is_op(std::string_view op) const {
    return cur().kind == Token::Kind::kOp && cur().text == op;
  }
  bool is_name(std::string_view n) const {
    return cur().kind == Token::Kind::kName && cur().text == n;
  }
  Status error(const std::string& msg) const {
    return invalid_argument("chat template line " + std::to_string(cur().line) + ": " + msg);
  }
  Status unsupported_here(const std::string& what) const {
    return unsupported("chat template line " + std::to_string(cur().line) + ": " + what +
                       " is not supported");
  }
  std::string describe() const {
    switch (cur().kind) {
      case Token::Kind::kEof:
        return "end of template";
      case Token::Kind::kStmtEnd:
        return "'%}'";
      case Token::Kind::kExprEnd:
        return "'}}'";
      default:
        return "'" + cur().text + "'";
    }
  }
  Status expect_op(std::string_view op) {
    if (!is_op(op)) return error("expected '" + std::string(op) + "', found " + describe());
    ++p_;
    return ok_status();
  }
  Status expect_kind(Token::Kind k, const char* what) {
    if (cur().kind != k) return error(std::string("expected ") + what + ", found " + describe());
    ++p_;
    return ok_status();
  }
  Expected<std::string> expect_name() {
    if (cur().kind != Token::Kind::kName) return error("expected a name, found " + describe());
    return t_[p_++].text;
  }
  // Every child joins its parent here, so no tree outgrows kMaxHeight: the loops that chain
  // operators, filters, attributes and calls ("1-1-1-...", "x|f|f|...") build left-deep trees
  // without recursing, which depth_ alone does not see, and rendering and freeing an expression
  // recurse once per level.
  Status attach(Expr& parent, ExprPtr child) {
    if (child) {
      parent.height = std::max(parent.height, child->height + 1);
      if (parent.height > kMaxHeight) return error("expression nested too deeply");
    }
    parent.args.push_back(std::move(child));
    return ok_status();
  }
  ExprPtr make(Expr::Kind kind, std::string name = {}) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->name = std::move(name);
    e->line = cur().line;
    return e;
  }

  // Statements up to a {% tag %} named in `ends` (stored in *end, p_ left after the name).
  Status parse_body(std::vector<Stmt>* out, std::initializer_list<std::string_view> ends,
                    std::string* end) {
    if (++depth_ > kMaxDepth) return error("blocks nested too deeply");
    while (true) {
      const Token& tok = cur();
      if (tok.kind == Token::Kind::kEof) {
        --depth_;
        if (ends.size() == 0) return ok_status();
        return error("missing {% " + std::string(*(ends.end() - 1)) + " %}");
      }
      if (tok.kind == Token::Kind::kText) {
        Stmt s;
        s.kind = Stmt::Kind::kText;
        s.text = tok.text;
        out->push_back(std::move(s));
        ++p_;
        continue;
      }
      if (tok.kind == Token::Kind::kExprBegin) {
        ++p_;
        Stmt s;
        s.kind = Stmt::Kind::kOutput;
        s.line = tok.line;
        TQ_ASSIGN_OR_RETURN(s.expr, parse_expr());
        TQ_RETURN_IF_ERROR(expect_kind(Token::Kind::kExprEnd, "'}}'"));
        out->push_back(std::move(s));
        continue;
      }
      if (tok.kind != Token::Kind::kStmtBegin) return error("unexpected " + describe());
      ++p_;
      TQ_ASSIGN_OR_RETURN(const std::string tag, expect_name());
      for (std::string_view e : ends) {
        if (tag == e) {
          *end = tag;
          --depth_;
          return ok_status();
        }
      }
      Stmt s;
      s.line = tok.line;
      if (tag == "if") {
        TQ_RETURN_IF_ERROR(parse_if(&s));
      } else if (tag == "for") {
        TQ_RETURN_IF_ERROR(parse_for(&s));
      } else if (tag == "set") {
        TQ_RETURN_IF_ERROR(parse_set(&s));
      } else if (tag == "break" || tag == "continue") {
        s.kind = tag == "break" ? Stmt::Kind::kBreak : Stmt::Kind::kContinue;
        TQ_RETURN_IF_ERROR(expect_kind(Token::Kind::kStmtEnd, "'%}'"));
      } else if (tag == "generation") {
        s.kind = Stmt::Kind::kScope;
        TQ_RETURN_IF_ERROR(expect_kind(Token::Kind::kStmtEnd, "'%}'"));
        s.bodies.emplace_back();
        std::string e;
        TQ_RETURN_IF_ERROR(parse_body(&s.bodies[0], {"endgeneration"}, &e));
        TQ_RETURN_IF_ERROR(expect_kind(Token::Kind::kStmtEnd, "'%}'"));
      } else if (tag.rfind("end", 0) == 0 || tag == "else" || tag == "elif") {
        return error("unexpected {% " + tag + " %}");
      } else {
        return unsupported_here("the {% " + tag + " %} tag");
      }
      out->push_back(std::move(s));
    }
  }

  Status parse_if(Stmt* s) {
    s->kind = Stmt::Kind::kIf;
    std::string end = "elif";
    while (end == "elif") {
      TQ_ASSIGN_OR_RETURN(auto cond, parse_expr());
      s->conds.push_back(std::move(cond));
      TQ_RETURN_IF_ERROR(expect_kind(Token::Kind::kStmtEnd, "'%}'"));
      s->bodies.emplace_back();
      TQ_RETURN_IF_ERROR(parse_body(&s->bodies.back(), {"elif", "else", "endif"}, &end));
    }
    if (end == "else") {
      TQ_RETURN_IF_ERROR(expect_kind(Token::Kind::kStmtEnd, "'%}'"));
      s->bodies.emplace_back();
      TQ_RETURN_IF_ERROR(parse_body(&s->bodies.back(), {"endif"}, &end));
    }
    return expect_kind(Token::Kind::kStmtEnd, "'%}'");
  }

  Status parse_for(Stmt* s) {
    s->kind = Stmt::Kind::kFor;
    do {
      TQ_ASSIGN_OR_RETURN(std::string name, expect_name());
      s->targets.push_back(std::move(name));
    } while (is_op(",") && (++p_, true));
    if (!is_name("in")) return error("expected 'in' in for loop, found " + describe());
    ++p_;
    TQ_ASSIGN_OR_RETURN(s->expr, parse_or());  // no if-else here: "if" filters the loop
    if (is_name("if")) {
      ++p_;
      TQ_ASSIGN_OR_RETURN(auto cond, parse_expr());
      s->conds.push_back(std::move(cond));
    }
    if (is_name("recursive")) return unsupported_here("a recursive for loop");
    TQ_RETURN_IF_ERROR(expect_kind(Token::Kind::kStmtEnd, "'%}'"));
    std::string end;
    s->bodies.emplace_back();
    TQ_RETURN_IF_ERROR(parse_body(&s->bodies[0], {"else", "endfor"}, &end));
    if (end == "else") {
      TQ_RETURN_IF_ERROR(expect_kind(Token::Kind::kStmtEnd, "'%}'"));
      s->bodies.emplace_back();
      TQ_RETURN_IF_ERROR(parse_body(&s->bodies[1], {"endfor"}, &end));
    }
    return expect_kind(Token::Kind::kStmtEnd, "'%}'");
  }

  Status parse_set(Stmt* s) {
    TQ_ASSIGN_OR_RETURN(std::string name, expect_name());
    s->targets.push_back(std::move(name));
    if (is_op(".")) {
      ++p_;
      TQ_ASSIGN_OR_RETURN(std::string attr, expect_name());
      s->targets.push_back(std::move(attr));
    }
    if (is_op(",")) return unsupported_here("tuple assignment in {% set %}");
    if (cur().kind == Token::Kind::kStmtEnd && s->targets.size() == 1) {
      ++p_;
      s->kind = Stmt::Kind::kSetBlock;
      s->bodies.emplace_back();
      std::string end;
      TQ_RETURN_IF_ERROR(parse_body(&s->bodies[0], {"endset"}, &end));
      return expect_kind(Token::Kind::kStmtEnd, "'%}'");
    }
    s->kind = Stmt::Kind::kSet;
    TQ_RETURN_IF_ERROR(expect_op("="));
    TQ_ASSIGN_OR_RETURN(s->expr, parse_expr());
    return expect_kind(Token::Kind::kStmtEnd, "'%}'");
  }

  // --- expressions, loosest binding first ---
  Expected<ExprPtr> parse_expr() {
    if (++depth_ > kMaxDepth) return error("expression nested too deeply");
    TQ_ASSIGN_OR_RETURN(ExprPtr e, parse_or());
    while (is_name("if")) {
      ++p_;
      auto c = make(Expr::Kind::kCond);
      TQ_ASSIGN_OR_RETURN(ExprPtr cond, parse_or());
      ExprPtr other;
      if (is_name("else")) {
        ++p_;
        TQ_ASSIGN_OR_RETURN(other, parse_expr());
      }
      TQ_RETURN_IF_ERROR(attach(*c, std::move(cond)));
      TQ_RETURN_IF_ERROR(attach(*c, std::move(e)));
      TQ_RETURN_IF_ERROR(attach(*c, std::move(other)));
      e = std::move(c);
    }
    --depth_;
    return e;
  }

  template <typename Next>
  Expected<ExprPtr> binary_chain(std::initializer_list<std::string_view> ops, bool names,
                                 Next next) {
    TQ_ASSIGN_OR_RETURN(ExprPtr e, (this->*next)());
    while (true) {
      std::string op;
      for (std::string_view o : ops)
        if (names ? is_name(o) : is_op(o)) op = std::string(o);
      if (op.empty()) return e;
      ++p_;
      auto b = make(Expr::Kind::kBinary, op);
      TQ_ASSIGN_OR_RETURN(ExprPtr rhs, (this->*next)());
      TQ_RETURN_IF_ERROR(attach(*b, std::move(e)));
      TQ_RETURN_IF_ERROR(attach(*b, std::move(rhs)));
      e = std::move(b);
    }
  }
  Expected<ExprPtr> parse_or() { return binary_chain({"or"}, true, &Parser::parse_and); }
  Expected<ExprPtr> parse_and() { return binary_chain({"and"}, true, &Parser::parse_not); }
  Expected<ExprPtr> parse_not() {
    if (!is_name("not")) return parse_compare();
    ++p_;
    if (++depth_ > kMaxDepth) return error("expression nested too deeply");
    auto e = make(Expr::Kind::kNot);
    TQ_ASSIGN_OR_RETURN(ExprPtr inner, parse_not());
    TQ_RETURN_IF_ERROR(attach(*e, std::move(inner)));
    --depth_;
    return e;
  }
  Expected<ExprPtr> parse_compare() {
    TQ_ASSIGN_OR_RETURN(ExprPtr e, parse_math1());
    while (true) {
      std::string op;
      for (std::string_view o : {"==", "!=", "<", ">", "<=", ">="})
        if (is_op(o)) op = std::string(o);
      if (op.empty() && is_name("in")) op = "in";
      if (op.empty() && is_name("not") && peek().kind == Token::Kind::kName &&
          peek().text == "in") {
        op = "not in";
        ++p_;
      }
      if (op.empty()) return e;
      ++p_;
      auto b = make(Expr::Kind::kBinary, op);
      TQ_ASSIGN_OR_RETURN(ExprPtr rhs, parse_math1());
      TQ_RETURN_IF_ERROR(attach(*b, std::move(e)));
      TQ_RETURN_IF_ERROR(attach(*b, std::move(rhs)));
      e = std::move(b);
    }
  }
  Expected<ExprPtr> parse_math1() { return binary_chain({"+", "-"}, false, &Parser::parse_concat); }
  Expected<ExprPtr> parse_concat() { return binary_chain({"~"}, false, &Parser::parse_math2); }
  Expected<ExprPtr> parse_math2() {
    return binary_chain({"*", "/", "//", "%"}, false, &Parser::parse_pow);
  }
  Expected<ExprPtr> parse_pow() { return binary_chain({"**"}, false, &Parser::parse_unary_f); }
  Expected<ExprPtr> parse_unary_f() { return parse_unary(true); }

  Expected<ExprPtr> parse_unary(bool with_filter) {
    if (++depth_ > kMaxDepth) return error("expression nested too deeply");
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      const bool neg = is_op("-");
      ++p_;
      TQ_ASSIGN_OR_RETURN(ExprPtr inner, parse_unary(false));
      if (neg) {
        e = make(Expr::Kind::kNeg);
        TQ_RETURN_IF_ERROR(attach(*e, std::move(inner)));
      } else {
        e = std::move(inner);
      }
    } else {
      TQ_ASSIGN_OR_RETURN(e, parse_primary());
    }
    TQ_ASSIGN_OR_RETURN(e, parse_postfix(std::move(e)));
    if (with_filter) {
      TQ_ASSIGN_OR_RETURN(e, parse_filters(std::move(e)));
    }
    --depth_;
    return e;
  }

  Expected<ExprPtr> parse_primary() {
    const Token& tok = cur();
    switch (tok.kind) {
      case Token::Kind::kName: {
        ++p_;
        auto e = make(Expr::Kind::kLiteral);
        if (tok.text == "true" || tok.text == "True")
          e->literal = Value::boolean(true);
        else if (tok.text == "false" || tok.text == "False")
          e->literal = Value::boolean(false);
        else if (tok.text == "none" || tok.text == "None")
          e->literal = Value::none();
        else
          e = make(Expr::Kind::kName, tok.text);
        return e;
      }
      case Token::Kind::kString: {
        std::string s;
        while (cur().kind == Token::Kind::kString) s += t_[p_++].text;  // "a" "b" concatenates
        auto e = make(Expr::Kind::kLiteral);
        e->literal = Value::string(std::move(s));
        return e;
      }
      case Token::Kind::kInt:
      case Token::Kind::kFloat: {
        auto e = make(Expr::Kind::kLiteral);
        e->literal = tok.kind == Token::Kind::kInt ? Value::integer(tok.i) : Value::real(tok.f);
        ++p_;
        return e;
      }
      default:
        break;
    }
    if (is_op("(")) {
      ++p_;
      TQ_ASSIGN_OR_RETURN(ExprPtr e, parse_expr());
      if (is_op(",")) {  // a tuple: behaves like a list here
        auto list = make(Expr::Kind::kList);
        TQ_RETURN_IF_ERROR(attach(*list, std::move(e)));
        while (is_op(",")) {
          ++p_;
          if (is_op(")")) break;
          TQ_ASSIGN_OR_RETURN(ExprPtr item, parse_expr());
          TQ_RETURN_IF_ERROR(attach(*list, std::move(item)));
        }
        e = std::move(list);
      }
      TQ_RETURN_IF_ERROR(expect_op(")"));
      return e;
    }
    if (is_op("[") || is_op("{")) {
      const bool dict = is_op("{");
      const char* close = dict ? "}" : "]";
      ++p_;
      auto e = make(dict ? Expr::Kind::kDict : Expr::Kind::kList);
      while (!is_op(close)) {
        TQ_ASSIGN_OR_RETURN(ExprPtr item, parse_expr());
        TQ_RETURN_IF_ERROR(attach(*e, std::move(item)));
        if (dict) {
          TQ_RETURN_IF_ERROR(expect_op(":"));
          TQ_ASSIGN_OR_RETURN(ExprPtr value, parse_expr());
          TQ_RETURN_IF_ERROR(attach(*e, std::move(value)));
        }
        if (!is_op(",")) break;
        ++p_;
      }
      TQ_RETURN_IF_ERROR(expect_op(close));
      return e;
    }
    return error("unexpected " + describe() + " in expression");
  }

  Expected<ExprPtr> parse_postfix(ExprPtr e) {
    while (true) {
      if (is_op(".")) {
        ++p_;
        if (cur().kind == Token::Kind::kInt) {
          auto item = make(Expr::Kind::kItem);
          auto idx = make(Expr::Kind::kLiteral);
          idx->literal = Value::integer(t_[p_++].i);
          TQ_RETURN_IF_ERROR(attach(*item, std::move(e)));
          TQ_RETURN_IF_ERROR(attach(*item, std::move(idx)));
          e = std::move(item);
          continue;
        }
        TQ_ASSIGN_OR_RETURN(std::string attr, expect_name());
        auto a = make(Expr::Kind::kAttr, std::move(attr));
        TQ_RETURN_IF_ERROR(attach(*a, std::move(e)));
        e = std::move(a);
      } else if (is_op("[")) {
        ++p_;
        ExprPtr start, stop, step;
        if (!is_op(":")) {
          TQ_ASSIGN_OR_RETURN(start, parse_expr());
        }
        if (is_op(":")) {
          ++p_;
          if (!is_op(":") && !is_op("]")) {
            TQ_ASSIGN_OR_RETURN(stop, parse_expr());
          }
          if (is_op(":")) {
            ++p_;
            if (!is_op("]")) {
              TQ_ASSIGN_OR_RETURN(step, parse_expr());
            }
          }
          auto s = make(Expr::Kind::kSlice);
          TQ_RETURN_IF_ERROR(attach(*s, std::move(e)));
          TQ_RETURN_IF_ERROR(attach(*s, std::move(start)));
          TQ_RETURN_IF_ERROR(attach(*s, std::move(stop)));
          TQ_RETURN_IF_ERROR(attach(*s, std::move(step)));
          e = std::move(s);
        } else {
          auto item = make(Expr::Kind::kItem);
          TQ_RETURN_IF_ERROR(attach(*item, std::move(e)));
          TQ_RETURN_IF_ERROR(attach(*item, std::move(start)));
          e = std::move(item);
        }
        TQ_RETURN_IF_ERROR(expect_op("]"));
      } else if (is_op("(")) {
        auto call = make(Expr::Kind::kCall);
        TQ_RETURN_IF_ERROR(attach(*call, std::move(e)));
        TQ_RETURN_IF_ERROR(parse_call_args(call.get()));
        e = std::move(call);
      } else {
        return e;
      }
    }
  }

  Status parse_call_args(Expr* call) {
    TQ_RETURN_IF_ERROR(expect_op("("));
    while (!is_op(")")) {
      if (is_op("*") || is_op("**")) return unsupported_here("*args/**kwargs in a call");
      std::string kw;
      if (cur().kind == Token::Kind::kName && peek().kind == Token::Kind::kOp &&
          peek().text == "=") {
        kw = cur().text;
        p_ += 2;
      }
      TQ_ASSIGN_OR_RETURN(ExprPtr arg, parse_expr());
      TQ_RETURN_IF_ERROR(attach(*call, std::move(arg)));
      call->kwarg_names.push_back(std::move(kw));
      if (!is_op(",")) break;
      ++p_;
    }
    return expect_op(")");
  }

  Expected<ExprPtr> parse_filters(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        ++p_;
        TQ_ASSIGN_OR_RETURN(std::string name, expect_name());
        auto f = make(Expr::Kind::kFilter, std::move(name));
        TQ_RETURN_IF_ERROR(attach(*f, std::move(e)));
        if (is_op("(")) TQ_RETURN_IF_ERROR(parse_call_args(f.get()));
        f->kwarg_names.resize(f->args.size() - 1);
        e = std::move(f);
      } else if (is_name("is")) {
        ++p_;
        bool negated = false;
        if (is_name("not")) {
          negated = true;
          ++p_;
        }
        TQ_ASSIGN_OR_RETURN(std::string name, expect_name());
        auto t = make(Expr::Kind::kTest, std::move(name));
        t->negated = negated;
        TQ_RETURN_IF_ERROR(attach(*t, std::move(e)));
        const Token& c = cur();
        const bool bare_arg = c.kind == Token::Kind::kString || c.kind == Token::Kind::kInt ||
                              c.kind == Token::Kind::kFloat ||
                              (c.kind == Token::Kind::kName && c.text != "else" && c.text != "or" &&
                               c.text != "and" && c.text != "if" && c.text != "in" &&
                               c.text != "is" && c.text != "not");
        if (is_op("(")) {
          TQ_RETURN_IF_ERROR(parse_call_args(t.get()));
        } else if (bare_arg) {
          TQ_ASSIGN_OR_RETURN(ExprPtr arg, parse_primary());
          TQ_ASSIGN_OR_RETURN(arg, parse_postfix(std::move(arg)));
          TQ_RETURN_IF_ERROR(attach(*t, std::move(arg)));
          t->kwarg_names.emplace_back();
        }
        e = std::move(t);
      } else if (is_op("(")) {
        auto call = make(Expr::Kind::kCall);
        TQ_RETURN_IF_ERROR(attach(*call, std::move(e)));
        TQ_RETURN_IF_ERROR(parse_call_args(call.get()));
        e = std::move(call);
      } else {
        return e;
      }
    }
  }

  std::vector<Token> t_;
  size_t p_ = 0;
  int depth_ = 0;
};

}  // namespace

Expected<Template> parse_template(std::string_view source) {
  TQ_ASSIGN_OR_RETURN(std::vector<Token> tokens, lex_template(source));
  Parser parser(std::move(tokens));
  return parser.parse();
}

}  // namespace tq::model::jinja
