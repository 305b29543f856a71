// Status and Expected<T>: how every fallible call in tq reports failure (C++20 has no
// std::expected). Library code never throws on bad input and never exits; errors carry context.
#pragma once

#include <cstdio>
#include <string>
#include <utility>
#include <variant>

namespace tq {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,    // a caller's value is out of range or malformed
  kNotFound,           // a file, key or tensor is missing
  kOutOfRange,         // an offset or size points past the end of its buffer
  kUnsupported,        // valid input the engine does not implement (type, arch, head dim)
  kIo,                 // the operating system refused (open, mmap, read)
  kCorrupt,            // a file is structurally broken
  kResourceExhausted,  // memory or KV blocks ran out
  kInternal,           // a bug: an invariant broke
};

const char* status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok_status() { return Status(); }
  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "Corrupt: tensor 'blk.0.attn_q.weight': data offset 123 past end of file (size 100)"
  std::string to_string() const;

  // Prefixes context ("loading model.gguf") to the message, keeping the code.
  Status with_context(const std::string& context) const {
    if (ok()) return *this;
    return Status(code_, context + ": " + message_);
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status ok_status() { return Status(); }
inline Status invalid_argument(std::string m) {
  return {StatusCode::kInvalidArgument, std::move(m)};
}
inline Status not_found(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status out_of_range(std::string m) { return {StatusCode::kOutOfRange, std::move(m)}; }
inline Status unsupported(std::string m) { return {StatusCode::kUnsupported, std::move(m)}; }
inline Status io_error(std::string m) { return {StatusCode::kIo, std::move(m)}; }
inline Status corrupt(std::string m) { return {StatusCode::kCorrupt, std::move(m)}; }
inline Status resource_exhausted(std::string m) {
  return {StatusCode::kResourceExhausted, std::move(m)};
}
inline Status internal_error(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

// A value or the Status that explains why there is none.
template <typename T>
class [[nodiscard]] Expected {
 public:
  Expected(T value) : v_(std::move(value)) {}        // NOLINT: implicit by design
  Expected(Status status) : v_(std::move(status)) {  // NOLINT: implicit by design
    if (std::get<Status>(v_).ok()) v_ = Status(StatusCode::kInternal, "Expected built from OK");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return ok(); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace tq

#define TQ_STATUS_CONCAT_INNER(a, b) a##b
#define TQ_STATUS_CONCAT(a, b) TQ_STATUS_CONCAT_INNER(a, b)

#define TQ_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::tq::Status tq_status_ = (expr);        \
    if (!tq_status_.ok()) return tq_status_; \
  } while (0)

// TQ_ASSIGN_OR_RETURN(auto x, make_x());
#define TQ_ASSIGN_OR_RETURN(lhs, expr) \
  TQ_ASSIGN_OR_RETURN_IMPL(TQ_STATUS_CONCAT(tq_expected_, __LINE__), lhs, expr)
#define TQ_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return tmp.status();            \
  lhs = std::move(tmp).value()

// Invariants only (bugs), never input validation.
#ifndef NDEBUG
#define TQ_DCHECK(cond)                                                                 \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::fprintf(stderr, "%s:%d: TQ_DCHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      __builtin_trap();                                                                 \
    }                                                                                   \
  } while (0)
#else
#define TQ_DCHECK(cond) \
  do {                  \
  } while (0)
#endif
