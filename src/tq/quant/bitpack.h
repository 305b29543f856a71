// Packing b-bit indices (b = 1..8) into the LSB-first bitstream of docs/formats.md: index i
// occupies bits [b*i, b*i + b). Every 8 indices fill exactly b bytes, so the fast path moves
// groups of 8 through one 64-bit word (b = 3: 8 indices in 3 bytes; b = 4: two per byte;
// b = 8: a copy); a bit-by-bit tail handles counts that are not multiples of 8.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace tq::quant {

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
    std::memcpy(out + kBits * g, &word, kBits);  // little-endian hosts only (x86, arm64)
  }
  const size_t done = groups * 8;
  if (done == n) return;
  const size_t tail_bytes = packed_bytes(kBits, n) - kBits * groups;
  uint8_t* tail = out + kBits * groups;
  std::memset(tail, 0, tail_bytes);
  for (size_t i = done; i < n; ++i)
    for (int k = 0; k < kBits; ++k) {
      const size_t bit = (i - done) * kBits + static_cast<size_t>(k);
      if ((idx[i] >> k) & 1u) tail[bit / 8] = static_cast<uint8_t>(tail[bit / 8] | (1u << (bit % 8)));
    }
}

template <int kBits>
void unpack_bits(const uint8_t* in, size_t n, uint8_t* idx) {
  static_assert(kBits >= 1 && kBits <= 8);
  constexpr uint64_t kMask = (1u << kBits) - 1u;
  const size_t groups = n / 8;
  for (size_t g = 0; g < groups; ++g) {
    uint64_t word = 0;
    std::memcpy(&word, in + kBits * g, kBits);
    for (int j = 0; j < 8; ++j) idx[8 * g + j] = static_cast<uint8_t>((word >> (kBits * j)) & kMask);
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
