// Token sampling from logits: repetition/presence/frequency penalties, then greedy or the
// chain top-k -> top-p -> min-p -> temperature -> draw, in llama.cpp's order and with its
// semantics (top-p and min-p look at the softmax at temperature 1 of the tokens still in play).
// A seed makes every draw reproducible.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "tq/core/rng.h"
#include "tq/core/status.h"

namespace tq::runtime {

struct SamplerConfig {
  float temperature = 0.8f;        // <= 0: greedy (argmax after penalties)
  int top_k = 40;                  // 0: off
  float top_p = 0.95f;             // 1: off
  float min_p = 0.05f;             // 0: off; keep p >= min_p * p_max
  float repeat_penalty = 1.0f;     // 1: off; logit > 0 divided by it, logit <= 0 multiplied
  int repeat_last_n = 64;          // tokens of history the penalties look at
  float presence_penalty = 0.0f;   // subtracted once from every token in the window
  float frequency_penalty = 0.0f;  // subtracted per occurrence in the window
  uint64_t seed = 42;

  Status validate() const;
  std::string to_string() const;
  bool greedy() const { return temperature <= 0.0f; }
  // Greedy with no penalties: the token is greedy_token(logits) and needs nothing else, so the
  // model may pick it where the logits are (the GPU) without sending them.
  bool plain_greedy() const {
    return greedy() && repeat_penalty == 1.0f && presence_penalty == 0.0f &&
           frequency_penalty == 0.0f;
  }
  bool penalties() const {
    return repeat_penalty != 1.0f || presence_penalty != 0.0f || frequency_penalty != 0.0f;
  }
  // How many of the largest raw logits (top_logits) Sampler::sample_top needs to draw exactly
  // what sample() draws from the whole row of n_vocab, or 0 when the chain needs the whole row:
  // top_k (greedy: 1), plus repeat_last_n when penalties are on (each can push one candidate
  // down, never up: repeat_penalty >= 1 and non-negative presence / frequency penalties), at
  // most kMaxTopCandidates; 0 with top_k off or >= n_vocab (top-p, min-p or the draw then see
  // every token), or penalties that can raise a logit.
  static constexpr int kMaxTopCandidates = 1024;
  int top_candidates(int n_vocab) const;
};

// The k largest of logits [n] (k <= n), most likely first, equal values by lower id, NaN taken
// as -inf: ids [k] and their logits [k] (NaN written as -inf). The order Sampler ranks
// candidates in; the GPU's top_k_rows returns the same.
void top_logits(const float* logits, int n, int k, int32_t* ids, float* values);

// The greedy token of logits [n]: the largest, NaN never winning, the lowest id among equals, -1
// when every logit is NaN or -inf (Sampler::sample with a plain_greedy config picks the same;
// the GPU's argmax_rows too).
int32_t greedy_token(const float* logits, int n);

// What a caller reports when a sampler returns -1 (the generator, the scheduler).
inline constexpr const char* kNoTokenToPick =
    "the model's logits hold no token to pick (NaN or infinite: non-finite weights in the model "
    "file?)";

struct Candidate {
  int32_t id;
  float logit;  // after penalties (once the temperature applies: (logit - max) / temperature)
  float p;      // probability within the kept set
};

class Sampler {
 public:
  // The config must validate(); create() checks it.
  static Expected<Sampler> create(const SamplerConfig& cfg);

  // Picks a token from logits [n_vocab]. Does not add it to the history: call accept(). -1 when
  // there is nothing to pick: greedy over logits all NaN or -inf, or a draw whose largest
  // logit is not finite (non-finite weights upstream).
  int32_t sample(const float* logits, int n_vocab);
  // The same token sample() picks from the whole row, from its count = config().top_candidates(
  // n_vocab) largest logits as top_logits gives them (the draw and the RNG state are the same:
  // the chain after top-k sees the same candidates in the same order). -1 when count is short.
  int32_t sample_top(const int32_t* ids, const float* logits, int count, int n_vocab);
  // Adds a token (prompt or generated) to the penalty history.
  void accept(int32_t token);
  // Clears the history and reseeds.
  void reset();

  // The candidates the last non-greedy sample() drew from, with their final probabilities (for
  // tests and debugging): most likely first after top-k or top-p, else in vocabulary order.
  std::span<const Candidate> last_candidates() const { return {cands_.data(), n_kept_}; }
  const SamplerConfig& config() const { return cfg_; }

 private:
  explicit Sampler(const SamplerConfig& cfg) : cfg_(cfg), rng_(cfg.seed) {}
  void reserve(int n_vocab);  // candidate and count buffers for a vocabulary of n_vocab
  void apply_penalties(int n_vocab);
  float penalized(float logit, int count) const;  // one token's penalties, `count` in the window
  void apply_top_k();
  void apply_top_p();
  void apply_min_p();
  void softmax_kept();  // p over the kept set, logits relative to the largest (order unchanged)
  int32_t draw_kept();  // top-p, min-p, temperature, softmax and the draw over the kept set
  void sort_kept(size_t k);

  SamplerConfig cfg_;
  Rng rng_;
  std::vector<Candidate> cands_;  // [n_vocab], the first n_kept_ in play
  size_t n_kept_ = 0;
  size_t n_sorted_ = 0;           // the first n_sorted_ are sorted by logit, descending
  std::vector<int32_t> history_;  // ring buffer of the last repeat_last_n tokens
  size_t history_next_ = 0;
  std::vector<int32_t> counts_;  // [n_vocab] scratch for penalty counts, all zero between calls
};

}  // namespace tq::runtime
