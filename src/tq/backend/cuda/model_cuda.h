// The Llama-family forward pass on one CUDA device (first version, issue #7): weights uploaded
// once as f16 (dequantized on the host from any GGUF type tq reads), every matmul a cuBLAS
// GEMM (f16 inputs, f32 accumulation and output), the small ops in ops_cuda.cu, and the paged
// compressed KV cache of kv_cuda.h: per layer a K and a V pool in the layer's formats
// (KvConfig, boundary layers included), one block table per sequence slot, quantize-on-write
// for new tokens and decode_attention over the pages. Logits go back to the host as f32.
// No CUDA types here: the implementation keeps them behind a pointer.
#pragma once

#include <memory>
#include <string>

#include "tq/backend/device_model.h"

namespace tq::backend::cuda {

class CudaModel final : public DeviceModel {
 public:
  static Expected<std::unique_ptr<CudaModel>> create(const LlamaDesc& desc,
                                                     const DeviceModelOptions& options);
  ~CudaModel() override;
  CudaModel(const CudaModel&) = delete;
  CudaModel& operator=(const CudaModel&) = delete;

  Status forward(const DeviceForwardArgs& args) override;
  Status forward_batch(std::span<const DeviceForwardArgs> items) override;
  Status copy_sequence(int src, int dst) override;
  int length(int seq) const override;
  Status truncate(int seq, int length) override;
  int refill_until(int seq) const override;
  Status reset(int seq) override;
  Status read_stored(int seq, int layer, bool value, int p0, int n, float* out) const override;
  const DeviceModelOptions& options() const override;
  DeviceModelStats stats() const override;
  std::string describe() const override;

  size_t weight_bytes() const;  // device bytes of the f16 weights, norms and biases
  size_t kv_bytes() const;      // device bytes of every layer's K and V pools

  struct Impl;  // public so the implementation's helpers can name it; defined in model_cuda.cu

 private:
  explicit CudaModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tq::backend::cuda
