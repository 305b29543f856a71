#include "quality_eval.h"

#include <algorithm>
#include <cmath>

#include "tq/core/log.h"
#include "tq/core/text_file.h"

namespace tq::tools {

std::vector<int32_t> EvalText::chunk(int c) const {
  const auto begin = tokens.begin() + static_cast<std::ptrdiff_t>(c) * ctx;
  std::vector<int32_t> t(begin, begin + ctx);
  if (add_bos) t[0] = bos;
  return t;
}

Expected<EvalText> load_eval_text(const model::Model& model, const std::string& path, int ctx,
                                  int max_chunks) {
  if (ctx < 4) return invalid_argument("--ctx must be at least 4");
  if (ctx > model.config().context_length)  // as tq run and tq serve warn
    TQ_LOG(kWarn, "--ctx %d exceeds the model's trained context %d: the scores measure that too",
           ctx, model.config().context_length);
  if (max_chunks == 0 || max_chunks < -1)
    return invalid_argument("--chunks must be -1 (all) or at least 1, not " +
                            std::to_string(max_chunks));
  TQ_ASSIGN_OR_RETURN(const std::string text, read_text_file(path));
  EvalText t;
  t.name = path.substr(path.find_last_of('/') + 1);
  t.ctx = ctx;
  const model::Tokenizer& tok = model.tokenizer();
  t.tokens = tok.encode(text, /*add_bos=*/false, /*parse_special=*/false);
  t.add_bos = tok.add_bos_default();
  t.bos = tok.bos_id();
  if (t.add_bos && t.bos < 0) return invalid_argument("model adds BOS but has no BOS token");
  t.available_chunks = static_cast<int>(t.tokens.size() / static_cast<size_t>(ctx));
  t.n_chunks = max_chunks < 0 ? t.available_chunks : std::min(max_chunks, t.available_chunks);
  if (t.n_chunks < 1)
    return invalid_argument("text '" + path + "' has " + std::to_string(t.tokens.size()) +
                            " tokens: not one chunk of " + std::to_string(ctx));
  return t;
}

std::vector<std::pair<int, int>> PassFlags::chunk_passes(int n) const {
  const int step = ubatch > 0 ? ubatch : n;
  const int context_end = decode ? n / 2 : n;
  std::vector<std::pair<int, int>> out;
  for (int i = 0; i < context_end; i += step) out.emplace_back(i, std::min(i + step, context_end));
  for (int i = context_end; i < n; ++i) out.emplace_back(i, i + 1);
  return out;
}

std::string PassFlags::describe() const {
  std::string s = ubatch > 0 ? ", ubatch " + std::to_string(ubatch) : "";
  return decode ? s + ", decode" : s;
}

Status eval_chunk(const model::Model& model, const std::vector<int32_t>& tokens, kv::SequenceKv& kv,
                  ThreadPool& pool, std::vector<float>& logits, const PassFlags& passes) {
  model::ForwardScratch scratch;
  const int n = static_cast<int>(tokens.size());
  const size_t vocab = static_cast<size_t>(model.config().vocab_size);
  logits.resize(static_cast<size_t>(n) * vocab);
  for (const auto& [from, to] : passes.chunk_passes(n)) {
    model::ForwardArgs a;
    a.tokens = tokens.data() + from;
    a.n = to - from;
    a.kv = &kv;
    a.pool = &pool;
    a.scratch = &scratch;
    a.logits_mode = model::LogitsMode::kAll;
    a.logits = logits.data() + static_cast<size_t>(from) * vocab;
    TQ_RETURN_IF_ERROR(model.forward(a));
  }
  return ok_status();
}

Status eval_chunk_on_device(backend::DeviceModel& dm, const std::vector<int32_t>& tokens, int vocab,
                            std::vector<float>& logits, const PassFlags& passes) {
  TQ_RETURN_IF_ERROR(dm.reset(0));
  const int n = static_cast<int>(tokens.size());
  logits.resize(tokens.size() * static_cast<size_t>(vocab));
  for (const auto& [from, to] : passes.chunk_passes(n)) {
    backend::DeviceForwardArgs a;
    a.tokens = tokens.data() + from;
    a.n = to - from;
    a.logits_mode = backend::DeviceLogits::kAll;
    a.logits = logits.data() + static_cast<size_t>(from) * static_cast<size_t>(vocab);
    TQ_RETURN_IF_ERROR(dm.forward(a));
  }
  return ok_status();
}

void PassFlags::add_to(CLI::App* cmd) {
  cmd->add_option("--ubatch", ubatch,
                  "append each chunk to the cache in passes of N tokens (0: one pass); the "
                  "cache's first-append statistics (key means, key/value scales) then come from "
                  "the first N tokens, as under the server's chunked prefill")
      ->capture_default_str();
  cmd->add_flag("--decode", decode,
                "the context half of each chunk in passes of --ubatch, then every scored token "
                "in a pass of its own, as generation appends them (each scored token sees its "
                "--kv-window of recent tokens exact, as a decode step does)");
}

Status PassFlags::validate() const {
  if (ubatch < 0) return invalid_argument("--ubatch must be 0 (one pass) or positive");
  return ok_status();
}

void log_softmax(const float* x, int n, std::vector<double>& out) {
  out.resize(static_cast<size_t>(n));
  double mx = -INFINITY;
  for (int i = 0; i < n; ++i) mx = std::max(mx, static_cast<double>(x[i]));
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i]) - mx);
  const double lse = mx + std::log(sum);
  for (int i = 0; i < n; ++i) out[static_cast<size_t>(i)] = static_cast<double>(x[i]) - lse;
}

double PplAccum::ppl() const { return count > 0 ? std::exp(nll / count) : NAN; }

double PplAccum::ppl_err() const {
  if (count < 2) return NAN;
  const double m = nll / count;
  const double var = nll2 / count - m * m;
  return var > 0 ? ppl() * std::sqrt(var / (count - 1)) : 0.0;
}

void score_chunk(const EvalText& text, const std::vector<int32_t>& tokens,
                 const std::vector<float>& logits, int vocab, PplAccum& ppl) {
  std::vector<double> lp;
  for (int i = text.first_scored(); i < text.ctx - 1; ++i) {
    log_softmax(logits.data() + static_cast<size_t>(i) * vocab, vocab, lp);
    ppl.add(-lp[static_cast<size_t>(tokens[static_cast<size_t>(i) + 1])]);
  }
}

void KldAccum::add_chunk(const EvalText& text, const std::vector<float>& ref,
                         const std::vector<float>& test, int vocab) {
  std::vector<double> lr, lt;
  for (int i = text.first_scored(); i < text.ctx - 1; ++i) {
    const float* r = ref.data() + static_cast<size_t>(i) * vocab;
    const float* t = test.data() + static_cast<size_t>(i) * vocab;
    log_softmax(r, vocab, lr);
    log_softmax(t, vocab, lt);
    double kl = 0;
    for (size_t j = 0; j < lr.size(); ++j) kl += std::exp(lr[j]) * (lr[j] - lt[j]);
    kld.push_back(std::max(kl, 0.0));
    same_top1 += std::max_element(r, r + vocab) - r == std::max_element(t, t + vocab) - t;
  }
}

double KldAccum::mean() const {
  double s = 0;
  for (double x : kld) s += x;
  return kld.empty() ? NAN : s / static_cast<double>(kld.size());
}

double KldAccum::quantile(double q) const {
  if (kld.empty()) return NAN;
  std::vector<double> v = kld;
  const size_t k = std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

double KldAccum::max() const {
  return kld.empty() ? NAN : *std::max_element(kld.begin(), kld.end());
}

}  // namespace tq::tools
