// GGUF v3 serialization. The layout mirrors gguf.cpp's reader: header, key-values, tensor
// infos, padding to the alignment, then each tensor's bytes padded to the alignment.
#include "tq/model/gguf_writer.h"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <utility>

#include "tq/quant/weight_quant.h"

namespace tq::model {
namespace {

constexpr size_t kMaxTensorName = 63;  // llama.cpp's GGML_MAX_NAME is 64 with the NUL

class ByteSink {
 public:
  explicit ByteSink(std::vector<uint8_t>* out) : out_(out) {}
  template <typename T>
  void put(T v) {
    const size_t n = out_->size();
    out_->resize(n + sizeof(T));
    std::memcpy(out_->data() + n, &v, sizeof(T));
  }
  void put_string(const std::string& s) {
    put<uint64_t>(s.size());
    out_->insert(out_->end(), s.begin(), s.end());
  }
  void put_value(const GgufValue& v) {
    switch (v.type) {
      case GgufValueType::kU8:
        put<uint8_t>(static_cast<uint8_t>(v.u));
        break;
      case GgufValueType::kI8:
        put<int8_t>(static_cast<int8_t>(v.i));
        break;
      case GgufValueType::kU16:
        put<uint16_t>(static_cast<uint16_t>(v.u));
        break;
      case GgufValueType::kI16:
        put<int16_t>(static_cast<int16_t>(v.i));
        break;
      case GgufValueType::kU32:
        put<uint32_t>(static_cast<uint32_t>(v.u));
        break;
      case GgufValueType::kI32:
        put<int32_t>(static_cast<int32_t>(v.i));
        break;
      case GgufValueType::kU64:
        put<uint64_t>(v.u);
        break;
      case GgufValueType::kI64:
        put<int64_t>(v.i);
        break;
      case GgufValueType::kF32:
        put<float>(static_cast<float>(v.f));
        break;
      case GgufValueType::kF64:
        put<double>(v.f);
        break;
      case GgufValueType::kBool:
        put<uint8_t>(v.i != 0 ? 1 : 0);
        break;
      case GgufValueType::kString:
        put_string(v.s);
        break;
      case GgufValueType::kArray:
        put<uint32_t>(static_cast<uint32_t>(v.array_type));
        put<uint64_t>(v.array.size());
        for (const GgufValue& e : v.array) {
          // Elements are written as the array's type whatever their own tag says.
          GgufValue typed = e;
          typed.type = v.array_type;
          put_value(typed);
        }
        break;
    }
  }
  void pad_to(size_t alignment) {
    out_->resize((out_->size() + alignment - 1) / alignment * alignment, 0);
  }

 private:
  std::vector<uint8_t>* out_;
};

GgufValue scalar(GgufValueType t) {
  GgufValue v;
  v.type = t;
  return v;
}

template <typename T, typename Fill>
GgufValue array_of(GgufValueType et, const std::vector<T>& xs, Fill fill) {
  GgufValue v = scalar(GgufValueType::kArray);
  v.array_type = et;
  v.array.reserve(xs.size());
  for (const T& x : xs) {
    GgufValue e = scalar(et);
    fill(e, x);
    v.array.push_back(std::move(e));
  }
  return v;
}

size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

}  // namespace

GgufWriter::GgufWriter(size_t alignment) : alignment_(alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0 || alignment > (1u << 30)) {
    config_ = invalid_argument("gguf writer: alignment " + std::to_string(alignment) +
                               " is not a power of two");
    alignment_ = 32;
  } else if (alignment != 32) {
    set_u32("general.alignment", static_cast<uint32_t>(alignment));
  }
}

void GgufWriter::set(const std::string& key, GgufValue value) {
  for (GgufKv& kv : kv_) {
    if (kv.key == key) {
      kv.value = std::move(value);
      return;
    }
  }
  kv_.push_back(GgufKv{key, std::move(value)});
}

