// The vector formats a KV cache entry (one head's key or value, head_dim elements) can be stored
// in, and their exact byte sizes. docs/formats.md documents every byte layout; the CPU codecs,
// the CUDA kernels and the paged cache all follow it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "tq/core/status.h"

namespace tq::quant {

enum class FormatKind : uint8_t {
  kF16,     // IEEE half per element
  kQ8_0,    // per 32 elements: fp16 scale + 32 x int8 (ggml's block_q8_0)
  kQ4_0,    // per 32 elements: fp16 scale + 16 bytes of nibbles (ggml's block_q4_0)
  kTqMse,   // TurboQuant_mse: `bits`-bit Lloyd-Max codes of the rotated unit vector + norm
  kTqProd,  // TurboQuant_prod: (bits-1)-bit mse codes + 1-bit QJL signs + norm + residual norm
};

struct Format {
  FormatKind kind = FormatKind::kF16;
  int bits = 16;  // total bits per coordinate for tq formats (tq3j: bits = 3, codes use 2)

  // The mse code width: bits for kTqMse, bits - 1 for kTqProd.
  int code_bits() const { return kind == FormatKind::kTqProd ? bits - 1 : bits; }
  bool is_tq() const { return kind == FormatKind::kTqMse || kind == FormatKind::kTqProd; }
  bool has_qjl() const { return kind == FormatKind::kTqProd; }

  // Stored bytes for one vector of `dim` elements (fp16 norms). 0 if unsupported.
  size_t bytes_per_vector(int dim) const;
  // bytes_per_vector * 8 / dim.
  double bits_per_element(int dim) const;
  // Checks the format can store vectors of this dim (q8_0/q4_0 need dim % 32 == 0, tq needs
  // dim % 8 == 0 and 1 <= code_bits <= 8).
  Status validate(int dim) const;
  // "f16", "q8_0", "q4_0", "tq4", "tq3j".
  std::string name() const;

  bool operator==(const Format&) const = default;
};

// Parses the names above; error lists the accepted ones.
Expected<Format> parse_format(std::string_view name);

inline constexpr Format kFormatF16{FormatKind::kF16, 16};

}  // namespace tq::quant
