// Quantize-on-write launcher: validation and the instance table (format x head dim).
#include <cmath>
#include <string>

#include "tq/backend/cuda/cuda_common.cuh"
#include "tq/backend/cuda/kv_cuda.h"
#include "tq/backend/cuda/quantize_write.cuh"

namespace tq::backend::cuda {
namespace {

using LaunchFn = void (*)(const WriteArgs&, int blocks, cudaStream_t);

template <int kDim, int kBits, bool kQjl>
void launch_tq(const WriteArgs& a, int blocks, cudaStream_t s) {
  tq_write_kernel<kDim, kBits, kQjl><<<blocks, kWriteThreads, 0, s>>>(a);
}
template <int kDim, quant::FormatKind kKind>
void launch_baseline(const WriteArgs& a, int blocks, cudaStream_t s) {
  baseline_write_kernel<kDim, kKind><<<blocks, kWriteThreads, 0, s>>>(a);
}

struct WriteInstance {
  quant::Format format;
  int dim;
  LaunchFn launch;
};

#define TQ_WRITE_TQ(D)                                                             \
  WriteInstance{{quant::FormatKind::kTqMse, 1}, D, &launch_tq<D, 1, false>},       \
      WriteInstance{{quant::FormatKind::kTqMse, 2}, D, &launch_tq<D, 2, false>},   \
      WriteInstance{{quant::FormatKind::kTqMse, 3}, D, &launch_tq<D, 3, false>},   \
      WriteInstance{{quant::FormatKind::kTqMse, 4}, D, &launch_tq<D, 4, false>},   \
      WriteInstance{{quant::FormatKind::kTqProd, 2}, D, &launch_tq<D, 1, true>},   \
      WriteInstance{{quant::FormatKind::kTqProd, 3}, D, &launch_tq<D, 2, true>},   \
      WriteInstance{{quant::FormatKind::kTqProd, 4}, D, &launch_tq<D, 3, true>},   \
      WriteInstance{{quant::FormatKind::kTqProd, 5}, D, &launch_tq<D, 4, true>},   \
      WriteInstance{{quant::FormatKind::kF16, 16}, D, &launch_baseline<D, quant::FormatKind::kF16>}, \
      WriteInstance{{quant::FormatKind::kQ8_0, 8}, D, &launch_baseline<D, quant::FormatKind::kQ8_0>}, \
      WriteInstance{{quant::FormatKind::kQ4_0, 4}, D, &launch_baseline<D, quant::FormatKind::kQ4_0>}

constexpr WriteInstance kWriteInstances[] = {TQ_WRITE_TQ(64), TQ_WRITE_TQ(128), TQ_WRITE_TQ(256)};
#undef TQ_WRITE_TQ

}  // namespace

Status quantize_write(const QuantizeWriteParams& p, void* stream_ptr) {
  const PagedPool& pool = p.pool;
  TQ_RETURN_IF_ERROR(pool.validate().with_context("quantize_write"));
  if (p.tokens < 0) return invalid_argument("quantize_write: negative token count");
  if (p.tokens == 0) return ok_status();
  if (!p.x || !p.slot_mapping) return invalid_argument("quantize_write: x and slot_mapping are required");
  const WriteInstance* inst = nullptr;
  for (const WriteInstance& w : kWriteInstances)
    if (w.format == pool.format && w.dim == pool.head_dim) inst = &w;
  if (!inst)
    return unsupported("quantize_write: no CUDA instance for " + pool.format.name() + " at head dim " +
                       std::to_string(pool.head_dim) + " (CUDA writes head dims 64, 128, 256)");
  // Vector loads: 16-byte aligned rows.
  const size_t stride = p.x_token_stride ? p.x_token_stride : static_cast<size_t>(pool.n_kv_heads) * pool.head_dim;
  if (reinterpret_cast<uintptr_t>(p.x) % 16 != 0 || stride % (p.x_is_f16 ? 8 : 4) != 0)
    return invalid_argument("quantize_write: x must be 16-byte aligned with a token stride of whole 16-byte units");
  const CodecTables& t = pool.tables;
  if (pool.format.is_tq() && (!t.centroids || !t.boundaries || !t.hadamard_signs))
    return invalid_argument("quantize_write: tq pools need codebook and Hadamard tables");
  if (pool.format.has_qjl() && !t.qjl_t) return invalid_argument("quantize_write: tq prod pools need the QJL matrix");

  WriteArgs a{};
  a.pool = pool.data;
  a.block_stride = pool.block_stride_or_default();
  a.head_stride = pool.head_stride_or_default();
  a.block_tokens = pool.block_tokens;
  a.n_kv_heads = pool.n_kv_heads;
  a.x = p.x;
  a.x_f16 = p.x_is_f16;
  a.x_token_stride = p.x_token_stride ? p.x_token_stride : static_cast<size_t>(pool.n_kv_heads) * pool.head_dim;
  a.slot_mapping = p.slot_mapping;
  a.tokens = p.tokens;
  a.centroids = t.centroids;
  a.boundaries = t.boundaries;
  a.hadamard_signs = t.hadamard_signs;
  a.qjl = t.qjl;
  a.qjl_t = t.qjl_t;
  a.hadamard_scale = 1.0f / std::sqrt(static_cast<float>(pool.head_dim));  // as Rotation::apply
  a.norm_correction = pool.norm_correction;

  // Lanes per vector: TqWriteTeam (d / 32) for tq formats, WriteTeam (d / 8, at most 32) otherwise.
  const int lanes = pool.format.is_tq() ? pool.head_dim / 32 : (pool.head_dim / 8 < 32 ? pool.head_dim / 8 : 32);
  const int teams = kWriteThreads / lanes;
  const long long vectors = static_cast<long long>(p.tokens) * pool.n_kv_heads;
  const long long blocks = (vectors + teams - 1) / teams;
  if (blocks > 0x7fffffffLL) return invalid_argument("quantize_write: too many vectors for one launch");
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  inst->launch(a, static_cast<int>(blocks), stream);
  TQ_CUDA_CHECK_LAUNCH(stream);
  return ok_status();
}

}  // namespace tq::backend::cuda
