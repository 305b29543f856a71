// Quantize-on-write launchers: validation, the choice of kernel (legacy CPU-order, float32 team
// or warp) and the instance tables (format x head dim x input type).
#include <algorithm>
#include <climits>
#include <cmath>
#include <span>
#include <string>

#include "tq/backend/cuda/cuda_common.cuh"
#include "tq/backend/cuda/kv_cuda.h"
#include "tq/backend/cuda/quantize_write.cuh"
#include "tq/backend/cuda/quantize_write_fast.cuh"
#include "tq/backend/cuda/quantize_write_qjl.cuh"
#include "tq/core/fp16.h"

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

// clang-format off
#define TQ_WRITE_TQ(D)                                                                       \
  WriteInstance{{quant::FormatKind::kTqMse, 1}, D, &launch_tq<D, 1, false>},                 \
  WriteInstance{{quant::FormatKind::kTqMse, 2}, D, &launch_tq<D, 2, false>},                 \
  WriteInstance{{quant::FormatKind::kTqMse, 3}, D, &launch_tq<D, 3, false>},                 \
  WriteInstance{{quant::FormatKind::kTqMse, 4}, D, &launch_tq<D, 4, false>},                 \
  WriteInstance{{quant::FormatKind::kTqProd, 2}, D, &launch_tq<D, 1, true>},                 \
  WriteInstance{{quant::FormatKind::kTqProd, 3}, D, &launch_tq<D, 2, true>},                 \
  WriteInstance{{quant::FormatKind::kTqProd, 4}, D, &launch_tq<D, 3, true>},                 \
  WriteInstance{{quant::FormatKind::kTqProd, 5}, D, &launch_tq<D, 4, true>},                 \
  WriteInstance{{quant::FormatKind::kF16, 16}, D, &launch_baseline<D, quant::FormatKind::kF16>},  \
  WriteInstance{{quant::FormatKind::kQ8_0, 8}, D, &launch_baseline<D, quant::FormatKind::kQ8_0>}, \
  WriteInstance{{quant::FormatKind::kQ4_0, 4}, D, &launch_baseline<D, quant::FormatKind::kQ4_0>}
// clang-format on

constexpr WriteInstance kWriteInstances[] = {TQ_WRITE_TQ(64), TQ_WRITE_TQ(128), TQ_WRITE_TQ(256)};
#undef TQ_WRITE_TQ

// Up to this many vectors per pool, kAuto takes the warp kernel: one warp per vector keeps a
// decode step's write short, and the team kernel would leave most of the GPU idle.
constexpr int kWarpMaxVectors = 4096;

// --- team kernels (bulk): tq mse (tq_team_kernel) and tq prod (tq_qjl_team_kernel) ---
using TeamFn = Status (*)(const WriteArgs&, int vectors, cudaStream_t);

// Grid-stride: at most one wave of resident blocks, so each team prefetches its next vector.
// kSmem: the kernel's dynamic shared memory.
template <auto kKernel, int kTeams, int kSmem = 0, int kThreads = kWriteThreads>
Status launch_one_wave(const WriteArgs& a, int vectors, cudaStream_t s) {
  // Static and dynamic shared memory together may pass 48 KB (the QJL kernel: 20 + 34 KB), which
  // needs the opt-in; per device, so before every launch, as the attention kernels do.
  if (kSmem > 0)
    TQ_CUDA_TRY(cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  static const int per_sm = [] {
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kKernel, kThreads, kSmem) !=
        cudaSuccess) {
      (void)cudaGetLastError();
      n = 0;
    }
    return std::max(n, 1);
  }();
  int dev = 0, sms = 0;
  TQ_CUDA_TRY(cudaGetDevice(&dev));
  TQ_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  const int blocks = std::min((vectors + kTeams - 1) / kTeams, per_sm * std::max(sms, 1));
  kKernel<<<blocks, kThreads, kSmem, s>>>(a);
  return ok_status();
}

// kBits: the code bits (of the mse part for prod pools, kQjl).
template <int kDim, int kBits, bool kF16, bool kQjl>
Status launch_team(const WriteArgs& a, int vectors, cudaStream_t s) {
  constexpr int kTeams = kWriteThreads / (kDim / 32);
  if constexpr (kQjl) {
    constexpr int kThreads = QjlTuning<kF16>::kThreads;
    return launch_one_wave<tq_qjl_team_kernel<kDim, kBits, kF16>, kThreads / (kDim / 32),
                           qjl_smem_bytes<kDim>(), kThreads>(a, vectors, s);
  } else
    return launch_one_wave<tq_team_kernel<kDim, kBits, kF16>, kTeams>(a, vectors, s);
}

