// Packing b-bit indices (b = 1..8) into the LSB-first bitstream of docs/formats.md: index i
// occupies bits [b*i, b*i + b). Every 8 indices fill exactly b bytes, so the fast path moves
// groups of 8 through one 64-bit word (b = 3: 8 indices in 3 bytes; b = 4: two per byte;
// b = 8: a copy); a bit-by-bit tail handles counts that are not multiples of 8.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace tq::quant {

// The little-endian integer in the kBytes bytes at p (kBytes <= 8), assembled from naturally
// sized loads: a memcpy of 3, 5, 6 or 7 bytes into a stack word would cost a store-forwarding
// stall per group in the hot loops.
template <int kBytes>
inline uint64_t load_le(const uint8_t* p) {
  static_assert(kBytes >= 1 && kBytes <= 8);
  if constexpr (kBytes == 1) {
    return p[0];
  } else if constexpr (kBytes == 2 || kBytes == 4 || kBytes == 8) {
    using Word = std::conditional_t<kBytes == 2, uint16_t,
                                    std::conditional_t<kBytes == 4, uint32_t, uint64_t>>;
    Word w;
    std::memcpy(&w, p, kBytes);
    return w;
  } else if constexpr (kBytes == 3) {
    return load_le<2>(p) | (load_le<1>(p + 2) << 16);
  } else {
    return load_le<4>(p) | (load_le<kBytes - 4>(p + 4) << 32);
  }
}

template <int kBytes>
inline void store_le(uint8_t* p, uint64_t v) {
  static_assert(kBytes >= 1 && kBytes <= 8);
  if constexpr (kBytes == 1) {
    p[0] = static_cast<uint8_t>(v);
  } else if constexpr (kBytes == 2 || kBytes == 4 || kBytes == 8) {
    using Word = std::conditional_t<kBytes == 2, uint16_t,
                                    std::conditional_t<kBytes == 4, uint32_t, uint64_t>>;
    const Word w = static_cast<Word>(v);
    std::memcpy(p, &w, kBytes);
  } else if constexpr (kBytes == 3) {
    store_le<2>(p, v);
    store_le<1>(p + 2, v >> 16);
  } else {
    store_le<4>(p, v);
    store_le<kBytes - 4>(p + 4, v >> 32);
  }
}

inline size_t packed_bytes(int bits, size_t n) { return (n * static_cast<size_t>(bits) + 7) / 8; }

// Reference: one bit at a time, exactly as the format page states it. Zeroes the output first.
void pack_bits_ref(int bits, const uint8_t* idx, size_t n, uint8_t* out);
void unpack_bits_ref(int bits, const uint8_t* in, size_t n, uint8_t* idx);

// Indices must be < 2^kBits. Writes exactly packed_bytes(kBits, n) bytes.
template <int kBits>
void pack_bits(const uint8_t* idx, size_t n, uint8_t* out) {
  static_assert(kBits >= 1 && kBits <= 8);
  const size_t groups = n / 8;
  for (size_t g = 0; g < groups; ++g) {
    uint64_t word = 0;
    for (int j = 0; j < 8; ++j) word |= static_cast<uint64_t>(idx[8 * g + j]) << (kBits * j);
    store_le<kBits>(out + kBits * g, word);
  }
  const size_t done = groups * 8;
  if (done == n) return;
  const size_t tail_bytes = packed_bytes(kBits, n) - kBits * groups;
  uint8_t* tail = out + kBits * groups;
  std::memset(tail, 0, tail_bytes);
  for (size_t i = done; i < n; ++i)
    for (int k = 0; k < kBits; ++k) {
      const size_t bit = (i - done) * kBits + static_cast<size_t>(k);
      if ((idx[i] >> k) & 1u)
        tail[bit / 8] = static_cast<uint8_t>(tail[bit / 8] | (1u << (bit % 8)));
    }
}

template <int kBits>
void unpack_bits(const uint8_t* in, size_t n, uint8_t* idx) {
  static_assert(kBits >= 1 && kBits <= 8);
  constexpr uint64_t kMask = (1u << kBits) - 1u;
  const size_t groups = n / 8;
  for (size_t g = 0; g < groups; ++g) {
    const uint64_t word = load_le<kBits>(in + kBits * g);
    for (int j = 0; j < 8; ++j)
      idx[8 * g + j] = static_cast<uint8_t>((word >> (kBits * j)) & kMask);
  }
  const uint8_t* tail = in + kBits * groups;
  for (size_t i = groups * 8; i < n; ++i) {
    unsigned v = 0;
    for (int k = 0; k < kBits; ++k) {
      const size_t bit = (i - groups * 8) * kBits + static_cast<size_t>(k);
      v |= ((tail[bit / 8] >> (bit % 8)) & 1u) << k;
    }
    idx[i] = static_cast<uint8_t>(v);
  }
}

// Runtime-width entry points (switch over the template instances).
void pack_bits(int bits, const uint8_t* idx, size_t n, uint8_t* out);
void unpack_bits(int bits, const uint8_t* in, size_t n, uint8_t* idx);

}  // namespace tq::quant
