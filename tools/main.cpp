// tq: the command-line entry point. Only here (and in HTTP handlers) are exceptions caught.
#include <cstdio>
#include <exception>

#include "commands.h"
#include "tq/core/log.h"

int main(int argc, char** argv) {
  CLI::App app{"tq: LLM inference with a TurboQuant-compressed KV cache"};
  app.require_subcommand(1);
  app.set_version_flag("--version", TQ_VERSION);
  int verbosity = 0;
  app.add_flag("-v,--verbose", verbosity, "More log output on stderr (-v info, -vv debug)");
  app.parse_complete_callback([&] {
    tq::set_log_level(verbosity >= 2   ? tq::LogLevel::kDebug
                      : verbosity == 1 ? tq::LogLevel::kInfo
                                       : tq::LogLevel::kWarn);
  });

  tq::tools::add_info_command(app);
  tq::tools::add_quant_bench_command(app);
  tq::tools::add_kv_commands(app);
  tq::tools::add_serve_command(app);
  tq::tools::add_run_command(app);
  tq::tools::add_make_model_command(app);
  tq::tools::add_bench_command(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tq: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
