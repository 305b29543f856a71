// TQ_LOG(level, fmt, ...): printf-style logging to stderr. stdout belongs to CLI output.
// The level threshold is the one process-wide setting, written only by the CLI's main.
#pragma once

#include <cstdarg>

namespace tq {

enum class LogLevel { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3 };

void set_log_level(LogLevel level);
LogLevel log_level();
void log_message(LogLevel level, const char* file, int line, const char* fmt, ...)
    __attribute__((format(printf, 4, 5)));

}  // namespace tq

#define TQ_LOG(level, ...)                                                              \
  do {                                                                                  \
    if (static_cast<int>(::tq::LogLevel::level) <= static_cast<int>(::tq::log_level())) \
      ::tq::log_message(::tq::LogLevel::level, __FILE__, __LINE__, __VA_ARGS__);        \
  } while (0)
