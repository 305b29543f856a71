// Shared handler helpers (see http_util.h).
#include "tq/server/http_util.h"

#include <random>

#include "tq/core/rng.h"
#include "tq/server/openai_format.h"

namespace tq::server {

void send_json(httplib::Response& res, int status, const nlohmann::json& body) {
  res.status = status;
  res.set_content(dump_json(body), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) {
  if (e.status == 503) res.set_header("Retry-After", "1");
  send_json(res, e.status, e.to_json());
}

ApiError server_error(int status, std::string message, std::string code) {
  ApiError e;
  e.status = status;
  e.message = std::move(message);
  e.type = "server_error";
  e.code = std::move(code);
  return e;
}

std::string random_id(const char* prefix) {
  std::mt19937_64 gen(random_seed());
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id(prefix);
  for (int i = 0; i < 24; ++i) id.push_back(kHex[gen() & 15]);
  return id;
}

}  // namespace tq::server
