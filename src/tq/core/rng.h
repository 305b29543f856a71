// Deterministic random numbers. Rotations, QJL matrices and random-weight models are derived
// from (seed, shape) through this generator only, so a config is enough to reproduce a run and
// the CPU and the GPU build the same matrices.
#pragma once

#include <cmath>
#include <cstdint>

namespace tq {

inline uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// The one nondeterministic source: 64 bits from the OS (std::random_device), for a seed the
// user did not give (a server request without one, `tq run --seed -1`, response ids).
uint64_t random_seed();

// Mixes several integers into one seed (e.g. derive_seed(base, layer, head_dim)).
inline uint64_t derive_seed(uint64_t a, uint64_t b = 0, uint64_t c = 0) {
  uint64_t s = a;
  uint64_t x = splitmix64(s);
  s = x ^ b;
  x = splitmix64(s);
  s = x ^ c;
  return splitmix64(s);
}

// xoshiro256**: fast, good statistics, fixed across platforms.
class Rng {
 public:
  explicit Rng(uint64_t seed) {
    uint64_t s = seed;
    for (auto& w : s_) w = splitmix64(s);
  }
  uint64_t next_u64() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  uint32_t next_u32() { return static_cast<uint32_t>(next_u64() >> 32); }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }
  float uniform_f(float lo, float hi) { return lo + static_cast<float>(uniform()) * (hi - lo); }
  // Standard normal (Box-Muller, both outputs used).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u1;
    do {
      u1 = uniform();
    } while (u1 <= 0.0);
    const double u2 = uniform();
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(2.0 * M_PI * u2);
    has_spare_ = true;
    return r * std::cos(2.0 * M_PI * u2);
  }
  bool coin() { return (next_u64() >> 63) != 0; }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
  double spare_ = 0.0;
  bool has_spare_ = false;
};

}  // namespace tq