template <int kDim, bool kF16, bool kQjl>
TeamFn team_for_bits(int bits) {
  if constexpr (kQjl && !qjl_team_supported<kDim>()) {
    return nullptr;
  } else {
    switch (bits) {
      case 1:
        return &launch_team<kDim, 1, kF16, kQjl>;
      case 2:
        return &launch_team<kDim, 2, kF16, kQjl>;
      case 3:
        return &launch_team<kDim, 3, kF16, kQjl>;
      case 4:
        return &launch_team<kDim, 4, kF16, kQjl>;
      default:
        return nullptr;
    }
  }
}

template <bool kQjl>
TeamFn team_for(int dim, int bits, bool f16) {
  switch (dim) {
    case 64:
      return f16 ? team_for_bits<64, true, kQjl>(bits) : team_for_bits<64, false, kQjl>(bits);
    case 128:
      return f16 ? team_for_bits<128, true, kQjl>(bits) : team_for_bits<128, false, kQjl>(bits);
    case 256:
      return f16 ? team_for_bits<256, true, kQjl>(bits) : team_for_bits<256, false, kQjl>(bits);
    default:
      return nullptr;
  }
}

// --- float32 warp kernel (small writes; K and V together) ---
using WarpFn = cudaError_t (*)(const WarpWriteArgs&, int blocks, cudaStream_t, bool pdl);

template <int kDim, bool kF16>
cudaError_t launch_warp(const WarpWriteArgs& a, int blocks, cudaStream_t s, bool pdl) {
  return launch_maybe_pdl(tq_warp_kernel<kDim, kF16>, dim3(blocks), dim3(kWarpWriteWarps * 32), 0,
                          s, pdl, a);
}

WarpFn warp_for(int dim, bool f16) {
  switch (dim) {
    case 64:
      return f16 ? &launch_warp<64, true> : &launch_warp<64, false>;
    case 128:
      return f16 ? &launch_warp<128, true> : &launch_warp<128, false>;
    case 256:
      return f16 ? &launch_warp<256, true> : &launch_warp<256, false>;
    default:
      return nullptr;
  }
}

// One validated pool write and the kernel it takes.
struct PoolWrite {
  enum class Path { kNone, kLegacy, kTeam, kQjlTeam, kWarp } path = Path::kNone;
  WriteArgs args{};
  const WriteInstance* legacy = nullptr;
  int vectors = 0;
  int dim = 0;
  int bits = 0;  // tq code bits (of the mse part for prod formats)
  bool f16_in = false;
  bool overlap = false;  // QuantizeWriteParams::overlap (the warp kernel only)
  WarpFormat warp_format = WarpFormat::kF16;
};

