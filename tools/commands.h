// Each subcommand of the tq CLI lives in its own tools/cmd_<name>.cpp and registers itself
// through one of these functions; main.cpp calls them all. A handler returns the exit code.
#pragma once

#include <CLI/CLI.hpp>

namespace tq::tools {

void add_info_command(CLI::App& app);
void add_quant_bench_command(CLI::App& app);
void add_kv_commands(CLI::App& app);         // ppl, verify, compare, capacity (kv_commands.h)
void add_serve_command(CLI::App& app);       // tools/cmd_serve.cpp (stub: cmd_serve_stub.cpp)
void add_run_command(CLI::App& app);         // tools/cmd_run.cpp
void add_make_model_command(CLI::App& app);  // tools/cmd_make_model.cpp
void add_bench_command(CLI::App& app);       // tools/cmd_bench.cpp (bench decode)
void add_bench_concurrent_command(CLI::App* bench);  // tools/cmd_bench_concurrent.cpp
void add_bench_voice_command(CLI::App* bench);       // tools/cmd_bench_voice.cpp

}  // namespace tq::tools
