// POST /v1/chat/completions and /v1/completions: validate, build the prompt, submit it to the
// scheduler, then either wait for the whole answer or stream it as SSE chunks. A stream whose
// client goes away (a failed write, or httplib dropping the response) cancels its request, so
// the engine frees its KV pages at the next step.
#pragma once

#include <httplib.h>

#include "tq/server/engine.h"
#include "tq/server/metrics.h"
#include "tq/server/openai_schema.h"

namespace tq::server {

class CompletionHandler {
 public:
  CompletionHandler(Engine& engine, ServerMetrics& metrics) : engine_(engine), metrics_(metrics) {}
  // Never throws for bad input; every failure becomes an OpenAI error body.
  void handle(const httplib::Request& req, httplib::Response& res, Endpoint endpoint);

 private:
  Engine& engine_;
  ServerMetrics& metrics_;
};

}  // namespace tq::server
