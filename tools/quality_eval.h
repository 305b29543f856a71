// KV-cache quality measurement as ../shared/docs/quality-method.md prescribes, shared by
// `tq ppl`, `tq verify` and `tq compare` on either device: llama-perplexity's chunking and
// scoring (chunks of ctx tokens, each a fresh sequence, BOS replacing the first token when the
// model adds one, only the second half scored), its PPL uncertainty, and KL divergence / top-1
// agreement of the next-token distributions against the f16 cache.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>

#include "tq/backend/device_model.h"
#include "tq/core/status.h"
#include "tq/core/thread_pool.h"
#include "tq/kv/sequence_kv.h"
#include "tq/model/llama.h"

namespace tq::tools {

struct EvalText {
  std::string name;             // file name, for reports
  std::vector<int32_t> tokens;  // the whole text, tokenized once (no BOS, no template)
  int ctx = 0;
  int n_chunks = 0;          // chunks evaluated (the tail that does not fill one dropped)
  int available_chunks = 0;  // chunks in the whole text
  bool add_bos = false;
  int32_t bos = -1;

  int first_scored() const { return ctx / 2; }
  int scored_per_chunk() const { return ctx - 1 - ctx / 2; }
  // Tokens of chunk c; the first replaced by BOS when the model adds one (llama-perplexity).
  std::vector<int32_t> chunk(int c) const;
};

// max_chunks < 0: all chunks.
Expected<EvalText> load_eval_text(const model::Model& model, const std::string& path, int ctx,
                                  int max_chunks);

// How a chunk goes through the cache: --ubatch and --decode of the quality commands (ppl,
// compare, verify).
struct PassFlags {
  // Passes of this many tokens (0: one pass of the whole chunk). The cache's first-append
  // statistics (key means, key and value scales) come from the first pass, so a small ubatch
  // measures what a server's chunked prefill (--prefill-chunk) gives.
  int ubatch = 0;
  // The chunk's context half (not scored) in passes of `ubatch`, then each scored token in a
  // pass of its own, as generation appends them: a scored token sees the cache a decode step
  // sees (its window of recent tokens exact, everything older compressed), where one pass
  // leaves every token but the chunk's last `window` compressed for every query.
  bool decode = false;

  void add_to(CLI::App* cmd);
  Status validate() const;
  // The passes over a chunk of n tokens as [begin, end) pairs, in order; the scored half starts
  // at n / 2 (EvalText::first_scored, every chunk holding ctx tokens).
  std::vector<std::pair<int, int>> chunk_passes(int n) const;
  // "" (one pass), ", ubatch 32", ", decode", ", ubatch 32, decode": for the text reports.
  std::string describe() const;
};

// Runs the chunk through a fresh `kv` in the passes `passes` gives; logits: [ctx][vocab].
Status eval_chunk(const model::Model& model, const std::vector<int32_t>& tokens, kv::SequenceKv& kv,
                  ThreadPool& pool, std::vector<float>& logits, const PassFlags& passes = {});

// The same on a device model (--device cuda): the chunk through a fresh slot 0 of `dm` (one
// pass: of its max_batch tokens); logits: [ctx][vocab].
Status eval_chunk_on_device(backend::DeviceModel& dm, const std::vector<int32_t>& tokens, int vocab,
                            std::vector<float>& logits, const PassFlags& passes = {});

// log-softmax of one row, in double.
void log_softmax(const float* logits, int n, std::vector<double>& out);

// Running PPL over scored tokens, with llama-perplexity's uncertainty estimate.
struct PplAccum {
  double nll = 0, nll2 = 0;
  int64_t count = 0;
  void add(double token_nll) {
    nll += token_nll;
    nll2 += token_nll * token_nll;
    ++count;
  }
  double ppl() const;
  double ppl_err() const;  // ppl * sqrt((E[nll^2] - E[nll]^2) / (count - 1))
};

// Adds the scored rows of one chunk (logits [ctx][vocab]) to `ppl`.
void score_chunk(const EvalText& text, const std::vector<int32_t>& tokens,
                 const std::vector<float>& logits, int vocab, PplAccum& ppl);

// KL(ref || test) and top-1 agreement over scored rows.
struct KldAccum {
  std::vector<double> kld;  // per scored token
  int64_t same_top1 = 0;
  void add_chunk(const EvalText& text, const std::vector<float>& ref_logits,
                 const std::vector<float>& test_logits, int vocab);
  double mean() const;
  double quantile(double q) const;
  double max() const;
  double top1() const { return kld.empty() ? 0.0 : static_cast<double>(same_top1) / kld.size(); }
};

}  // namespace tq::tools
