// JSON fragments for the subcommands' --json lines (printf-built: the tools do not depend on a
// JSON library, which the GPU build leaves out): numbers that are null when not finite (JSON has
// no NaN or infinity) and strings quoted and escaped (a file name may hold any byte but NUL).
#pragma once

#include <cmath>
#include <cstdio>
#include <string>
#include <string_view>

namespace tq::tools {

inline std::string json_number(double x, const char* fmt = "%.6f") {
  if (!std::isfinite(x)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, x);
  return buf;
}

// s quoted, with '"', '\' and the control characters escaped; other bytes as they are (JSON text
// is UTF-8; a name that is not stays byte-exact, which a strict parser may refuse).
inline std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", u);
      out += buf;
    } else {
      out += c;
    }
  }
  out += '"';
  return out;
}

}  // namespace tq::tools
