// tq quant-bench: measured distortion, inner-product bias/RMSE and throughput of every KV
// format on random unit vectors, next to the Lloyd-Max optimum and the paper's bounds.
//   tq quant-bench --dim 64,128,256 --bits 1,2,3,4 --json
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "commands.h"
#include "json_out.h"
#include "seed_cli.h"
#include "threads_cli.h"
#include "tq/backend/cpu/tq_kernels.h"
#include "tq/core/rng.h"
#include "tq/core/thread_pool.h"
#include "tq/quant/codec.h"

namespace tq::tools {
namespace {

struct QuantBenchOptions {
  std::vector<int> dims = {128};
  std::vector<int> bits = {1, 2, 3, 4};
  int vectors = 4096;
  uint64_t seed = 42;
  int threads = 1;
  int nq = 4;                 // query heads per KV head for the score throughput (GQA)
  double query_cosine = 0.5;  // each key's query: cos * u + sin * (random unit _|_ u)
  double min_seconds = 0.2;   // per throughput measurement
  bool json = false;
};

struct Row {
  int dim = 0;
  int bits = 0;
  std::string mode, format;
  size_t bytes_per_vector = 0;
  double mse = 0, mse_optimum = NAN, mse_bound = NAN, ip_bound = NAN;
  double ip_bias = 0, ip_bias_se = 0, ip_rmse = 0;
  double quantize_vps = 0, score_vps = 0, score_gbps = 0;
};

constexpr int kCapacity = 256;  // slots per block in the benchmark layout

std::vector<float> unit_vector(Rng& rng, int d) {
  std::vector<float> x(d);
  double n2 = 0;
  for (auto& v : x) {
    v = static_cast<float>(rng.normal());
    n2 += double(v) * v;
  }
  for (auto& v : x) v = static_cast<float>(v / std::sqrt(n2));
  return x;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Repeats fn (one pass over all vectors) until min_seconds have passed; passes per second.
template <typename Fn>
double passes_per_second(double min_seconds, Fn fn) {
  fn();  // warm-up
  int passes = 0;
  const auto t0 = std::chrono::steady_clock::now();
  double elapsed = 0;
  do {
    fn();
    ++passes;
    elapsed = seconds_since(t0);
  } while (elapsed < min_seconds);
  return passes / elapsed;
}

Expected<Row> measure(quant::Format f, int dim, const QuantBenchOptions& o,
                      quant::CodebookCache& books, ThreadPool& pool) {
  quant::CodecOptions co;
  co.seed = o.seed;
  co.kernels = &backend::cpu::cpu_kernel_table();
  TQ_ASSIGN_OR_RETURN(auto codec, quant::make_codec(f, dim, co, books));
  Row r;
  r.dim = dim;
  r.bits = f.is_tq() ? f.bits : 0;
  r.mode = f.kind == quant::FormatKind::kTqMse ? "mse" : f.has_qjl() ? "prod" : "baseline";
  r.format = f.name();
  r.bytes_per_vector = codec->bytes_per_vector();
  if (f.kind == quant::FormatKind::kTqMse) {
    TQ_ASSIGN_OR_RETURN(const quant::Codebook* book, books.get(dim, f.bits));
    r.mse_optimum = book->mse_per_vector;
    r.mse_bound = std::sqrt(3.0) * M_PI / 2.0 * std::pow(4.0, -f.bits);
  } else if (f.has_qjl()) {  // paper: E|<q,u> - est|^2 <= sqrt(3) pi^2 |q|^2 / d * 4^-b
    r.ip_bound = std::sqrt(3.0) * M_PI * M_PI / dim * std::pow(4.0, -f.bits);
  }

  // Keys and queries.
  const int n = o.vectors, d = dim;
  const int blocks = (n + kCapacity - 1) / kCapacity;
  Rng rng(derive_seed(o.seed, static_cast<uint64_t>(dim), 0xbe7c4u));
  std::vector<float> keys(static_cast<size_t>(n) * d), queries(static_cast<size_t>(n) * d);
  const double sin = std::sqrt(1 - o.query_cosine * o.query_cosine);
  for (int i = 0; i < n; ++i) {
    const auto u = unit_vector(rng, d);
    auto z = unit_vector(rng, d);
    double proj = 0;
    for (int j = 0; j < d; ++j) proj += double(z[j]) * u[j];
    double zn = 0;
    for (int j = 0; j < d; ++j) zn += (z[j] - proj * u[j]) * (z[j] - proj * u[j]);
    for (int j = 0; j < d; ++j) {
      keys[size_t(i) * d + j] = u[j];
      queries[size_t(i) * d + j] =
          static_cast<float>(o.query_cosine * u[j] + sin * (z[j] - proj * u[j]) / std::sqrt(zn));
    }
  }
  std::vector<uint8_t> store(codec->block_bytes(kCapacity) * blocks);
  const auto encode_all = [&] {
    pool.parallel_for(static_cast<size_t>(n), 64, [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i)
        codec->encode(&keys[i * d], &store[codec->block_bytes(kCapacity) * (i / kCapacity)],
                      kCapacity, static_cast<int>(i % kCapacity));
    });
  };
  r.quantize_vps = n * passes_per_second(o.min_seconds, encode_all);

  // Distortion and inner products (float64 sums).
  std::vector<float> back(d), state(codec->query_state_size());
  double se2 = 0, ip_sum = 0, ip_sum2 = 0;
  for (int i = 0; i < n; ++i) {
    const uint8_t* block = &store[codec->block_bytes(kCapacity) * (i / kCapacity)];
    codec->decode(block, kCapacity, i % kCapacity, back.data());
    for (int j = 0; j < d; ++j) se2 += std::pow(double(back[j]) - keys[size_t(i) * d + j], 2);
    codec->prepare_query(&queries[size_t(i) * d], state.data());
    std::vector<float> all(kCapacity);
    const int slot = i % kCapacity;
    codec->score(state.data(), 1, block, kCapacity, slot + 1, all.data());
    double truth = 0;
    for (int j = 0; j < d; ++j)
      truth += double(queries[size_t(i) * d + j]) * keys[size_t(i) * d + j];
    const double err = all[slot] - truth;
    ip_sum += err;
    ip_sum2 += err * err;
  }
  r.mse = se2 / n;
  r.ip_bias = ip_sum / n;
  r.ip_rmse = std::sqrt(ip_sum2 / n);
  r.ip_bias_se = std::sqrt(std::max(0.0, ip_sum2 / n - r.ip_bias * r.ip_bias) / (n - 1));

  // Fused score throughput: nq prepared queries against every stored vector.
  std::vector<float> states(static_cast<size_t>(o.nq) * codec->query_state_size());
  for (int h = 0; h < o.nq; ++h)
    codec->prepare_query(&queries[size_t(h % n) * d],
                         &states[size_t(h) * codec->query_state_size()]);
  std::vector<float> scores(static_cast<size_t>(blocks) * o.nq * kCapacity);
  const auto score_all = [&] {
    pool.parallel_for(static_cast<size_t>(blocks), 1, [&](size_t b, size_t e) {
      for (size_t k = b; k < e; ++k) {
        const int rows = std::min(kCapacity, n - static_cast<int>(k) * kCapacity);
        codec->score(states.data(), o.nq, &store[codec->block_bytes(kCapacity) * k], kCapacity,
                     rows, &scores[k * o.nq * kCapacity]);
      }
    });
  };
  r.score_vps = n * passes_per_second(o.min_seconds, score_all);
  r.score_gbps = r.score_vps * r.bytes_per_vector / 1e9;
  return r;
}

void print_json(const QuantBenchOptions& o, const char* kernels, const std::vector<Row>& rows) {
  std::printf(
      "{\"vectors\": %d, \"seed\": %llu, \"threads\": %d, \"nq\": %d, \"query_cosine\": %s, "
      "\"kernels\": \"%s\", \"results\": [",
      o.vectors, static_cast<unsigned long long>(o.seed), o.threads, o.nq,
      json_number(o.query_cosine, "%.6g").c_str(), kernels);
  for (size_t k = 0; k < rows.size(); ++k) {
    const Row& r = rows[k];
    std::printf(
        "%s\n  {\"dim\": %d, \"bits\": %d, \"mode\": \"%s\", \"format\": \"%s\", "
        "\"bytes_per_vector\": %zu, \"mse\": %s, \"mse_optimum\": %s, \"mse_bound\": %s, "
        "\"ip_bias\": %s, \"ip_bias_se\": %s, \"ip_rmse\": %s, \"ip_mse_bound\": %s, "
        "\"quantize_vectors_per_s\": %s, \"score_vectors_per_s\": %s, \"score_gb_per_s\": %s}",
        k ? "," : "", r.dim, r.bits, r.mode.c_str(), r.format.c_str(), r.bytes_per_vector,
        json_number(r.mse, "%.6g").c_str(), json_number(r.mse_optimum, "%.6g").c_str(),
        json_number(r.mse_bound, "%.6g").c_str(), json_number(r.ip_bias, "%.6g").c_str(),
        json_number(r.ip_bias_se, "%.6g").c_str(), json_number(r.ip_rmse, "%.6g").c_str(),
        json_number(r.ip_bound, "%.6g").c_str(), json_number(r.quantize_vps, "%.6g").c_str(),
        json_number(r.score_vps, "%.6g").c_str(), json_number(r.score_gbps, "%.6g").c_str());
  }
  std::printf("\n]}\n");
}

void print_table(const QuantBenchOptions& o, const char* kernels, const std::vector<Row>& rows) {
  std::printf(
      "quant-bench: %d random unit vectors, seed %llu, %d thread(s), kernels %s, score nq=%d,\n"
      "inner products against queries at cosine %.2f to their key\n\n",
      o.vectors, static_cast<unsigned long long>(o.seed), o.threads, kernels, o.nq, o.query_cosine);
  std::printf("%4s %-6s %-8s %5s %9s %9s %9s %10s %9s %9s %11s %11s %8s\n", "dim", "format", "mode",
              "B/vec", "mse", "optimum", "bound", "ip_bias", "bias_se", "ip_rmse", "quant v/s",
              "score v/s", "GB/s");
  for (const Row& r : rows) {
    const auto opt = [](double v) {
      return std::isfinite(v) ? json_number(v, "%.6g") : std::string("-");
    };
    std::printf("%4d %-6s %-8s %5zu %9.5f %9s %9s %10.6f %9.6f %9.5f %11.3g %11.3g %8.2f\n", r.dim,
                r.format.c_str(), r.mode.c_str(), r.bytes_per_vector, r.mse,
                opt(r.mse_optimum).c_str(), opt(r.mse_bound).c_str(), r.ip_bias, r.ip_bias_se,
                r.ip_rmse, r.quantize_vps, r.score_vps, r.score_gbps);
  }
}

int run_quant_bench(const QuantBenchOptions& o) {
  quant::CodebookCache books;
  ThreadPool pool(o.threads);
  std::vector<Row> rows;
  for (int dim : o.dims) {
    std::vector<quant::Format> formats;
    for (int b : o.bits) {
      formats.push_back({quant::FormatKind::kTqMse, b});
      if (b >= 2) formats.push_back({quant::FormatKind::kTqProd, b});
    }
    for (const char* base : {"f16", "q8_0", "q4_0"}) {
      const quant::Format f = *quant::parse_format(base);
      if (f.validate(dim).ok()) formats.push_back(f);
    }
    for (const quant::Format& f : formats) {
      auto row = measure(f, dim, o, books, pool);
      if (!row.ok()) {
        std::fprintf(stderr, "tq quant-bench: %s at dim %d: %s\n", f.name().c_str(), dim,
                     row.status().to_string().c_str());
        return 1;
      }
      rows.push_back(*row);
    }
  }
  const char* kernels = backend::cpu::cpu_kernel_table().name;
  if (o.json) {
    print_json(o, kernels, rows);
  } else {
    print_table(o, kernels, rows);
  }
  return 0;
}

}  // namespace

void add_quant_bench_command(CLI::App& app) {
  auto opts = std::make_shared<QuantBenchOptions>();
  auto* cmd = app.add_subcommand("quant-bench",
                                 "Distortion, inner-product bias and throughput of the KV formats");
  cmd->add_option("--dim", opts->dims, "Head dims, comma-separated (multiples of 8, 8..1024)")
      ->delimiter(',')
      ->check(CLI::Range(8, 1024));
  cmd->add_option("--bits", opts->bits,
                  "TurboQuant bit widths, comma-separated (1..8; prod for >= 2)")
      ->delimiter(',')
      ->check(CLI::Range(1, 8));
  cmd->add_option("--vectors", opts->vectors, "Random unit vectors per format")
      ->check(CLI::Range(2, 1 << 24));
  add_seed_option(cmd, opts->seed, "Seed of the rotations, sketches and test vectors");
  add_threads_option(cmd, opts->threads, "Threads for quantize and score throughput", "--threads");
  cmd->add_option("--nq", opts->nq, "Query heads per KV head in the score throughput (GQA)")
      ->check(CLI::Range(1, 64));
  cmd->add_option("--query-cosine", opts->query_cosine,
                  "Cosine between each key and its query for the inner-product statistics")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--min-seconds", opts->min_seconds, "Minimum time per throughput measurement")
      ->check(CLI::Range(0.0, 60.0));
  cmd->add_flag("--json", opts->json, "Print one JSON object instead of a table");
  cmd->callback([opts] {
    // CLI::Range lets NaN through (every comparison with it is false).
    if (!std::isfinite(opts->query_cosine))
      throw CLI::ValidationError("--query-cosine", "must be a number in [0, 1]");
    if (!std::isfinite(opts->min_seconds))
      throw CLI::ValidationError("--min-seconds", "must be a number in [0, 60]");
    for (int d : opts->dims)
      if (d % 8 != 0)
        throw CLI::ValidationError("--dim",
                                   "head dim " + std::to_string(d) + " is not a multiple of 8");
    if (const int rc = run_quant_bench(*opts); rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace tq::tools
