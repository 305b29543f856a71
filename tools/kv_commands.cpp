// Registers the KV cache subcommands: one entry in commands.h / main.cpp for all four.
#include "kv_commands.h"

#include "commands.h"

namespace tq::tools {

void add_kv_commands(CLI::App& app) {
  add_ppl_command(app);
  add_verify_command(app);
  add_compare_command(app);
  add_capacity_command(app);
}

}  // namespace tq::tools
