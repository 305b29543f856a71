// What the CUDA backend can see, in plain types so no CUDA header leaks above backend/cuda.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "tq/core/status.h"

namespace tq::backend {

struct GpuInfo {
  int index = 0;
  std::string name;
  int cc_major = 0;
  int cc_minor = 0;
  size_t total_bytes = 0;
};

// True when this binary was built with the CUDA backend.
bool cuda_built();
// The visible GPUs; an error when CUDA is absent or the driver cannot be reached.
Expected<std::vector<GpuInfo>> list_cuda_devices();

}  // namespace tq::backend
