// The --seed option of the commands whose seed is a fixed 64-bit value (make-model, the benches,
// quant-bench): CLI11 reads "-1" into a uint64_t as 2^64 - 1 without a word, so a sign is refused
// here with the same message everywhere. (tq run's --seed takes -1 for a random seed: its own.)
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>

namespace tq::tools {

inline CLI::Option* add_seed_option(CLI::App* cmd, uint64_t& seed, const std::string& help) {
  const CLI::Validator unsigned_only(
      [](std::string& s) {
        return s.find_first_not_of("0123456789") == std::string::npos && !s.empty()
                   ? std::string()
                   : "a seed is an integer from 0 to 18446744073709551615, not '" + s + "'";
      },
      "UINT64");
  return cmd->add_option("--seed", seed, help)->capture_default_str()->check(unsigned_only);
}

}  // namespace tq::tools
