// Each subcommand of the tq CLI lives in its own tools/cmd_<name>.cpp and registers itself
// through one of these functions; main.cpp calls them all. A handler returns the exit code.
#pragma once

#include <CLI/CLI.hpp>

namespace tq::tools {

void add_info_command(CLI::App& app);
void add_quant_bench_command(CLI::App& app);

}  // namespace tq::tools
