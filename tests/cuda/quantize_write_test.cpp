// The GPU quantize-on-write kernel against the CPU codec (the scalar reference): the paged pool
// it writes must be byte-identical to the one quant::VectorCodec::encode writes, except for
// counted ties (a coordinate or norm within float64 rounding of a cell / fp16 boundary, where
// the summation order of the norm decides).
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "tq/backend/cuda/device_tables.h"
#include "tq/backend/cuda/kv_cuda.h"
#include "tq/quant/codec.h"

namespace tq::backend::cuda {
namespace {

using test::DeviceBuffer;

constexpr uint64_t kSeed = 0x5eed0006u;
// Ties: at most one vector in 1000 may differ from the CPU bytes (expected: none).
constexpr double kMaxTieFraction = 1e-3;

struct WriteCase {
  const char* format;
  int dim;
  bool f16_input;
};

std::string case_name(const testing::TestParamInfo<WriteCase>& i) {
  return std::string(i.param.format) + "_d" + std::to_string(i.param.dim) + (i.param.f16_input ? "_f16in" : "_f32in");
}

class QuantizeWrite : public testing::TestWithParam<WriteCase> {};

TEST_P(QuantizeWrite, MatchesCpuCodecBytes) {
  TQ_REQUIRE_GPU();
  const WriteCase c = GetParam();
  auto fmt = quant::parse_format(c.format);
  ASSERT_TRUE(fmt.ok());
  const int dim = c.dim, heads = 3, tokens = 77, cap = 32;
  const int n_blocks = (tokens + cap - 1) / cap + 2;  // spare blocks stay untouched
  quant::CodebookCache books;
  quant::CodecOptions opt;
  opt.seed = derive_seed(kSeed, 7);  // a layer seed
  opt.norm_correction = true;
  auto codec = quant::make_codec(*fmt, dim, opt, books);
  ASSERT_TRUE(codec.ok()) << codec.status().to_string();
  auto tables = DeviceCodecTables::create(*fmt, dim, opt.seed, books);
  ASSERT_TRUE(tables.ok()) << tables.status().to_string();

  const size_t head_stride = (*codec)->block_bytes(cap);
  const size_t block_stride = head_stride * heads;
  std::vector<float> x = test::outlier_data(tokens, heads, dim, kSeed + dim, c.f16_input);
  std::fill(x.begin() + 5 * heads * dim + dim, x.begin() + 5 * heads * dim + 2 * dim, 0.0f);  // a zero vector
  // Token t goes to physical block perm[t / cap], slot t % cap; token 11 is skipped.
  const std::vector<int32_t> perm = test::shuffled(n_blocks, kSeed);
  std::vector<int32_t> slots(tokens);
  for (int t = 0; t < tokens; ++t) slots[t] = perm[t / cap] * cap + t % cap;
  slots[11] = -1;

  std::vector<uint8_t> cpu(block_stride * n_blocks, 0xab);
  for (int t = 0; t < tokens; ++t) {
    if (slots[t] < 0) continue;
    for (int h = 0; h < heads; ++h)
      (*codec)->encode(x.data() + (static_cast<size_t>(t) * heads + h) * dim,
                       cpu.data() + (slots[t] / cap) * block_stride + h * head_stride, cap, slots[t] % cap);
  }

  DeviceBuffer pool = DeviceBuffer::from(std::vector<uint8_t>(cpu.size(), 0xab));
  DeviceBuffer xs = c.f16_input ? DeviceBuffer::from(test::to_f16(x)) : DeviceBuffer::from(x);
  DeviceBuffer sm = DeviceBuffer::from(slots);
  QuantizeWriteParams p;
  p.pool.format = *fmt;
  p.pool.head_dim = dim;
  p.pool.block_tokens = cap;
  p.pool.n_kv_heads = heads;
  p.pool.data = pool.get<uint8_t>();
  p.pool.norm_correction = opt.norm_correction;
  p.pool.tables = tables->view();
  p.x = xs.get();
  p.x_is_f16 = c.f16_input;
  p.slot_mapping = sm.get<int32_t>();
  p.tokens = tokens;
  const Status st = quantize_write(p, nullptr);
  ASSERT_TRUE(st.ok()) << st.to_string();
  TQ_CUDA_OK(cudaDeviceSynchronize());
  const std::vector<uint8_t> gpu = pool.to_host<uint8_t>();

  // Vectors whose decoded value differs (a tie decided the other way), and differing bytes.
  int diff_vectors = 0, vectors = 0;
  std::vector<float> a(dim), b(dim);
  for (int t = 0; t < tokens; ++t) {
    if (slots[t] < 0) continue;
    for (int h = 0; h < heads; ++h, ++vectors) {
      const size_t off = (slots[t] / cap) * block_stride + h * head_stride;
      (*codec)->decode(cpu.data() + off, cap, slots[t] % cap, a.data());
      (*codec)->decode(gpu.data() + off, cap, slots[t] % cap, b.data());
      if (std::memcmp(a.data(), b.data(), dim * sizeof(float)) != 0) ++diff_vectors;
    }
  }
  size_t diff_bytes = 0;
  for (size_t i = 0; i < cpu.size(); ++i) diff_bytes += cpu[i] != gpu[i];
  RecordProperty("diff_vectors", diff_vectors);
  EXPECT_LE(diff_vectors, std::max(0.0, kMaxTieFraction * vectors))
      << c.format << " d=" << dim << " seed " << kSeed << ": " << diff_vectors << " of " << vectors
      << " vectors differ from the CPU codec";
  if (diff_vectors == 0) EXPECT_EQ(diff_bytes, 0u) << c.format << ": bytes differ but decodes agree";
}

INSTANTIATE_TEST_SUITE_P(
    AllFormats, QuantizeWrite,
    testing::Values(WriteCase{"f16", 128, false}, WriteCase{"q8_0", 128, false}, WriteCase{"q4_0", 128, false},
                    WriteCase{"q8_0", 64, true}, WriteCase{"q4_0", 64, true}, WriteCase{"tq1", 128, false},
                    WriteCase{"tq2", 128, false}, WriteCase{"tq3", 128, false}, WriteCase{"tq4", 128, false},
                    WriteCase{"tq4", 128, true}, WriteCase{"tq2", 64, true}, WriteCase{"tq3", 64, false},
                    WriteCase{"tq4", 64, false}, WriteCase{"tq4", 256, false}, WriteCase{"q4_0", 256, false},
                    WriteCase{"tq2j", 128, false}, WriteCase{"tq3j", 128, false}, WriteCase{"tq4j", 128, true},
                    WriteCase{"tq5j", 128, false}, WriteCase{"tq3j", 64, false}),
    case_name);

TEST(QuantizeWriteApi, RejectsUnsupportedShapes) {
  QuantizeWriteParams p;
  p.pool.format = *quant::parse_format("tq4");
  p.pool.head_dim = 80;  // dense rotation: not implemented on the GPU
  p.pool.n_kv_heads = 1;
  p.pool.block_tokens = 32;
  p.pool.data = reinterpret_cast<uint8_t*>(uintptr_t{256});  // never dereferenced
  p.tokens = 1;
  int dummy = 0;
  p.x = &dummy;
  p.slot_mapping = &dummy;
  EXPECT_EQ(quantize_write(p, nullptr).code(), StatusCode::kUnsupported);
  p.pool.head_dim = 128;
  p.pool.block_tokens = 16;
  EXPECT_EQ(quantize_write(p, nullptr).code(), StatusCode::kUnsupported);
}

}  // namespace
}  // namespace tq::backend::cuda
