// tq capacity: how many tokens and concurrent sequences a KV memory budget holds for a model
// under several cache configurations, from the same byte accounting the pool allocates with
// (docs/kv-cache.md, "Bytes per token"): whole pages per sequence plus its f16 window/sinks.
//   tq capacity --mem 8GiB --ctx 4096,32768 --configs f16/f16,q8_0/q8_0,tq4/tq3 --kv-window 128
#include <cmath>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "default_model.h"
#include "kv_cli.h"
#include "kv_commands.h"
#include "tq/model/llama.h"

namespace tq::tools {
namespace {

struct CapacityOptions {
  std::string model = default_model_path();
  std::string mem = "8GiB";
  std::string ctx = "512,4096,32768";
  std::string configs = "f16/f16,q8_0/q8_0,q4_0/q4_0,tq4/tq4,tq4/tq3,tq3/tq3,tq3/tq2";
  KvFlags kv;
};

int fail(const Status& s) {
  std::fprintf(stderr, "tq capacity: %s\n", s.to_string().c_str());
  return 1;
}

Expected<double> parse_bytes(const std::string& s) {
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(s, &pos);
  } catch (...) {
    return invalid_argument("--mem '" + s + "' is not a size (e.g. 8GiB, 512MiB, 1e9)");
  }
  const std::string unit = s.substr(pos);
  const std::pair<const char*, double> units[] = {
      {"", 1},    {"B", 1},    {"KiB", 1024.0}, {"MiB", 1048576.0}, {"GiB", 1073741824.0},
      {"K", 1e3}, {"KB", 1e3}, {"M", 1e6},      {"MB", 1e6},        {"G", 1e9},
      {"GB", 1e9}};
  for (const auto& [name, mult] : units)  // finite and at most 2^60 bytes (an exbibyte)
    if (unit == name && v > 0 && std::isfinite(v * mult) && v * mult <= 0x1p60) return v * mult;
  return invalid_argument("--mem '" + s +
                          "' is not a size from 1 B to 1 EiB (e.g. 8GiB, 512MiB, 1e9)");
}

int run_capacity(CapacityOptions& o) {
  auto base = o.kv.config();
  if (!base.ok()) return fail(base.status());
  auto mem = parse_bytes(o.mem);
  if (!mem.ok()) return fail(mem.status());
  std::vector<int> contexts;
  {
    std::stringstream ss(o.ctx);
    for (std::string item; std::getline(ss, item, ',');) {
      char* end = nullptr;
      const long v = std::strtol(item.c_str(), &end, 10);
      if (item.empty() || *end != '\0' || v < 1 || v > (1 << 26))
        return fail(invalid_argument("--ctx: '" + item + "' is not a context length"));
      contexts.push_back(static_cast<int>(v));
    }
  }
  if (contexts.empty()) return fail(invalid_argument("--ctx names no context length"));
  if (o.configs.empty()) return fail(invalid_argument("--configs names no K/V format pair"));
  auto model = model::Model::load(o.model);
  if (!model.ok()) return fail(model.status());
  const kv::AttentionShape shape = (*model)->attention_shape();
  std::printf("model: %s (%d layers, %d KV heads, head dim %d); budget %.3f GiB; kv flags: %s\n",
              o.model.substr(o.model.find_last_of('/') + 1).c_str(), shape.n_layers,
              shape.n_kv_heads, shape.head_dim, *mem / 1073741824.0, base->to_string().c_str());
  std::printf("| K/V | ctx | B/token | vs f16 | page B | tokens in budget | sequences of ctx |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  std::stringstream ss(o.configs);
  for (std::string item; std::getline(ss, item, ',');) {
    const size_t slash = item.find('/');
    const std::pair<std::string, std::string> opts[] = {
        {"-ctk", item.substr(0, slash)},
        {"-ctv", slash == std::string::npos ? item : item.substr(slash + 1)}};
    auto c = kv::parse_kv_options(opts, *base);
    if (!c.ok()) return fail(c.status().with_context("--configs '" + item + "'"));
    auto blocks = kv::kv_block_bytes(*c, shape);
    if (!blocks.ok()) return fail(blocks.status());
    double page = 0;
    for (size_t b : *blocks) page += static_cast<double>(b);
    const double f16_token = static_cast<double>(kv::kv_f16_token_bytes(shape));
    for (int ctx : contexts) {
      auto b = kv::kv_bytes_per_token(*c, shape, ctx);
      if (!b.ok()) return fail(b.status());
      // One sequence of ctx tokens: whole pages for its compressed tokens + f16 exact rows.
      const int compressed = ctx - b->exact_tokens;
      const double pages = std::ceil(static_cast<double>(compressed) / c->block_tokens);
      const double per_seq = pages * page + b->exact_tokens * f16_token;
      std::printf("| %s/%s | %d | %.0f | %.2fx | %.0f | %.0f | %.0f |\n",
                  c->k_format.name().c_str(), c->v_format.name().c_str(), ctx, b->amortized,
                  b->ratio_vs_f16(), page, std::floor(*mem / b->amortized),
                  std::floor(*mem / per_seq));
    }
  }
  return 0;
}

}  // namespace

void add_capacity_command(CLI::App& app) {
  auto o = std::make_shared<CapacityOptions>();
  auto* cmd = app.add_subcommand("capacity",
                                 "Tokens and sequences a KV memory budget holds "
                                 "under several cache configurations");
  cmd->add_option("-m,--model", o->model, "GGUF model file (for its attention shape)")
      ->capture_default_str();
  cmd->add_option("--mem", o->mem, "KV memory budget (8GiB, 512MiB, 1e9)")->capture_default_str();
  cmd->add_option("--ctx", o->ctx, "Comma-separated context lengths")->capture_default_str();
  cmd->add_option("--configs", o->configs, "Comma-separated K/V format pairs")
      ->capture_default_str();
  o->kv.add_to(cmd);
  cmd->callback([o] {
    if (const int rc = run_capacity(*o); rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace tq::tools
