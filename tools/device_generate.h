// runtime::run_generation over a device model (--device cuda): the forward passes run on the
// device, sampling on the CPU from the logits it returns; the same loop, stop rules, streaming
// and statistics as Generator::generate.
#pragma once

#include <cstdint>
#include <vector>

#include "tq/backend/device_model.h"
#include "tq/core/status.h"
#include "tq/model/llama.h"
#include "tq/runtime/generator.h"

namespace tq::tools {

// Runs `prompt` (non-empty) after whatever slot `seq` holds and generates.
Expected<runtime::GenerationStats> generate_on_device(backend::DeviceModel& dm, int seq,
                                                      const model::Model& m,
                                                      const std::vector<int32_t>& prompt,
                                                      const runtime::GenerateOptions& opt,
                                                      const runtime::TokenCallback& on_token);

}  // namespace tq::tools
