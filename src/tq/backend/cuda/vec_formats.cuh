// Per-format device traits for the attention kernel: where one token's bytes live in a codec
// block (docs/formats.md, "Blocks"), how a thread loads a "chunk" of kN consecutive local
// dimensions of one token, and how it decodes the chunk into fp16 pairs for the tensor cores.
//
// Local dimensions: chunk c of a token covers kN dims; decode() writes out[p] = half2(local 2p,
// local 2p+1). local_dim(kN, c, i) names the head dimension of local index i, so the query and
// output fragments can follow whatever order unpacks cheapest (dot products do not care).
//
// Code lookups: a per-lane replicated table in shared memory maps a field of kLookup packed
// codes straight to kLookup fp16 values (the entry for lane l of code e sits at
// (e * 32 + l) * kEntryBytes, so a warp's lookups never conflict on banks).
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "tq/backend/cuda/cuda_common.cuh"

namespace tq::backend::cuda::dev {

__device__ __forceinline__ float2 load_half2_f2(const uint8_t* p) {
  const uint32_t u = __ldg(reinterpret_cast<const unsigned int*>(p));
  return __half22float2(bits_h2(u));
}

// The fields of kLookup codes of kBits bits -> fp16 values through the lane's table.
template <int kBits, int kLookup, int kN, int kWords>
__device__ __forceinline__ void lookup_codes(const uint32_t (&w)[kWords], const uint8_t* table_lane,
                                             uint32_t (&out)[kN / 2]) {
  constexpr int kField = kBits * kLookup;
  constexpr int kEntryBytes = 2 * kLookup;
#pragma unroll
  for (int q = 0; q < kN / kLookup; ++q) {
    const uint32_t f = bit_field(w, q * kField, kField);
    const uint8_t* e = table_lane + f * (32u * kEntryBytes);
    if constexpr (kLookup == 2) {
      out[q] = *reinterpret_cast<const uint32_t*>(e);
    } else {
      const uint2 v = *reinterpret_cast<const uint2*>(e);
      out[2 * q] = v.x;
      out[2 * q + 1] = v.y;
    }
  }
}

// Fills a replicated lookup table: entry e holds the fp16 values of the kLookup codes packed
// in e (LSB-first), value(c) = values[c] (or the QJL signs -1/+1 when values is nullptr).
template <int kBits, int kLookup>
__device__ void build_table(uint8_t* table, const float* values) {
  constexpr int kEntries = 1 << (kBits * kLookup);
  constexpr int kWordsPerEntry = kLookup / 2;
  uint32_t* w = reinterpret_cast<uint32_t*>(table);
  for (int i = threadIdx.x; i < kEntries * 32 * kWordsPerEntry; i += blockDim.x) {
    const int word = i % kWordsPerEntry;
    const int e = i / (32 * kWordsPerEntry);
    const int c0 = (e >> (kBits * 2 * word)) & ((1 << kBits) - 1);
    const int c1 = (e >> (kBits * (2 * word + 1))) & ((1 << kBits) - 1);
    const float v0 = values ? __ldg(values + c0) : (c0 ? 1.0f : -1.0f);
    const float v1 = values ? __ldg(values + c1) : (c1 ? 1.0f : -1.0f);
    w[i] = pack_h2(v0, v1);
  }
}

// TurboQuant: kBits-bit codes (+ the QJL sign plane when kQjl) and an fp16 norm per token.
template <int kDim, int kBits, bool kQjl>
struct TqFmt {
  static constexpr bool kRotated = true;
  static constexpr bool kTokenScale = true;  // the norm multiplies after the dot product
  static constexpr bool kHasQjl = kQjl;
  static constexpr int kCodeBits = kBits;
  static constexpr int kCodeBytes = kDim * kBits / 8;
  static constexpr int kSignBytes = kQjl ? kDim / 8 : 0;
  static constexpr int kLookup = kBits <= 2 ? 4 : 2;
  static constexpr int kTableBytes = (1 << (kBits * kLookup)) * 2 * kLookup * 32;
  static constexpr int kSignLookup = 4;
  static constexpr int kSignTableBytes = kQjl ? 16 * 8 * 32 : 0;

  template <int kN>
  struct Raw {
    Span<kN * kBits / 8, pow2_align(kN * kBits / 8)> s;
    __device__ __forceinline__ void zero() { s.zero(); }
  };
  template <int kN>
  struct SignRaw {
    Span<kN / 8, pow2_align(kN / 8)> s;
    __device__ __forceinline__ void zero() { s.zero(); }
  };

