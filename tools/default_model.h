// Where the default model (SmolLM2-135M-Instruct Q4_1, fetched by scripts/fetch-model.sh) lives.
#pragma once

#include <cstdlib>
#include <string>

namespace tq::tools {

inline constexpr const char* kDefaultModelFile = "SmolLM2-135M-Instruct.Q4_1.gguf";

// $TQ_MODEL_DIR, else $XDG_CACHE_HOME/tq/models, else ~/.cache/tq/models.
inline std::string model_cache_dir() {
  if (const char* d = std::getenv("TQ_MODEL_DIR"); d && *d) return d;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/tq/models";
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : ".") + "/.cache/tq/models";
}

inline std::string default_model_path() { return model_cache_dir() + "/" + kDefaultModelFile; }

}  // namespace tq::tools
