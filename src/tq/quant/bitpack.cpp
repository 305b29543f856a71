// Reference bit packing and the runtime-width dispatch over the templated fast paths.
#include "tq/quant/bitpack.h"

namespace tq::quant {

void pack_bits_ref(int bits, const uint8_t* idx, size_t n, uint8_t* out) {
  std::memset(out, 0, packed_bytes(bits, n));
  for (size_t i = 0; i < n; ++i)
    for (int k = 0; k < bits; ++k) {
      const size_t bit =
          i * static_cast<size_t>(bits) + static_cast<size_t>(k);  // bit k of index i
      if ((idx[i] >> k) & 1u) out[bit / 8] = static_cast<uint8_t>(out[bit / 8] | (1u << (bit % 8)));
    }
}

void unpack_bits_ref(int bits, const uint8_t* in, size_t n, uint8_t* idx) {
  for (size_t i = 0; i < n; ++i) {
    unsigned v = 0;
    for (int k = 0; k < bits; ++k) {
      const size_t bit = i * static_cast<size_t>(bits) + static_cast<size_t>(k);
      v |= ((in[bit / 8] >> (bit % 8)) & 1u) << k;
    }
    idx[i] = static_cast<uint8_t>(v);
  }
}

namespace {
template <template <int> class Op, typename... Args>
void dispatch_bits(int bits, Args... args) {
  switch (bits) {
    case 1:
      return Op<1>::run(args...);
    case 2:
      return Op<2>::run(args...);
    case 3:
      return Op<3>::run(args...);
    case 4:
      return Op<4>::run(args...);
    case 5:
      return Op<5>::run(args...);
    case 6:
      return Op<6>::run(args...);
    case 7:
      return Op<7>::run(args...);
    case 8:
      return Op<8>::run(args...);
    default:
      return;
  }
}
template <int kBits>
struct PackOp {
  static void run(const uint8_t* idx, size_t n, uint8_t* out) { pack_bits<kBits>(idx, n, out); }
};
template <int kBits>
struct UnpackOp {
  static void run(const uint8_t* in, size_t n, uint8_t* idx) { unpack_bits<kBits>(in, n, idx); }
};
}  // namespace

void pack_bits(int bits, const uint8_t* idx, size_t n, uint8_t* out) {
  dispatch_bits<PackOp>(bits, idx, n, out);
}
void unpack_bits(int bits, const uint8_t* in, size_t n, uint8_t* idx) {
  dispatch_bits<UnpackOp>(bits, in, n, idx);
}

}  // namespace tq::quant
