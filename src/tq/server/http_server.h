// The HTTP front of tq serve on cpp-httplib: routes, API-key check, body size limit, OpenAI
// error bodies for every failure (unknown route 404, too large 413, bad key 401, handler
// exceptions 500), request metrics, and a graceful shutdown that drains the scheduler before
// the listening socket closes. httplib stays behind this header.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "tq/core/status.h"
#include "tq/server/engine.h"

namespace tq::server {

struct HttpOptions {
  static constexpr int kMaxHttpThreads = 16384;

  std::string host = "127.0.0.1";
  int port = 8080;      // 0: any free port (see HttpServer::port)
  std::string api_key;  // non-empty: every route but /health and /metrics needs it
  size_t max_body_bytes = size_t{4} << 20;
  int http_threads = 0;  // 0: enough for every session, the queue and idle keep-alives

  Status validate() const;
};

class HttpServer {
 public:
  HttpServer(Engine& engine, const HttpOptions& options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds the listening socket; port() is then the real port.
  Status bind();
  int port() const;
  // Serves until shutdown(); call after bind().
  Status serve();
  // Stops taking requests (503), waits up to `grace` for those in flight, cancels the rest,
  // then closes the socket so serve() returns. Safe from any thread, once.
  void shutdown(std::chrono::milliseconds grace);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tq::server
