// Per-format device traits for the attention kernel: where one token's bytes live in a codec
// block (docs/formats.md, "Blocks"), how a thread loads a "chunk" of kN consecutive local
// dimensions of one token, and how it decodes the chunk into fp16 pairs for the tensor cores.
//
// Local dimensions: chunk c of a token covers kN dims; decode() writes out[p] = half2(local 2p,
// local 2p+1). local_dim(kN, c, i) names the head dimension of local index i, so the query and
// output fragments can follow whatever order unpacks cheapest (dot products do not care).
//
// Code lookups: a replicated table in shared memory maps a field of kLookup packed codes straight
// to kLookup fp16 values (rows of 256 bytes, one per field value, a table in either 128-byte
// half; each lane reads its own copy in the row, lut_copy, so a warp's lookups never conflict on
// banks; see lut_addr_byte).
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "tq/backend/cuda/cuda_common.cuh"

namespace tq::backend::cuda::dev {

__device__ __forceinline__ float2 load_half2_f2(const uint8_t* p) {
  const uint32_t u = __ldg(reinterpret_cast<const unsigned int*>(p));
  return __half22float2(bits_h2(u));
}

// Lookup tables live in shared memory as rows of 256 bytes: code field e of a table is row
// base + e, and lane l reads its own copy at byte `lane_off` = half * 128 + l * entry bytes of the
// row (bank = lane: a warp's lookups never conflict). A "half" table (fp16 pairs, 4-byte entries)
// uses 128 bytes of a row, so two such tables share rows; a "full" table (quads, 8 bytes) uses all
// 256. With 256-byte rows an 8-bit field becomes an address in one byte permute.
__device__ __forceinline__ uint32_t lut_addr_byte(uint32_t w, int k, uint32_t lane_off) {
  // bytes: lane_off.b0, w.b[k], lane_off.b2, lane_off.b3 = (byte k << 8) | lane_off (byte 1 of
  // lane_off is zero)
  return prmt(w, lane_off, 0x7604u | (static_cast<uint32_t>(k) << 4));
}

// (bits [pos, pos + n) of w) << 8 | lane_off in two instructions: one shift (a funnel shift when
// the field straddles two words) lands the field at bit 8, one LOP3 masks it and adds the lane.
template <int kN, int kWords>
__device__ __forceinline__ uint32_t field_row_addr(const uint32_t (&w)[kWords], int pos,
                                                   uint32_t lane_off) {
  const int wi = pos >> 5, sh = pos & 31;
  uint32_t v;
  if (sh + kN > 32 && wi + 1 < kWords)
    v = __funnelshift_r(w[wi], w[wi + 1], sh - 8);
  else if (sh >= 8)
    v = w[wi] >> (sh - 8);
  else
    v = w[wi] << (8 - sh);
  return (v & (((1u << kN) - 1u) << 8)) | lane_off;
}

// A lookup: `addr` is relative to the start of dynamic shared memory (lane offset included);
// kOff = 1024 + the table's offset, an immediate of the load (dynamic shared memory starts at
// shared address 0x400 on sm_80/sm_90; lane_off carries any difference above bit 16, e.g. a
// cluster CTA id), so the address costs no add.
template <int kLookup, int kOff>
__device__ __forceinline__ void lut_load(uint32_t addr, uint32_t* out) {
  if constexpr (kLookup == 2) {
    asm volatile("ld.shared.b32 %0, [%1+%2];" : "=r"(out[0]) : "r"(addr), "n"(kOff));
  } else {
    asm volatile("ld.shared.v2.b32 {%0, %1}, [%2+%3];"
                 : "=r"(out[0]), "=r"(out[1])
                 : "r"(addr), "n"(kOff));
  }
}

// The fields of kLookup codes of kBits bits -> fp16 values (out[p] = half2(local 2p, 2p+1)).
template <int kBits, int kLookup, int kN, int kOff, int kWords>
__device__ __forceinline__ void lookup_codes(const uint32_t (&w)[kWords], uint32_t lane_off,
                                             uint32_t (&out)[kN / 2]) {
  constexpr int kField = kBits * kLookup;
#pragma unroll
  for (int q = 0; q < kN / kLookup; ++q) {
    uint32_t addr;
    if constexpr (kField == 8) {
      addr = lut_addr_byte(w[q / 4], q % 4, lane_off);
    } else {
      addr = field_row_addr<kField>(w, q * kField, lane_off);
    }
    lut_load<kLookup, kOff>(addr, out + q * (kLookup / 2));
  }
}

// Two tokens' fields of 4 codes of kBits (2, or 1 for QJL signs) as token pairs, for an mma A
// fragment that takes both tokens' dims 2p, 2p + 1 side by side: oa[p], ob[p] = half2(local 2p,
// 2p + 1) of token A, B, as two lookup_codes calls give them. There each 8-byte lookup filled one
// token's oa[p], oa[p + 1], and the fragment (oa[p], ob[p], oa[p + 1], ob[p + 1]) took four
// register moves an mma (their waits on the lookup included); here a field holds code pair p of
// A and of B (x: the even pairs, y: the odd ones, a bit_select each), so one lookup lands
// (oa[p], ob[p]) where the fragment wants it. The table is the same.
template <int kBits, int kN, int kOff, int kWords>
__device__ __forceinline__ void lookup_token_pairs(const uint32_t (&wa)[kWords],
                                                   const uint32_t (&wb)[kWords], uint32_t lane_off,
                                                   uint32_t (&oa)[kN / 2], uint32_t (&ob)[kN / 2]) {
  static_assert(kBits == 2 || kBits == 1);
  constexpr int kPairBits = 2 * kBits, kField = 4 * kBits;
  constexpr uint32_t kLow = kBits == 2 ? 0x0f0f0f0fu : 0x33333333u;  // low pair of each field
  constexpr int kPairsPerWord = 32 / kPairBits;
  static_assert(kN * kBits % 32 == 0);
#pragma unroll
  for (int w = 0; w < kN * kBits / 32; ++w) {
    const uint32_t x[1] = {bit_select(wa[w], wb[w] << kPairBits, kLow)};  // pairs 2m
    const uint32_t y[1] = {bit_select(wa[w] >> kPairBits, wb[w], kLow)};  // pairs 2m + 1
#pragma unroll
    for (int m = 0; m < 32 / kField; ++m) {
      const int p = kPairsPerWord * w + 2 * m;
      uint32_t e[2];
      lut_load<4, kOff>(kField == 8 ? lut_addr_byte(x[0], m, lane_off)
                                    : field_row_addr<kField>(x, m * kField, lane_off),
                        e);
      oa[p] = e[0], ob[p] = e[1];
      lut_load<4, kOff>(kField == 8 ? lut_addr_byte(y[0], m, lane_off)
                                    : field_row_addr<kField>(y, m * kField, lane_off),
                        e);
      oa[p + 1] = e[0], ob[p + 1] = e[1];
    }
  }
}

// The copy of a table row that lane reads: 4-byte entries (2 codes) a copy per lane, 32 in a
// row half; 8-byte entries (4 codes) a copy per lane of a half-warp, 16 in a row half, since a
// warp's 64-bit loads are served a half-warp at a time (lanes l and l + 16 never conflict). Every
// table then fits a 128-byte half row, so a 2-bit table (4 codes a lookup) shares its rows with a
// 4-bit or 3-bit one (tq4 keys with tq2 values: 64 KB of tables, 3 CTAs to an SM, not 128 KB
// and one).
template <int kLookup>
__host__ __device__ constexpr int lut_copy(int lane) {
  return kLookup == 4 ? (lane & 15) : lane;
}

// One table's contents as this thread fills them: entry e holds the fp16 values of the kLookup
// codes packed in e (LSB-first), value(c) = values[c] (or the QJL signs -1/+1 when values is
// nullptr), at row e, byte half * 128 + copy * 2 * kLookup, for every copy (lut_copy). Thread t of
// kThreads owns entries t, t + kThreads, ...: load() computes each once (a kernel loads every
// table before storing any, so their centroid reads overlap), store() writes its kStores 16-byte
// parts starting at part (t mod kStores), so the 8 threads of a quarter warp store to 8
// different bank groups.
// kPairMajor (4-code entries only): entry e holds (half2(value c0, c2), half2(c1, c3)), the
// table of TqFmt::decode_pair's 2-bit token pairs.
template <int kBits, int kLookup, int kThreads, bool kPairMajor = false>
struct TableFill {
  static_assert(!kPairMajor || kLookup == 4);
  static constexpr int kEntries = 1 << (kBits * kLookup);
  static constexpr int kPer = (kEntries + kThreads - 1) / kThreads;
  static constexpr int kStores = 128 / 16;  // 16-byte stores per entry: a row half
  uint4 st[kPer];

