// Prometheus rendering (cumulative buckets, sums, counts, bounded route labels), SSE framing,
// and the log-probabilities the API reports against a float64 log-softmax.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "tq/core/rng.h"
#include "tq/runtime/logprobs.h"
#include "tq/server/metrics.h"
#include "tq/server/sse.h"

namespace tq::server {
namespace {

bool has_line(const std::string& text, const std::string& line) {
  return text.find("\n" + line + "\n") != std::string::npos || text.rfind(line + "\n", 0) == 0;
}

TEST(Metrics, HistogramIsCumulative) {
  Histogram h({0.1, 1.0, 10.0});
  for (double v : {0.05, 0.1, 0.5, 2.0, 20.0, 30.0}) h.observe(v);
  std::string out;
  h.render(out, "x_seconds", "help");
  EXPECT_TRUE(has_line(out, "# TYPE x_seconds histogram")) << out;
  EXPECT_TRUE(has_line(out, "x_seconds_bucket{le=\"0.1\"} 2")) << out;  // le is inclusive
  EXPECT_TRUE(has_line(out, "x_seconds_bucket{le=\"1\"} 3")) << out;
  EXPECT_TRUE(has_line(out, "x_seconds_bucket{le=\"10\"} 4")) << out;
  EXPECT_TRUE(has_line(out, "x_seconds_bucket{le=\"+Inf\"} 6")) << out;
  EXPECT_TRUE(has_line(out, "x_seconds_sum 52.65")) << out;
  EXPECT_TRUE(has_line(out, "x_seconds_count 6")) << out;
  EXPECT_EQ(h.count(), 6u);
}

TEST(Metrics, RenderHasEveryFamily) {
  ServerMetrics m;
  m.count_request("/v1/chat/completions", 200);
  m.count_request("/v1/chat/completions", 200);
  m.count_request("/v1/chat/completions", 400);
  m.count_request("/etc/passwd", 404);  // unknown routes share one label
  m.count_request("/x", 404);
  m.observe_ttft(0.2);
  m.observe_inter_token(0.03);
  runtime::SchedulerStats s;
  s.queued = 3;
  s.running = 2;
  s.generated_tokens = 77;
  s.finished[static_cast<int>(runtime::FinishReason::kCancelled)] = 4;
  kv::KvPoolStats kv;
  kv.pages_total = 100;
  kv.pages_used = 9;
  kv.effective_ratio_vs_f16 = 3.5;
  const std::string out = m.render(s, kv);
  EXPECT_TRUE(has_line(out, "tq_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 2"));
  EXPECT_TRUE(has_line(out, "tq_requests_total{route=\"/v1/chat/completions\",status=\"400\"} 1"));
  EXPECT_TRUE(has_line(out, "tq_requests_total{route=\"other\",status=\"404\"} 2"));
  EXPECT_TRUE(has_line(out, "tq_requests_finished_total{reason=\"cancelled\"} 4"));
  EXPECT_TRUE(has_line(out, "tq_generated_tokens_total 77"));
  EXPECT_TRUE(has_line(out, "tq_queue_depth 3"));
  EXPECT_TRUE(has_line(out, "tq_running_sequences 2"));
  EXPECT_TRUE(has_line(out, "tq_kv_pages_total 100"));
  EXPECT_TRUE(has_line(out, "tq_kv_pages_used 9"));
  EXPECT_TRUE(has_line(out, "tq_kv_compression_ratio 3.5"));
  EXPECT_TRUE(has_line(out, "tq_time_to_first_token_seconds_count 1"));
  EXPECT_TRUE(has_line(out, "tq_inter_token_latency_seconds_count 1"));
  // Every sample line belongs to a family announced by # TYPE.
  size_t pos = 0;
  while (pos < out.size()) {
    const size_t end = out.find('\n', pos);
    const std::string line = out.substr(pos, end - pos);
    pos = end + 1;
    if (line.empty() || line[0] == '#') continue;
    std::string name = line.substr(0, line.find_first_of("{ "));
    for (const char* suffix : {"_bucket", "_sum", "_count"})
      if (name.size() > std::strlen(suffix) &&
          name.compare(name.size() - std::strlen(suffix), std::string::npos, suffix) == 0 &&
          out.find("# TYPE " + name + " ") == std::string::npos)
        name.resize(name.size() - std::strlen(suffix));
    EXPECT_NE(out.find("# TYPE " + name + " "), std::string::npos) << line;
  }
}

TEST(Sse, Framing) {
  EXPECT_EQ(sse_data("{\"a\":1}"), "data: {\"a\":1}\n\n");
  EXPECT_EQ(sse_done(), "data: [DONE]\n\n");
  EXPECT_EQ(sse_comment("keep-alive"), ": keep-alive\n\n");
}

// Named tolerance: float32 logits minus a float64 log-normalizer, rounded to float32.
constexpr double kLogprobTol = 1e-5;

TEST(Logprobs, MatchFloat64LogSoftmax) {
  const uint64_t seed = 77;
  Rng rng(seed);
  for (int vocab : {1, 7, 401, 49157}) {
    std::vector<float> logits(static_cast<size_t>(vocab));
    for (auto& x : logits) x = static_cast<float>(rng.next_u64() % 20000) / 1000.0f - 10.0f;
    logits[static_cast<size_t>(vocab / 2)] = 25.0f;  // a clear winner, large exponent
    double mx = -1e300;
    for (float x : logits) mx = std::max(mx, static_cast<double>(x));
    double sum = 0;
    for (float x : logits) sum += std::exp(static_cast<double>(x) - mx);
    const double log_z = mx + std::log(sum);
    const int32_t token = vocab - 1;
    const auto lp = runtime::token_logprob(logits.data(), vocab, token, 5);
    EXPECT_NEAR(lp.logprob, logits[static_cast<size_t>(token)] - log_z, kLogprobTol)
        << "seed " << seed << " vocab " << vocab;
    ASSERT_EQ(lp.top.size(), static_cast<size_t>(std::min(vocab, 5)));
    EXPECT_EQ(lp.top[0].first, vocab / 2);
    for (size_t i = 0; i < lp.top.size(); ++i) {
      EXPECT_NEAR(lp.top[i].second, logits[static_cast<size_t>(lp.top[i].first)] - log_z,
                  kLogprobTol);
      if (i > 0) EXPECT_GE(lp.top[i - 1].second, lp.top[i].second);
    }
    const auto none = runtime::token_logprob(logits.data(), vocab, token, 0);
    EXPECT_TRUE(none.top.empty());
  }
}

}  // namespace
}  // namespace tq::server
