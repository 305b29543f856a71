// The small random Llama-family models the forward-pass tests run (3 layers, dim 96, GQA
// groups of 3, head dim 16, vocab 300), written by tq's own GGUF writer.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "tq/model/gguf_writer.h"
#include "tq/model/llama.h"
#include "tq/model/random_model.h"

namespace tq::test {

inline model::RandomModelSpec tiny_spec(model::Arch arch, quant::GgmlType type, uint64_t seed) {
  model::RandomModelSpec s;
  s.arch = arch;
  s.n_layers = 3;
  s.dim = 96;
  s.ffn_dim = 160;
  s.n_heads = 6;
  s.n_kv_heads = 2;  // GQA groups of 3, head_dim 16
  s.vocab_size = 300;
  s.context_length = 256;
  s.type = type;
  s.seed = seed;
  s.tied_output = arch == model::Arch::kLlama;
  return s;
}

inline std::vector<uint8_t> build_bytes(const model::RandomModelSpec& spec) {
  model::GgufWriter w;
  EXPECT_TRUE(build_random_model(spec, w).ok());
  auto bytes = w.serialize();
  EXPECT_TRUE(bytes.ok()) << bytes.status().to_string();
  return bytes.ok() ? *bytes : std::vector<uint8_t>{};
}

inline std::unique_ptr<model::Model> build_model(const model::RandomModelSpec& spec) {
  auto m = model::Model::from_bytes(build_bytes(spec));
  EXPECT_TRUE(m.ok()) << m.status().to_string();
  return m.ok() ? std::move(m).value() : nullptr;
}

}  // namespace tq::test
