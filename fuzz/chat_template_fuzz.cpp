// libFuzzer target for the chat-template interpreter: a GGUF's tokenizer.chat_template is
// input like any other, so any template must render or fail with a Status, never crash, hang
// or exhaust memory. The input is the template text; the messages are fixed (system, user,
// assistant, user), rendered with and without the fallback formats.
//   cmake -S . -B build-fuzz -DTQ_FUZZ=ON -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
//     -DTQ_BUILD_BENCH=OFF -DTQ_BUILD_TESTS=OFF -DTQ_BUILD_TOOLS=OFF -DTQ_BUILD_SERVER=OFF
//   cmake --build build-fuzz --target chat_template_fuzz
//   build-fuzz/chat_template_fuzz -max_total_time=60 -max_len=4096 CORPUS
// CORPUS: a folder of seeds, e.g. the fixture's templates as .ci/run writes them (an empty one
// works too: an empty corpus found the left-deep "1-1-1-..." chains in a few minutes).
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "tq/core/log.h"
#include "tq/model/chat_template.h"

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  tq::set_log_level(tq::LogLevel::kError);  // every fallback logs a warning: no flood of them
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::vector<tq::model::ChatMessage> kMessages = {
      {"system", "You are terse."},
      {"user", "Hi {{ there }} <|im_end|>"},
      {"assistant", "Hello."},
      {"user", "2 + 2?"},
  };
  const std::string_view tmpl(reinterpret_cast<const char*>(data), size);
  tq::model::ChatTemplateOptions o;
  o.bos_token = "<s>";
  o.eos_token = "</s>";
  for (bool fallback : {false, true}) {
    o.allow_fallback = fallback;
    auto r = tq::model::apply_chat_template(tmpl, kMessages, o);
    if (r.ok() && r->size() > (size_t{1} << 26)) __builtin_trap();  // unbounded output
  }
  return 0;
}
