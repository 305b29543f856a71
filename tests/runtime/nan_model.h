// A random model whose final norm weights are NaN, so every logit is NaN: what a corrupt or
// badly converted file gives. The generator and scheduler tests check it is an error, not a
// token.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "tq/model/gguf.h"
#include "tq/model/gguf_writer.h"
#include "tq/model/llama.h"
#include "tq/model/random_model.h"

namespace tq::test {

inline std::unique_ptr<model::Model> model_with_nan_logits() {
  model::RandomModelSpec spec;
  spec.n_layers = 1;
  spec.vocab_size = 300;
  model::GgufWriter w;
  EXPECT_TRUE(model::build_random_model(spec, w).ok());
  std::vector<uint8_t> bytes = std::move(w.serialize()).value();
  auto file = model::GgufFile::parse(bytes.data(), bytes.size());
  EXPECT_TRUE(file.ok()) << file.status().to_string();
  const model::GgufTensor* norm = (*file)->find_tensor("output_norm.weight");
  EXPECT_TRUE(norm != nullptr && norm->type == quant::GgmlType::kF32);
  const size_t at = static_cast<size_t>(norm->data - bytes.data());
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (size_t i = 0; i < norm->nbytes; i += sizeof(float))
    std::memcpy(bytes.data() + at + i, &nan, sizeof(float));
  auto m = model::Model::from_bytes(std::move(bytes));
  EXPECT_TRUE(m.ok()) << m.status().to_string();
  return std::move(m).value();
}

}  // namespace tq::test
