// The generation loop: prompt tokens -> prefill in batches -> sample, stream, decode one token
// at a time, until end of generation, a token limit, a stop string, a full context or the
// caller says stop. Text reaches the callback as complete UTF-8, with any tail that might
// begin a stop string held back until it is known not to. Prompt and generation phases are
// timed separately.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "tq/core/status.h"
#include "tq/core/thread_pool.h"
#include "tq/kv/sequence_kv.h"
#include "tq/model/llama.h"
#include "tq/runtime/sampler.h"

namespace tq::runtime {

struct GenerateOptions {
  int max_tokens = 128;                   // generated tokens at most (>= 0)
  std::vector<std::string> stop_strings;  // generation ends before the first match
  bool stop_at_eog = true;                // end at the tokenizer's end-of-generation tokens
  int prefill_batch = 256;                // prompt tokens per forward pass
  SamplerConfig sampler;

  Status validate() const;
};

enum class StopReason { kMaxTokens, kEndOfGeneration, kStopString, kContextFull, kCallback };
const char* stop_reason_name(StopReason r);

struct GenerationStats {
  int prompt_tokens = 0;
  double prompt_seconds = 0.0;      // prefill up to the first token's logits
  int generated_tokens = 0;         // sampled tokens, the EOG token included
  double generation_seconds = 0.0;  // sampling and decode passes after the prefill
  StopReason stop_reason = StopReason::kMaxTokens;
  std::string text;             // everything streamed to the callback
  std::vector<int32_t> tokens;  // generated ids

  double prompt_tokens_per_second() const;
  double generation_tokens_per_second() const;
};

// Called once per generated token with the text it completed (may be empty while UTF-8 or a
// possible stop string is held back; the end-of-generation token's own text is never
// streamed). Held-back text still pending at the end comes in one last call with token -1.
// Return false to stop.
using TokenCallback = std::function<bool(int32_t token, std::string_view text)>;

// What the generation loop needs of a model and its cache, whatever runs the forward pass
// (the CPU Generator below, a device model in tools/device_generate.cpp).
struct ForwardStep {
  // Runs tokens[0, n) after what the sequence holds; with want_logits, writes the last
  // token's logits [vocab] to `logits`.
  std::function<Status(const int32_t* tokens, int n, bool want_logits, float* logits)> run;
  // Optional: the same pass taking back the last token's `count` largest logits (ids and
  // values in runtime::top_logits's order) instead of its row; a device that keeps the logits
  // (the GPU) sends these instead of the vocabulary. The loop uses it when the sampler can draw
  // from them (SamplerConfig::top_candidates > 0), with Sampler::sample_top: the same tokens.
  std::function<Status(const int32_t* tokens, int n, int count, int32_t* ids, float* values)>
      run_top;
  // Tokens the sequence can still take.
  std::function<int()> room;
};

// The loop itself: validates, prefills `prompt` (non-empty; it must leave room for one more
// token) in passes of options.prefill_batch, then samples, streams and decodes one token at a
// time. `logits` is the caller's [vocab] buffer, reused between calls.
Expected<GenerationStats> run_generation(const model::Tokenizer& tokenizer, int vocab,
                                         const std::vector<int32_t>& prompt,
                                         const GenerateOptions& options, const ForwardStep& step,
                                         std::vector<float>& logits, const TokenCallback& on_token);

class Generator {
 public:
  Generator(const model::Model& model, ThreadPool& pool) : model_(model), pool_(pool) {}

  // Runs `prompt` (non-empty; appended after whatever `kv` already holds) and generates.
  // The prompt must fit in the cache with room for one more token.
  Expected<GenerationStats> generate(const std::vector<int32_t>& prompt, kv::SequenceKv& kv,
                                     const GenerateOptions& options, const TokenCallback& on_token);

 private:
  const model::Model& model_;
  ThreadPool& pool_;
  model::ForwardScratch scratch_;
  std::vector<float> logits_;
};

// Splits streamed text so that no emitted byte could belong to a stop string (stream.cpp of
// llama.cpp's server does the same).
class StopStringFilter {
 public:
  explicit StopStringFilter(const std::vector<std::string>& stops) : stops_(stops) {}
  // Adds text; returns what is safe to emit. Sets stopped() when a stop string completed
  // (the returned text ends just before it).
  std::string push(std::string_view text);
  // The held-back tail, at the end of generation.
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  const std::vector<std::string>& stops_;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace tq::runtime
