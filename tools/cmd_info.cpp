// tq info: version, build options, SIMD level and CUDA devices.
#include <cstdio>

#include "commands.h"
#include "tq/backend/device_info.h"
#include "tq/core/cpu_features.h"
#include "tq/core/thread_pool.h"

namespace tq::tools {

void add_info_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "Version, build options, SIMD level and GPUs");
  cmd->callback([] {
    const CpuFeatures cpu = detect_cpu_features();
    std::printf("tq %s\n", TQ_VERSION);
#ifdef NDEBUG
    std::printf("build: release");
#else
    std::printf("build: debug");
#endif
#if defined(__SANITIZE_ADDRESS__)
    std::printf(", asan");
#endif
    std::printf(", cuda %s\n", backend::cuda_built() ? "on" : "off");
    std::printf("cpu: %d threads, simd %s%s\n", default_thread_count(), simd_level_name(cpu),
                cpu.avx512f ? " (avx512f present, unused)" : "");
    const auto devices = backend::list_cuda_devices();
    if (!backend::cuda_built()) {
      std::printf("gpus: none (built without CUDA)\n");
    } else if (!devices.ok()) {
      std::printf("gpus: none (%s)\n", devices.status().message().c_str());
    } else {
      for (const auto& d : *devices)
        std::printf("gpu %d: %s, sm_%d%d, %.1f GiB\n", d.index, d.name.c_str(), d.cc_major,
                    d.cc_minor, d.total_bytes / 1073741824.0);
    }
  });
}

}  // namespace tq::tools
