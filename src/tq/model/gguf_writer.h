// Writes GGUF v3 files: metadata of every value type and tensors of any ggml type, laid out
// as llama.cpp and the Python gguf package expect (data section and each tensor aligned).
// Used by `tq make-model` and by tests that need a model file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tq/core/status.h"
#include "tq/model/gguf.h"
#include "tq/quant/ggml_types.h"

namespace tq::model {

class GgufWriter {
 public:
  // alignment: a power of two; other than 32 it is recorded as general.alignment.
  explicit GgufWriter(size_t alignment = 32);

  // Metadata in insertion order; setting a key again replaces its value in place.
  void set(const std::string& key, GgufValue value);
  void set_u8(const std::string& key, uint8_t v);
  void set_i8(const std::string& key, int8_t v);
  void set_u16(const std::string& key, uint16_t v);
  void set_i16(const std::string& key, int16_t v);
  void set_u32(const std::string& key, uint32_t v);
  void set_i32(const std::string& key, int32_t v);
  void set_u64(const std::string& key, uint64_t v);
  void set_i64(const std::string& key, int64_t v);
  void set_f32(const std::string& key, float v);
  void set_f64(const std::string& key, double v);
  void set_bool(const std::string& key, bool v);
  void set_string(const std::string& key, std::string v);
  void set_string_array(const std::string& key, const std::vector<std::string>& v);
  void set_i32_array(const std::string& key, const std::vector<int32_t>& v);
  void set_u32_array(const std::string& key, const std::vector<uint32_t>& v);
  void set_f32_array(const std::string& key, const std::vector<float>& v);

  // A tensor of `type` with ggml shape (shape[0] contiguous, 1 to 4 dims) whose bytes are
  // `data`, exactly ggml_row_bytes(type, shape[0]) * (rows) long. Names are unique and shorter
  // than 64 bytes (llama.cpp's limit).
  Status add_tensor(const std::string& name, std::vector<uint64_t> shape, quant::GgmlType type,
                    std::vector<uint8_t> data);
  // Quantizes n_elements(shape) floats to `type` (quant::can_quantize) and adds the result.
  Status add_tensor_from_f32(const std::string& name, std::vector<uint64_t> shape,
                             quant::GgmlType type, const float* values);

  size_t tensor_count() const { return tensors_.size(); }

  // The whole file in memory (small files, tests).
  Expected<std::vector<uint8_t>> serialize() const;
  // Streams the file to path + ".tmp", then renames it over `path`.
  Status write_file(const std::string& path) const;

 private:
  struct Tensor {
    std::string name;
    std::vector<uint64_t> shape;
    quant::GgmlType type;
    std::vector<uint8_t> data;
  };
  std::vector<uint8_t> header_bytes() const;  // everything before the data section, padded

  size_t alignment_;
  Status config_;  // a bad alignment, reported by serialize / write_file
  std::vector<GgufKv> kv_;
  std::vector<Tensor> tensors_;
};

}  // namespace tq::model
