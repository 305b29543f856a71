// Request validation and the engine -> client event channel (see request_channel.h).
#include "tq/runtime/request_channel.h"

namespace tq::runtime {

Status GenerationRequest::validate() const {
  if (prompt.empty()) return invalid_argument("request: the prompt has no tokens");
  if (max_tokens < 1) return invalid_argument("request: max_tokens must be >= 1");
  if (logprobs < -1 || logprobs > kMaxTopLogprobs)
    return invalid_argument("request: top logprobs must be in [0, " +
                            std::to_string(kMaxTopLogprobs) + "]");
  for (const auto& s : stop_strings)
    if (s.empty()) return invalid_argument("request: empty stop string");
  return sampler.validate();
}

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kCancelled:
      return "cancelled";
    case FinishReason::kError:
      return "error";
  }
  return "error";
}

void RequestChannel::push(StreamEvent event) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return;  // nothing follows the final event
    if (event.kind == StreamEvent::Kind::kDone) done_ = true;
    events_.push_back(std::move(event));
  }
  cv_.notify_all();
}

bool RequestChannel::pop_all(std::vector<StreamEvent>& out, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_for(lock, timeout, [&] { return !events_.empty(); })) return false;
  for (auto& e : events_) out.push_back(std::move(e));
  events_.clear();
  return true;
}

bool RequestChannel::done() const {
  std::lock_guard<std::mutex> lock(mu_);
  return done_;
}

}  // namespace tq::runtime
