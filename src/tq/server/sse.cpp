// SSE framing (see sse.h).
#include "tq/server/sse.h"

namespace tq::server {

std::string sse_data(std::string_view payload) {
  std::string s;
  s.reserve(payload.size() + 8);
  s.append("data: ");
  s.append(payload);
  s.append("\n\n");
  return s;
}

std::string sse_done() { return "data: [DONE]\n\n"; }

std::string sse_comment(std::string_view text) {
  std::string s(": ");
  s.append(text);
  s.append("\n\n");
  return s;
}

}  // namespace tq::server
