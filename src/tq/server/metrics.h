// Prometheus metrics of the server in the text exposition format (version 0.0.4): requests by
// route and status, time to first token and inter-token latency histograms recorded by the
// HTTP handlers, and at scrape time the scheduler's counters (tokens, queue, running batch)
// and the KV pool's usage. Thread-safe: handlers record from many threads.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tq/kv/paged_kv_cache.h"
#include "tq/runtime/scheduler.h"

namespace tq::server {

// Cumulative histogram with fixed upper bounds (seconds), as Prometheus clients keep them.
class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double v);
  // Appends # HELP, # TYPE, the _bucket lines (le="+Inf" last), _sum and _count.
  void render(std::string& out, std::string_view name, std::string_view help) const;
  uint64_t count() const;

 private:
  mutable std::mutex mu_;
  std::vector<double> bounds_;    // ascending
  std::vector<uint64_t> counts_;  // [bounds + 1] per bucket, not cumulative
  double sum_ = 0.0;
  uint64_t count_ = 0;
};

class ServerMetrics {
 public:
  ServerMetrics();

  // Routes outside the known set are counted as "other" so labels stay bounded.
  void count_request(std::string_view route, int status);
  void observe_ttft(double seconds) { ttft_.observe(seconds); }
  void observe_inter_token(double seconds) { itl_.observe(seconds); }
  void observe_request(double seconds) { e2e_.observe(seconds); }

  std::string render(const runtime::SchedulerStats& sched, const kv::KvPoolStats& kv) const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;  // (route, status) -> count
  Histogram ttft_;
  Histogram itl_;
  Histogram e2e_;
};

}  // namespace tq::server