Expected<PoolWrite> prepare(const QuantizeWriteParams& p, WriteKernel kernel) {
  PoolWrite w;
  const PagedPool& pool = p.pool;
  TQ_RETURN_IF_ERROR(pool.validate().with_context("quantize_write"));
  if (p.tokens < 0) return invalid_argument("quantize_write: negative token count");
  if (p.tokens == 0) return Expected<PoolWrite>(w);
  if (!p.x || !p.slot_mapping)
    return invalid_argument("quantize_write: x and slot_mapping are required");
  for (const WriteInstance& i : kWriteInstances)
    if (i.format == pool.format && i.dim == pool.head_dim) w.legacy = &i;
  if (!w.legacy)
    return unsupported("quantize_write: no CUDA instance for " + pool.format.name() +
                       " at head dim " + std::to_string(pool.head_dim) +
                       " (CUDA writes head dims 64, 128, 256)");
  if (static_cast<long long>(p.tokens) * pool.n_kv_heads > INT_MAX / 2)
    return invalid_argument("quantize_write: too many vectors for one launch");
  // Vector loads: 16-byte aligned rows.
  const size_t stride =
      p.x_token_stride ? p.x_token_stride : static_cast<size_t>(pool.n_kv_heads) * pool.head_dim;
  if (reinterpret_cast<uintptr_t>(p.x) % 16 != 0 || stride % (p.x_is_f16 ? 8 : 4) != 0)
    return invalid_argument(
        "quantize_write: x must be 16-byte aligned with a token stride of whole 16-byte units");
  const CodecTables& t = pool.tables;
  if (pool.format.is_tq() && (!t.centroids || !t.boundaries || !t.hadamard_signs))
    return invalid_argument("quantize_write: tq pools need codebook and Hadamard tables");
  if (pool.format.has_qjl() && !t.qjl_t)
    return invalid_argument("quantize_write: tq prod pools need the QJL matrix");

  WriteArgs& a = w.args;
  a.pool = pool.data;
  a.block_stride = pool.block_stride_or_default();
  a.head_stride = pool.head_stride_or_default();
  a.block_tokens = pool.block_tokens;
  block_divisor(pool.block_tokens, a.block_magic, a.block_magic_shift);
  a.n_kv_heads = pool.n_kv_heads;
  a.x = p.x;
  a.x_f16 = p.x_is_f16;
  a.x_token_stride = stride;
  a.slot_mapping = p.slot_mapping;
  a.tokens = p.tokens;
  a.centroids = t.centroids;
  a.boundaries = t.boundaries;
  a.hadamard_signs = t.hadamard_signs;
  a.qjl_t = t.qjl_t;
  a.qjl_smem = t.qjl_smem;
  a.cell_lut = t.cell_lut;
  a.hadamard_scale = 1.0f / std::sqrt(static_cast<float>(pool.head_dim));  // as Rotation::apply
  a.norm_correction = pool.norm_correction;
  w.vectors = p.tokens * pool.n_kv_heads;
  w.dim = pool.head_dim;
  w.bits = pool.format.code_bits();
  w.f16_in = p.x_is_f16;
  w.overlap = p.overlap;

  const bool tq_mse =
      pool.format.kind == quant::FormatKind::kTqMse && pool.format.bits <= 4 && t.cell_lut;
  // QJL pools in bulk: the tensor-core sketch (quantize_write_qjl.cuh).
  const bool tq_prod = pool.format.kind == quant::FormatKind::kTqProd &&
                       pool.format.code_bits() <= 4 && t.cell_lut && t.qjl_smem &&
                       (pool.head_dim == 64 || pool.head_dim == 128);
  const bool f16 = pool.format.kind == quant::FormatKind::kF16;
  w.warp_format = f16 ? WarpFormat::kF16 : static_cast<WarpFormat>(pool.format.bits);
  const bool small = w.vectors <= kWarpMaxVectors;
  w.path = PoolWrite::Path::kLegacy;
  if (kernel == WriteKernel::kWarp || (kernel == WriteKernel::kAuto && small)) {
    if (tq_mse || f16) w.path = PoolWrite::Path::kWarp;
  } else if (kernel == WriteKernel::kTeam || kernel == WriteKernel::kAuto) {
    if (tq_mse) w.path = PoolWrite::Path::kTeam;
    if (tq_prod) w.path = PoolWrite::Path::kQjlTeam;
  }
  return Expected<PoolWrite>(w);
}

// One launch of the warp kernel for up to kWarpParts writes of one head dim and input type; the
// first one's overlap flag decides.
Status launch_warp_parts(std::span<const PoolWrite* const> parts, cudaStream_t s) {
  if (parts.empty() || parts.size() > static_cast<size_t>(kWarpParts))
    return internal_error("quantize_write: 1 to 4 writes share a warp-kernel launch");
  WarpWriteArgs a{};
  int vectors = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    a.part[i] = parts[i]->args;
    a.format[i] = parts[i]->warp_format;
    a.vectors[i] = parts[i]->vectors;
    vectors += parts[i]->vectors;
  }
  const PoolWrite& first = *parts[0];
  const WarpFn fn = warp_for(first.dim, first.f16_in);
  if (!fn)
    return internal_error("quantize_write: no warp kernel for head dim " +
                          std::to_string(first.dim));
  const int blocks = (vectors + kWarpWriteWarps - 1) / kWarpWriteWarps;
  TQ_CUDA_TRY(fn(a, blocks, s, first.overlap));
  TQ_CUDA_CHECK_LAUNCH(s);
  return ok_status();
}

