// generate_on_device (see device_generate.h): runtime::Generator's loop with the forward pass
// on the device.
#include "device_generate.h"

#include <algorithm>
#include <chrono>
#include <string>

#include "tq/runtime/sampler.h"

namespace tq::tools {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

Expected<runtime::GenerationStats> generate_on_device(backend::DeviceModel& dm, int seq,
                                                      const model::Model& m,
                                                      const std::vector<int32_t>& prompt,
                                                      const runtime::GenerateOptions& opt,
                                                      const runtime::TokenCallback& on_token) {
  using runtime::StopReason;
  TQ_RETURN_IF_ERROR(opt.validate());
  if (prompt.empty()) return invalid_argument("generate: the prompt has no tokens");
  const int n_prompt = static_cast<int>(prompt.size());
  const int room = dm.options().max_context - dm.length(seq);
  if (n_prompt >= room)
    return invalid_argument("generate: the prompt has " + std::to_string(n_prompt) +
                            " tokens but the context holds " + std::to_string(room) +
                            " (one more is needed to generate)");
  TQ_ASSIGN_OR_RETURN(runtime::Sampler sampler, runtime::Sampler::create(opt.sampler));
  const int vocab = m.config().vocab_size;
  std::vector<float> logits(static_cast<size_t>(vocab));

  runtime::GenerationStats st;
  st.prompt_tokens = n_prompt;
  const auto t_prompt = Clock::now();
  for (int done = 0; done < n_prompt;) {
    const int n = std::min(opt.prefill_batch, n_prompt - done);
    backend::DeviceForwardArgs a;
    a.seq = seq;
    a.tokens = prompt.data() + done;
    a.n = n;
    a.logits_mode =
        done + n == n_prompt ? backend::DeviceLogits::kLast : backend::DeviceLogits::kNone;
    a.logits = logits.data();
    if (Status s = dm.forward(a); !s.ok()) return s.with_context("prefill");
    done += n;
  }
  for (int32_t t : prompt) sampler.accept(t);
  st.prompt_seconds = seconds_since(t_prompt);

  const model::Tokenizer& tok = m.tokenizer();
  model::TokenStreamDecoder decoder(tok);
  runtime::StopStringFilter filter(opt.stop_strings);
  auto emit = [&](int32_t id, const std::string& text) {
    st.text += text;
    return on_token ? on_token(id, text) : true;
  };
  const auto t_gen = Clock::now();
  st.stop_reason = StopReason::kMaxTokens;
  for (int i = 0; i < opt.max_tokens; ++i) {
    const int32_t id = sampler.sample(logits.data(), vocab);
    sampler.accept(id);
    st.tokens.push_back(id);
    ++st.generated_tokens;
    if (opt.stop_at_eog && tok.is_eog(id)) {
      st.stop_reason = StopReason::kEndOfGeneration;
      break;
    }
    const std::string text = filter.push(decoder.push(id));
    if (!emit(id, text)) {
      st.stop_reason = StopReason::kCallback;
      break;
    }
    if (filter.stopped()) {
      st.stop_reason = StopReason::kStopString;
      break;
    }
    if (i + 1 == opt.max_tokens) break;  // no pass needed for logits nobody samples
    if (dm.length(seq) >= dm.options().max_context) {
      st.stop_reason = StopReason::kContextFull;
      break;
    }
    backend::DeviceForwardArgs a;
    a.seq = seq;
    a.tokens = &id;
    a.n = 1;
    a.logits = logits.data();
    if (Status s = dm.forward(a); !s.ok()) return s.with_context("decode");
  }
  if (st.stop_reason != StopReason::kStopString && st.stop_reason != StopReason::kCallback) {
    const std::string tail = filter.push(decoder.flush()) + filter.flush();
    if (!tail.empty()) {
      st.text += tail;
      if (on_token) on_token(-1, tail);
    }
  }
  st.generation_seconds = seconds_since(t_gen);
  return st;
}

}  // namespace tq::tools
