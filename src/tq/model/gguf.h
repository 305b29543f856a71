// GGUF v2/v3 reader over mmap. Every offset, size, count and string is bounds-checked against
// the file: a truncated or hostile file yields a Status, never a crash or an over-read.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tq/core/status.h"
#include "tq/quant/ggml_types.h"

namespace tq::model {

enum class GgufValueType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

// One metadata value. Scalars are widened into i/u/f; arrays keep their element type.
struct GgufValue {
  GgufValueType type = GgufValueType::kU32;
  int64_t i = 0;                                   // signed integer types and bool
  uint64_t u = 0;                                  // unsigned integer types
  double f = 0.0;                                  // float types
  std::string s;                                   // kString
  GgufValueType array_type = GgufValueType::kU32;  // kArray: element type
  std::vector<GgufValue> array;  // kArray elements (nested arrays allowed, depth-limited)
};

struct GgufKv {
  std::string key;
  GgufValue value;
};

struct GgufTensor {
  std::string name;
  std::vector<uint64_t> shape;  // ggml order: shape[0] is the contiguous (row) dimension
  quant::GgmlType type = quant::GgmlType::kF32;
  uint64_t offset = 0;            // from the start of the data section
  const uint8_t* data = nullptr;  // points into the mapping; valid while the GgufFile lives
  size_t nbytes = 0;
  uint64_t n_elements() const;
};

class GgufFile {
 public:
  // Maps `path` read-only and parses it.
  static Expected<std::unique_ptr<GgufFile>> open(const std::string& path);
  // Parses a buffer the caller keeps alive (tests, fuzzing).
  static Expected<std::unique_ptr<GgufFile>> parse(const uint8_t* data, size_t size);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  uint32_t version() const { return version_; }
  size_t alignment() const { return alignment_; }
  const std::vector<GgufKv>& metadata() const { return kv_; }
  const std::vector<GgufTensor>& tensors() const { return tensors_; }

  const GgufValue* find(std::string_view key) const;
  const GgufTensor* find_tensor(std::string_view name) const;

  // Typed getters: NotFound if absent, InvalidArgument on a type mismatch. Integer getters
  // accept any integer type that fits.
  Expected<std::string> get_string(std::string_view key) const;
  Expected<int64_t> get_int(std::string_view key) const;
  Expected<double> get_float(std::string_view key) const;  // accepts integers too
  Expected<bool> get_bool(std::string_view key) const;
  Expected<std::vector<std::string>> get_string_array(std::string_view key) const;
  Expected<std::vector<double>> get_float_array(std::string_view key) const;
  Expected<std::vector<int64_t>> get_int_array(std::string_view key) const;

  // With a default when the key is absent (a wrong type is still an error).
  Expected<int64_t> get_int_or(std::string_view key, int64_t def) const;
  Expected<double> get_float_or(std::string_view key, double def) const;

 private:
  GgufFile() = default;
  Status parse_all();

  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  void* mapping_ = nullptr;  // non-null when this object owns an mmap of size_ bytes
  uint32_t version_ = 0;
  size_t alignment_ = 32;
  std::vector<GgufKv> kv_;
  std::vector<GgufTensor> tensors_;
  // name -> index into kv_ / tensors_ (std::less<> allows string_view lookups).
  std::map<std::string, size_t, std::less<>> kv_index_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

// "u32", "string", "array" ... for messages.
const char* gguf_value_type_name(GgufValueType type);

}  // namespace tq::model
