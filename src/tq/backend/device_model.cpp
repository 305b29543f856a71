// DeviceModelOptions, and create_cuda_model's answer in builds without CUDA.
#include "tq/backend/device_model.h"

namespace tq::backend {

Status DeviceModelOptions::validate() const {
  TQ_RETURN_IF_ERROR(kv.validate());
  if (max_context < 1) return invalid_argument("device model: max_context must be positive");
  if (max_sequences < 1) return invalid_argument("device model: max_sequences must be positive");
  if (max_batch < 1 || max_batch > 65535)
    return invalid_argument("device model: max_batch must be in [1, 65535]");
  if (device < 0) return invalid_argument("device model: negative device index");
  if (!value_weights.empty() && !kv.value_scaling)
    return invalid_argument("device model: value weights given without value scaling");
  return ok_status();
}

namespace {
const char* write_kernel_note(DeviceWriteKernel k) {
  switch (k) {
    case DeviceWriteKernel::kLegacy:
      return ", write kernel legacy";
    case DeviceWriteKernel::kTeam:
      return ", write kernel team";
    case DeviceWriteKernel::kWarp:
      return ", write kernel warp";
    case DeviceWriteKernel::kAuto:
      break;
  }
  return "";
}
}  // namespace

std::string DeviceModelOptions::to_string() const {
  return "ctx " + std::to_string(max_context) + " x " + std::to_string(max_sequences) +
         " seqs, batch " + std::to_string(max_batch) + (cublas_gemv ? ", cuBLAS GEMV" : "") +
         (weights == DeviceWeights::kQuantized ? ", quantized weights" : "") +
         (cuda_graphs ? "" : ", no CUDA graphs") +
         (overlap_launches ? "" : ", no overlapped launches") +
         (window_stream || kv.sinks + kv.window == 0 ? "" : ", window attention in line") +
         (split_by_length ? "" : ", attention cut as the longest sequence") +
         (weights == DeviceWeights::kQuantized && !int8_activations ? ", f16 activations" : "") +
         write_kernel_note(write_kernel) + ", kv " + kv.to_string();
}

Status DeviceModelOptions::check_truncate(int seq, int current, int length) const {
  if (seq < 0 || seq >= max_sequences)
    return invalid_argument("truncate: sequence slot " + std::to_string(seq) + " out of range");
  if (length < 0 || length > current)
    return invalid_argument("truncate: slot " + std::to_string(seq) + " holds " +
                            std::to_string(current) + " tokens, cannot keep " +
                            std::to_string(length));
  return ok_status();
}

Status DeviceModel::read_stored(int, int, bool, int, int, float*) const {
  return unsupported("this device model cannot read its stored K/V back");
}

#ifndef TQ_HAVE_CUDA
Expected<std::unique_ptr<DeviceModel>> create_cuda_model(const LlamaDesc&,
                                                         const DeviceModelOptions&) {
  return unsupported("this tq was built without CUDA (configure with -DTQ_CUDA=ON)");
}
#endif

}  // namespace tq::backend
