#include <cuda_runtime.h>

#include "tq/backend/device_info.h"

namespace tq::backend {

bool cuda_built() { return true; }

Expected<std::vector<GpuInfo>> list_cuda_devices() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess)
    return unsupported(std::string("no CUDA device: ") + cudaGetErrorString(err));
  std::vector<GpuInfo> out;
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    out.push_back({i, p.name, p.major, p.minor, p.totalGlobalMem});
  }
  return out;
}

}  // namespace tq::backend
