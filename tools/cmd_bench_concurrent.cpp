// tq bench concurrent: many sessions decoding together on the GPU (DeviceModel::forward_batch),
// and how many sessions of a context a KV memory budget holds, for several KV formats.
// For each K/V pair the model gets a fresh cache of `sessions` slots. For each context C
// (ascending), slot 0 is prefilled with random tokens up to C (passes of --batch tokens), then
// copied into the other slots on the device (DeviceModel::copy_sequence: the same KV bytes, so
// the N sessions need one prefill instead of N), and for each decode batch size b, b slots
// decode together: `warmup` untimed and `steps` timed batched steps, each one token per slot
// with every slot's logits copied to the host (sampling not timed). Sessions are ~C tokens
// long, each a little longer after every timed run (with --ragged, session s is cut to
// C x (8 - s % 8) / 8 tokens after the copy: a batch at different depths). Prints Markdown
// tables: aggregate
// tokens/s and ms/step, and sessions of C tokens per budget from kv::kv_bytes_per_token (whole
// pages per session plus its key means, as the pool allocates).
//   tq bench concurrent -m llama3-8b-q4_0.gguf --device cuda --sessions 16
//       --contexts 8192,32768 --batches 1,16 --kv f16/f16,tq4/tq3 --steps 16 --budget-gib 60
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "default_model.h"
#include "device_cli.h"
#include "kv_cli.h"
#include "seed_cli.h"
#include "tq/core/rng.h"
#include "tq/kv/kv_bytes.h"
#include "tq/model/llama.h"

