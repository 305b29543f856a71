// tq bench decode: decode speed of one sequence (batch 1) at several context depths, for
// several KV formats, on the GPU (--device cuda) or the CPU. For each K/V pair the model gets a
// fresh cache; a random prompt is prefilled up to each depth in turn (ascending), then `steps`
// single-token passes are timed (after `warmup` untimed ones). Each pass returns the last
// token's logits to the host, as generation does; sampling is not timed. Prints a Markdown table.
//   tq bench decode -m llama3-8b-q4_0.gguf --device cuda --depths 1024,8192,32768
//       --kv f16/f16,tq4/tq4,tq4/tq3,tq3/tq3 --steps 64
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "default_model.h"
#include "device_cli.h"
#include "kv_cli.h"
#include "seed_cli.h"
#include "threads_cli.h"
#include "tq/core/rng.h"
#include "tq/core/thread_pool.h"
#include "tq/kv/kv_bytes.h"
#include "tq/model/llama.h"
#include "tq/runtime/sampler.h"

namespace tq::tools {
namespace {

using Clock = std::chrono::steady_clock;

struct BenchDecodeOptions {
  std::string model = default_model_path();
  std::vector<int> depths = {1024, 8192, 32768};
  std::vector<std::string> kv_pairs = {"f16/f16", "tq4/tq4", "tq3/tq3"};
  int steps = 64;
  int warmup = 4;
  int batch = 512;  // prefill tokens per pass
  int threads = default_thread_count();
  uint64_t seed = 7;
  bool cublas_gemv = false;
  // What each timed step takes back (--device cuda): the logits row (logits), the row and a
  // draw of the default sampler from it on the host (host), the device's top candidates and
  // Sampler::sample_top's draw (top), the device's greedy token (greedy).
  std::string sample = "logits";
  KvFlags kv;  // the rest of the cache config (boundary layers, block size, ...)
  DeviceFlag device;
};

struct Cell {
  double decode_tps = 0.0;  // tokens/s over the timed steps
  double ms_per_token = 0.0;
  double prefill_tps = 0.0;  // tokens/s of the prefill that reached this depth
};

// A forward pass of n tokens appended to one sequence, on whichever device.
using ForwardFn = std::function<Status(const int32_t* tokens, int n, bool want_logits)>;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

Expected<std::vector<Cell>> bench_one(const BenchDecodeOptions& o, const ForwardFn& forward,
                                      const std::function<int()>& length, int vocab) {
  Rng rng(o.seed);
  const auto draw = [&] {
    return static_cast<int32_t>(rng.next_u64() % static_cast<uint64_t>(vocab));
  };
  std::vector<Cell> cells;
  std::vector<int32_t> chunk;
  for (const int depth : o.depths) {
    Cell cell;
    const int todo = depth - length();
    const auto t0 = Clock::now();
    for (int done = 0; done < todo;) {
      const int n = std::min(o.batch, todo - done);
      chunk.resize(static_cast<size_t>(n));
      for (auto& t : chunk) t = draw();
      TQ_RETURN_IF_ERROR(
          forward(chunk.data(), n, false).with_context("prefill to " + std::to_string(depth)));
      done += n;
    }
    if (todo > 0) cell.prefill_tps = todo / seconds_since(t0);
    for (int i = 0; i < o.warmup; ++i) {
      const int32_t t = draw();
      TQ_RETURN_IF_ERROR(forward(&t, 1, true));
    }
    const auto t1 = Clock::now();
    for (int i = 0; i < o.steps; ++i) {
      const int32_t t = draw();
      TQ_RETURN_IF_ERROR(forward(&t, 1, true));
    }
    const double secs = seconds_since(t1);
    cell.decode_tps = o.steps / secs;
    cell.ms_per_token = 1e3 * secs / o.steps;
    cells.push_back(cell);
    std::fprintf(stderr, "  depth %6d: prefill %8.1f tok/s, decode %8.2f tok/s (%.3f ms/token)\n",
                 depth, cell.prefill_tps, cell.decode_tps, cell.ms_per_token);
  }
  return cells;
}

int bench_decode(BenchDecodeOptions& o) {
  if (o.depths.empty() || o.kv_pairs.empty() || o.steps < 1 || o.warmup < 0 || o.batch < 1) {
    std::fprintf(stderr, "tq bench decode: need depths, --kv pairs, --steps >= 1, --batch >= 1\n");
    return 2;
  }
  if (auto base = o.kv.config(); base.ok()) o.device.settle(*base);
  std::sort(o.depths.begin(), o.depths.end());
  if (o.depths.front() < 1) {
    std::fprintf(stderr, "tq bench decode: depths must be positive\n");
    return 2;
  }
  auto loaded = model::Model::load(o.model);
  if (!loaded.ok()) {
    std::fprintf(stderr, "tq bench decode: %s\n", loaded.status().to_string().c_str());
    return 1;
  }
  const model::Model& m = **loaded;
  const int vocab = m.config().vocab_size;
  const int ctx = o.depths.back() + o.warmup + o.steps + 1;
  std::fprintf(stderr, "tq bench decode: %s\n", m.config().to_string().c_str());
  std::vector<std::vector<Cell>> table;
  std::vector<std::string> bytes_note;
  std::string where = o.device.cuda() ? "cuda" : std::to_string(o.threads) + " CPU threads";
  for (const std::string& pair : o.kv_pairs) {
    auto config = o.kv.pair_config(pair);
    if (!config.ok()) {
      std::fprintf(stderr, "tq bench decode: %s\n", config.status().message().c_str());
      return 2;
    }
    auto bytes = kv::kv_bytes_per_token(*config, m.attention_shape(), ctx);
    bytes_note.push_back(bytes.ok() ? bytes->to_string() : "?");
    std::fprintf(stderr, "tq bench decode: kv %s\n", config->to_string().c_str());
    const auto t_load = Clock::now();
    Expected<std::vector<Cell>> cells = unsupported("unset");
    std::vector<float> logits(static_cast<size_t>(vocab));
    if (o.device.cuda()) {
      backend::DeviceModelOptions tuning = o.device.tuning();
      tuning.cublas_gemv = o.cublas_gemv;
      auto dm = open_cuda_model(m, *config, ctx, o.batch, 1, tuning);
      if (!dm.ok()) {
        std::fprintf(stderr, "tq bench decode: %s\n", dm.status().to_string().c_str());
        return 1;
      }
      where = (*dm)->describe();
      std::fprintf(stderr, "tq bench decode: %s, set up in %.1f s\n", where.c_str(),
                   seconds_since(t_load));
      backend::DeviceModel& d = **dm;
      // The default sampler with penalties (top-k 40 + 64 candidates for the history).
      runtime::SamplerConfig sc;
      sc.repeat_penalty = 1.1f;
      auto sampler = runtime::Sampler::create(sc);
      if (!sampler.ok()) return 1;
      const int top_k = sc.top_candidates(vocab);
      std::vector<int32_t> top_ids(static_cast<size_t>(std::max(top_k, 1)));
      std::vector<float> top_logits(top_ids.size());
      int32_t greedy = -1;
      cells = bench_one(
          o,
          [&](const int32_t* t, int n, bool want) {
            backend::DeviceForwardArgs a;
            a.tokens = t;
            a.n = n;
            a.logits_mode = want ? backend::DeviceLogits::kLast : backend::DeviceLogits::kNone;
            a.logits =
                want && (o.sample == "logits" || o.sample == "host") ? logits.data() : nullptr;
            if (want && o.sample == "greedy") a.greedy = &greedy;
            if (want && o.sample == "top") {
              a.top_k = top_k;
              a.top_ids = top_ids.data();
              a.top_logits = top_logits.data();
            }
            TQ_RETURN_IF_ERROR(d.forward(a));
            if (want && o.sample == "host") sampler->accept(sampler->sample(logits.data(), vocab));
            if (want && o.sample == "top")
              sampler->accept(sampler->sample_top(top_ids.data(), top_logits.data(), top_k, vocab));
            return ok_status();
          },
          [&] { return d.length(0); }, vocab);
    } else {
      auto cache = make_paged_cache(m, *config, ctx, 1);
      if (!cache.ok()) {
        std::fprintf(stderr, "tq bench decode: %s\n", cache.status().to_string().c_str());
        return 1;
      }
      auto seq = (*cache)->new_sequence(ctx);
      if (!seq.ok()) {
        std::fprintf(stderr, "tq bench decode: %s\n", seq.status().to_string().c_str());
        return 1;
      }
      ThreadPool pool(o.threads);
      model::ForwardScratch scratch;
      kv::PagedKv& s = **seq;
      cells = bench_one(
          o,
          [&](const int32_t* t, int n, bool want) {
            model::ForwardArgs a{t,
                                 n,
                                 &s,
                                 &pool,
                                 &scratch,
                                 want ? model::LogitsMode::kLast : model::LogitsMode::kNone,
                                 logits.data()};
            return m.forward(a);
          },
          [&] { return s.length(); }, vocab);
    }
    if (!cells.ok()) {
      std::fprintf(stderr, "tq bench decode: %s: %s\n", pair.c_str(),
                   cells.status().to_string().c_str());
      return 1;
    }
    table.push_back(*cells);
  }

  std::printf("\nDecode, batch 1, %d timed steps after %d warm-up, each taking back %s (%s)\n\n",
              o.steps, o.warmup,
              !o.device.cuda()       ? "the logits row"
              : o.sample == "host"   ? "the logits row and a draw of the sampler on the host"
              : o.sample == "top"    ? "the device's top candidates and a draw from them"
              : o.sample == "greedy" ? "the device's greedy token"
                                     : "the logits row",
              where.c_str());
  std::printf("| depth |");
  for (const auto& p : o.kv_pairs) std::printf(" %s tok/s (ms/tok) |", p.c_str());
  std::printf("\n|---|");
  for (size_t i = 0; i < o.kv_pairs.size(); ++i) std::printf("---|");
  std::printf("\n");
  for (size_t d = 0; d < o.depths.size(); ++d) {
    std::printf("| %d |", o.depths[d]);
    for (const auto& col : table)
      std::printf(" %.1f (%.2f) |", col[d].decode_tps, col[d].ms_per_token);
    std::printf("\n");
  }
  std::printf(
      "\nPrefill to each depth from the previous one, tokens/s (passes of %d tokens):\n\n| depth |",
      o.batch);
  for (const auto& p : o.kv_pairs) std::printf(" %s |", p.c_str());
  std::printf("\n|---|");
  for (size_t i = 0; i < o.kv_pairs.size(); ++i) std::printf("---|");
  std::printf("\n");
  for (size_t d = 0; d < o.depths.size(); ++d) {
    std::printf("| %d |", o.depths[d]);
    for (const auto& col : table) std::printf(" %.0f |", col[d].prefill_tps);
    std::printf("\n");
  }
  std::printf("\nKV bytes per token:\n");
  for (size_t i = 0; i < o.kv_pairs.size(); ++i)
    std::printf("- %s: %s\n", o.kv_pairs[i].c_str(), bytes_note[i].c_str());
  return 0;
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto* bench = app.add_subcommand("bench", "End-to-end benchmarks");
  bench->require_subcommand(1);
  auto o = std::make_shared<BenchDecodeOptions>();
  auto* cmd =
      bench->add_subcommand("decode", "Decode tokens/s at several context depths and KV formats");
  cmd->add_option("-m,--model", o->model, "GGUF model file")->capture_default_str();
  cmd->add_option("--depths", o->depths, "Context depths to decode at (ascending; comma separated)")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--kv", o->kv_pairs, "K/V format pairs, e.g. f16/f16,tq4/tq3 (comma separated)")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--steps", o->steps, "Timed decode steps per depth")->capture_default_str();
  cmd->add_option("--warmup", o->warmup, "Untimed decode steps before them")->capture_default_str();
  cmd->add_option("--batch", o->batch, "Prefill tokens per pass")->capture_default_str();
  add_threads_option(cmd, o->threads, "CPU threads (--device cpu)");
  add_seed_option(cmd, o->seed, "Seed of the random prompt tokens");
  cmd->add_flag("--cublas-gemv", o->cublas_gemv,
                "Decode matmuls through cuBLAS, not tq's GEMV (--device cuda)");
  cmd->add_option("--sample", o->sample,
                  "What a timed step takes back (--device cuda): logits (the row), host (the row "
                  "and a draw of the default sampler), top (the device's top candidates and the "
                  "same draw from them), greedy (the device's argmax)")
      ->check(CLI::IsMember({"logits", "host", "top", "greedy"}))
      ->capture_default_str();
  o->kv.add_to(cmd);
  o->device.add_to(cmd);
  o->device.add_weights_to(cmd);
  o->device.add_tuning_to(cmd);
  cmd->callback([o] {
    const int rc = bench_decode(*o);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
  add_bench_concurrent_command(bench);
  add_bench_voice_command(bench);
}

}  // namespace tq::tools
