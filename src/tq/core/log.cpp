#include "tq/core/log.h"

#include <atomic>
#include <cstdio>

namespace tq {
namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::kWarn)};
const char* level_name(LogLevel level) {
  switch (level) {
    case LogLevel::kError:
      return "error";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kDebug:
      return "debug";
  }
  return "?";
}
}  // namespace

void set_log_level(LogLevel level) { g_level.store(static_cast<int>(level)); }
LogLevel log_level() { return static_cast<LogLevel>(g_level.load(std::memory_order_relaxed)); }

void log_message(LogLevel level, const char* file, int line, const char* fmt, ...) {
  char buf[2048];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, args);
  va_end(args);
  if (level == LogLevel::kDebug) {
    std::fprintf(stderr, "[tq %s] %s:%d: %s\n", level_name(level), file, line, buf);
  } else {
    std::fprintf(stderr, "[tq %s] %s\n", level_name(level), buf);
  }
}

}  // namespace tq