  __device__ __forceinline__ void load(const float* values) {
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int e = static_cast<int>(threadIdx.x) + i * kThreads;
      if (kEntries % kThreads != 0 && e >= kEntries) break;
      uint32_t v[kLookup / 2];
#pragma unroll
      for (int w = 0; w < kLookup / 2; ++w) {
        const int c0 = (e >> (kBits * 2 * w)) & ((1 << kBits) - 1);
        const int c1 = (e >> (kBits * (2 * w + 1))) & ((1 << kBits) - 1);
        const float v0 = values ? __ldg(values + c0) : (c0 ? 1.0f : -1.0f);
        const float v1 = values ? __ldg(values + c1) : (c1 ? 1.0f : -1.0f);
        v[w] = pack_h2(v0, v1);
      }
      if constexpr (kLookup == 2) {
        st[i] = make_uint4(v[0], v[0], v[0], v[0]);
      } else {
        if constexpr (kPairMajor) {
          const uint32_t a = prmt(v[0], v[1], 0x5410u), b = prmt(v[0], v[1], 0x7632u);
          v[0] = a, v[1] = b;
        }
        st[i] = make_uint4(v[0], v[1], v[0], v[1]);
      }
    }
  }
  __device__ __forceinline__ void store(uint8_t* rows, int half) const {
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int e = static_cast<int>(threadIdx.x) + i * kThreads;
      if (kEntries % kThreads != 0 && e >= kEntries) break;
      uint8_t* row = rows + e * 256 + half * 128;
#pragma unroll
      for (int p = 0; p < kStores; ++p)
        *reinterpret_cast<uint4*>(row + ((p + static_cast<int>(threadIdx.x)) % kStores) * 16) =
            st[i];
    }
  }
};

