// Weight tensor types as GGUF files store them (ggml's type ids and block layouts), so that
// the model loader, the dequantizers and the GGUF writer agree on sizes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace tq::quant {

enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kBF16 = 30,
};

struct GgmlTypeTraits {
  std::string_view name;  // "q4_0"
  uint32_t block_elems;   // elements per block (1 for float types, 32 or 256 otherwise)
  uint32_t block_bytes;   // bytes per block
  bool supported;         // tq can dequantize and multiply it
};

// Traits of a type id read from a file; nullptr for ids tq does not know (never trust the id).
const GgmlTypeTraits* ggml_type_traits(uint32_t type_id);

// Bytes for a row of n elements; 0 if n is not a multiple of the block size.
size_t ggml_row_bytes(GgmlType type, uint64_t n);

}  // namespace tq::quant