namespace tq::tools {
namespace {

using Clock = std::chrono::steady_clock;

struct BenchConcurrentOptions {
  std::string model = default_model_path();
  int sessions = 16;
  std::vector<int> contexts = {8192};
  std::vector<int> batches = {1, 16};  // decode batch sizes, each <= sessions
  std::vector<std::string> kv_pairs = {"f16/f16", "tq4/tq4", "tq4/tq3", "tq3/tq3"};
  int steps = 16;
  int warmup = 2;
  int batch = 512;  // prefill tokens per pass
  double budget_gib = 60.0;
  uint64_t seed = 11;
  bool ragged = false;  // session s holds C x (8 - s % 8) / 8 tokens
  KvFlags kv;
  DeviceFlag device;
};

struct Cell {
  int context = 0, batch = 0;
  double tokens_per_s = 0.0;  // aggregate: batch * steps / seconds
  double ms_per_step = 0.0;
};

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

int fail(const Status& s) {
  std::fprintf(stderr, "tq bench concurrent: %s\n", s.to_string().c_str());
  return 1;
}

// Bytes one session of ctx tokens takes: whole pages of its compressed tokens, its f16 exact
// tokens and its key means (the pool's own accounting; tq capacity prints the same).
Expected<double> session_bytes(const kv::KvConfig& c, const kv::AttentionShape& shape, int ctx) {
  TQ_ASSIGN_OR_RETURN(const std::vector<size_t> blocks, kv::kv_block_bytes(c, shape));
  double page = 0;
  for (size_t b : blocks) page += static_cast<double>(b);
  TQ_ASSIGN_OR_RETURN(const kv::KvBytesPerToken b, kv::kv_bytes_per_token(c, shape, ctx));
  const double pages = std::ceil(static_cast<double>(ctx - b.exact_tokens) / c.block_tokens);
  return pages * page + b.exact_tokens * static_cast<double>(kv::kv_f16_token_bytes(shape)) +
         static_cast<double>(b.sequence);
}

// Prefill, copy and the timed batched steps of one K/V pair.
Expected<std::vector<Cell>> bench_pair(const BenchConcurrentOptions& o, const model::Model& m,
                                       const kv::KvConfig& config, std::string* where) {
  const int vocab = m.config().vocab_size;
  const int runs = static_cast<int>(o.batches.size() * o.contexts.size());
  const int ctx = o.contexts.back() + runs * (o.warmup + o.steps) + 1;
  const auto t_load = Clock::now();
  TQ_ASSIGN_OR_RETURN(std::unique_ptr<backend::DeviceModel> dm,
                      open_cuda_model(m, config, ctx, std::max(o.batch, o.sessions), o.sessions,
                                      o.device.tuning()));
  *where = dm->describe();
  std::fprintf(stderr, "tq bench concurrent: %s, set up in %.1f s\n", where->c_str(),
               seconds_since(t_load));
  Rng rng(o.seed);
  const auto draw = [&] {
    return static_cast<int32_t>(rng.next_u64() % static_cast<uint64_t>(vocab));
  };
  std::vector<Cell> cells;
  std::vector<int32_t> chunk;
  std::vector<float> logits(static_cast<size_t>(o.sessions) * vocab);
  for (const int context : o.contexts) {
    const int todo = context - dm->length(0);
    const auto t0 = Clock::now();
    for (int done = 0; done < todo;) {
      const int n = std::min(o.batch, todo - done);
      chunk.resize(static_cast<size_t>(n));
      for (auto& t : chunk) t = draw();
      backend::DeviceForwardArgs a;
      a.tokens = chunk.data();
      a.n = n;
      a.logits_mode = backend::DeviceLogits::kNone;
      TQ_RETURN_IF_ERROR(dm->forward(a).with_context("prefill to " + std::to_string(context)));
      done += n;
    }
    const double prefill_s = seconds_since(t0);
    const auto t1 = Clock::now();
    for (int s = 1; s < o.sessions; ++s) {
      TQ_RETURN_IF_ERROR(dm->copy_sequence(0, s));
      if (o.ragged) TQ_RETURN_IF_ERROR(dm->truncate(s, std::max(1, context * (8 - s % 8) / 8)));
    }
    std::fprintf(stderr,
                 "  context %6d: prefill of slot 0 %.1f s (%.0f tok/s), copied to %d slots in "
                 "%.3f s\n",
                 context, prefill_s, todo > 0 ? todo / prefill_s : 0.0, o.sessions - 1,
                 seconds_since(t1));
    for (const int b : o.batches) {
      std::vector<int32_t> tokens(static_cast<size_t>(b));
      std::vector<backend::DeviceForwardArgs> items(static_cast<size_t>(b));
      for (int s = 0; s < b; ++s) {
        items[s].seq = s;
        items[s].tokens = &tokens[static_cast<size_t>(s)];
        items[s].n = 1;
        items[s].logits = logits.data() + static_cast<size_t>(s) * vocab;
      }
      const auto step = [&] {
        for (auto& t : tokens) t = draw();
        return dm->forward_batch(items);
      };
      for (int i = 0; i < o.warmup; ++i) TQ_RETURN_IF_ERROR(step());
      const auto t2 = Clock::now();
      for (int i = 0; i < o.steps; ++i) TQ_RETURN_IF_ERROR(step());
      const double secs = seconds_since(t2);
      Cell c{context, b, static_cast<double>(b) * o.steps / secs, 1e3 * secs / o.steps};
      std::fprintf(stderr, "  context %6d, batch %3d: %9.1f tok/s aggregate, %.3f ms/step\n",
                   context, b, c.tokens_per_s, c.ms_per_step);
      cells.push_back(c);
    }
  }
  return cells;
}

int bench_concurrent(BenchConcurrentOptions& o) {
  std::sort(o.contexts.begin(), o.contexts.end());
  if (o.sessions < 1 || o.contexts.empty() || o.contexts.front() < 1 || o.batches.empty() ||
      o.kv_pairs.empty() || o.steps < 1 || o.warmup < 0 || o.batch < 1 || o.budget_gib <= 0)
    return fail(invalid_argument(
        "need --sessions >= 1, positive --contexts, --batches, --kv pairs, --steps >= 1, "
        "--batch >= 1 and a positive --budget-gib"));
  for (const int b : o.batches)
    if (b < 1 || b > o.sessions)
      return fail(invalid_argument("--batches: " + std::to_string(b) + " is outside [1, " +
                                   std::to_string(o.sessions) + "] (--sessions)"));
  auto loaded = model::Model::load(o.model);
  if (!loaded.ok()) return fail(loaded.status());
  const model::Model& m = **loaded;
  const kv::AttentionShape shape = m.attention_shape();
  std::fprintf(stderr, "tq bench concurrent: %s\n", m.config().to_string().c_str());

  std::vector<kv::KvConfig> configs;
  for (const std::string& pair : o.kv_pairs) {
    auto c = o.kv.pair_config(pair);
    if (!c.ok()) return fail(c.status());
    if (o.ragged && c->sinks > 0 && !o.kv.was_given("--kv-sinks")) {
      c->sinks = 0;  // the default's 4 sinks; asked for explicitly they are refused below
      if (configs.empty())
        std::fprintf(stderr, "tq bench concurrent: --ragged: no sink tokens (--kv-sinks 0)\n");
    }
    if (o.ragged && c->sinks + c->window > 0)
      return fail(invalid_argument(
          "--ragged cuts the sessions' caches, after which a cache with f16 sinks or a window "
          "decodes one session at a time until its window refills: run it without --kv-sinks "
          "and --kv-window"));
    configs.push_back(*c);
  }
  // Capacity first: it needs no device.
  const double budget = o.budget_gib * 1073741824.0;
  std::printf(
      "\nSessions of C tokens that fit in %.0f GiB of KV cache (whole pages + key means "
      "per session; %d layers, %d KV heads, head dim %d)\n\n",
      o.budget_gib, shape.n_layers, shape.n_kv_heads, shape.head_dim);
  std::printf("| K/V | C | bytes/token | sessions | vs f16 |\n|---|---|---|---|---|\n");
  for (size_t i = 0; i < configs.size(); ++i) {
    for (const int ctx : o.contexts) {
      auto per = session_bytes(configs[i], shape, ctx);
      if (!per.ok()) return fail(per.status());
      const double f16 = static_cast<double>(kv::kv_f16_token_bytes(shape)) * ctx;
      const double fit = std::floor(budget / *per), fit_f16 = std::floor(budget / f16);
      std::printf("| %s | %d | %.0f | %.0f | %.2fx |\n", o.kv_pairs[i].c_str(), ctx, *per / ctx,
                  fit, fit_f16 > 0 ? fit / fit_f16 : 0.0);
    }
  }
  std::fflush(stdout);
  if (!o.device.cuda()) {
    std::fprintf(stderr, "tq bench concurrent: decode needs --device cuda (batched GPU decode)\n");
    return 2;
  }

  std::vector<std::vector<Cell>> table;
  std::string where;
  for (size_t i = 0; i < configs.size(); ++i) {
    std::fprintf(stderr, "tq bench concurrent: kv %s\n", configs[i].to_string().c_str());
    auto cells = bench_pair(o, m, configs[i], &where);
    if (!cells.ok()) return fail(cells.status().with_context(o.kv_pairs[i]));
    table.push_back(*cells);
  }
  std::printf(
      "\nBatched decode, %d sessions, %d timed steps after %d warm-up; aggregate "
      "tokens/s (ms/step) (%s)\n\n| C | batch |",
      o.sessions, o.steps, o.warmup, where.c_str());
  for (const auto& p : o.kv_pairs) std::printf(" %s |", p.c_str());
  std::printf("\n|---|---|");
  for (size_t i = 0; i < o.kv_pairs.size(); ++i) std::printf("---|");
  std::printf("\n");
  for (size_t r = 0; r < table.front().size(); ++r) {
    std::printf("| %d | %d |", table.front()[r].context, table.front()[r].batch);
    for (const auto& col : table)
      std::printf(" %.1f (%.2f) |", col[r].tokens_per_s, col[r].ms_per_step);
    std::printf("\n");
  }
  return 0;
}

}  // namespace

void add_bench_concurrent_command(CLI::App* bench) {
  auto o = std::make_shared<BenchConcurrentOptions>();
  auto* cmd = bench->add_subcommand(
      "concurrent", "Batched decode of many sessions (GPU) and sessions per KV memory budget");
  cmd->add_option("-m,--model", o->model, "GGUF model file")->capture_default_str();
  cmd->add_option("--sessions", o->sessions, "Sequence slots, all at ~C tokens")
      ->capture_default_str();
  cmd->add_option("--contexts", o->contexts, "Context C of every session (comma separated)")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--batches", o->batches, "Decode batch sizes to time (<= sessions)")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--kv", o->kv_pairs, "K/V format pairs, e.g. f16/f16,tq4/tq3 (comma separated)")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--steps", o->steps, "Timed batched steps per (C, batch)")->capture_default_str();
  cmd->add_option("--warmup", o->warmup, "Untimed steps before them")->capture_default_str();
  cmd->add_option("--batch", o->batch, "Prefill tokens per pass")->capture_default_str();
  cmd->add_option("--budget-gib", o->budget_gib, "KV memory budget for the capacity table")
      ->capture_default_str();
  add_seed_option(cmd, o->seed, "Seed of the random tokens");
  cmd->add_flag("--ragged", o->ragged,
                "Sessions at different depths: session s cut to C x (8 - s % 8) / 8 tokens");
  o->kv.add_to(cmd);
  o->device.add_to(cmd);
  o->device.add_weights_to(cmd);
  o->device.add_tuning_to(cmd);
  cmd->callback([o] {
    const int rc = bench_concurrent(*o);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace tq::tools
