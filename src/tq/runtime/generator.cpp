// The generation loop (see generator.h).
#include "tq/runtime/generator.h"

#include <algorithm>
#include <chrono>
#include <utility>
#include <vector>

namespace tq::runtime {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

Status GenerateOptions::validate() const {
  if (max_tokens < 0) return invalid_argument("generate: max_tokens must be >= 0");
  if (prefill_batch < 1) return invalid_argument("generate: prefill_batch must be >= 1");
  for (const auto& s : stop_strings)
    if (s.empty()) return invalid_argument("generate: empty stop string");
  return sampler.validate();
}

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::kMaxTokens:
      return "max tokens";
    case StopReason::kEndOfGeneration:
      return "end of generation";
    case StopReason::kStopString:
      return "stop string";
    case StopReason::kContextFull:
      return "context full";
    case StopReason::kCallback:
      return "stopped by caller";
  }
  return "?";
}

double GenerationStats::prompt_tokens_per_second() const {
  return prompt_seconds > 0.0 ? prompt_tokens / prompt_seconds : 0.0;
}
double GenerationStats::generation_tokens_per_second() const {
  return generation_seconds > 0.0 ? generated_tokens / generation_seconds : 0.0;
}

std::string StopStringFilter::push(std::string_view text) {
  if (stopped_) return {};
  pending_.append(text);
  if (stops_.empty()) return std::exchange(pending_, {});
  size_t first = std::string::npos;
  for (const auto& s : stops_) first = std::min(first, pending_.find(s));
  if (first != std::string::npos) {
    stopped_ = true;
    std::string out = pending_.substr(0, first);
    pending_.clear();
    return out;
  }
  // Hold back the longest tail that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const auto& s : stops_) {
    const size_t max_len = std::min(pending_.size(), s.size() - 1);
    for (size_t len = max_len; len > hold; --len)
      if (pending_.compare(pending_.size() - len, len, s, 0, len) == 0) {
        hold = len;
        break;
      }
  }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StopStringFilter::flush() {
  if (stopped_) return {};
  return std::exchange(pending_, {});
}

Expected<GenerationStats> run_generation(const model::Tokenizer& tok, int vocab,
                                         const std::vector<int32_t>& prompt,
                                         const GenerateOptions& opt, const ForwardStep& step,
                                         std::vector<float>& logits,
                                         const TokenCallback& on_token) {
  TQ_RETURN_IF_ERROR(opt.validate());
  if (prompt.empty()) return invalid_argument("generate: the prompt has no tokens");
  const int n_prompt = static_cast<int>(prompt.size());
  const int room = step.room();
  if (n_prompt >= room)
    return invalid_argument("generate: the prompt has " + std::to_string(n_prompt) +
                            " tokens but the context holds " + std::to_string(room) +
                            " (one more is needed to generate)");
  TQ_ASSIGN_OR_RETURN(Sampler sampler, Sampler::create(opt.sampler));
  logits.resize(static_cast<size_t>(vocab));
  // From the top candidates where the step can give them and the sampler draw from them.
  const int top = step.run_top ? opt.sampler.top_candidates(vocab) : 0;
  std::vector<int32_t> top_ids(static_cast<size_t>(top));
  std::vector<float> top_values(top_ids.size());
  const auto run = [&](const int32_t* tokens, int n, bool want) {
    if (want && top > 0) return step.run_top(tokens, n, top, top_ids.data(), top_values.data());
    return step.run(tokens, n, want, logits.data());
  };

  GenerationStats st;
  st.prompt_tokens = n_prompt;
  const auto t_prompt = Clock::now();
  for (int done = 0; done < n_prompt;) {
    const int n = std::min(opt.prefill_batch, n_prompt - done);
    if (Status s = run(prompt.data() + done, n, done + n == n_prompt); !s.ok())
      return s.with_context("prefill");
    done += n;
  }
  for (int32_t t : prompt) sampler.accept(t);
  st.prompt_seconds = seconds_since(t_prompt);

  model::TokenStreamDecoder decoder(tok);
  StopStringFilter filter(opt.stop_strings);
  auto emit = [&](int32_t id, const std::string& text) {
    st.text += text;
    return on_token ? on_token(id, text) : true;
  };

  const auto t_gen = Clock::now();
  st.stop_reason = StopReason::kMaxTokens;
  for (int i = 0; i < opt.max_tokens; ++i) {
    const int32_t id = top > 0 ? sampler.sample_top(top_ids.data(), top_values.data(), top, vocab)
                               : sampler.sample(logits.data(), vocab);
    if (id < 0)  // top holds the candidates the config needs, so only the logits can be at fault
      return invalid_argument("generate: token " + std::to_string(i) + ": " + kNoTokenToPick);
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
    if (step.room() <= 0) {
      st.stop_reason = StopReason::kContextFull;
      break;
    }
    if (Status s = run(&id, 1, true); !s.ok()) return s.with_context("decode");
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

Expected<GenerationStats> Generator::generate(const std::vector<int32_t>& prompt,
                                              kv::SequenceKv& kv, const GenerateOptions& opt,
                                              const TokenCallback& on_token) {
  ForwardStep step;
  step.run = [&](const int32_t* tokens, int n, bool want_logits, float* logits) {
    model::ForwardArgs a;
    a.tokens = tokens;
    a.n = n;
    a.kv = &kv;
    a.pool = &pool_;
    a.scratch = &scratch_;
    a.logits_mode = want_logits ? model::LogitsMode::kLast : model::LogitsMode::kNone;
    a.logits = logits;
    return model_.forward(a);
  };
  step.room = [&] { return kv.capacity() - kv.length(); };
  return run_generation(model_.tokenizer(), model_.config().vocab_size, prompt, opt, step, logits_,
                        on_token);
}

}  // namespace tq::runtime
