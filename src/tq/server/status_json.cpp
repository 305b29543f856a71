// JSON views of the engine's state (see status_json.h).
#include "tq/server/status_json.h"

#include "tq/kv/kv_bytes.h"

namespace tq::server {

using json = nlohmann::json;

json model_json(const Engine& engine, int64_t created) {
  const model::ModelConfig& c = engine.model().config();
  const kv::KvConfig& kv = engine.step_model().kv_config();
  return json{{"id", engine.model_id()},
              {"object", "model"},
              {"created", created},
              {"owned_by", "tq"},
              {"meta",
               {{"arch", c.arch_name},
                {"n_layers", c.n_layers},
                {"n_vocab", c.vocab_size},
                {"n_ctx", engine.context()},
                {"n_ctx_train", c.context_length},
                {"kv_cache", kv.to_string()},
                {"device", engine.device_description()},
                {"prefix_caching", engine.step_model().prefix_caching()}}}};
}

json models_json(const Engine& engine, int64_t created) {
  return json{{"object", "list"}, {"data", json::array({model_json(engine, created)})}};
}

json capacity_json(const Engine& engine) {
  const runtime::SchedulerCapacity c = engine.scheduler().capacity();
  json j{{"context", c.context},
         {"max_sessions", c.max_sessions},
         {"running", c.running},
         {"queued", c.queued},
         {"sessions_fit_now", c.sessions_fit_now},
         {"sessions_fit_when_idle", c.sessions_fit_empty},
         {"pages_total", c.pages_total},
         {"pages_used", c.pages_used},
         {"pages_reserved", c.pages_reserved},
         {"pages_per_session", c.pages_per_session},
         {"page_bytes", c.page_bytes},
         {"bytes_per_session",
          c.page_bytes * static_cast<size_t>(c.pages_per_session) + c.exact_bytes_per_session},
         {"exact_bytes_per_session", c.exact_bytes_per_session}};
  const runtime::StepModel& step = engine.step_model();
  auto bpt = kv::kv_bytes_per_token(step.kv_config(), step.shape(), c.context);
  if (bpt.ok()) {
    j["kv_bytes_per_token"] = bpt->amortized;
    j["f16_bytes_per_token"] = bpt->f16;
    j["ratio_vs_f16"] = bpt->ratio_vs_f16();
  }
  return j;
}

json kv_stats_json(const Engine& engine) {
  const runtime::StepModel& step = engine.step_model();
  const kv::KvPoolStats s = step.kv_stats();
  json per_format = json::array();
  for (const auto& f : s.per_format) per_format.push_back({{"format", f.what}, {"bytes", f.bytes}});
  return json{{"config", step.kv_config().to_string()},
              {"device", engine.device_description()},
              {"prefix_caching", step.prefix_caching()},
              {"block_tokens", s.block_tokens},
              {"pages_total", s.pages_total},
              {"pages_used", s.pages_used},
              {"pages_cached", s.pages_cached},
              {"pages_free", s.pages_free},
              {"page_bytes", s.page_bytes},
              {"arena_bytes", s.arena_bytes},
              {"used_bytes", s.used_bytes},
              {"cached_bytes", s.cached_bytes},
              {"exact_bytes", s.exact_bytes},
              {"prefix_sink_bytes", s.prefix_sink_bytes},
              {"sequences", s.sequences},
              {"tokens", s.tokens},
              {"compression_ratio", s.effective_ratio_vs_f16},
              {"formats_compression_ratio", s.formats_ratio_vs_f16},
              {"prefix_hit_tokens", s.prefix_hit_tokens},
              {"prefix_lookup_tokens", s.prefix_lookup_tokens},
              {"per_format", per_format}};
}

}  // namespace tq::server