void GgufWriter::set_u8(const std::string& k, uint8_t v) {
  GgufValue x = scalar(GgufValueType::kU8);
  x.u = v;
  set(k, x);
}
void GgufWriter::set_i8(const std::string& k, int8_t v) {
  GgufValue x = scalar(GgufValueType::kI8);
  x.i = v;
  set(k, x);
}
void GgufWriter::set_u16(const std::string& k, uint16_t v) {
  GgufValue x = scalar(GgufValueType::kU16);
  x.u = v;
  set(k, x);
}
void GgufWriter::set_i16(const std::string& k, int16_t v) {
  GgufValue x = scalar(GgufValueType::kI16);
  x.i = v;
  set(k, x);
}
void GgufWriter::set_u32(const std::string& k, uint32_t v) {
  GgufValue x = scalar(GgufValueType::kU32);
  x.u = v;
  set(k, x);
}
void GgufWriter::set_i32(const std::string& k, int32_t v) {
  GgufValue x = scalar(GgufValueType::kI32);
  x.i = v;
  set(k, x);
}
void GgufWriter::set_u64(const std::string& k, uint64_t v) {
  GgufValue x = scalar(GgufValueType::kU64);
  x.u = v;
  set(k, x);
}
void GgufWriter::set_i64(const std::string& k, int64_t v) {
  GgufValue x = scalar(GgufValueType::kI64);
  x.i = v;
  set(k, x);
}
void GgufWriter::set_f32(const std::string& k, float v) {
  GgufValue x = scalar(GgufValueType::kF32);
  x.f = v;
  set(k, x);
}
void GgufWriter::set_f64(const std::string& k, double v) {
  GgufValue x = scalar(GgufValueType::kF64);
  x.f = v;
  set(k, x);
}
void GgufWriter::set_bool(const std::string& k, bool v) {
  GgufValue x = scalar(GgufValueType::kBool);
  x.i = v ? 1 : 0;
  set(k, x);
}
void GgufWriter::set_string(const std::string& k, std::string v) {
  GgufValue x = scalar(GgufValueType::kString);
  x.s = std::move(v);
  set(k, std::move(x));
}

void GgufWriter::set_string_array(const std::string& k, const std::vector<std::string>& v) {
  set(k, array_of(GgufValueType::kString, v, [](GgufValue& e, const std::string& s) { e.s = s; }));
}
void GgufWriter::set_i32_array(const std::string& k, const std::vector<int32_t>& v) {
  set(k, array_of(GgufValueType::kI32, v, [](GgufValue& e, int32_t x) { e.i = x; }));
}
void GgufWriter::set_u32_array(const std::string& k, const std::vector<uint32_t>& v) {
  set(k, array_of(GgufValueType::kU32, v, [](GgufValue& e, uint32_t x) { e.u = x; }));
}
void GgufWriter::set_f32_array(const std::string& k, const std::vector<float>& v) {
  set(k, array_of(GgufValueType::kF32, v, [](GgufValue& e, float x) { e.f = x; }));
}

Status GgufWriter::add_tensor(const std::string& name, std::vector<uint64_t> shape,
                              quant::GgmlType type, std::vector<uint8_t> data) {
  const std::string what = "gguf writer: tensor '" + name + "'";
  if (name.empty() || name.size() > kMaxTensorName)
    return invalid_argument(what + ": name must be 1 to 63 bytes");
  for (const Tensor& t : tensors_)
    if (t.name == name) return invalid_argument(what + ": duplicate name");
  const quant::GgmlTypeTraits* traits = quant::ggml_type_traits(static_cast<uint32_t>(type));
  if (traits == nullptr) return invalid_argument(what + ": unknown type");
  if (shape.empty() || shape.size() > 4) return invalid_argument(what + ": needs 1 to 4 dims");
  if (shape[0] % traits->block_elems != 0)
    return invalid_argument(what + ": row length " + std::to_string(shape[0]) +
                            " not a multiple of " + std::string(traits->name) + "'s block size");
  uint64_t rows = 1;
  for (size_t i = 1; i < shape.size(); ++i) rows *= shape[i];
  const uint64_t expected = quant::ggml_row_bytes(type, shape[0]) * rows;
  if (data.size() != expected)
    return invalid_argument(what + ": " + std::to_string(data.size()) + " bytes, expected " +
                            std::to_string(expected));
  tensors_.push_back(Tensor{name, std::move(shape), type, std::move(data)});
  return ok_status();
}

