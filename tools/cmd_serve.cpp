// tq serve: an OpenAI-compatible HTTP server with continuous batching over the compressed
// paged KV cache (docs/server.md).
//   tq serve --port 8080 -ctk tq4 -ctv tq3 --max-sessions 16 --ctx 4096 --kv-memory 512MiB
//   tq serve --device cuda --max-sessions 32 --ctx 4096 -ctk tq4 -ctv tq3   (on the GPU: one
//     slot per session, no prefix cache, no KV window/sinks/key scaling)
// SIGINT/SIGTERM stop it gracefully: new requests get 503, running ones get --shutdown-timeout
// seconds to finish, the rest are cancelled, and the process exits 0.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>

#include "commands.h"
#include "default_model.h"
#include "device_cli.h"
#include "kv_cli.h"
#include "threads_cli.h"
#include "tq/core/thread_pool.h"
#include "tq/server/engine.h"
#include "tq/server/http_server.h"

namespace tq::tools {
namespace {

struct ServeOptions {
  std::string model = default_model_path();
  std::string model_id;
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string api_key;
  std::string kv_memory = "0";
  int max_sessions = 8;
  int queue = 64;
  int ctx = 2048;
  int threads = default_thread_count();
  int prefill_chunk = 128;
  int step_tokens = 256;
  bool no_prefix_cache = false;
  size_t max_body = size_t{4} << 20;
  double shutdown_timeout = 10.0;
  KvFlags kv;
  DeviceFlag device;
};

// "123", "64KiB", "512MiB", "512M", "2GiB", "2G" -> bytes.
Expected<size_t> parse_bytes(const std::string& s) {
  size_t i = 0;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
  if (i == 0 || i > 15) return invalid_argument("--kv-memory: '" + s + "' is not a byte count");
  const size_t n = std::stoull(s.substr(0, i));
  const std::string unit = s.substr(i);
  if (unit.empty() || unit == "B") return n;
  if (unit == "K" || unit == "KiB" || unit == "k") return n << 10;
  if (unit == "M" || unit == "MiB") return n << 20;
  if (unit == "G" || unit == "GiB") return n << 30;
  return invalid_argument("--kv-memory: unknown unit '" + unit + "' (use KiB, MiB or GiB)");
}

// How long open connections may keep the process after a shutdown has ended every request.
constexpr std::chrono::seconds kCloseGrace{5};

int run_serve(ServeOptions& o) {
  auto config = o.kv.config();
  if (config.ok()) o.device.settle(*config);
  auto kv_memory = parse_bytes(o.kv_memory);
  if (!config.ok() || !kv_memory.ok()) {
    std::fprintf(stderr, "tq serve: %s\n",
                 (config.ok() ? kv_memory.status() : config.status()).to_string().c_str());
    return 2;
  }
  server::EngineOptions eo;
  eo.device = o.device.cuda() ? server::EngineDevice::kCuda : server::EngineDevice::kCpu;
  eo.kv = *config;
  eo.kv_memory_bytes = *kv_memory;
  eo.threads = o.threads;
  eo.prefix_caching = !o.no_prefix_cache;
  eo.model_id = o.model_id;
  eo.scheduler.max_sessions = o.max_sessions;
  eo.scheduler.max_queue = o.queue;
  eo.scheduler.context = o.ctx;
  eo.scheduler.prefill_chunk = o.prefill_chunk;
  eo.scheduler.step_tokens = std::max(o.step_tokens, o.max_sessions);
  server::HttpOptions ho;
  ho.host = o.host;
  ho.port = o.port;
  ho.api_key = o.api_key;
  ho.max_body_bytes = o.max_body;
  if (Status st = ho.validate(); !st.ok()) {
    std::fprintf(stderr, "tq serve: %s\n", st.to_string().c_str());
    return 2;
  }

  // Signals go to one thread that waits for them; every thread started from here inherits
  // the mask, so none is interrupted mid-step.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a client that hangs up is a failed write, not a dead server

  const server::DeviceOpener open_device =
      [tuning = o.device.tuning()](const model::Model& m, const backend::DeviceModelOptions& d) {
        return open_cuda_model(m, d.kv, d.max_context, d.max_batch, d.max_sequences, tuning);
      };
  auto engine = server::Engine::load(o.model, eo, open_device);
  if (!engine.ok()) {
    std::fprintf(stderr, "tq serve: %s\n", engine.status().to_string().c_str());
    return 1;
  }
  server::HttpServer http(**engine, ho);
  if (Status st = http.bind(); !st.ok()) {
    std::fprintf(stderr, "tq serve: %s\n", st.to_string().c_str());
    return 1;
  }
  const server::Engine& e = **engine;
  std::fprintf(stderr, "tq serve: model %s on %s, kv %s, %s\n", e.model_id().c_str(),
               e.device_description().c_str(), config->to_string().c_str(),
               e.options().scheduler.to_string().c_str());
  if (o.device.cuda() && e.options().prefix_caching)
    std::fprintf(stderr,
                 "tq serve: prefix caching on cuda: a new prompt takes over or copies the slot "
                 "holding its longest prefix\n");
  std::printf("tq serve: listening on http://%s:%d\n", o.host.c_str(), http.port());
  std::fflush(stdout);

  std::atomic<bool> served{false};
  std::thread waiter([&] {
    const timespec poll{0, 200 * 1000 * 1000};
    while (!served.load()) {
      const int sig = sigtimedwait(&stop_signals, nullptr, &poll);
      if (sig == SIGINT || sig == SIGTERM) {
        std::fprintf(stderr, "tq serve: %s, shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
        http.shutdown(std::chrono::milliseconds(static_cast<int64_t>(o.shutdown_timeout * 1000)));
        // The socket is closed and the requests ended, but httplib joins every connection's
        // worker, and a client that trickles a byte within each read timeout keeps one forever.
        const auto deadline = std::chrono::steady_clock::now() + kCloseGrace;
        while (!served.load()) {
          if (std::chrono::steady_clock::now() >= deadline) {
            std::fprintf(stderr,
                         "tq serve: a connection is still open %lld s after shutdown; exiting\n",
                         static_cast<long long>(kCloseGrace.count()));
            std::fflush(nullptr);
            std::_Exit(0);
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        return;
      }
    }
  });
  const Status st = http.serve();
  served.store(true);
  waiter.join();
  if (!st.ok()) {
    std::fprintf(stderr, "tq serve: %s\n", st.to_string().c_str());
    return 1;
  }
  std::fprintf(stderr, "tq serve: stopped\n");
  return 0;
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto o = std::make_shared<ServeOptions>();
  auto* cmd = app.add_subcommand("serve",
                                 "OpenAI-compatible HTTP server with continuous "
                                 "batching over the compressed KV cache");
  cmd->add_option("-m,--model", o->model, "GGUF model file")->capture_default_str();
  cmd->add_option("--model-id", o->model_id, "Name in /v1/models (default: the file's stem)");
  cmd->add_option("--host", o->host, "Address to listen on")->capture_default_str();
  cmd->add_option("--port", o->port, "Port (0: any free port, printed on stdout)")
      ->capture_default_str();
  cmd->add_option("--api-key", o->api_key, "Require 'Authorization: Bearer KEY'");
  cmd->add_option("--ctx", o->ctx, "Tokens per sequence (prompt + completion)")
      ->capture_default_str();
  cmd->add_option("--max-sessions", o->max_sessions, "Sequences in the running batch at most")
      ->capture_default_str();
  cmd->add_option("--queue", o->queue, "Requests that may wait beyond that (then 503)")
      ->capture_default_str();
  cmd->add_option("--kv-memory", o->kv_memory,
                  "KV cache bytes (e.g. 512MiB, 2GiB; 0: max-sessions full contexts)")
      ->capture_default_str();
  add_threads_option(cmd, o->threads, "Compute threads");
  cmd->add_option("--prefill-chunk", o->prefill_chunk, "Prompt tokens per sequence per step")
      ->capture_default_str();
  cmd->add_option("--step-tokens", o->step_tokens, "Tokens per batched step at most")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_flag("--no-prefix-cache", o->no_prefix_cache, "Do not share cached prompt prefixes");
  cmd->add_option("--max-body", o->max_body, "Largest request body in bytes (then 413)")
      ->capture_default_str();
  cmd->add_option("--shutdown-timeout", o->shutdown_timeout,
                  "Seconds running requests get to finish on SIGINT/SIGTERM")
      ->capture_default_str();
  o->kv.add_to(cmd);
  o->device.add_to(cmd);
  o->device.add_weights_to(cmd);
  o->device.add_tuning_to(cmd);
  cmd->callback([o] {
    const int rc = run_serve(*o);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace tq::tools