  template <int kN>
  static __device__ __forceinline__ void load(Raw<kN>& r, const uint8_t* blk, int, int slot, int c) {
    r.s.load(blk + slot * kCodeBytes + c * (kN * kBits / 8));
  }
  template <int kN>
  static __device__ __forceinline__ void decode(const Raw<kN>& r, const uint8_t* table_lane,
                                                uint32_t (&out)[kN / 2]) {
    lookup_codes<kBits, kLookup, kN>(r.s.w, table_lane, out);
  }
  // Norms of tokens slot, slot + 1 (slot even).
  static __device__ __forceinline__ float2 scale2(const uint8_t* blk, int cap, int slot) {
    return load_half2_f2(blk + cap * (kCodeBytes + kSignBytes) + 2 * slot);
  }
  // QJL: the sign plane and the residual norms.
  template <int kN>
  static __device__ __forceinline__ void load_signs(SignRaw<kN>& r, const uint8_t* blk, int cap,
                                                    int slot, int c) {
    r.s.load(blk + cap * kCodeBytes + slot * kSignBytes + c * (kN / 8));
  }
  template <int kN>
  static __device__ __forceinline__ void decode_signs(const SignRaw<kN>& r, const uint8_t* table_lane,
                                                      uint32_t (&out)[kN / 2]) {
    lookup_codes<1, kSignLookup, kN>(r.s.w, table_lane, out);
  }
  static __device__ __forceinline__ float2 residual2(const uint8_t* blk, int cap, int slot) {
    return load_half2_f2(blk + cap * (kCodeBytes + kSignBytes + 2) + 2 * slot);
  }
  static constexpr __host__ __device__ int local_dim(int kN, int c, int i) { return c * kN + i; }
};

// IEEE half rows.
template <int kDim>
struct F16Fmt {
  static constexpr bool kRotated = false;
  static constexpr bool kTokenScale = false;
  static constexpr bool kHasQjl = false;
  static constexpr int kCodeBits = 16;
  static constexpr int kTableBytes = 0;
  static constexpr int kLookup = 2;  // no table; keeps the kernel's table arithmetic uniform
  static constexpr int kSignTableBytes = 0;

  template <int kN>
  struct Raw {
    Span<kN * 2, pow2_align(kN * 2)> s;
    __device__ __forceinline__ void zero() { s.zero(); }
  };
  template <int kN>
  static __device__ __forceinline__ void load(Raw<kN>& r, const uint8_t* blk, int, int slot, int c) {
    r.s.load(blk + slot * (2 * kDim) + c * (2 * kN));
  }
  template <int kN>
  static __device__ __forceinline__ void decode(const Raw<kN>& r, const uint8_t*, uint32_t (&out)[kN / 2]) {
#pragma unroll
    for (int p = 0; p < kN / 2; ++p) out[p] = r.s.w[p];
  }
  static __device__ __forceinline__ float2 scale2(const uint8_t*, int, int) { return {1.0f, 1.0f}; }
  static constexpr __host__ __device__ int local_dim(int kN, int c, int i) { return c * kN + i; }
};

// int8 bytes b0..b3 of w -> half2 (b0, b1) and (b2, b3), exact (1024 + 128 + q trick).
__device__ __forceinline__ void i8x4_to_h2(uint32_t w, uint32_t& lo, uint32_t& hi) {
  const uint32_t x = w ^ 0x80808080u;  // q + 128 as unsigned bytes
  const __half2 bias = __float2half2_rn(1152.0f);
  lo = h2_bits(__hsub2(bits_h2(prmt(x, 0x64646464u, 0x4140u)), bias));
  hi = h2_bits(__hsub2(bits_h2(prmt(x, 0x64646464u, 0x4342u)), bias));
}

// ggml q8_0 rows: per 32 elements an fp16 scale then 32 int8 (34 bytes).
template <int kDim>
struct Q8Fmt {
  static constexpr bool kRotated = false;
  static constexpr bool kTokenScale = false;
  static constexpr bool kHasQjl = false;
  static constexpr int kCodeBits = 8;
  static constexpr int kTableBytes = 0;
  static constexpr int kLookup = 2;  // no table; keeps the kernel's table arithmetic uniform
  static constexpr int kSignTableBytes = 0;
  static constexpr int kRowBytes = kDim / 32 * 34;

  template <int kN>
  struct Raw {
    Span<kN, 2> s;
    uint32_t scale;
    __device__ __forceinline__ void zero() {
      s.zero();
      scale = 0u;
    }
  };
  template <int kN>
  static __device__ __forceinline__ void load(Raw<kN>& r, const uint8_t* blk, int, int slot, int c) {
    static_assert(32 % kN == 0, "a chunk stays inside one ggml block");
    const uint8_t* row = blk + slot * kRowBytes;
    const int b = c * kN / 32, e0 = c * kN % 32;
    r.scale = __ldg(reinterpret_cast<const unsigned short*>(row + 34 * b));
    r.s.load(row + 34 * b + 2 + e0);
  }
  template <int kN>
  static __device__ __forceinline__ void decode(const Raw<kN>& r, const uint8_t*, uint32_t (&out)[kN / 2]) {
    const __half2 s = bits_h2(r.scale | (r.scale << 16));
#pragma unroll
    for (int i = 0; i < kN / 4; ++i) {
      uint32_t lo, hi;
      i8x4_to_h2(r.s.w[i], lo, hi);
      out[2 * i] = h2_bits(__hmul2(bits_h2(lo), s));
      out[2 * i + 1] = h2_bits(__hmul2(bits_h2(hi), s));
    }
  }
  static __device__ __forceinline__ float2 scale2(const uint8_t*, int, int) { return {1.0f, 1.0f}; }
  static constexpr __host__ __device__ int local_dim(int kN, int c, int i) { return c * kN + i; }
};

// ggml q4_0 rows: per 32 elements an fp16 scale then 16 bytes, byte j = elem j | elem j+16 << 4.
template <int kDim>
struct Q4Fmt {
  static constexpr bool kRotated = false;
  static constexpr bool kTokenScale = false;
  static constexpr bool kHasQjl = false;
  static constexpr int kCodeBits = 4;
  static constexpr int kTableBytes = 0;
  static constexpr int kLookup = 2;  // no table; keeps the kernel's table arithmetic uniform
  static constexpr int kSignTableBytes = 0;
  static constexpr int kRowBytes = kDim / 32 * 18;

