// Helpers for the CUDA tests: device buffers, the skip-without-GPU guard, host pools laid out
// like the device pools, and seeded test data with outlier channels.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "tq/backend/cuda/kv_cuda.h"
#include "tq/core/fp16.h"
#include "tq/core/rng.h"

namespace tq::test {

inline std::string cuda_absent_reason() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) return std::string("no CUDA device (") + cudaGetErrorString(e) + ")";
  if (n == 0) return "no CUDA device";
  return "";
}

#define TQ_REQUIRE_GPU()                                          \
  do {                                                            \
    const std::string tq_why_ = ::tq::test::cuda_absent_reason(); \
    if (!tq_why_.empty()) GTEST_SKIP() << "skipped: " << tq_why_; \
  } while (0)

#define TQ_CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

// Owns device memory; copies whole std::vectors in and out.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (cudaMalloc(&p_, bytes ? bytes : 1) != cudaSuccess) p_ = nullptr;
  }
  ~DeviceBuffer() {
    if (p_) cudaFree(p_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <typename T>
  static DeviceBuffer from(const std::vector<T>& v) {
    DeviceBuffer b(v.size() * sizeof(T));
    if (b.p_) cudaMemcpy(b.p_, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice);
    return b;
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      if (p_) cudaFree(p_);
      p_ = o.p_;
      bytes_ = o.bytes_;
      o.p_ = nullptr;
    }
    return *this;
  }
  template <typename T>
  std::vector<T> to_host() const {
    std::vector<T> v(bytes_ / sizeof(T));
    cudaMemcpy(v.data(), p_, v.size() * sizeof(T), cudaMemcpyDeviceToHost);
    return v;
  }
  template <typename T = void>
  T* get() const {
    return static_cast<T*>(p_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// x[token][head][dim] ~ N(0, 1) with a few outlier channels (x20), as real keys have; values
// rounded through fp16 when the kernel reads fp16, so the CPU encodes exactly what it sees.
inline std::vector<float> outlier_data(int tokens, int heads, int dim, uint64_t seed,
                                       bool round_f16, float outlier_gain = 20.0f) {
  Rng rng(seed);
  std::vector<float> x(static_cast<size_t>(tokens) * heads * dim);
  const int o1 = 3 % dim, o2 = (dim * 2) / 3;
  for (size_t i = 0; i < x.size(); ++i) {
    const int j = static_cast<int>(i % dim);
    float v = static_cast<float>(rng.normal());
    if (j == o1 || j == o2) v *= outlier_gain;
    x[i] = round_f16 ? f16_to_f32(f32_to_f16(v)) : v;
  }
  return x;
}

inline std::vector<uint16_t> to_f16(const std::vector<float>& x) {
  std::vector<uint16_t> h(x.size());
  for (size_t i = 0; i < x.size(); ++i) h[i] = f32_to_f16(x[i]);
  return h;
}

// A random permutation of 0..n-1 (physical pool blocks handed out in shuffled order).
inline std::vector<int32_t> shuffled(int n, uint64_t seed) {
  std::vector<int32_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), 0);
  Rng rng(seed);
  for (int i = n - 1; i > 0; --i)
    std::swap(p[static_cast<size_t>(i)], p[rng.next_u64() % static_cast<uint64_t>(i + 1)]);
  return p;
}

}  // namespace tq::test
