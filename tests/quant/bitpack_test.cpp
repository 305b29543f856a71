// Bit packing: every width 1..8 against the bit-by-bit reference, odd counts, known layouts.
#include <gtest/gtest.h>

#include <vector>

#include "tq/core/rng.h"
#include "tq/quant/bitpack.h"

namespace tq::quant {
namespace {

TEST(Bitpack, EveryWidthMatchesReferenceAndRoundTrips) {
  Rng rng(11);
  for (int bits = 1; bits <= 8; ++bits) {
    for (size_t n : {1u, 3u, 7u, 8u, 9u, 13u, 64u, 80u, 129u, 1023u}) {
      std::vector<uint8_t> idx(n);
      for (auto& v : idx) v = static_cast<uint8_t>(rng.next_u32() & ((1u << bits) - 1));
      const size_t bytes = packed_bytes(bits, n);
      std::vector<uint8_t> ref(bytes + 1, 0xAB), fast(bytes + 1, 0xAB), back(n, 0xFF);
      pack_bits_ref(bits, idx.data(), n, ref.data());
      pack_bits(bits, idx.data(), n, fast.data());
      EXPECT_EQ(ref, fast) << "bits=" << bits << " n=" << n;
      EXPECT_EQ(fast[bytes], 0xAB) << "wrote past the end, bits=" << bits << " n=" << n;
      unpack_bits(bits, fast.data(), n, back.data());
      EXPECT_EQ(back, idx) << "bits=" << bits << " n=" << n;
      unpack_bits_ref(bits, ref.data(), n, back.data());
      EXPECT_EQ(back, idx) << "bits=" << bits << " n=" << n;
    }
  }
}

TEST(Bitpack, LayoutIsLsbFirst) {
  // b = 3: 8 indices 0..7 form the 24-bit little-endian integer sum i << 3i.
  const uint8_t idx3[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  uint8_t out3[3];
  pack_bits<3>(idx3, 8, out3);
  uint32_t word = 0;
  for (int i = 0; i < 8; ++i) word |= uint32_t(idx3[i]) << (3 * i);
  EXPECT_EQ(out3[0], word & 0xff);
  EXPECT_EQ(out3[1], (word >> 8) & 0xff);
  EXPECT_EQ(out3[2], (word >> 16) & 0xff);
  // b = 4: byte j = idx[2j] | idx[2j+1] << 4.
  const uint8_t idx4[2] = {0x3, 0xC};
  uint8_t out4[1];
  pack_bits<4>(idx4, 2, out4);
  EXPECT_EQ(out4[0], 0xC3);
  // b = 1: bit i of byte 0 is index i.
  const uint8_t idx1[8] = {1, 0, 0, 0, 0, 0, 0, 1};
  uint8_t out1[1];
  pack_bits<1>(idx1, 8, out1);
  EXPECT_EQ(out1[0], 0x81);
}

}  // namespace
}  // namespace tq::quant
