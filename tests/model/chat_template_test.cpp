// Chat-template tests: renders equal to jinja2 byte for byte (goldens from
// scripts/fixtures/make_tokenizer_fixtures.py, rendered with transformers' environment), the
// default model's own template, errors instead of crashes, and the marker-based fallback.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>

#include "test_env.h"
#include "tq/model/chat_template.h"
#include "tq/model/gguf.h"
#include "tq/model/tokenizer.h"

namespace tq::model {
namespace {

nlohmann::json fixture() {
  std::ifstream f(tq::test::fixture_path("tokenizer_chat_templates.json"));
  EXPECT_TRUE(f.good());
  std::stringstream ss;
  ss << f.rdbuf();
  return nlohmann::json::parse(ss.str());
}

std::vector<ChatMessage> messages_of(const nlohmann::json& conv) {
  std::vector<ChatMessage> out;
  for (const auto& m : conv) out.push_back({m["role"], m["content"]});
  return out;
}

ChatTemplateOptions options(bool gen) {
  ChatTemplateOptions o;
  o.bos_token = "<s>";
  o.eos_token = "</s>";
  o.add_generation_prompt = gen;
  o.allow_fallback = false;  // the goldens must come from the interpreter itself
  return o;
}

// Shows where two renders part, with escapes visible.
std::string show_diff(const std::string& got, const std::string& want) {
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  auto esc = [](std::string s) {
    std::string o;
    for (char c : s) o += c == '\n' ? std::string("\\n") : std::string(1, c);
    return o;
  };
  return "differs at byte " + std::to_string(i) + ": got \"" + esc(got.substr(i, 40)) +
         "\" want \"" + esc(want.substr(i, 40)) + "\"";
}

TEST(ChatTemplate, MatchesJinja2OnModelTemplates) {
  const nlohmann::json fx = fixture();
  int checked = 0;
  for (const auto& c : fx["cases"]) {
    const std::string tname = c["template"];
    const std::string tmpl = fx["templates"][tname];
    const auto msgs = messages_of(fx["conversations"][c["conversation"].get<std::string>()]);
    const std::string label = tname + " / " + c["conversation"].get<std::string>() +
                              (c["add_generation_prompt"].get<bool>() ? " / gen" : "");
    auto r = apply_chat_template(tmpl, msgs, options(c["add_generation_prompt"]));
    if (c.contains("error")) {
      ASSERT_FALSE(r.ok()) << label << " should raise: " << c["error"];
      EXPECT_NE(r.status().message().find(c["error"].get<std::string>()), std::string::npos)
          << label << ": " << r.status().to_string();
    } else {
      ASSERT_TRUE(r.ok()) << label << ": " << r.status().to_string();
      const std::string want = c["expected"];
      EXPECT_EQ(*r, want) << label << ": " << show_diff(*r, want);
    }
    ++checked;
  }
  EXPECT_EQ(checked, 7 * 4 * 2);
}

TEST(ChatTemplate, MatchesJinja2OnExpressionSnippets) {
  const nlohmann::json fx = fixture();
  const auto msgs = messages_of(fx["conversations"]["multi_turn"]);
  for (const auto& c : fx["snippets"]) {
    const std::string tmpl = c["template"];
    auto r = apply_chat_template(tmpl, msgs, options(true));
    if (c.contains("error")) {
      ASSERT_FALSE(r.ok()) << tmpl;
      EXPECT_NE(r.status().message().find(c["error"].get<std::string>()), std::string::npos)
          << tmpl << " -> " << r.status().to_string();
    } else {
      ASSERT_TRUE(r.ok()) << tmpl << " -> " << r.status().to_string();
      EXPECT_EQ(*r, c["expected"].get<std::string>()) << tmpl;
    }
  }
}

// The default model's GGUF template (SmolLM2: ChatML with a default system prompt).
TEST(ChatTemplate, DefaultModelTemplate) {
  TQ_REQUIRE_FILE(tq::test::model_path());
  auto g = GgufFile::open(tq::test::model_path());
  ASSERT_TRUE(g.ok()) << g.status().to_string();
  auto tok = load_tokenizer(**g);
  ASSERT_TRUE(tok.ok()) << tok.status().to_string();
  const nlohmann::json fx = fixture();
  EXPECT_EQ((*tok)->chat_template(), fx["templates"]["smollm2"].get<std::string>());
  auto r = apply_chat_template((*tok)->chat_template(), {{"user", "Hi!"}}, options(true));
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(*r,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n");
  // The prompt tokenizes with the markers as single control tokens.
  const auto ids = (*tok)->encode(*r, false, true);
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 1), 3);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 2), 2);
}

