// Prometheus text rendering (see metrics.h).
#include "tq/server/metrics.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>

namespace tq::server {
namespace {

std::string fmt_double(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

void header(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
  out.append("# HELP ").append(name).append(" ").append(help).append("\n");
  out.append("# TYPE ").append(name).append(" ").append(type).append("\n");
}

void sample(std::string& out, std::string_view name, double v) {
  out.append(name).append(" ").append(fmt_double(v)).append("\n");
}

void metric(std::string& out, std::string_view name, std::string_view type, std::string_view help,
            double v) {
  header(out, name, type, help);
  sample(out, name, v);
}

constexpr std::string_view kRoutes[] = {
    "/v1/chat/completions", "/v1/completions", "/v1/models", "/health",    "/v1/capacity",
    "/v1/kv-stats",         "/metrics",        "/tokenize",  "/detokenize"};

}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {
  std::sort(bounds_.begin(), bounds_.end());
}

void Histogram::observe(double v) {
  const size_t i =
      static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  std::lock_guard<std::mutex> lock(mu_);
  ++counts_[i];
  sum_ += v;
  ++count_;
}

uint64_t Histogram::count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return count_;
}

void Histogram::render(std::string& out, std::string_view name, std::string_view help) const {
  std::lock_guard<std::mutex> lock(mu_);
  header(out, name, "histogram", help);
  uint64_t cumulative = 0;
  const std::string bucket = std::string(name) + "_bucket{le=\"";
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    out.append(bucket).append(fmt_double(bounds_[i])).append("\"} ");
    out.append(std::to_string(cumulative)).append("\n");
  }
  cumulative += counts_.back();
  out.append(bucket).append("+Inf\"} ").append(std::to_string(cumulative)).append("\n");
  sample(out, std::string(name) + "_sum", sum_);
  out.append(name).append("_count ").append(std::to_string(count_)).append("\n");
}

ServerMetrics::ServerMetrics()
    : ttft_({0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}),
      itl_({0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5}),
      e2e_({0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}) {}

void ServerMetrics::count_request(std::string_view route, int status) {
  const bool known = std::find(std::begin(kRoutes), std::end(kRoutes), route) != std::end(kRoutes);
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[{known ? std::string(route) : std::string("other"), status}];
}

std::string ServerMetrics::render(const runtime::SchedulerStats& s,
                                  const kv::KvPoolStats& kv) const {
  std::string out;
  header(out, "tq_requests_total", "counter", "HTTP requests answered, by route and status.");
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [key, n] : requests_)
      out.append("tq_requests_total{route=\"")
          .append(key.first)
          .append("\",status=\"")
          .append(std::to_string(key.second))
          .append("\"} ")
          .append(std::to_string(n))
          .append("\n");
  }
  header(out, "tq_requests_finished_total", "counter",
         "Generation requests ended by the engine, by finish reason.");
  for (int r = 0; r < 4; ++r)
    out.append("tq_requests_finished_total{reason=\"")
        .append(runtime::finish_reason_name(static_cast<runtime::FinishReason>(r)))
        .append("\"} ")
        .append(std::to_string(s.finished[r]))
        .append("\n");
  metric(out, "tq_requests_rejected_total", "counter",
         "Requests refused with 503 (queue full or shutting down).", double(s.rejected));
  metric(out, "tq_prompt_tokens_total", "counter", "Prompt tokens admitted (cached included).",
         double(s.prompt_tokens));
  metric(out, "tq_prompt_cached_tokens_total", "counter",
         "Prompt tokens taken from the prefix cache instead of computed.",
         double(s.prompt_cached_tokens));
  metric(out, "tq_generated_tokens_total", "counter", "Tokens generated.",
         double(s.generated_tokens));
  metric(out, "tq_scheduler_steps_total", "counter", "Batched forward steps run.", double(s.steps));
  metric(out, "tq_scheduler_step_tokens_total", "counter",
         "Tokens run through the model in all steps.", double(s.step_tokens));
  metric(out, "tq_queue_depth", "gauge", "Requests waiting for a session slot or KV pages.",
         s.queued);
  metric(out, "tq_running_sequences", "gauge", "Sequences in the running batch.", s.running);
  metric(out, "tq_kv_pages_total", "gauge", "Pages in the KV pool.", kv.pages_total);
  metric(out, "tq_kv_pages_used", "gauge", "KV pages held by running sequences.", kv.pages_used);
  metric(out, "tq_kv_pages_cached", "gauge",
         "KV pages kept only by the prefix cache (reclaimable).", kv.pages_cached);
  metric(out, "tq_kv_pages_free", "gauge", "KV pages on the free list.", kv.pages_free);
  metric(out, "tq_kv_pages_reserved", "gauge", "KV pages running sequences may still allocate.",
         double(s.reserved_pages));
  metric(out, "tq_kv_arena_bytes", "gauge", "Bytes of the KV pool arena.", double(kv.arena_bytes));
  metric(out, "tq_kv_used_bytes", "gauge", "Bytes of KV pages held by sequences.",
         double(kv.used_bytes));
  metric(out, "tq_kv_exact_bytes", "gauge", "Bytes of f16 sink and window rows.",
         double(kv.exact_bytes));
  metric(out, "tq_kv_tokens", "gauge", "Tokens held by live sequences.", double(kv.tokens));
  metric(out, "tq_kv_compression_ratio", "gauge", "f16 bytes of live tokens / bytes they take now.",
         kv.effective_ratio_vs_f16);
  metric(out, "tq_kv_formats_compression_ratio", "gauge",
         "f16 bytes / bytes of a full page in the configured formats.", kv.formats_ratio_vs_f16);
  metric(out, "tq_kv_prefix_hit_tokens_total", "counter",
         "Tokens taken from the prefix cache (KV pool counter).", double(kv.prefix_hit_tokens));
  ttft_.render(out, "tq_time_to_first_token_seconds",
               "Seconds from request arrival to its first generated token.");
  itl_.render(out, "tq_inter_token_latency_seconds",
              "Seconds between consecutive generated tokens of a request.");
  e2e_.render(out, "tq_request_duration_seconds",
              "Seconds from request arrival to its last token.");
  return out;
}

}  // namespace tq::server
