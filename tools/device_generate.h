// The generation loop of runtime::Generator over a device model (--device cuda): prefill in
// passes, then sample on the CPU from the logits the device returns, stream text, decode one
// token at a time. Same stop rules, streaming and statistics as Generator::generate.
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