TEST(ChatTemplate, UnsupportedConstructsAreErrorsOrFallback) {
  const std::vector<ChatMessage> msgs = {{"system", "S"}, {"user", "U"}};
  ChatTemplateOptions o = options(true);
  const std::string macro = "{% macro f() %}x{% endmacro %}<|im_start|>{{ f() }}";
  auto r = apply_chat_template(macro, msgs, o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnsupported) << r.status().to_string();
  EXPECT_NE(r.status().message().find("macro"), std::string::npos);
  o.allow_fallback = true;
  r = apply_chat_template(macro, msgs, o);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
            "<|im_start|>assistant\n");
  // Unknown filters are found at render time and fall back the same way.
  r = apply_chat_template("{{ messages | frobnicate }}[INST]", msgs, o);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, "<s>[INST] S\n\nU [/INST]");
  // raise_exception is the template's own verdict: never a fallback.
  r = apply_chat_template("{{ raise_exception('no') }}<|im_start|>", msgs, o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "chat template line 1: raise_exception: no");
  // No markers: the parse error itself.
  r = apply_chat_template("{% if %}", msgs, o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("line 1"), std::string::npos) << r.status().to_string();
  EXPECT_FALSE(apply_chat_template("", msgs, o).ok());
}

// The built-in formats agree with the real templates they stand in for.
TEST(ChatTemplate, FallbackFormatsMatchTemplates) {
  const nlohmann::json fx = fixture();
  const auto msgs = messages_of(fx["conversations"]["multi_turn"]);
  for (bool gen : {false, true}) {
    const ChatTemplateOptions o = options(gen);
    auto llama = apply_chat_template(fx["templates"]["llama3"].get<std::string>(), msgs, o);
    ASSERT_TRUE(llama.ok());
    EXPECT_EQ(format_chat(ChatFormat::kLlama3, msgs, o), *llama);
    auto mistral = apply_chat_template(fx["templates"]["mistral"].get<std::string>(), msgs, o);
    ASSERT_TRUE(mistral.ok());
    EXPECT_EQ(format_chat(ChatFormat::kMistral, msgs, o), *mistral);
    const auto sys = messages_of(fx["conversations"]["system_user"]);
    auto qwen = apply_chat_template(fx["templates"]["qwen2"].get<std::string>(), sys, o);
    ASSERT_TRUE(qwen.ok());
    EXPECT_EQ(format_chat(ChatFormat::kChatMl, sys, o), *qwen);
  }
  EXPECT_EQ(detect_chat_format("{{ x }}").status().code(), StatusCode::kUnsupported);
}

// Every prefix of every fixture template (malformed in all sorts of ways) gives a render or an
// error, never a crash or a hang; deep nesting is refused.
TEST(ChatTemplate, TruncatedAndHostileTemplatesNeverCrash) {
  const nlohmann::json fx = fixture();
  const std::vector<ChatMessage> msgs = {{"user", "a"}, {"assistant", "b"}};
  ChatTemplateOptions o = options(true);
  size_t errors = 0, renders = 0;
  for (const auto& [name, t] : fx["templates"].items()) {
    const std::string tmpl = t;
    for (size_t n = 1; n < tmpl.size(); n += 3) {
      auto r = apply_chat_template(std::string_view(tmpl).substr(0, n), msgs, o);
      (r.ok() ? renders : errors)++;
    }
  }
  EXPECT_GT(errors, 100u);
  EXPECT_GT(renders, 10u);
  const std::string deep = "{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}";
  EXPECT_FALSE(apply_chat_template(deep, msgs, o).ok());
  std::string nested;
  for (int i = 0; i < 1000; ++i) nested += "{% if true %}";
  EXPECT_FALSE(apply_chat_template(nested, msgs, o).ok());
  EXPECT_EQ(
      apply_chat_template("{% for i in range(100000000) %}{% endfor %}", msgs, o).status().code(),
      StatusCode::kResourceExhausted);
  EXPECT_EQ(apply_chat_template("{{ 'x' * 1000000000 }}", msgs, o).status().code(),
            StatusCode::kResourceExhausted);
  EXPECT_FALSE(apply_chat_template("{{ 'abc", msgs, o).ok());
  EXPECT_FALSE(apply_chat_template("{# open", msgs, o).ok());
  EXPECT_FALSE(apply_chat_template("{{ 1 // 0 }}", msgs, o).ok());
  EXPECT_FALSE(apply_chat_template("{{ [1][::0] }}", msgs, o).ok());
}

