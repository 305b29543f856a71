// Uploads one codec's tables (Lloyd-Max codebook, rotation, QJL matrix) to the device, from the
// same quant objects the CPU codec is built from, and owns that device memory.
#pragma once

#include <cstdint>

#include "tq/backend/cuda/kv_cuda.h"
#include "tq/core/status.h"
#include "tq/quant/codebook.h"
#include "tq/quant/format.h"

namespace tq::backend::cuda {

class DeviceCodecTables {
 public:
  // seed: the layer seed the CPU codec uses (CodecOptions::seed). Formats without tables
  // (f16, q8_0, q4_0) get an empty view.
  static Expected<DeviceCodecTables> create(quant::Format format, int dim, uint64_t seed,
                                            quant::CodebookCache& books);

  DeviceCodecTables() = default;
  DeviceCodecTables(const DeviceCodecTables&) = delete;
  DeviceCodecTables& operator=(const DeviceCodecTables&) = delete;
  DeviceCodecTables(DeviceCodecTables&& o) noexcept { *this = static_cast<DeviceCodecTables&&>(o); }
  DeviceCodecTables& operator=(DeviceCodecTables&& o) noexcept;
  ~DeviceCodecTables();

  const CodecTables& view() const { return view_; }

 private:
  void* mem_ = nullptr;  // one device allocation holding every table
  CodecTables view_;
};

}  // namespace tq::backend::cuda
