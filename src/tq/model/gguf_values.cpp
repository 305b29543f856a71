// GgufFile's typed getters: one place that decides which stored types convert to which C++
// types, so every caller gets the same NotFound / InvalidArgument answers.
#include <cstdint>
#include <string>

#include "tq/model/gguf.h"

namespace tq::model {
namespace {

bool is_unsigned(GgufValueType t) {
  return t == GgufValueType::kU8 || t == GgufValueType::kU16 || t == GgufValueType::kU32 ||
         t == GgufValueType::kU64;
}
bool is_signed(GgufValueType t) {
  return t == GgufValueType::kI8 || t == GgufValueType::kI16 || t == GgufValueType::kI32 ||
         t == GgufValueType::kI64;
}
bool is_float(GgufValueType t) { return t == GgufValueType::kF32 || t == GgufValueType::kF64; }

Status type_mismatch(std::string_view key, const GgufValue& v, const char* expected) {
  std::string got = gguf_value_type_name(v.type);
  if (v.type == GgufValueType::kArray)
    got += std::string(" of ") + gguf_value_type_name(v.array_type);
  return invalid_argument("metadata '" + std::string(key) + "' has type " + got + ", expected " +
                          expected);
}

Expected<int64_t> as_int(std::string_view key, const GgufValue& v) {
  if (is_signed(v.type)) return v.i;
  if (is_unsigned(v.type)) {
    if (v.u > static_cast<uint64_t>(INT64_MAX))
      return out_of_range("metadata '" + std::string(key) + "' = " + std::to_string(v.u) +
                          " does not fit in int64");
    return static_cast<int64_t>(v.u);
  }
  return type_mismatch(key, v, "an integer");
}

Expected<double> as_float(std::string_view key, const GgufValue& v) {
  if (is_float(v.type)) return v.f;
  if (is_signed(v.type)) return static_cast<double>(v.i);
  if (is_unsigned(v.type)) return static_cast<double>(v.u);
  return type_mismatch(key, v, "a number");
}

Status missing(std::string_view key) {
  return not_found("metadata key '" + std::string(key) + "' not found");
}

}  // namespace

Expected<std::string> GgufFile::get_string(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return missing(key);
  if (v->type != GgufValueType::kString) return type_mismatch(key, *v, "string");
  return v->s;
}

Expected<int64_t> GgufFile::get_int(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return missing(key);
  return as_int(key, *v);
}

Expected<double> GgufFile::get_float(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return missing(key);
  return as_float(key, *v);
}

Expected<bool> GgufFile::get_bool(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return missing(key);
  if (v->type != GgufValueType::kBool) return type_mismatch(key, *v, "bool");
  return v->i != 0;
}

Expected<std::vector<std::string>> GgufFile::get_string_array(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return missing(key);
  if (v->type != GgufValueType::kArray || v->array_type != GgufValueType::kString)
    return type_mismatch(key, *v, "array of string");
  std::vector<std::string> out;
  out.reserve(v->array.size());
  for (const GgufValue& e : v->array) out.push_back(e.s);
  return out;
}

Expected<std::vector<double>> GgufFile::get_float_array(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return missing(key);
  const GgufValueType et = v->array_type;
  if (v->type != GgufValueType::kArray || !(is_float(et) || is_signed(et) || is_unsigned(et)))
    return type_mismatch(key, *v, "array of numbers");
  std::vector<double> out;
  out.reserve(v->array.size());
  for (const GgufValue& e : v->array) {
    TQ_ASSIGN_OR_RETURN(const double x, as_float(key, e));
    out.push_back(x);
  }
  return out;
}

Expected<std::vector<int64_t>> GgufFile::get_int_array(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return missing(key);
  const GgufValueType et = v->array_type;
  if (v->type != GgufValueType::kArray || !(is_signed(et) || is_unsigned(et)))
    return type_mismatch(key, *v, "array of integers");
  std::vector<int64_t> out;
  out.reserve(v->array.size());
  for (const GgufValue& e : v->array) {
    TQ_ASSIGN_OR_RETURN(const int64_t x, as_int(key, e));
    out.push_back(x);
  }
  return out;
}

Expected<int64_t> GgufFile::get_int_or(std::string_view key, int64_t def) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return def;
  return as_int(key, *v);
}

Expected<double> GgufFile::get_float_or(std::string_view key, double def) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return def;
  return as_float(key, *v);
}

}  // namespace tq::model