// Chains of operators, filters, attributes, subscripts, calls and conditionals build their trees
// in loops, not by recursion: a long one is refused with an error (before, "1-1-1-..." of a few
// thousand links overflowed the stack when rendered), one of the greatest allowed height renders,
// also at the bottom of nested blocks near the parser's limit (about the deepest stack the
// renderer can reach).
TEST(ChatTemplate, LongChainsAreRefusedNotOverflowed) {
  const std::vector<ChatMessage> msgs = {{"user", "a"}};
  const ChatTemplateOptions o = options(false);
  auto chain = [](const std::string& head, const std::string& link, int n) {
    std::string s = head;
    for (int i = 0; i < n; ++i) s += link;
    return s;
  };
  for (const std::string& expr :
       {chain("1", "-1", 100000), chain("'a'", "~'a'", 100000), chain("1", " or 1", 100000),
        chain("1", " == 1", 100000), chain("x", "|length", 100000), chain("x", ".y", 100000),
        chain("x", "[0]", 100000), chain("x", "[0:1]", 100000), chain("x", "()", 100000),
        chain("1", " if 1", 100000), chain("1", " is defined", 100000)}) {
    auto r = apply_chat_template("{{ " + expr + " }}", msgs, o);
    ASSERT_FALSE(r.ok()) << expr.substr(0, 20);
    EXPECT_NE(r.status().to_string().find("nested too deeply"), std::string::npos)
        << r.status().to_string();
  }
  // n links make a tree of height n + 1: 255 links reach kMaxHeight (256) and render, also at the
  // bottom of 190 nested blocks (the parser's depth limit, 200, leaves the expression the rest);
  // one link more is refused.
  const std::string sum = chain("1", "+1", 255);
  auto flat = apply_chat_template("{{ " + sum + " }}", msgs, o);
  ASSERT_TRUE(flat.ok()) << flat.status().to_string();
  EXPECT_EQ(*flat, "256");
  EXPECT_FALSE(apply_chat_template("{{ " + sum + "+1 }}", msgs, o).ok());
  std::string nested;
  for (int i = 0; i < 190; ++i) nested += "{% if true %}";
  nested += "{{ " + sum + " }}";
  for (int i = 0; i < 190; ++i) nested += "{% endif %}";
  auto deep = apply_chat_template(nested, msgs, o);
  ASSERT_TRUE(deep.ok()) << deep.status().to_string();
  EXPECT_EQ(*deep, "256");
}

