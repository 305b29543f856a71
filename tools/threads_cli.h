// The thread-count option of the subcommands that compute on the CPU (-t/--threads): one
// definition, so every command refuses the same out-of-range counts with the same message.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

#include "tq/core/thread_pool.h"

namespace tq::tools {

inline CLI::Option* add_threads_option(CLI::App* cmd, int& threads, const std::string& help,
                                       const std::string& names = "-t,--threads") {
  return cmd->add_option(names, threads, help)
      ->capture_default_str()
      ->check(CLI::Range(1, kMaxThreads));
}

}  // namespace tq::tools
