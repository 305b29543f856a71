// Chat prompts from a GGUF's tokenizer.chat_template: a Jinja2-subset interpreter that renders
// the common templates (ChatML/SmolLM2/Qwen2, Llama-3, Mistral) byte for byte as transformers'
// apply_chat_template does, with hand-written ChatML/Llama-3/Mistral formats as a fallback for
// templates it cannot parse.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tq/core/status.h"

namespace tq::model {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", "tool"
  std::string content;
};

struct ChatTemplateOptions {
  std::string bos_token;  // the text of the model's BOS/EOS tokens, as templates print them
  std::string eos_token;
  bool add_generation_prompt = true;  // end with the header of an assistant turn
  // Fall back to a built-in format chosen by markers in the template when it does not parse
  // (or uses something unsupported); a warning is logged. raise_exception errors never fall back.
  bool allow_fallback = true;
  int64_t now_unix = 0;  // the clock strftime_now() reads (UTC seconds); 0 = the epoch
};

// Renders `tmpl` for `messages`. Errors: InvalidArgument for a malformed template or one that
// calls raise_exception (message included), Unsupported for constructs outside the subset when
// no fallback applies.
Expected<std::string> apply_chat_template(std::string_view tmpl,
                                          const std::vector<ChatMessage>& messages,
                                          const ChatTemplateOptions& opts);

// The built-in formats the fallback uses, exposed for tests and for models without a template.
enum class ChatFormat { kChatMl, kLlama3, kMistral };
// The format whose markers `tmpl` contains, or Unsupported.
Expected<ChatFormat> detect_chat_format(std::string_view tmpl);
std::string format_chat(ChatFormat format, const std::vector<ChatMessage>& messages,
                        const ChatTemplateOptions& opts);

}  // namespace tq::model