Status GgufWriter::add_tensor_from_f32(const std::string& name, std::vector<uint64_t> shape,
                                       quant::GgmlType type, const float* values) {
  const quant::GgmlTypeTraits* traits = quant::ggml_type_traits(static_cast<uint32_t>(type));
  if (traits == nullptr || !quant::can_quantize(type) || shape.empty())
    return invalid_argument("gguf writer: tensor '" + name + "': cannot quantize to this type");
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  const size_t row_bytes = quant::ggml_row_bytes(type, shape[0]);
  if (row_bytes == 0 && shape[0] != 0)
    return invalid_argument("gguf writer: tensor '" + name + "': row length " +
                            std::to_string(shape[0]) + " not a multiple of the block size");
  std::vector<uint8_t> data(shape[0] == 0 ? 0 : n / shape[0] * row_bytes);
  for (uint64_t r = 0; shape[0] != 0 && r < n / shape[0]; ++r)
    TQ_RETURN_IF_ERROR(quant::quantize_row_ref(
        type, values + r * shape[0], data.data() + r * row_bytes, static_cast<int64_t>(shape[0])));
  return add_tensor(name, std::move(shape), type, std::move(data));
}

std::vector<uint8_t> GgufWriter::header_bytes() const {
  std::vector<uint8_t> out;
  ByteSink sink(&out);
  sink.put<uint32_t>(0x46554747);  // "GGUF"
  sink.put<uint32_t>(3);
  sink.put<uint64_t>(tensors_.size());
  sink.put<uint64_t>(kv_.size());
  for (const GgufKv& kv : kv_) {
    sink.put_string(kv.key);
    sink.put<uint32_t>(static_cast<uint32_t>(kv.value.type));
    sink.put_value(kv.value);
  }
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    sink.put_string(t.name);
    sink.put<uint32_t>(static_cast<uint32_t>(t.shape.size()));
    for (uint64_t d : t.shape) sink.put<uint64_t>(d);
    sink.put<uint32_t>(static_cast<uint32_t>(t.type));
    sink.put<uint64_t>(offset);
    offset += align_up(t.data.size(), alignment_);
  }
  sink.pad_to(alignment_);
  return out;
}

Expected<std::vector<uint8_t>> GgufWriter::serialize() const {
  TQ_RETURN_IF_ERROR(config_);
  std::vector<uint8_t> out = header_bytes();
  for (const Tensor& t : tensors_) {
    out.insert(out.end(), t.data.begin(), t.data.end());
    out.resize(align_up(out.size(), alignment_), 0);
  }
  return out;
}

Status GgufWriter::write_file(const std::string& path) const {
  TQ_RETURN_IF_ERROR(config_);
  // The file is written beside the path and renamed over it: that would replace a symlink or a
  // device node itself (as root, /dev/full would become a regular file), so only a regular
  // file or nothing may be there.
  std::error_code ec;
  const auto st = std::filesystem::symlink_status(path, ec);
  if (!ec && std::filesystem::exists(st) && !std::filesystem::is_regular_file(st))
    return invalid_argument("gguf writer: " + path +
                            " exists and is not a regular file (a link, a directory or a device)");
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) return io_error("gguf writer: cannot create " + tmp);
  const std::vector<uint8_t> header = header_bytes();
  bool ok = std::fwrite(header.data(), 1, header.size(), f) == header.size();
  const std::vector<uint8_t> zeros(alignment_, 0);
  for (const Tensor& t : tensors_) {
    if (!ok) break;
    ok = std::fwrite(t.data.data(), 1, t.data.size(), f) == t.data.size();
    const size_t pad = align_up(t.data.size(), alignment_) - t.data.size();
    if (ok && pad > 0) ok = std::fwrite(zeros.data(), 1, pad, f) == pad;
  }
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    return io_error("gguf writer: write to " + tmp + " failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return io_error("gguf writer: cannot rename " + tmp + " to " + path);
  }
  return ok_status();
}

}  // namespace tq::model
