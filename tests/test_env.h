// Where tests find data that lives outside the repo: ../shared (the novel for PPL) and the
// default model in the model cache. In a user's clone without them the tests skip with a
// printed reason; CI sets TQ_REQUIRE_DATA=1 so that a missing file fails instead.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace tq::test {

inline bool data_required() {
  const char* r = std::getenv("TQ_REQUIRE_DATA");
  return r && std::string(r) == "1";
}

inline std::string shared_dir() { return std::string(TQ_SOURCE_DIR) + "/../shared"; }
inline std::string novel_path() { return shared_dir() + "/data/text/pride-and-prejudice.txt"; }

inline std::string model_path() {
  if (const char* d = std::getenv("TQ_MODEL_DIR"); d && *d)
    return std::string(d) + "/SmolLM2-135M-Instruct.Q4_1.gguf";
  const char* x = std::getenv("XDG_CACHE_HOME");
  const char* home = std::getenv("HOME");
  const std::string cache = (x && *x) ? std::string(x) : std::string(home ? home : ".") + "/.cache";
  return cache + "/tq/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

inline std::string fixture_path(const std::string& name) {
  return std::string(TQ_SOURCE_DIR) + "/tests/data/" + name;
}

}  // namespace tq::test

// Skips the test (or fails it under TQ_REQUIRE_DATA=1) when `path` does not exist.
#define TQ_REQUIRE_FILE(path)                                                               \
  do {                                                                                      \
    const std::string tq_p_ = (path);                                                       \
    if (!std::filesystem::exists(tq_p_)) {                                                  \
      if (::tq::test::data_required()) FAIL() << "required file missing: " << tq_p_;        \
      GTEST_SKIP() << "skipped: " << tq_p_                                                  \
                   << " not found (run scripts/fetch-model.sh; ../shared beside the repo)"; \
    }                                                                                       \
  } while (0)
