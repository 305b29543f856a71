// GGUF v2/v3 parsing (llama.cpp's gguf.cpp rules, stricter where a check is free). Layout:
//   "GGUF" u32 version, u64 n_tensors, u64 n_kv, n_kv x (string key, u32 type, value),
//   n_tensors x (string name, u32 n_dims, u64 dims[n_dims], u32 ggml type, u64 offset),
//   padding to `alignment`, then the data section; tensor offsets are relative to it.
// Every read goes through Reader, which refuses to step past the end; every count is checked
// against the bytes left before anything is allocated for it.
#include "tq/model/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

namespace tq::model {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr int kMaxDims = 4;
constexpr int kMaxArrayDepth = 2;              // an array of arrays, no deeper
constexpr size_t kMaxNameBytes = 65535;        // keys and tensor names
constexpr uint64_t kMaxArrayElems = 1u << 22;  // all arrays together (~0.4 GB of GgufValue)
constexpr uint64_t kMaxAlignment = 1u << 30;
constexpr size_t kDefaultAlignment = 32;

std::string q(std::string_view s) {
  std::string out = "'";
  // Names come from the file: keep messages printable and short.
  for (size_t i = 0; i < s.size() && i < 96; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    out += (c >= 0x20 && c < 0x7f) ? static_cast<char>(c) : '?';
  }
  if (s.size() > 96) out += "...";
  return out + "'";
}

// Smallest encoding of one value of `type`, so that a count can be checked against the bytes
// left before any allocation: strings need their u64 length, arrays a u32 type and u64 count.
size_t min_value_bytes(GgufValueType type) {
  switch (type) {
    case GgufValueType::kU8:
    case GgufValueType::kI8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kU16:
    case GgufValueType::kI16:
      return 2;
    case GgufValueType::kU32:
    case GgufValueType::kI32:
    case GgufValueType::kF32:
      return 4;
    case GgufValueType::kU64:
    case GgufValueType::kI64:
    case GgufValueType::kF64:
      return 8;
    case GgufValueType::kString:
      return 8;
    case GgufValueType::kArray:
      return 12;
  }
  return 0;
}

bool valid_value_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::kF64); }

