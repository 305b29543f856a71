#include "tq/quant/format.h"

#include <charconv>

namespace tq::quant {

size_t Format::bytes_per_vector(int dim) const {
  if (!validate(dim).ok()) return 0;
  const size_t d = static_cast<size_t>(dim);
  switch (kind) {
    case FormatKind::kF16:
      return 2 * d;
    case FormatKind::kQ8_0:
      return d / 32 * 34;
    case FormatKind::kQ4_0:
      return d / 32 * 18;
    case FormatKind::kTqMse:
      return d * bits / 8 + 2;
    case FormatKind::kTqProd:
      return d * (bits - 1) / 8 + d / 8 + 4;
  }
  return 0;
}

double Format::bits_per_element(int dim) const {
  return dim > 0 ? static_cast<double>(bytes_per_vector(dim)) * 8.0 / dim : 0.0;
}

Status Format::validate(int dim) const {
  if (dim <= 0 || dim > 1024)
    return invalid_argument("head dim " + std::to_string(dim) + " out of range");
  switch (kind) {
    case FormatKind::kF16:
      return ok_status();
    case FormatKind::kQ8_0:
    case FormatKind::kQ4_0:
      if (dim % 32 != 0)
        return unsupported(name() + " needs a head dim divisible by 32, got " +
                           std::to_string(dim));
      return ok_status();
    case FormatKind::kTqMse:
    case FormatKind::kTqProd:
      if (dim % 8 != 0)
        return unsupported(name() + " needs a head dim divisible by 8, got " + std::to_string(dim));
      if (code_bits() < 1 || code_bits() > 8)
        return invalid_argument(name() + ": code bits must be 1..8");
      return ok_status();
  }
  return internal_error("unknown format kind");
}

std::string Format::name() const {
  switch (kind) {
    case FormatKind::kF16:
      return "f16";
    case FormatKind::kQ8_0:
      return "q8_0";
    case FormatKind::kQ4_0:
      return "q4_0";
    case FormatKind::kTqMse:
      return "tq" + std::to_string(bits);
    case FormatKind::kTqProd:
      return "tq" + std::to_string(bits) + "j";
  }
  return "?";
}

Expected<Format> parse_format(std::string_view s) {
  const auto bad = [&] {
    return invalid_argument("unknown KV format '" + std::string(s) +
                            "' (expected f16, q8_0, q4_0, tq1..tq8, tq2j..tq8j)");
  };
  if (s == "f16") return Format{FormatKind::kF16, 16};
  if (s == "q8_0") return Format{FormatKind::kQ8_0, 8};
  if (s == "q4_0") return Format{FormatKind::kQ4_0, 4};
  if (s.size() < 3 || s.substr(0, 2) != "tq") return bad();
  std::string_view rest = s.substr(2);
  const bool prod = rest.back() == 'j';
  if (prod) rest.remove_suffix(1);
  int bits = 0;
  auto [ptr, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), bits);
  if (ec != std::errc() || ptr != rest.data() + rest.size()) return bad();
  Format f{prod ? FormatKind::kTqProd : FormatKind::kTqMse, bits};
  if (f.code_bits() < 1 || f.code_bits() > 8) return bad();
  return f;
}

}  // namespace tq::quant
