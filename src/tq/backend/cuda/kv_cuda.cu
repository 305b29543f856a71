// PagedPool geometry and validation (host only).
#include <string>

#include "tq/backend/cuda/kv_cuda.h"

namespace tq::backend::cuda {

size_t PagedPool::codec_block_bytes() const {
  return static_cast<size_t>(block_tokens) * format.bytes_per_vector(head_dim);
}
size_t PagedPool::head_stride_or_default() const {
  return head_stride ? head_stride : codec_block_bytes();
}
size_t PagedPool::block_stride_or_default() const {
  return block_stride ? block_stride : static_cast<size_t>(n_kv_heads) * head_stride_or_default();
}

Status PagedPool::validate() const {
  TQ_RETURN_IF_ERROR(format.validate(head_dim));
  if (!data) return invalid_argument("pool: no device memory");
  if (n_kv_heads <= 0) return invalid_argument("pool: n_kv_heads must be positive");
  if (block_tokens <= 0 || block_tokens % 32 != 0)
    return unsupported("pool: the CUDA kernels need block_tokens to be a multiple of 32, got " +
                       std::to_string(block_tokens));
  const size_t hs = head_stride_or_default(), bs = block_stride_or_default();
  if (hs < codec_block_bytes() || bs < static_cast<size_t>(n_kv_heads) * hs)
    return invalid_argument("pool: strides smaller than the codec blocks they hold");
  if (hs % 16 != 0 || bs % 16 != 0 || reinterpret_cast<uintptr_t>(data) % 16 != 0)
    return invalid_argument("pool: data and strides must be 16-byte aligned");
  return ok_status();
}

}  // namespace tq::backend::cuda
