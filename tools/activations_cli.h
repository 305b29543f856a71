// --float-activations for the quality commands (ppl, compare, verify): the weight matmuls take
// float activations instead of 8-bit ones, so a KV format's KLD is not raised by the rounding
// flips its small changes cause downstream (docs/quality.md). On the CPU it switches the
// model's matmuls; on the GPU the quantized-weight GEMVs (--gpu-weights quant) take f16
// activations (DeviceModelOptions::int8_activations off); f16 weights always take f16.
#pragma once

#include <CLI/CLI.hpp>

#include "tq/backend/cpu/matmul.h"
#include "tq/backend/device_model.h"
#include "tq/core/status.h"
#include "tq/model/llama.h"

namespace tq::tools {

struct ActivationsFlag {
  bool float_activations = false;

  void add_to(CLI::App* cmd) {
    cmd->add_flag("--float-activations", float_activations,
                  "weight matmuls take float (GPU: f16) activations, not 8-bit (slower; measures "
                  "a KV cache's own loss without the 8-bit rounding floor)");
  }
  // Whether the GPU path takes these flags (DeviceFlag::settle): it does.
  Status on_gpu() const { return ok_status(); }
  // Sets the CPU model's matmul activations (nothing to do on the model with --device cuda).
  Status apply(model::Model& m, bool cuda) const {
    if (float_activations && !cuda) m.set_activations(backend::cpu::Activations::kFloat);
    return ok_status();
  }
  // The GPU's: f16 activations for the quantized-weight GEMVs.
  void apply(backend::DeviceModelOptions& o) const {
    if (float_activations) o.int8_activations = false;
  }
};

}  // namespace tq::tools
