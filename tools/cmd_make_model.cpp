// tq make-model: writes a random-weight Llama-family GGUF of any shape, loadable by tq (and by
// llama.cpp), for tests and for benchmarks of shapes we have no weights for.
//   tq make-model --shape smollm2-135m --type q8_0 --seed 1 -o /tmp/smol-random.gguf
//   tq make-model --layers 2 --dim 256 --ffn 512 --heads 8 --kv-heads 2 --vocab 1024
//       --type f16 -o /tmp/tiny.gguf
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "commands.h"
#include "seed_cli.h"
#include "tq/model/gguf_writer.h"
#include "tq/model/llama.h"
#include "tq/model/random_model.h"

namespace tq::tools {
namespace {

struct MakeModelOptions {
  std::string arch;  // empty: the shape's
  std::string shape = "custom";
  std::string type = "q8_0";
  std::string out;
  bool check = true;
  model::RandomModelSpec custom;  // the custom shape's values (and overrides of a preset)
  CLI::App* cmd = nullptr;
};

Expected<quant::GgmlType> parse_type(const std::string& s) {
  if (s == "q4_0") return quant::GgmlType::kQ4_0;
  if (s == "q4_1") return quant::GgmlType::kQ4_1;
  if (s == "q8_0") return quant::GgmlType::kQ8_0;
  if (s == "f16") return quant::GgmlType::kF16;
  if (s == "f32") return quant::GgmlType::kF32;
  return invalid_argument("--type '" + s + "' (known: q4_0, q4_1, q8_0, f16, f32)");
}

Expected<model::RandomModelSpec> build_spec(const MakeModelOptions& o) {
  model::RandomModelSpec s = o.custom;
  if (o.shape != "custom") {
    TQ_ASSIGN_OR_RETURN(s, model::random_model_preset(o.shape));
    // Options given explicitly override the preset.
    auto given = [&](const char* name) { return o.cmd->get_option(name)->count() > 0; };
    if (given("--layers")) s.n_layers = o.custom.n_layers;
    if (given("--dim")) s.dim = o.custom.dim;
    if (given("--ffn")) s.ffn_dim = o.custom.ffn_dim;
    if (given("--heads")) s.n_heads = o.custom.n_heads;
    if (given("--kv-heads")) s.n_kv_heads = o.custom.n_kv_heads;
    if (given("--vocab")) s.vocab_size = o.custom.vocab_size;
    if (given("--ctx")) s.context_length = o.custom.context_length;
    if (given("--rope-base")) s.rope_freq_base = o.custom.rope_freq_base;
    if (given("--tied")) s.tied_output = o.custom.tied_output;
  }
  if (o.arch == "llama") {
    s.arch = model::Arch::kLlama;
  } else if (o.arch == "qwen2") {
    s.arch = model::Arch::kQwen2;
  } else if (!o.arch.empty()) {
    return invalid_argument("--arch '" + o.arch + "' (known: llama, qwen2)");
  }
  TQ_ASSIGN_OR_RETURN(s.type, parse_type(o.type));
  s.seed = o.custom.seed;
  s.name = "tq-random-" + o.shape;
  TQ_RETURN_IF_ERROR(s.validate());
  return s;
}

int make_model(const MakeModelOptions& o) {
  auto spec = build_spec(o);
  if (!spec.ok()) {
    std::fprintf(stderr, "tq make-model: %s\n", spec.status().message().c_str());
    return 2;
  }
  std::fprintf(stderr, "tq make-model: %s\n", spec->to_string().c_str());
  const auto t0 = std::chrono::steady_clock::now();
  model::GgufWriter w;
  Status st = model::build_random_model(*spec, w);
  if (st.ok()) st = w.write_file(o.out);
  if (!st.ok()) {
    std::fprintf(stderr, "tq make-model: %s\n", st.to_string().c_str());
    return 1;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::error_code ec;
  const auto size = std::filesystem::file_size(o.out, ec);
  std::printf("wrote %s: %.1f MiB, %zu tensors, %.1f s\n", o.out.c_str(),
              ec ? 0.0 : size / 1048576.0, w.tensor_count(), secs);
  if (o.check) {
    // Load it back the way tq run will, so a file that we cannot read never leaves here quietly.
    auto m = model::Model::load(o.out);
    if (!m.ok()) {
      std::fprintf(stderr, "tq make-model: written file does not load: %s\n",
                   m.status().to_string().c_str());
      return 1;
    }
    std::printf("loads: %s\n", (*m)->config().to_string().c_str());
  }
  return 0;
}

}  // namespace

void add_make_model_command(CLI::App& app) {
  auto o = std::make_shared<MakeModelOptions>();
  auto* cmd = app.add_subcommand("make-model", "Write a random-weight Llama-family GGUF");
  o->cmd = cmd;
  auto& c = o->custom;
  cmd->add_option("--arch", o->arch, "llama or qwen2 (default: the shape's)");
  cmd->add_option("--shape", o->shape, "llama3-8b, qwen2.5-7b, smollm2-135m or custom")
      ->capture_default_str();
  cmd->add_option("--type", o->type, "Weight type: q4_0, q4_1, q8_0, f16, f32")
      ->capture_default_str();
  add_seed_option(cmd, c.seed, "Weight seed");
  cmd->add_option("-o,--output", o->out, "Output GGUF file")->required();
  cmd->add_option("--layers", c.n_layers, "Layers (custom)")->capture_default_str();
  cmd->add_option("--dim", c.dim, "Embedding dim (custom)")->capture_default_str();
  cmd->add_option("--ffn", c.ffn_dim, "Feed-forward dim (custom)")->capture_default_str();
  cmd->add_option("--heads", c.n_heads, "Attention heads (custom)")->capture_default_str();
  cmd->add_option("--kv-heads", c.n_kv_heads, "KV heads (custom)")->capture_default_str();
  cmd->add_option("--vocab", c.vocab_size, "Vocabulary size, >= 259 (custom)")
      ->capture_default_str();
  cmd->add_option("--ctx", c.context_length, "Trained context length (custom)")
      ->capture_default_str();
  cmd->add_option("--rope-base", c.rope_freq_base, "RoPE frequency base (custom)")
      ->capture_default_str();
  cmd->add_option("--tied", c.tied_output, "Tie the output to token_embd (true/false)")
      ->capture_default_str();
  cmd->add_flag("!--no-check", o->check, "Do not load the written file back");
  cmd->callback([o] {
    const int rc = make_model(*o);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace tq::tools