// TurboQuant: kBits-bit codes (+ the QJL sign plane when kQjl) and an fp16 norm per token.
template <int kDim, int kBits, bool kQjl>
struct TqFmt {
  static constexpr bool kRotated = true;
  static constexpr bool kTokenScale = true;  // the norm multiplies after the dot product
  static constexpr bool kHasQjl = kQjl;
  static constexpr int kCodeBits = kBits;
  static constexpr int kCodeBytes = kDim * kBits / 8;
  static constexpr int kSignBytes = kQjl ? kDim / 8 : 0;
  static constexpr int kLookup = kBits <= 2 ? 4 : 2;  // codes per lookup
  static constexpr int kTableRows = 1 << (kBits * kLookup);
  static constexpr int kTableBytes = kTableRows * 256;
  static constexpr int kSignLookup = 4;
  static constexpr int kSignTableRows = kQjl ? 16 : 0;
  static constexpr int kSignTableBytes = kSignTableRows * 256;
  // As values, 2-bit codes read a table of their own (TableFill's kPairMajor): decode_pair.
  static constexpr bool kPairMajorValues = kBits == 2 && kLookup == 4;

  template <int kN>
  struct Raw {
    Span<kN * kBits / 8, pow2_align(kN* kBits / 8)> s;
    __device__ __forceinline__ void zero() { s.zero(); }
  };
  template <int kN>
  struct SignRaw {
    Span<kN / 8, pow2_align(kN / 8)> s;
    __device__ __forceinline__ void zero() { s.zero(); }
  };

