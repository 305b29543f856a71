// The device's top candidates (backend/cuda/top_k.h) against runtime::top_logits, the host's
// ranking Sampler::sample_top relies on: the same ids and values in the same order (exact; the
// values are copied, not computed), on rows with many ties, NaN and -inf, and on vocab-sized rows
// of distinct values, for k from 1 to the 1024 maximum; and the device model's top candidates
// against its own logits of the same pass; and the rows' log partitions (logprobs from the
// candidates) against the host's.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "tq/backend/cuda/top_k.h"
#include "tq/runtime/logprobs.h"
#include "tq/runtime/sampler.h"

namespace tq::backend::cuda {
namespace {

struct TopCase {
  int n;
  bool coarse;  // values on a grid of 24 steps (ties everywhere), with NaN and -inf
};

TEST(TopKRows, EqualsTheHostRanking) {
  TQ_REQUIRE_GPU();
  constexpr int kRows = 3;
  for (const TopCase c : {TopCase{700, true}, TopCase{49152, false}, TopCase{128256, false},
                          TopCase{128256, true}, TopCase{1024, true}, TopCase{16385, true}}) {
    Rng rng(static_cast<uint64_t>(c.n) * 7 + (c.coarse ? 1 : 0));
    std::vector<float> x(static_cast<size_t>(kRows) * c.n);
    for (auto& v : x) {
      const uint64_t r = rng.next_u64();
      if (c.coarse)
        v = r % 61 == 0   ? NAN
            : r % 59 == 0 ? -INFINITY
                          : static_cast<float>(static_cast<int>(r % 24) - 12) * 0.75f;
      else
        v = static_cast<float>(rng.normal() * 3.0);
    }
    test::DeviceBuffer dx = test::DeviceBuffer::from(x);
    EXPECT_EQ(top_k_workspace_bytes(kRows, c.n, 104) > 0, c.n >= 16384);
    for (const int k : {1, 40, 104, 1000, 1024}) {
      if (k > c.n) continue;
      std::vector<int32_t> want_ids(static_cast<size_t>(kRows) * k);
      std::vector<float> want_vals(want_ids.size());
      for (int r = 0; r < kRows; ++r)
        runtime::top_logits(x.data() + static_cast<size_t>(r) * c.n, c.n, k,
                            want_ids.data() + static_cast<size_t>(r) * k,
                            want_vals.data() + static_cast<size_t>(r) * k);
      // One block per row, and (rows of 16384 values or more) the two-stage split.
      const size_t ws_bytes = top_k_workspace_bytes(kRows, c.n, k);
      for (const bool split : {false, true}) {
        if (split && ws_bytes == 0) continue;
        SCOPED_TRACE("n " + std::to_string(c.n) + (c.coarse ? " coarse" : "") + ", k " +
                     std::to_string(k) + (split ? ", two stages" : ", one block per row"));
        test::DeviceBuffer ws(split ? ws_bytes : 0);
        test::DeviceBuffer ids(want_ids.size() * sizeof(int32_t));
        test::DeviceBuffer vals(want_vals.size() * sizeof(float));
        const Status st =
            top_k_rows(dx.get<float>(), kRows, c.n, k, ids.get<int32_t>(), vals.get<float>(),
                       nullptr, split ? ws.get() : nullptr, split ? ws_bytes : 0);
        ASSERT_TRUE(st.ok()) << st.to_string();
        TQ_CUDA_OK(cudaDeviceSynchronize());
        const std::vector<int32_t> got_ids = ids.to_host<int32_t>();
        const std::vector<float> got_vals = vals.to_host<float>();
        for (size_t i = 0; i < want_ids.size(); ++i) {
          ASSERT_EQ(got_ids[i], want_ids[i]) << "row " << i / k << " rank " << i % k;
          ASSERT_EQ(got_vals[i], want_vals[i]) << "row " << i / k << " rank " << i % k;
        }
      }
    }
  }
  test::DeviceBuffer dummy(16);
  EXPECT_EQ(
      top_k_rows(dummy.get<float>(), 1, 4, 5, dummy.get<int32_t>(), dummy.get<float>(), nullptr)
          .code(),
      StatusCode::kInvalidArgument);  // k > n
  EXPECT_EQ(top_k_rows(dummy.get<float>(), 1, 4096, kTopRowsMax + 1, dummy.get<int32_t>(),
                       dummy.get<float>(), nullptr)
                .code(),
            StatusCode::kInvalidArgument);
}

// log_partition_rows against runtime::log_partition (float64 both; only the summation order
// differs: 1e-9), on rows with NaN and -inf, a row of only -inf, and vocab-sized rows.
TEST(LogPartitionRows, EqualsTheHost) {
  TQ_REQUIRE_GPU();
  for (const int n : {1, 700, 49152, 128256}) {
    constexpr int kRows = 3;
    Rng rng(static_cast<uint64_t>(n) * 11);
    std::vector<float> x(static_cast<size_t>(kRows) * n);
    for (auto& v : x) {
      const uint64_t r = rng.next_u64();
      v = r % 61 == 0 ? NAN : r % 59 == 0 ? -INFINITY : static_cast<float>(rng.normal() * 4.0);
    }
    for (int i = 0; i < n; ++i) x[static_cast<size_t>(2) * n + i] = -INFINITY;  // row 2: none
    test::DeviceBuffer dx = test::DeviceBuffer::from(x);
    test::DeviceBuffer out(kRows * sizeof(double));
    ASSERT_TRUE(log_partition_rows(dx.get<float>(), kRows, n, out.get<double>(), nullptr).ok());
    TQ_CUDA_OK(cudaDeviceSynchronize());
    const std::vector<double> got = out.to_host<double>();
    for (int r = 0; r < kRows; ++r) {
      const double want = runtime::log_partition(x.data() + static_cast<size_t>(r) * n, n);
      if (std::isinf(want))
        EXPECT_EQ(got[static_cast<size_t>(r)], want) << "n " << n << " row " << r;
      else
        EXPECT_NEAR(got[static_cast<size_t>(r)], want, 1e-9) << "n " << n << " row " << r;
    }
  }
}

}  // namespace
}  // namespace tq::backend::cuda
