// generate_on_device (see device_generate.h): runtime::run_generation with the forward pass on
// the device.
#include "device_generate.h"

#include "tq/runtime/generator.h"

namespace tq::tools {

Expected<runtime::GenerationStats> generate_on_device(backend::DeviceModel& dm, int seq,
                                                      const model::Model& m,
                                                      const std::vector<int32_t>& prompt,
                                                      const runtime::GenerateOptions& opt,
                                                      const runtime::TokenCallback& on_token) {
  runtime::ForwardStep step;
  step.run = [&](const int32_t* tokens, int n, bool want_logits, float* logits) {
    backend::DeviceForwardArgs a;
    a.seq = seq;
    a.tokens = tokens;
    a.n = n;
    a.logits_mode = want_logits ? backend::DeviceLogits::kLast : backend::DeviceLogits::kNone;
    a.logits = logits;
    return dm.forward(a);
  };
  // Sampling from the device's top candidates: a few hundred bytes a token, not the logits row.
  step.run_top = [&](const int32_t* tokens, int n, int count, int32_t* ids, float* values) {
    backend::DeviceForwardArgs a;
    a.seq = seq;
    a.tokens = tokens;
    a.n = n;
    a.logits_mode = backend::DeviceLogits::kLast;
    a.top_k = count;
    a.top_ids = ids;
    a.top_logits = values;
    return dm.forward(a);
  };
  step.room = [&] { return dm.options().max_context - dm.length(seq); };
  std::vector<float> logits;
  return runtime::run_generation(m.tokenizer(), m.config().vocab_size, prompt, opt, step, logits,
                                 on_token);
}

}  // namespace tq::tools