class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  size_t pos() const { return pos_; }
  size_t left() const { return size_ - pos_; }

  template <typename T>
  Status read(T* out, const std::string& what) {
    if (left() < sizeof(T))
      return out_of_range(what + ": needs " + std::to_string(sizeof(T)) + " bytes at offset " +
                          std::to_string(pos_) + ", file size " + std::to_string(size_));
    std::memcpy(out, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return ok_status();
  }

  Status read_string(std::string* out, const std::string& what, size_t max_len = SIZE_MAX) {
    uint64_t len = 0;
    TQ_RETURN_IF_ERROR(read(&len, what + " length"));
    if (len > left())
      return out_of_range(what + ": string length " + std::to_string(len) + " at offset " +
                          std::to_string(pos_ - 8) + " exceeds the " + std::to_string(left()) +
                          " bytes left");
    if (len > max_len)
      return corrupt(what + ": length " + std::to_string(len) + " over the limit " +
                     std::to_string(max_len));
    out->assign(reinterpret_cast<const char*>(data_ + pos_), static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    return ok_status();
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

struct ParseState {
  Reader& r;
  uint64_t array_elems = 0;  // across the whole file, against kMaxArrayElems
};

Status read_value(ParseState& st, GgufValueType type, int depth, const std::string& what,
                  GgufValue* v) {
  v->type = type;
  switch (type) {
    case GgufValueType::kU8: {
      uint8_t x;
      TQ_RETURN_IF_ERROR(st.r.read(&x, what));
      v->u = x;
      break;
    }
    case GgufValueType::kU16: {
      uint16_t x;
      TQ_RETURN_IF_ERROR(st.r.read(&x, what));
      v->u = x;
      break;
    }
    case GgufValueType::kU32: {
      uint32_t x;
      TQ_RETURN_IF_ERROR(st.r.read(&x, what));
      v->u = x;
      break;
    }
    case GgufValueType::kU64: {
      uint64_t x;
      TQ_RETURN_IF_ERROR(st.r.read(&x, what));
      v->u = x;
      break;
    }
    case GgufValueType::kI8: {
      int8_t x;
      TQ_RETURN_IF_ERROR(st.r.read(&x, what));
      v->i = x;
      break;
    }
    case GgufValueType::kI16: {
      int16_t x;
      TQ_RETURN_IF_ERROR(st.r.read(&x, what));
      v->i = x;
      break;
    }
    case GgufValueType::kI32: {
      int32_t x;
      TQ_RETURN_IF_ERROR(st.r.read(&x, what));
      v->i = x;
      break;
    }
    case GgufValueType::kI64: {
      int64_t x;
      TQ_RETURN_IF_ERROR(st.r.read(&x, what));
      v->i = x;
      break;
    }
    case GgufValueType::kF32: {
      float x;
      TQ_RETURN_IF_ERROR(st.r.read(&x, what));
      v->f = x;
      break;
    }
    case GgufValueType::kF64: {
      double x;
      TQ_RETURN_IF_ERROR(st.r.read(&x, what));
      v->f = x;
      break;
    }
    case GgufValueType::kBool: {
      uint8_t x;
      TQ_RETURN_IF_ERROR(st.r.read(&x, what));
      if (x > 1) return corrupt(what + ": bool byte is " + std::to_string(x) + ", not 0 or 1");
      v->i = x;
      break;
    }
    case GgufValueType::kString:
      TQ_RETURN_IF_ERROR(st.r.read_string(&v->s, what));
      break;
    case GgufValueType::kArray: {
      if (depth >= kMaxArrayDepth)
        return corrupt(what + ": arrays nested deeper than " + std::to_string(kMaxArrayDepth));
      uint32_t elem_type = 0;
      uint64_t count = 0;
      TQ_RETURN_IF_ERROR(st.r.read(&elem_type, what + " element type"));
      if (!valid_value_type(elem_type))
        return corrupt(what + ": unknown array element type " + std::to_string(elem_type));
      TQ_RETURN_IF_ERROR(st.r.read(&count, what + " count"));
      const auto et = static_cast<GgufValueType>(elem_type);
      const size_t min_bytes = min_value_bytes(et);
      if (count > st.r.left() / min_bytes)
        return out_of_range(what + ": array of " + std::to_string(count) + " " +
                            gguf_value_type_name(et) + " needs at least " +
                            std::to_string(min_bytes) + " bytes each, " +
                            std::to_string(st.r.left()) + " bytes left");
      st.array_elems += count;
      if (st.array_elems > kMaxArrayElems)
        return resource_exhausted(what + ": metadata arrays hold more than " +
                                  std::to_string(kMaxArrayElems) + " elements in all");
      v->array_type = et;
      v->array.resize(static_cast<size_t>(count));
      for (uint64_t k = 0; k < count; ++k) {
        // The index is formatted only on failure: no string building per element.
        Status s = read_value(st, et, depth + 1, what, &v->array[k]);
        if (!s.ok())
          return Status(s.code(), s.message() + " (array element " + std::to_string(k) + ")");
      }
      break;
    }
  }
  return ok_status();
}

bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_mul_overflow(a, b, out);
}
bool checked_add(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_add_overflow(a, b, out);
}

}  // namespace

const char* gguf_value_type_name(GgufValueType type) {
  switch (type) {
    case GgufValueType::kU8:
      return "u8";
    case GgufValueType::kI8:
      return "i8";
    case GgufValueType::kU16:
      return "u16";
    case GgufValueType::kI16:
      return "i16";
    case GgufValueType::kU32:
      return "u32";
    case GgufValueType::kI32:
      return "i32";
    case GgufValueType::kF32:
      return "f32";
    case GgufValueType::kBool:
      return "bool";
    case GgufValueType::kString:
      return "string";
    case GgufValueType::kArray:
      return "array";
    case GgufValueType::kU64:
      return "u64";
    case GgufValueType::kI64:
      return "i64";
    case GgufValueType::kF64:
      return "f64";
  }
  return "unknown";
}

uint64_t GgufTensor::n_elements() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;  // the reader checked the product does not overflow
  return n;
}

