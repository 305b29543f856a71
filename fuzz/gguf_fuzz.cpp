// libFuzzer target for the GGUF reader: any input must parse or fail with a Status, never
// crash or read outside the buffer. Accepted files are then walked the way the loader does
// (getters, tensor bytes, a first-row dequantize) so ASan checks the pointers parse hands out.
//   cmake -S . -B build-fuzz -DTQ_FUZZ=ON -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
//     -DTQ_BUILD_BENCH=OFF -DTQ_BUILD_TESTS=OFF -DTQ_BUILD_TOOLS=OFF -DTQ_BUILD_SERVER=OFF
//   cmake --build build-fuzz --target gguf_fuzz && build-fuzz/gguf_fuzz -max_total_time=60 CORPUS
#include <cstddef>
#include <cstdint>
#include <vector>

#include "tq/model/gguf.h"
#include "tq/quant/weight_dequant.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto f = tq::model::GgufFile::parse(data, size);
  if (!f.ok()) return 0;
  const tq::model::GgufFile& g = **f;
  for (const tq::model::GgufKv& kv : g.metadata()) {
    (void)g.get_string(kv.key);
    (void)g.get_int(kv.key);
    (void)g.get_float(kv.key);
    (void)g.get_bool(kv.key);
    (void)g.get_string_array(kv.key);
    (void)g.get_int_array(kv.key);
    (void)g.get_float_array(kv.key);
  }
  unsigned sum = 0;
  std::vector<float> row;
  for (const tq::model::GgufTensor& t : g.tensors()) {
    if (g.find_tensor(t.name) != &t) __builtin_trap();
    if (t.nbytes > 0) sum += t.data[0] + t.data[t.nbytes - 1];
    // At most one 4096-element row, so a huge declared shape costs no time.
    const uint64_t n = t.shape[0];
    if (n == 0 || n > 4096 || t.n_elements() == 0 || !tq::quant::can_dequantize(t.type)) continue;
    row.resize(n);
    (void)tq::quant::dequantize_row_ref(t.type, t.data, row.data(), static_cast<int64_t>(n));
  }
  return static_cast<int>(sum & 0);
}
