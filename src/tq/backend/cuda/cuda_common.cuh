// Device helpers shared by the KV kernels: the TQ_CUDA_TRY status macro, tensor-core mma,
// byte permutes and loads of packed spans of any alignment. CUDA-only (never included by
// CPU code).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "tq/core/status.h"

namespace tq::backend::cuda {

inline Status cuda_status(cudaError_t err, const char* what, const char* file, int line) {
  if (err == cudaSuccess) return ok_status();
  return internal_error(std::string(what) + " failed at " + file + ":" + std::to_string(line) +
                        ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

// cudaStreamSynchronize(s), or nothing while s is being captured into a graph.
inline cudaError_t sync_unless_capturing(cudaStream_t s) {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  const cudaError_t e = cudaStreamIsCapturing(s, &st);
  if (e != cudaSuccess) return e;
  return st == cudaStreamCaptureStatusNone ? cudaStreamSynchronize(s) : cudaSuccess;
}

}  // namespace tq::backend::cuda

// Evaluates a CUDA runtime call and returns its failure as a tq::Status (never exits).
#define TQ_CUDA_TRY(expr) \
  TQ_RETURN_IF_ERROR(::tq::backend::cuda::cuda_status((expr), #expr, __FILE__, __LINE__))

// After a launch: the launch error, and in debug builds the kernel's own completion (unless
// the stream is being captured into a CUDA graph, where a synchronisation is illegal).
#ifndef NDEBUG
#define TQ_CUDA_CHECK_LAUNCH(stream)                                 \
  do {                                                               \
    TQ_CUDA_TRY(cudaGetLastError());                                 \
    TQ_CUDA_TRY(::tq::backend::cuda::sync_unless_capturing(stream)); \
  } while (0)
#else
#define TQ_CUDA_CHECK_LAUNCH(stream) TQ_CUDA_TRY(cudaGetLastError())
#endif

namespace tq::backend::cuda {

// kernel<<<grid, block, smem, s>>>(args...), with programmatic stream serialization when `pdl`
// (dev::pdl_wait / pdl_launch_dependents below say what that allows).
template <typename... KArgs, typename... Args>
cudaError_t launch_maybe_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                             cudaStream_t s, bool pdl, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, static_cast<Args&&>(args)...);
}

}  // namespace tq::backend::cuda

namespace tq::backend::cuda::dev {

// Programmatic dependent launch (sm_90): a kernel launched with
// cudaLaunchAttributeProgrammaticStreamSerialization may start while its predecessor in the
// stream still runs, once every CTA of the predecessor has called pdl_launch_dependents (or
// exited). Before it reads anything the predecessor writes, it calls pdl_wait, which returns
// when the predecessor has completed and its writes are visible. Both are no-ops on older
// architectures and for kernels launched without the attribute.
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// In-place unnormalised Walsh-Hadamard transform (quant::fwht_ref's butterflies, in its stage
// order) of a kDim-vector spread over kDim / kE lanes, lane-major with kE consecutive elements
// per lane: stage h pairs (j, j + h), inside the lane while h < kE, then across lanes, where the
// upper lane of a pair takes other - mine and the lower mine + other, each one rounding (so every
// kernel that rotates this way gets the same floats). `lane` is the lane's index among the
// vector's lanes; `mask` covers them. The across-lane stages whose lane bit is in kDoneLaneBits
// are skipped (done already: the quantize-on-write's first stage on its raw inputs).
template <int kDim, int kE, int kDoneLaneBits = 0>
__device__ __forceinline__ void lane_fwht(float (&y)[kE], int lane, unsigned mask) {
#pragma unroll
  for (int h = 1; h < kE; h *= 2)
#pragma unroll
    for (int e = 0; e < kE; ++e)
      if ((e & h) == 0) {
        const float p = y[e], q = y[e + h];
        y[e] = __fadd_rn(p, q);
        y[e + h] = __fsub_rn(p, q);
      }
#pragma unroll
  for (int h = kE; h < kDim; h *= 2) {
    const int m = h / kE;
    if (m & kDoneLaneBits) continue;
    const float s = (lane & m) ? -1.0f : 1.0f;  // one FFMA: other - mine or mine + other
#pragma unroll
    for (int e = 0; e < kE; ++e) y[e] = fmaf(y[e], s, __shfl_xor_sync(mask, y[e], m));
  }
}

// D = A * B + D for one 16x8x16 tile, fp16 inputs, fp32 accumulators (PTX fragment layout:
// groupID = lane / 4, tig = lane % 4; A reg0 (row g, k 2tig..+1), reg1 (row g+8), reg2 (row g,
// k+8), reg3 (row g+8, k+8); B reg0 (k 2tig..+1, col g), reg1 (k+8); C c0,c1 (row g, cols
// 2tig..+1), c2,c3 (row g+8)).
__device__ __forceinline__ void mma_16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                          uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// The transpose of an 8x8 fp16 matrix held as an mma fragment (lane: row lane / 4, columns
// 2 (lane % 4), +1), returned in the same layout.
__device__ __forceinline__ uint32_t movmatrix_trans(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  return __byte_perm(a, b, sel);
}

// (a & mask) | (b & ~mask) in one LOP3 (ptxas left the mask-and-merge of a shifted word as two).
__device__ __forceinline__ uint32_t bit_select(uint32_t a, uint32_t b, uint32_t mask) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xCA;" : "=r"(d) : "r"(mask), "r"(a), "r"(b));
  return d;
}

__device__ __forceinline__ uint32_t h2_bits(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }
__device__ __forceinline__ __half2 bits_h2(uint32_t u) { return *reinterpret_cast<__half2*>(&u); }
__device__ __forceinline__ uint32_t pack_h2(float lo, float hi) {
  return h2_bits(__floats2half2_rn(lo, hi));
}

// Loads kBytes bytes starting at p into words (LSB-first), given that p is kAlign-aligned.
// Below 4-byte alignment it reads the aligned words around the span and funnel-shifts, so it
// never reads outside the 4-byte-aligned words that contain the span.
template <int kBytes, int kAlign>
struct Span {
  static constexpr int kWords = (kBytes + 3) / 4;
  uint32_t w[kWords];

  __device__ __forceinline__ void load(const uint8_t* p) {
    if constexpr (kAlign >= 16 && kBytes % 16 == 0) {
#pragma unroll
      for (int i = 0; i < kBytes / 16; ++i) {
        const uint4 v = __ldg(reinterpret_cast<const uint4*>(p) + i);
        w[4 * i] = v.x, w[4 * i + 1] = v.y, w[4 * i + 2] = v.z, w[4 * i + 3] = v.w;
      }
    } else if constexpr (kAlign >= 8 && kBytes % 8 == 0) {
#pragma unroll
      for (int i = 0; i < kBytes / 8; ++i) {
        const uint2 v = __ldg(reinterpret_cast<const uint2*>(p) + i);
        w[2 * i] = v.x, w[2 * i + 1] = v.y;
      }
    } else if constexpr (kAlign >= 4 && kBytes % 4 == 0) {
#pragma unroll
      for (int i = 0; i < kWords; ++i) w[i] = __ldg(reinterpret_cast<const uint32_t*>(p) + i);
    } else if constexpr (kAlign == 2 && kBytes % 4 == 2) {
      // 4m + 2 bytes at a 2-byte boundary lie in the m + 1 aligned words from the one holding
      // their first byte, whether they start at byte 0 or 2 of it: no predicated loads (3-bit
      // value chunks of 16 dims). The last word may carry the 2 bytes after the span.
      const uintptr_t addr = reinterpret_cast<uintptr_t>(p);
      const uint32_t* base = reinterpret_cast<const uint32_t*>(addr & ~uintptr_t{3});
      const uint32_t sh = static_cast<uint32_t>(addr & 2u) * 8u;
      uint32_t raw[kWords];
#pragma unroll
      for (int i = 0; i < kWords; ++i) raw[i] = __ldg(base + i);
#pragma unroll
      for (int i = 0; i + 1 < kWords; ++i) w[i] = __funnelshift_r(raw[i], raw[i + 1], sh);
      w[kWords - 1] = raw[kWords - 1] >> sh;
    } else {
      const uintptr_t addr = reinterpret_cast<uintptr_t>(p);
      const uint32_t* base = reinterpret_cast<const uint32_t*>(addr & ~uintptr_t{3});
      const int sh = static_cast<int>(addr & 3u) * 8;
      constexpr int kRaw = (kBytes + 3 + 3) / 4;  // worst case: span starts at byte 3 of a word
      uint32_t raw[kRaw];
      const int need = (static_cast<int>(addr & 3u) + kBytes + 3) / 4;
#pragma unroll
      for (int i = 0; i < kRaw; ++i) raw[i] = (i < need) ? __ldg(base + i) : 0u;
#pragma unroll
      for (int i = 0; i < kWords; ++i)
        w[i] = __funnelshift_r(raw[i], raw[i + 1 < kRaw ? i + 1 : i], sh);
      if (kWords == kRaw) w[kWords - 1] = raw[kRaw - 1] >> sh;
    }
  }
  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < kWords; ++i) w[i] = 0u;
  }
};

// Largest power of two (<= 16) dividing n: the alignment of a span that starts at a multiple
// of n inside a 16-byte aligned block.
constexpr int pow2_align(int n) {
  int a = 1;
  while (a < 16 && n % (2 * a) == 0) a *= 2;
  return a;
}

}  // namespace tq::backend::cuda::dev
