// apply_chat_template: parse, render with the chat variables transformers passes (messages,
// bos_token, eos_token, add_generation_prompt), or fall back to a built-in format.
#include "tq/model/chat_template.h"

#include "tq/core/log.h"
#include "tq/model/chat_template_eval.h"
#include "tq/model/chat_template_parse.h"

namespace tq::model {
namespace {

std::string trim_ws(const std::string& s) { return jinja::py_strip(s, "", true, true); }

}  // namespace

Expected<ChatFormat> detect_chat_format(std::string_view tmpl) {
  if (tmpl.find("<|im_start|>") != std::string_view::npos) return ChatFormat::kChatMl;
  if (tmpl.find("<|start_header_id|>") != std::string_view::npos) return ChatFormat::kLlama3;
  if (tmpl.find("[INST]") != std::string_view::npos) return ChatFormat::kMistral;
  return unsupported("no known chat format markers (<|im_start|>, <|start_header_id|>, [INST])");
}

std::string format_chat(ChatFormat format, const std::vector<ChatMessage>& messages,
                        const ChatTemplateOptions& opts) {
  std::string out;
  switch (format) {
    case ChatFormat::kChatMl:
      for (const ChatMessage& m : messages)
        out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
      if (opts.add_generation_prompt) out += "<|im_start|>assistant\n";
      break;
    case ChatFormat::kLlama3:
      out += opts.bos_token;
      for (const ChatMessage& m : messages)
        out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + trim_ws(m.content) +
               "<|eot_id|>";
      if (opts.add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      break;
    case ChatFormat::kMistral: {
      // Mistral has no system role: a system message goes in front of the first user turn.
      out += opts.bos_token;
      std::string system;
      for (const ChatMessage& m : messages) {
        if (m.role == "system") {
          system += (system.empty() ? "" : "\n\n") + m.content;
        } else if (m.role == "user") {
          const std::string content = system.empty() ? m.content : system + "\n\n" + m.content;
          system.clear();
          out += "[INST] " + content + " [/INST]";
        } else {
          out += m.content + opts.eos_token;
        }
      }
      break;
    }
  }
  return out;
}

Expected<std::string> apply_chat_template(std::string_view tmpl,
                                          const std::vector<ChatMessage>& messages,
                                          const ChatTemplateOptions& opts) {
  using jinja::Value;
  auto fallback = [&](const Status& why) -> Expected<std::string> {
    if (!opts.allow_fallback) return why;
    auto format = detect_chat_format(tmpl);
    if (!format.ok()) return why;
    static constexpr const char* kNames[] = {"ChatML", "Llama-3", "Mistral"};
    TQ_LOG(kWarn, "chat template not usable (%s); formatting as %s instead",
           why.to_string().c_str(), kNames[static_cast<int>(*format)]);
    return format_chat(*format, messages, opts);
  };
  if (tmpl.empty()) return invalid_argument("empty chat template");

  auto parsed = jinja::parse_template(tmpl);
  if (!parsed.ok()) return fallback(parsed.status());

  jinja::ValueList msgs;
  for (const ChatMessage& m : messages)
    msgs.push_back(
        Value::new_dict({{"role", Value::string(m.role)}, {"content", Value::string(m.content)}}));
  const jinja::ValueDict globals = {
      {"messages", Value::new_list(std::move(msgs))},
      {"bos_token", Value::string(opts.bos_token)},
      {"eos_token", Value::string(opts.eos_token)},
      {"add_generation_prompt", Value::boolean(opts.add_generation_prompt)},
  };
  jinja::BuiltinEnv env;
  env.now_unix = opts.now_unix;
  auto out = jinja::render_template(*parsed, globals, env);
  if (!out.ok() && out.status().code() == StatusCode::kUnsupported) return fallback(out.status());
  return out;
}

}  // namespace tq::model
