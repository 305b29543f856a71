// Without CUDA this file answers; with CUDA, backend/cuda/device_info.cu does.
#include "tq/backend/device_info.h"

#ifndef TQ_HAVE_CUDA
namespace tq::backend {
bool cuda_built() { return false; }
Expected<std::vector<GpuInfo>> list_cuda_devices() {
  return unsupported("built without CUDA (configure with -DTQ_CUDA=ON)");
}
}  // namespace tq::backend
#endif
