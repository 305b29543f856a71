// The server's read-only JSON views: GET /v1/models, /v1/capacity (sessions that fit now at
// the configured context, from the pool's real page counts and byte sizes) and /v1/kv-stats
// (pool pages, bytes, compression ratio, bytes per format, prefix-cache hits).
#pragma once

#include <cstdint>

#include <nlohmann/json.hpp>

#include "tq/server/engine.h"

namespace tq::server {

nlohmann::json models_json(const Engine& engine, int64_t created);
nlohmann::json model_json(const Engine& engine, int64_t created);
nlohmann::json capacity_json(const Engine& engine);
nlohmann::json kv_stats_json(const Engine& engine);

}  // namespace tq::server
