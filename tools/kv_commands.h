// The KV cache quality and capacity subcommands (tq ppl, verify, compare, capacity), registered
// together through add_kv_commands (commands.h).
#pragma once

#include <CLI/CLI.hpp>

namespace tq::tools {

void add_ppl_command(CLI::App& app);
void add_verify_command(CLI::App& app);
void add_compare_command(CLI::App& app);
void add_capacity_command(CLI::App& app);

}  // namespace tq::tools