  // Byte offset of chunk c (kN dims) of token slot in a block: linear in both, so a caller can
  // fold a lane's part into its pointer and keep the rest as load immediates.
  template <int kN>
  static constexpr __host__ __device__ int code_offset(int slot, int c) {
    return slot * kCodeBytes + c * (kN * kBits / 8);
  }
  template <int kN>
  static __device__ __forceinline__ void load(Raw<kN>& r, const uint8_t* blk, int, int slot,
                                              int c) {
    r.s.load(blk + code_offset<kN>(slot, c));
  }
  template <int kN, int kOff>
  static __device__ __forceinline__ void decode(const Raw<kN>& r, uint32_t lane_off,
                                                uint32_t (&out)[kN / 2]) {
    lookup_codes<kBits, kLookup, kN, kOff>(r.s.w, lane_off, out);
  }
  // Two tokens' chunks, as decode() of each: 2-bit codes as token pairs (lookup_token_pairs).
  template <int kN, int kOff>
  static __device__ __forceinline__ void decode2(const Raw<kN>& a, const Raw<kN>& b,
                                                 uint32_t lane_off, uint32_t (&oa)[kN / 2],
                                                 uint32_t (&ob)[kN / 2]) {
    if constexpr (kBits == 2 && kN * kBits % 32 == 0) {
      lookup_token_pairs<2, kN, kOff>(a.s.w, b.s.w, lane_off, oa, ob);
    } else {
      decode<kN, kOff>(a, lane_off, oa);
      decode<kN, kOff>(b, lane_off, ob);
    }
  }
  // Two tokens' chunks -> out[i] = half2(A local i, B local i): the value fragments pair tokens.
  // 4-bit: nibble-interleave the two words so each byte is a (code A, code B) pair of the same
  // dim, one table row per byte; 2-bit: the same nibble interleave (two dims of A, two of B) into
  // a pair-major table.
  template <int kN, int kOff>
  static __device__ __forceinline__ void decode_pair(const Raw<kN>& a, const Raw<kN>& b,
                                                     uint32_t lane_off, uint32_t (&out)[kN]) {
    if constexpr (kBits == 4 && (kN * kBits / 8) % 4 == 0) {
#pragma unroll
      for (int w = 0; w < kN / 8; ++w) {
        const uint32_t x = bit_select(a.s.w[w], b.s.w[w] << 4, 0x0f0f0f0fu);  // dims 2n
        const uint32_t y = bit_select(a.s.w[w] >> 4, b.s.w[w], 0x0f0f0f0fu);  // dims 2n+1
#pragma unroll
        for (int n = 0; n < 4; ++n) {
          lut_load<2, kOff>(lut_addr_byte(x, n, lane_off), out + 8 * w + 2 * n);
          lut_load<2, kOff>(lut_addr_byte(y, n, lane_off), out + 8 * w + 2 * n + 1);
        }
      }
    } else if constexpr (kPairMajorValues) {
      // Byte n of x holds A's dims 4n, 4n + 1 and B's (y: 4n + 2, 4n + 3); the pair-major table
      // gives (half2(A 4n, B 4n), half2(A 4n + 1, B 4n + 1)): out[4n], out[4n + 1] of one
      // lookup, side by side as the PV fragment takes them (no register moves). (Every 2-bit
      // value chunk takes this path: the table is pair-major for all of them.)
      static_assert(kN % 4 == 0);
#pragma unroll
      for (int w = 0; w < (kN + 15) / 16; ++w) {
        const uint32_t x = bit_select(a.s.w[w], b.s.w[w] << 4, 0x0f0f0f0fu);
        const uint32_t y = bit_select(a.s.w[w] >> 4, b.s.w[w], 0x0f0f0f0fu);
#pragma unroll
        for (int n = 0; n < 4; ++n) {
          if (16 * w + 4 * n >= kN) break;
          lut_load<4, kOff>(lut_addr_byte(x, n, lane_off), out + 16 * w + 4 * n);
          lut_load<4, kOff>(lut_addr_byte(y, n, lane_off), out + 16 * w + 4 * n + 2);
        }
      }
    } else {
      uint32_t pa[kN / 2], pb[kN / 2];
      decode<kN, kOff>(a, lane_off, pa);
      decode<kN, kOff>(b, lane_off, pb);
#pragma unroll
      for (int p = 0; p < kN / 2; ++p) {
        out[2 * p] = prmt(pa[p], pb[p], 0x5410u);
        out[2 * p + 1] = prmt(pa[p], pb[p], 0x7632u);
      }
    }
  }
  // The norm of token slot as raw fp16 bits.
  static __device__ __forceinline__ uint32_t scale_raw(const uint8_t* blk, int cap, int slot) {
    return __ldg(
        reinterpret_cast<const unsigned short*>(blk + cap * (kCodeBytes + kSignBytes) + 2 * slot));
  }
  // QJL: the sign plane and the residual norms.
  template <int kN>
  static __device__ __forceinline__ void load_signs(SignRaw<kN>& r, const uint8_t* blk, int cap,
                                                    int slot, int c) {
    r.s.load(blk + cap * kCodeBytes + slot * kSignBytes + c * (kN / 8));
  }
  template <int kN, int kOff>
  static __device__ __forceinline__ void decode_signs(const SignRaw<kN>& r, uint32_t lane_off,
                                                      uint32_t (&out)[kN / 2]) {
    lookup_codes<1, kSignLookup, kN, kOff>(r.s.w, lane_off, out);
  }
  template <int kN, int kOff>
  static __device__ __forceinline__ void decode_signs2(const SignRaw<kN>& a, const SignRaw<kN>& b,
                                                       uint32_t lane_off, uint32_t (&oa)[kN / 2],
                                                       uint32_t (&ob)[kN / 2]) {
    if constexpr (kN % 32 == 0) {
      lookup_token_pairs<1, kN, kOff>(a.s.w, b.s.w, lane_off, oa, ob);
    } else {
      decode_signs<kN, kOff>(a, lane_off, oa);
      decode_signs<kN, kOff>(b, lane_off, ob);
    }
  }
  static __device__ __forceinline__ float residual(const uint8_t* blk, int cap, int slot) {
    return __half2float(__ushort_as_half(__ldg(reinterpret_cast<const unsigned short*>(
        blk + cap * (kCodeBytes + kSignBytes + 2) + 2 * slot))));
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
  static constexpr int kTableRows = 0;
  static constexpr int kSignTableRows = 0;
  static constexpr int kSignTableBytes = 0;

  template <int kN>
  struct Raw {
    Span<kN * 2, pow2_align(kN * 2)> s;
    __device__ __forceinline__ void zero() { s.zero(); }
  };
  template <int kN>
  static __device__ __forceinline__ void load(Raw<kN>& r, const uint8_t* blk, int, int slot,
                                              int c) {
    r.s.load(blk + slot * (2 * kDim) + c * (2 * kN));
  }
  template <int kN, int kOff>
  static __device__ __forceinline__ void decode(const Raw<kN>& r, uint32_t,
                                                uint32_t (&out)[kN / 2]) {
#pragma unroll
    for (int p = 0; p < kN / 2; ++p) out[p] = r.s.w[p];
  }
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
  static constexpr int kTableRows = 0;
  static constexpr int kSignTableRows = 0;
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
  static __device__ __forceinline__ void load(Raw<kN>& r, const uint8_t* blk, int, int slot,
                                              int c) {
    static_assert(32 % kN == 0, "a chunk stays inside one ggml block");
    const uint8_t* row = blk + slot * kRowBytes;
    const int b = c * kN / 32, e0 = c * kN % 32;
    r.scale = __ldg(reinterpret_cast<const unsigned short*>(row + 34 * b));
    r.s.load(row + 34 * b + 2 + e0);
  }
  template <int kN, int kOff>
  static __device__ __forceinline__ void decode(const Raw<kN>& r, uint32_t,
                                                uint32_t (&out)[kN / 2]) {
    const __half2 s = bits_h2(r.scale | (r.scale << 16));
#pragma unroll
    for (int i = 0; i < kN / 4; ++i) {
      uint32_t lo, hi;
      i8x4_to_h2(r.s.w[i], lo, hi);
      out[2 * i] = h2_bits(__hmul2(bits_h2(lo), s));
      out[2 * i + 1] = h2_bits(__hmul2(bits_h2(hi), s));
    }
  }
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
  static constexpr int kTableRows = 0;
  static constexpr int kSignTableRows = 0;
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
  static __device__ __forceinline__ void load(Raw<kN>& r, const uint8_t* blk, int, int slot,
                                              int c) {
    static_assert(kN == 32 || kN == 16 || kN == 8, "q4_0 chunk");
    const uint8_t* row = blk + slot * kRowBytes;
    const int b = c * kN / 32, e0 = c * kN % 32;
    r.scale = __ldg(reinterpret_cast<const unsigned short*>(row + 18 * b));
    r.s.load(row + 18 * b + 2 + (kN == 32 ? 0 : e0 % 16));
  }
  // Nibble n of each byte of r -> (q - 8) * scale; needs the chunk index for the half.
  template <int kN>
  static __device__ __forceinline__ void decode_c(const Raw<kN>& r, int c,
                                                  uint32_t (&out)[kN / 2]) {
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
      for (int m = 0; m < kN / 4; ++m)
        cvt((r.s.w[m] >> shift) & 0x0f0f0f0fu, out[2 * m], out[2 * m + 1]);
    }
  }
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

// Uniform decode entry (q4_0 needs the chunk index; the others ignore it). kOff: the table's
// lut_load immediate.
template <class F, int kN, int kOff>
__device__ __forceinline__ void decode_chunk(const typename F::template Raw<kN>& r, int c,
                                             uint32_t lane_off, uint32_t (&out)[kN / 2]) {
  if constexpr (requires { F::template decode_c<kN>(r, c, out); }) {
    F::template decode_c<kN>(r, c, out);
  } else {
    F::template decode<kN, kOff>(r, lane_off, out);
  }
}

// Two tokens' chunks, as decode_chunk of each (formats with decode2 do both at once).
template <class F, int kN, int kOff>
__device__ __forceinline__ void decode_chunk2(const typename F::template Raw<kN>& a,
                                              const typename F::template Raw<kN>& b, int c,
                                              uint32_t lane_off, uint32_t (&oa)[kN / 2],
                                              uint32_t (&ob)[kN / 2]) {
  if constexpr (requires { F::template decode2<kN, kOff>(a, b, lane_off, oa, ob); }) {
    F::template decode2<kN, kOff>(a, b, lane_off, oa, ob);
  } else {
    decode_chunk<F, kN, kOff>(a, c, lane_off, oa);
    decode_chunk<F, kN, kOff>(b, c, lane_off, ob);
  }
}

// Whether F's values read a pair-major table (TqFmt::kPairMajorValues).
template <class F>
constexpr bool pair_major_values() {
  if constexpr (requires { F::kPairMajorValues; })
    return F::kPairMajorValues;
  else
    return false;
}

// Two tokens' chunks as token pairs: out[i] = half2(A local i, B local i).
template <class F, int kN, int kOff>
__device__ __forceinline__ void decode_token_pair(const typename F::template Raw<kN>& a,
                                                  const typename F::template Raw<kN>& b, int c,
                                                  uint32_t lane_off, uint32_t (&out)[kN]) {
  if constexpr (requires { F::template decode_pair<kN, kOff>(a, b, lane_off, out); }) {
    F::template decode_pair<kN, kOff>(a, b, lane_off, out);
  } else {
    uint32_t pa[kN / 2], pb[kN / 2];
    decode_chunk<F, kN, kOff>(a, c, lane_off, pa);
    decode_chunk<F, kN, kOff>(b, c, lane_off, pb);
#pragma unroll
    for (int p = 0; p < kN / 2; ++p) {
      out[2 * p] = prmt(pa[p], pb[p], 0x5410u);
      out[2 * p + 1] = prmt(pa[p], pb[p], 0x7632u);
    }
  }
}

}  // namespace tq::backend::cuda::dev