Status launch_one(const PoolWrite& w, cudaStream_t s) {
  switch (w.path) {
    case PoolWrite::Path::kNone:
      return ok_status();
    case PoolWrite::Path::kWarp: {
      const PoolWrite* one[1] = {&w};
      return launch_warp_parts(one, s);
    }
    case PoolWrite::Path::kTeam:
    case PoolWrite::Path::kQjlTeam: {
      const bool qjl = w.path == PoolWrite::Path::kQjlTeam;
      const TeamFn fn =
          qjl ? team_for<true>(w.dim, w.bits, w.f16_in) : team_for<false>(w.dim, w.bits, w.f16_in);
      if (!fn)
        return internal_error(std::string("quantize_write: no ") + (qjl ? "QJL " : "") +
                              "team kernel for head dim " + std::to_string(w.dim));
      TQ_RETURN_IF_ERROR(fn(w.args, w.vectors, s));
      TQ_CUDA_CHECK_LAUNCH(s);
      return ok_status();
    }
    case PoolWrite::Path::kLegacy: {
      // Lanes per vector: TqWriteTeam (d / 32) for tq formats, WriteTeam (d / 8, at most 32)
      // otherwise.
      const bool tq = w.legacy->format.is_tq();
      const int lanes = tq ? w.dim / 32 : (w.dim / 8 < 32 ? w.dim / 8 : 32);
      const int teams = kWriteThreads / lanes;
      const int blocks = (w.vectors + teams - 1) / teams;
      w.legacy->launch(w.args, blocks, s);
      TQ_CUDA_CHECK_LAUNCH(s);
      return ok_status();
    }
  }
  return ok_status();
}

// One variant's image: the kernel's s_s[index(n, k)] = fp16(S[row(n)][coordinate(k)]); the
// m16n8k16 rows' skew halves stay 0.
template <int kDim, bool kF16In, bool kWgmma>
void qjl_image(const float* s, uint16_t* out) {
  using Layout = QjlLayout<kDim, kF16In>;
  for (int n = 0; n < kDim; ++n)
    for (int k = 0; k < kDim; ++k)
      out[kWgmma ? dev::qjl_wgmma_index<kDim>(n, k) : n * qjl_row_halves<kDim>() + k] = f32_to_f16(
          s[dev::qjl_sketch_row<kDim>(n) * kDim + dev::qjl_k_coordinate<kDim, Layout>(k)]);
}

template <int kDim>
std::vector<uint16_t> qjl_images(const float* s) {
  constexpr size_t kHalves = qjl_image_halves<kDim>();
  std::vector<uint16_t> out(kQjlImages * kHalves, 0);
  const auto at = [&](bool f16_in, bool wgmma) {
    return out.data() + kHalves * qjl_image_variant(f16_in, wgmma);
  };
  qjl_image<kDim, false, false>(s, at(false, false));
  qjl_image<kDim, true, false>(s, at(true, false));
  qjl_image<kDim, false, true>(s, at(false, true));
  qjl_image<kDim, true, true>(s, at(true, true));
  return out;
}

}  // namespace

std::vector<uint16_t> qjl_team_images(const float* s, int dim) {
  switch (dim) {
    case 64:
      return qjl_images<64>(s);
    case 128:
      return qjl_images<128>(s);
    default:
      return {};
  }
}

Status quantize_write(const QuantizeWriteParams& p, void* stream_ptr) {
  TQ_ASSIGN_OR_RETURN(const PoolWrite w, prepare(p, p.kernel));
  return launch_one(w, static_cast<cudaStream_t>(stream_ptr));
}

Status quantize_write_group(std::span<const QuantizeWriteParams> writes, void* stream_ptr) {
  if (writes.size() > static_cast<size_t>(kWarpParts))
    return invalid_argument("quantize_write_group: at most 4 writes");
  const WriteKernel kernel = writes.empty() ? WriteKernel::kAuto : writes[0].kernel;
  PoolWrite prepared[kWarpParts];
  for (size_t i = 0; i < writes.size(); ++i) {
    Expected<PoolWrite> w = prepare(writes[i], kernel);
    if (!w.ok()) return w.status().with_context("write " + std::to_string(i));
    prepared[i] = *w;
  }
  // The warp-kernel writes of the first one's head dim and input type share one launch.
  const cudaStream_t s = static_cast<cudaStream_t>(stream_ptr);
  const PoolWrite* shared[kWarpParts];
  size_t n_shared = 0;
  for (size_t i = 0; i < writes.size(); ++i) {
    const PoolWrite& w = prepared[i];
    const bool joins =
        w.path == PoolWrite::Path::kWarp &&
        (n_shared == 0 || (w.dim == shared[0]->dim && w.f16_in == shared[0]->f16_in));
    if (joins)
      shared[n_shared++] = &w;
    else
      TQ_RETURN_IF_ERROR(launch_one(w, s).with_context("write " + std::to_string(i)));
  }
  if (n_shared == 0) return ok_status();
  return launch_warp_parts(std::span<const PoolWrite* const>(shared, n_shared), s);
}

Status quantize_write_kv(const QuantizeWriteParams& k, const QuantizeWriteParams& v,
                         void* stream_ptr) {
  const QuantizeWriteParams both[2] = {k, v};
  return quantize_write_group(both, stream_ptr);
}

}  // namespace tq::backend::cuda
