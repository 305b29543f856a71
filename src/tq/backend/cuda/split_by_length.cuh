// Splits by length on the device (split_plan.h says why): one warp reads the batch's lengths,
// finds the tokens per split T with by_length_units, and tells a CTA which sequence and split
// its global split index names, or the merge where a sequence's splits start. Warp 0 of each
// attention CTA and merge block does it and shares the answer through shared memory: the
// attention CTAs before they wait for the K/V write, the merge's blocks before they wait for the
// attention.
#pragma once

#include <cstdint>

#include "tq/backend/cuda/split_plan.h"

namespace tq::backend::cuda::dev {

// 1 / b to about an ulp (rcp.approx): enough for ceil_div_small, which corrects the quotient.
__device__ __forceinline__ float rcp_approx(float b) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(b));
  return r;
}

// ceil(a / b) for 0 <= a < 2^20, b >= 1 (lengths in 128-token units: up to 2^27 tokens): a float
// quotient (within one of the truth at these sizes, an approximate reciprocal included),
// corrected by its remainder.
__device__ __forceinline__ int ceil_div_small(int a, int b, float rcp_b) {
  int q = __float2int_rz(static_cast<float>(a) * rcp_b);
  int r = a - q * b;
  if (r < 0) --q, r += b;
  if (r >= b) ++q, r -= b;
  return q + (r > 0 ? 1 : 0);
}

// Lane l holds sequences kByLengthPerLane * l + k, so prefix sums over lanes follow the
// sequence order.
struct ByLength {
  int units[kByLengthPerLane];  // ceil(len / kSplitUnit), 0 past n_seqs
  int u;                        // units a split (T = u * kSplitUnit)
  int n[kByLengthPerLane];      // splits of each sequence: ceil(units / u)

  // The whole warp calls this with the same arguments.
  __device__ __forceinline__ void plan(const int32_t* lengths, int n_seqs, int budget, int cap) {
    const int lane = static_cast<int>(threadIdx.x & 31);
    int total = 0, longest = 0, nonempty = 0;
#pragma unroll
    for (int k = 0; k < kByLengthPerLane; ++k) {
      const int i = kByLengthPerLane * lane + k;
      const int len = i < n_seqs ? __ldg(lengths + i) : 0;
      units[k] = len > 0 ? (len + kSplitUnit - 1) / kSplitUnit : 0;
      total += units[k];
      nonempty += units[k] > 0 ? 1 : 0;
      longest = units[k] > longest ? units[k] : longest;
    }
    total = static_cast<int>(__reduce_add_sync(0xffffffffu, static_cast<unsigned>(total)));
    nonempty = static_cast<int>(__reduce_add_sync(0xffffffffu, static_cast<unsigned>(nonempty)));
    longest = static_cast<int>(__reduce_max_sync(0xffffffffu, static_cast<unsigned>(longest)));
    u = by_length_units(total, longest, nonempty, budget, cap, [&](int v) {
      const float rcp = rcp_approx(static_cast<float>(v));
      int sum = 0, mx = 0;
#pragma unroll
      for (int k = 0; k < kByLengthPerLane; ++k) {
        const int c = ceil_div_small(units[k], v, rcp);
        sum += c;
        mx = c > mx ? c : mx;
      }
      return SplitCount{static_cast<int>(__reduce_add_sync(0xffffffffu, sum)),
                        static_cast<int>(__reduce_max_sync(0xffffffffu, mx))};
    });
    const float rcp = rcp_approx(static_cast<float>(u));
#pragma unroll
    for (int k = 0; k < kByLengthPerLane; ++k) n[k] = ceil_div_small(units[k], u, rcp);
  }

  // Splits of the sequences before this lane's (an exclusive warp scan) and of this lane's.
  __device__ __forceinline__ int lane_base(int* mine) const {
    const int lane = static_cast<int>(threadIdx.x & 31);
    int own = 0;
#pragma unroll
    for (int k = 0; k < kByLengthPerLane; ++k) own += n[k];
    int incl = own;
#pragma unroll
    for (int o = 1; o < 32; o *= 2) {
      const int x = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += x;
    }
    *mine = own;
    return incl - own;
  }

  // The sequence and split (within it) of global split g, or seq -1 past the last split.
  __device__ __forceinline__ void locate(int g, int* seq, int* split) const {
    const int lane = static_cast<int>(threadIdx.x & 31);
    int own = 0;
    const int base = lane_base(&own);
    const unsigned hit = __ballot_sync(0xffffffffu, g >= base && g < base + own);
    if (hit == 0u) {  // (uniform: every lane saw the same ballot)
      *seq = -1, *split = 0;
      return;
    }
    const int owner = __ffs(hit) - 1;  // the lane whose sequences hold split g
    int s = -1, j = 0;
    if (lane == owner) {
      int b = base;
#pragma unroll
      for (int k = 0; k < kByLengthPerLane; ++k) {
        if (s < 0 && g < b + n[k]) s = kByLengthPerLane * lane + k, j = g - b;
        b += n[k];
      }
    }
    *seq = __shfl_sync(0xffffffffu, s, owner);
    *split = __shfl_sync(0xffffffffu, j, owner);
  }

  // The first global split of sequence seq and how many it has.
  __device__ __forceinline__ void splits_of(int seq, int* first, int* count) const {
    const int lane = static_cast<int>(threadIdx.x & 31);
    int before = 0, cnt = 0;
#pragma unroll
    for (int k = 0; k < kByLengthPerLane; ++k) {
      const int i = kByLengthPerLane * lane + k;
      if (i < seq) before += n[k];
      if (i == seq) cnt = n[k];
    }
    *first = static_cast<int>(__reduce_add_sync(0xffffffffu, before));
    *count = static_cast<int>(__reduce_add_sync(0xffffffffu, cnt));
  }
};

}  // namespace tq::backend::cuda::dev
