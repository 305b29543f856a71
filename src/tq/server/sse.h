// Server-sent events as OpenAI streams them: one "data: <json>\n\n" event per chunk, a final
// "data: [DONE]\n\n", and ": comment" lines as keep-alives (clients ignore them; writing one
// is how a silent stream notices that its client has gone).
#pragma once

#include <string>
#include <string_view>

namespace tq::server {

std::string sse_data(std::string_view payload);  // payload must not contain "\n\n"
std::string sse_done();
std::string sse_comment(std::string_view text);

}  // namespace tq::server
