// The --seed options. CLI11 reads "-1" into a uint64_t as 2^64 - 1 and saturates an int64_t
// past its range without a word, so a seed is parsed here, all of it, with the same message
// everywhere: a decimal integer from 0 to 2^64 - 1, and for tq run also -1 (a seed drawn at start,
// llama.cpp's convention).
#pragma once

#include <CLI/CLI.hpp>

#include <charconv>
#include <cstdint>
#include <string>

namespace tq::tools {

// Whether s is a decimal uint64_t and nothing else (no sign, no fraction, no overflow).
inline bool parse_seed(const std::string& s, uint64_t& out) {
  const char* end = s.data() + s.size();
  const auto [ptr, ec] = std::from_chars(s.data(), end, out);
  return !s.empty() && s[0] != '-' && s[0] != '+' && ec == std::errc() && ptr == end;
}

inline CLI::Validator seed_validator(bool minus_one_draws) {
  return CLI::Validator(
      [minus_one_draws](std::string& s) {
        uint64_t v;
        if (parse_seed(s, v) || (minus_one_draws && s == "-1")) return std::string();
        return "a seed is an integer from 0 to 18446744073709551615" +
               std::string(minus_one_draws ? " or -1 (a random one)" : "") + ", not '" + s + "'";
      },
      minus_one_draws ? "UINT64|-1" : "UINT64");
}

// A fixed seed (make-model, the benches, quant-bench).
inline CLI::Option* add_seed_option(CLI::App* cmd, uint64_t& seed, const std::string& help) {
  return cmd->add_option("--seed", seed, help)->capture_default_str()->check(seed_validator(false));
}

// tq run's sampling seed: a fixed one into seed, or -1: draw = true (the caller draws and prints
// one, so that the run can be repeated).
inline CLI::Option* add_sampling_seed_option(CLI::App* cmd, uint64_t& seed, bool& draw,
                                             const std::string& help) {
  return cmd
      ->add_option_function<std::string>(
          "--seed",
          [&seed, &draw](const std::string& s) {
            draw = s == "-1";
            if (!draw) parse_seed(s, seed);  // the validator has accepted it
          },
          help)
      ->default_str(std::to_string(seed))
      ->check(seed_validator(true));
}

}  // namespace tq::tools
