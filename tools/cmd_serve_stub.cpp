// `tq serve` in a build without the server (TQ_BUILD_SERVER=OFF, or cpp-httplib/nlohmann-json
// missing): the subcommand exists and says why it cannot run.
#ifndef TQ_HAVE_SERVER
#include <cstdio>

#include "commands.h"

namespace tq::tools {

void add_serve_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("serve", "OpenAI-compatible HTTP server (not in this build)");
  cmd->allow_extras();
  cmd->callback([] {
    std::fprintf(stderr,
                 "tq serve: this build has no server (configure with "
                 "-DTQ_BUILD_SERVER=ON and cpp-httplib + nlohmann-json installed)\n");
    throw CLI::RuntimeError(2);
  });
}

}  // namespace tq::tools
#endif
