// The compiled attention instances: one entry per (K format, V format, head dim), each a launch
// of attention_kernel<KF, VF, kDim>. Instance files (attention_inst_*.cu) hold one K format each
// so they compile in parallel; decode_attention.cu searches the lists and answers Unsupported
// for anything else.
#pragma once

#include <cuda_runtime.h>

#include "tq/backend/cuda/decode_attention.cuh"
#include "tq/quant/format.h"

namespace tq::backend::cuda {

struct AttnInstance {
  quant::Format k;
  quant::Format v;
  int dim;
  int cap;  // block_tokens the instance is specialised for; 0: any
  // pdl: launched with programmatic dependence (the kernel waits before reading the cache).
  Status (*launch)(const AttnArgs& a, int splits, int n_kv_heads, int n_seqs, cudaStream_t stream,
                   bool pdl);
  // The kernel for splits by length (attn_by_length; a.split_budget CTAs a KV head), or null,
  // and the most tokens it takes in a split (0: any).
  Status (*launch_by_length)(const AttnArgs& a, int splits, int n_kv_heads, int n_seqs,
                             cudaStream_t stream, bool pdl);
  int by_length_max_tokens;
  // The kernel for queries that share a block table (kShared; grid z = query blocks).
  Status (*launch_shared)(const AttnArgs& a, int splits, int n_kv_heads, int n_blocks,
                          cudaStream_t stream, bool pdl);
  // Resident CTAs per SM (0 when the kernel cannot launch).
  int (*occupancy)();
};

struct AttnInstanceList {
  const AttnInstance* items;
  int n;
};

// By length the grid is (splits = the budget, KV heads, 1).
template <class KF, class VF, int kDim, int kCap, bool kByLength, bool kShared = false>
Status launch_attention(const AttnArgs& a, int splits, int n_kv_heads, int n_seqs,
                        cudaStream_t stream, bool pdl) {
  constexpr int kSmem = attn_smem_bytes<KF, VF, kDim, kCap, kByLength>();
  const auto kernel = attention_kernel<KF, VF, kDim, kCap, kByLength, kShared>;
  if (kSmem > 48 * 1024)
    TQ_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  TQ_CUDA_TRY(launch_maybe_pdl(kernel, dim3(splits, n_kv_heads, kByLength ? 1 : n_seqs),
                               dim3(kAttnThreads), kSmem, stream, pdl, a));
  TQ_CUDA_CHECK_LAUNCH(stream);
  return ok_status();
}

template <class KF, class VF, int kDim, int kCap>
int attention_occupancy() {
  constexpr int kSmem = attn_smem_bytes<KF, VF, kDim, kCap, false>();
  const auto kernel = attention_kernel<KF, VF, kDim, kCap, false>;
  if (kSmem > 48 * 1024 && cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                kSmem) != cudaSuccess)
    return 0;
  int blocks = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kAttnThreads, kSmem) !=
      cudaSuccess)
    return 0;
  return blocks;
}

// The kernel for splits by length where the instance has one (instanced only then).
template <class KF, class VF, int kDim, int kCap>
constexpr auto attn_launch_by_length() {
  using Launch = Status (*)(const AttnArgs&, int, int, int, cudaStream_t, bool);
  if constexpr (attn_by_length<KF, VF, kCap>())
    return Launch{&launch_attention<KF, VF, kDim, kCap, true>};
  else
    return Launch{nullptr};
}

template <class KF, class VF, int kDim, int kCap = 0>
constexpr AttnInstance attn_instance(quant::Format k, quant::Format v) {
  return {k,
          v,
          kDim,
          kCap,
          &launch_attention<KF, VF, kDim, kCap, false>,
          attn_launch_by_length<KF, VF, kDim, kCap>(),
          attn_page_list<KF, VF, kCap>() ? kAttnPagesByLength * kCap : 0,
          &launch_attention<KF, VF, kDim, kCap, false, true>,
          &attention_occupancy<KF, VF, kDim, kCap>};
}

inline constexpr quant::Format tq_mse(int bits) { return {quant::FormatKind::kTqMse, bits}; }
inline constexpr quant::Format tq_prod(int bits) { return {quant::FormatKind::kTqProd, bits}; }

AttnInstanceList attention_instances_baseline();
AttnInstanceList attention_instances_k_tq2();
AttnInstanceList attention_instances_k_tq3();
AttnInstanceList attention_instances_k_tq4();
AttnInstanceList attention_instances_k_tq3j();
AttnInstanceList attention_instances_k_tq4j();

}  // namespace tq::backend::cuda