GgufFile::~GgufFile() {
  if (mapping_ != nullptr) munmap(mapping_, size_);
}

Expected<std::unique_ptr<GgufFile>> GgufFile::parse(const uint8_t* data, size_t size) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->data_ = data;
  f->size_ = size;
  TQ_RETURN_IF_ERROR(f->parse_all());
  return f;
}

Expected<std::unique_ptr<GgufFile>> GgufFile::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int e = errno;
    const std::string m = path + ": " + std::strerror(e);
    return e == ENOENT ? not_found(m) : io_error(m);
  }
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return io_error(path + ": not a regular file");
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size == 0) {
    ::close(fd);
    return corrupt(path + ": empty file, not GGUF");
  }
  void* m = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int e = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (m == MAP_FAILED) return io_error(path + ": mmap failed: " + std::strerror(e));
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->mapping_ = m;
  f->data_ = static_cast<const uint8_t*>(m);
  f->size_ = size;
  const Status s = f->parse_all();
  if (!s.ok()) return s.with_context(path);
  return f;
}

Status GgufFile::parse_all() {
  Reader r(data_, size_);
  uint32_t magic = 0;
  if (size_ < 24)
    return corrupt("file too small for a GGUF header (" + std::to_string(size_) + " bytes)");
  TQ_RETURN_IF_ERROR(r.read(&magic, "magic"));
  if (magic != kMagic) return corrupt("bad magic, not a GGUF file");
  TQ_RETURN_IF_ERROR(r.read(&version_, "version"));
  if (version_ != 2 && version_ != 3) {
    if ((version_ & 0xFFFFu) == 0 && version_ != 0)
      return unsupported("big-endian GGUF files are not supported");
    return unsupported("GGUF version " + std::to_string(version_) + " (tq reads 2 and 3)");
  }
  uint64_t n_tensors = 0, n_kv = 0;
  TQ_RETURN_IF_ERROR(r.read(&n_tensors, "tensor count"));
  TQ_RETURN_IF_ERROR(r.read(&n_kv, "metadata count"));
  // A key-value needs >= 13 bytes (u64 length, u32 type, 1-byte value); a tensor info >= 32.
  if (n_kv > r.left() / 13)
    return out_of_range("metadata count " + std::to_string(n_kv) + " cannot fit in the " +
                        std::to_string(r.left()) + " bytes left");
  if (n_tensors > r.left() / 32)
    return out_of_range("tensor count " + std::to_string(n_tensors) + " cannot fit in the " +
                        std::to_string(r.left()) + " bytes left");

  ParseState st{r};
  kv_.reserve(static_cast<size_t>(n_kv));
  for (uint64_t k = 0; k < n_kv; ++k) {
    GgufKv kv;
    const std::string idx = "metadata #" + std::to_string(k);
    TQ_RETURN_IF_ERROR(r.read_string(&kv.key, idx + " key", kMaxNameBytes));
    const std::string what = "metadata " + q(kv.key);
    if (kv.key.empty()) return corrupt(idx + ": empty key");
    if (kv_index_.count(kv.key)) return corrupt(what + ": duplicate key");
    uint32_t type = 0;
    TQ_RETURN_IF_ERROR(r.read(&type, what + " type"));
    if (!valid_value_type(type))
      return corrupt(what + ": unknown value type " + std::to_string(type));
    TQ_RETURN_IF_ERROR(read_value(st, static_cast<GgufValueType>(type), 0, what, &kv.value));
    kv_index_.emplace(kv.key, kv_.size());
    kv_.push_back(std::move(kv));
  }

  alignment_ = kDefaultAlignment;
  if (const GgufValue* a = find("general.alignment")) {
    const bool is_uint = a->type == GgufValueType::kU8 || a->type == GgufValueType::kU16 ||
                         a->type == GgufValueType::kU32 || a->type == GgufValueType::kU64;
    if (!is_uint)
      return corrupt(std::string("general.alignment has type ") + gguf_value_type_name(a->type) +
                     ", expected u32");
    if (a->u == 0 || (a->u & (a->u - 1)) != 0 || a->u > kMaxAlignment)
      return corrupt("general.alignment " + std::to_string(a->u) +
                     " is not a power of two in [1, 2^30]");
    alignment_ = static_cast<size_t>(a->u);
  }

  tensors_.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensor t;
    TQ_RETURN_IF_ERROR(
        r.read_string(&t.name, "tensor #" + std::to_string(k) + " name", kMaxNameBytes));
    const std::string what = "tensor " + q(t.name);
    if (tensor_index_.count(t.name)) return corrupt(what + ": duplicate tensor name");
    uint32_t n_dims = 0;
    TQ_RETURN_IF_ERROR(r.read(&n_dims, what + " n_dims"));
    if (n_dims < 1 || n_dims > kMaxDims)
      return corrupt(what + ": n_dims " + std::to_string(n_dims) + " not in [1, 4]");
    uint64_t n_elem = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t dim = 0;
      TQ_RETURN_IF_ERROR(r.read(&dim, what + " dim " + std::to_string(d)));
      if (dim > static_cast<uint64_t>(INT64_MAX) || !checked_mul(n_elem, dim, &n_elem) ||
          n_elem > static_cast<uint64_t>(INT64_MAX))
        return corrupt(what + ": element count overflows at dim " + std::to_string(d));
      t.shape.push_back(dim);
    }
    uint32_t type_id = 0;
    TQ_RETURN_IF_ERROR(r.read(&type_id, what + " type"));
    const quant::GgmlTypeTraits* traits = quant::ggml_type_traits(type_id);
    if (traits == nullptr)
      return corrupt(what + ": unknown ggml type id " + std::to_string(type_id));
    t.type = static_cast<quant::GgmlType>(type_id);
    if (t.shape[0] % traits->block_elems != 0)
      return corrupt(what + ": row length " + std::to_string(t.shape[0]) + " not a multiple of " +
                     std::string(traits->name) + "'s block size " +
                     std::to_string(traits->block_elems));
    uint64_t nbytes = 0;
    if (!checked_mul(n_elem / traits->block_elems, traits->block_bytes, &nbytes) ||
        nbytes > SIZE_MAX)
      return corrupt(what + ": byte size overflows");
    t.nbytes = static_cast<size_t>(nbytes);
    TQ_RETURN_IF_ERROR(r.read(&t.offset, what + " offset"));
    if (t.offset % alignment_ != 0)
      return corrupt(what + ": data offset " + std::to_string(t.offset) +
                     " not a multiple of the alignment " + std::to_string(alignment_));
    tensor_index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }

  // The data section starts at the next multiple of the alignment after the tensor infos.
  const uint64_t data_start = (r.pos() + alignment_ - 1) / alignment_ * alignment_;
  for (GgufTensor& t : tensors_) {
    uint64_t begin = 0, end = 0;
    if (!checked_add(data_start, t.offset, &begin) || !checked_add(begin, t.nbytes, &end))
      return out_of_range("tensor " + q(t.name) + ": data offset " + std::to_string(t.offset) +
                          " + " + std::to_string(t.nbytes) + " bytes overflows");
    if (end > size_)
      return out_of_range("tensor " + q(t.name) + ": data [" + std::to_string(begin) + ", " +
                          std::to_string(end) + ") past end of file (size " +
                          std::to_string(size_) + ")");
    t.data = data_ + begin;
  }
  // No two tensors share bytes (llama.cpp's reader goes further and wants them back to back, in
  // order): overlapping data is a corrupt or hostile file, and would alias weights silently.
  std::vector<const GgufTensor*> by_offset;
  by_offset.reserve(tensors_.size());
  for (const GgufTensor& t : tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GgufTensor* a, const GgufTensor* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const GgufTensor& a = *by_offset[i - 1];
    const GgufTensor& b = *by_offset[i];
    if (a.offset + a.nbytes > b.offset)  // both sums checked above
      return corrupt("tensors " + q(a.name) + " and " + q(b.name) + " overlap: data [" +
                     std::to_string(a.offset) + ", " + std::to_string(a.offset + a.nbytes) +
                     ") and [" + std::to_string(b.offset) + ", " +
                     std::to_string(b.offset + b.nbytes) + ")");
  }
  return ok_status();
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].value;
}

const GgufTensor* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace tq::model
