// ggml's type table: names and block geometry for every type id a GGUF file may name.
#include "tq/quant/ggml_types.h"

#include <array>

namespace tq::quant {
namespace {

struct Entry {
  uint32_t id;
  GgmlTypeTraits traits;
};

// Sizes from ggml-common.h (block_q4_0 ... block_q8_K). Q8_1 and Q8_K are activation formats
// in ggml; Q2_K and Q3_K are known so that files using them report a clear Unsupported.
constexpr std::array<Entry, 15> kTable = {{
    {0, {"f32", 1, 4, true}},
    {1, {"f16", 1, 2, true}},
    {2, {"q4_0", 32, 18, true}},
    {3, {"q4_1", 32, 20, true}},
    {6, {"q5_0", 32, 22, true}},
    {7, {"q5_1", 32, 24, true}},
    {8, {"q8_0", 32, 34, true}},
    {9, {"q8_1", 32, 36, false}},
    {10, {"q2_K", 256, 84, false}},
    {11, {"q3_K", 256, 110, false}},
    {12, {"q4_K", 256, 144, true}},
    {13, {"q5_K", 256, 176, true}},
    {14, {"q6_K", 256, 210, true}},
    {15, {"q8_K", 256, 292, false}},
    {30, {"bf16", 1, 2, true}},
}};

}  // namespace

const GgmlTypeTraits* ggml_type_traits(uint32_t type_id) {
  for (const Entry& e : kTable)
    if (e.id == type_id) return &e.traits;
  return nullptr;
}

size_t ggml_row_bytes(GgmlType type, uint64_t n) {
  const GgmlTypeTraits* t = ggml_type_traits(static_cast<uint32_t>(type));
  if (t == nullptr || n % t->block_elems != 0) return 0;
  return static_cast<size_t>(n / t->block_elems * t->block_bytes);
}

}  // namespace tq::quant