  // kN = 32: the 16 bytes of a whole ggml block; kN = 16 / 8: one nibble half of 16 / 8 bytes.
  template <int kN>
  struct Raw {
    Span<(kN == 32 ? 16 : kN), 2> s;
    uint32_t scale;
    __device__ __forceinline__ void zero() {
      s.zero();
      scale = 0u;
    }
  };
  template <int kN>
  static __device__ __forceinline__ void load(Raw<kN>& r, const uint8_t* blk, int, int slot, int c) {
    static_assert(kN == 32 || kN == 16 || kN == 8, "q4_0 chunk");
    const uint8_t* row = blk + slot * kRowBytes;
    const int b = c * kN / 32, e0 = c * kN % 32;
    r.scale = __ldg(reinterpret_cast<const unsigned short*>(row + 18 * b));
    r.s.load(row + 18 * b + 2 + (kN == 32 ? 0 : e0 % 16));
  }
  // Nibble n of each byte of r -> (q - 8) * scale; needs the chunk index for the half.
  template <int kN>
  static __device__ __forceinline__ void decode_c(const Raw<kN>& r, int c, uint32_t (&out)[kN / 2]) {
    const __half2 s = bits_h2(r.scale | (r.scale << 16));
    const __half2 bias = __float2half2_rn(1032.0f);
    const auto cvt = [&](uint32_t nib, uint32_t& lo, uint32_t& hi) {
      lo = h2_bits(__hmul2(__hsub2(bits_h2(prmt(nib, 0x64646464u, 0x4140u)), bias), s));
      hi = h2_bits(__hmul2(__hsub2(bits_h2(prmt(nib, 0x64646464u, 0x4342u)), bias), s));
    };
    if constexpr (kN == 32) {
#pragma unroll
      for (int m = 0; m < 4; ++m) {  // local 8m..8m+3 = elems 4m.., 8m+4..8m+7 = elems 16+4m..
        cvt(r.s.w[m] & 0x0f0f0f0fu, out[4 * m], out[4 * m + 1]);
        cvt((r.s.w[m] >> 4) & 0x0f0f0f0fu, out[4 * m + 2], out[4 * m + 3]);
      }
    } else {
      const int shift = (c * kN % 32) >= 16 ? 4 : 0;
#pragma unroll
      for (int m = 0; m < kN / 4; ++m) cvt((r.s.w[m] >> shift) & 0x0f0f0f0fu, out[2 * m], out[2 * m + 1]);
    }
  }
  static __device__ __forceinline__ float2 scale2(const uint8_t*, int, int) { return {1.0f, 1.0f}; }
  static constexpr __host__ __device__ int local_dim(int kN, int c, int i) {
    if (kN != 32) return c * kN + i;
    const int m = i / 8, r = i % 8;
    return c * kN + (r < 4 ? 4 * m + r : 16 + 4 * m + (r - 4));
  }
};

// The QJL sign chunk of a key format (an empty stand-in for formats without one).
struct NoSigns {
  struct R {
    __device__ __forceinline__ void zero() {}
  } r;
};
template <class F, int kN>
struct SignsOf {
  using type = NoSigns;
};
template <int kDim, int kBits, int kN>
struct SignsOf<TqFmt<kDim, kBits, true>, kN> {
  struct type {
    typename TqFmt<kDim, kBits, true>::template SignRaw<kN> r;
  };
};

// Uniform decode entry (q4_0 needs the chunk index; the others ignore it).
template <class F, int kN>
__device__ __forceinline__ void decode_chunk(const typename F::template Raw<kN>& r, int c,
                                             const uint8_t* table_lane, uint32_t (&out)[kN / 2]) {
  if constexpr (requires { F::template decode_c<kN>(r, c, out); }) {
    F::template decode_c<kN>(r, c, out);
  } else {
    F::template decode<kN>(r, table_lane, out);
  }
}

}  // namespace tq::backend::cuda::dev
