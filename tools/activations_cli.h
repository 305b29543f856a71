// --float-activations for the quality commands (ppl, compare, verify): the CPU's weight matmuls
// take float activations instead of 8-bit ones, so a KV format's KLD is not raised by the
// rounding flips its small changes cause downstream (docs/quality.md). The CUDA path's matmuls
// take f16 activations already.
#pragma once

#include <CLI/CLI.hpp>

#include "tq/backend/cpu/matmul.h"
#include "tq/core/status.h"
#include "tq/model/llama.h"

namespace tq::tools {

struct ActivationsFlag {
  bool float_activations = false;

  void add_to(CLI::App* cmd) {
    cmd->add_flag("--float-activations", float_activations,
                  "CPU: weight matmuls take float activations, not 8-bit (slower; measures a KV "
                  "cache's own loss without the 8-bit rounding floor)");
  }
  // Whether the GPU path takes these flags (DeviceFlag::settle).
  Status on_gpu() const {
    return float_activations ? unsupported("--float-activations is a CPU setting") : ok_status();
  }
  // Sets the model's matmul activations; an error with --device cuda, which has no 8-bit path.
  Status apply(model::Model& m, bool cuda) const {
    if (!float_activations) return ok_status();
    if (cuda)
      return invalid_argument(
          "--float-activations is for the CPU: the CUDA matmuls take f16 "
          "activations already");
    m.set_activations(backend::cpu::Activations::kFloat);
    return ok_status();
  }
};

}  // namespace tq::tools