// A template comes from the GGUF file: its arithmetic, its values' sizes and their nesting are
// bounded, with an error, never a trap, a wrap-around or memory without end.
TEST(ChatTemplate, ArithmeticAndGrowthAreBounded) {
  const std::vector<ChatMessage> msgs = {{"user", "a"}};
  const ChatTemplateOptions o = options(false);
  const auto code = [&](const std::string& t) {
    return apply_chat_template(t, msgs, o).status().code();
  };
  const auto render = [&](const std::string& t) {
    auto r = apply_chat_template(t, msgs, o);
    return r.ok() ? *r : "error: " + r.status().to_string();
  };
  // int64 edges: the quotient that traps in C++, and results past int64 (Python would widen).
  const std::string kMin = "(-9223372036854775807 - 1)";
  EXPECT_EQ(code("{{ " + kMin + " // -1 }}"), StatusCode::kInvalidArgument);
  EXPECT_EQ(render("{{ " + kMin + " % -1 }}"), "0");
  EXPECT_EQ(render("{{ -7 // 2 }} {{ -7 % 2 }} {{ 7 // -2 }}"), "-4 1 -4");
  EXPECT_EQ(code("{{ 9223372036854775807 + 1 }}"), StatusCode::kInvalidArgument);
  EXPECT_EQ(code("{{ " + kMin + " - 1 }}"), StatusCode::kInvalidArgument);
  EXPECT_EQ(code("{{ 9223372036854775807 * 3 }}"), StatusCode::kInvalidArgument);
  EXPECT_EQ(code("{{ 3 ** 40 }}"), StatusCode::kInvalidArgument);
  EXPECT_EQ(render("{{ 3 ** 39 }} {{ (-1) ** 1000000000001 }} {{ 0 ** 0 }} {{ 2 ** 62 }}"),
            "4052555153018976267 -1 1 4611686018427387904");
  EXPECT_EQ(render("{{ range(" + kMin + ", 9223372036854775807, 4611686018427387904) | length }}"),
            "4");
  // Repetition whose size overflows int64 when multiplied; doubling by + and ~; replace and join
  // that multiply a string; a list repeated whose strings would take terabytes.
  EXPECT_EQ(code("{{ 'abcd' * 4611686018427387904 }}"), StatusCode::kResourceExhausted);
  EXPECT_EQ(code("{{ [1, 2] * 4611686018427387904 }}"), StatusCode::kResourceExhausted);
  // An empty sequence repeated any number of times is empty, at once (it took n steps before:
  // '' * 9223372036854775807 ran for ever; found by the chat-template fuzzer).
  EXPECT_EQ(render("[{{ '' * 9223372036854775807 }}] {{ ([] * 9223372036854775807) | length }} "
                   "[{{ 9223372036854775807 * '' }}] [{{ 'ab' * 0 }}]"),
            "[] 0 [] []");
  const std::string doubling = "{% set s = namespace(v='xxxxxxxxxx') %}{% for i in range(40) %}";
  EXPECT_EQ(code(doubling + "{% set s.v = s.v + s.v %}{% endfor %}{{ s.v | length }}"),
            StatusCode::kResourceExhausted);
  EXPECT_EQ(code(doubling + "{% set s.v = s.v ~ s.v %}{% endfor %}{{ s.v | length }}"),
            StatusCode::kResourceExhausted);
  EXPECT_EQ(code("{% set s = namespace(v=[1]) %}{% for i in range(40) %}{% set s.v = s.v + s.v %}"
                 "{% endfor %}{{ s.v | length }}"),
            StatusCode::kResourceExhausted);
  EXPECT_EQ(code("{{ ('x' * 4000000) | replace('x', 'xxxxxxxx') | length }}"),
            StatusCode::kResourceExhausted);
  EXPECT_EQ(code("{{ (['x' * 4000000] * 8) | join('') | length }}"),
            StatusCode::kResourceExhausted);
  EXPECT_EQ(code("{{ (['x' * 4000000] * 64) | length }}"), StatusCode::kResourceExhausted);
  EXPECT_EQ(render("{{ ('x' * 1000) | replace('x', 'yy') | length }} {{ ([1, 2] * 3) | length }}"),
            "2000 6");
  // Copies of a big string, 2^20 loop iterations of them: bounded by the work budget.
  EXPECT_EQ(code("{% set big = 'x' * 8000000 %}{% for i in range(1000000) %}{% set c = big %}"
                 "{% endfor %}"),
            StatusCode::kResourceExhausted);
  // Nesting: a namespace cannot hold itself (or any namespace), and lists stay shallow.
  EXPECT_EQ(code("{% set ns = namespace(a=1) %}{% set ns.b = ns %}{{ ns }}"),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code("{% set ns = namespace(a=1) %}{% set ns.b = [ns] %}{{ ns }}"),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code("{% set ns = namespace(v=none) %}{% for i in range(1000000) %}"
                 "{% set ns.v = [ns.v] %}{% endfor %}{{ ns.v }}"),
            StatusCode::kResourceExhausted);
  EXPECT_EQ(render("{% set ns = namespace(v=none) %}{% for i in range(3) %}{% set ns.v = [ns.v] %}"
                   "{% endfor %}{{ ns.v }}"),
            "[[[None]]]");
}

TEST(ChatTemplate, WhitespaceControlAndStrftime) {
  const std::vector<ChatMessage> msgs = {{"user", "u"}};
  ChatTemplateOptions o = options(false);
  // trim_blocks eats the newline after a block tag, lstrip_blocks the indent before one;
  // "-" strips all whitespace on its side; "+" opts out of lstrip; one trailing "\n" goes.
  auto r = apply_chat_template("a\n  {% if true %}\n  b\n  {%+ endif %}\nc {{- ' d' -}}  \n e\n",
                               msgs, o);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(*r, "a\n  b\n  c de");
  o.now_unix = 1721952000;  // 2024-07-26 00:00:00 UTC
  r = apply_chat_template("{{ strftime_now('%d %b %Y') }}", msgs, o);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, "26 Jul 2024");
}

}  // namespace
}  // namespace tq::model
