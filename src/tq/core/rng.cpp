#include "tq/core/rng.h"

#include <random>

namespace tq {

uint64_t random_seed() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

}  // namespace tq
