// The GPU quantize-on-write kernels against the CPU codec (quant::VectorCodec::encode, the scalar
// reference) on seeded data with outlier channels, a zero vector and a skipped token:
// - the legacy kernel (WriteKernel::kLegacy), and every kernel for f16 / q8_0 / q4_0 / tq prod:
//   the paged pool is byte-identical to the CPU's, except for counted ties (a coordinate or norm
//   within float64 rounding of a cell / fp16 boundary, where the summation order decides);
// - the float32 kernels (kTeam, kWarp) for tq mse: tq_write_check.h (codes equal the float64
//   cell and the CPU's except within 1e-5 of a cell width of a boundary, at most 1e-4 of the
//   coordinates; fp16 norms from within 1e-6 of the float64 norm; decoded error within 1e-3 of
//   the CPU codec's and below the codebook's Lloyd-Max error), every other byte untouched;
// - the QJL team kernel (kTeam, tq prod at head dims 64 and 128): codes and norms as the float32
//   kernels', signs equal to the float64 sketch's except where |(S r)_i| <= 1e-2 ||r||, at most
//   2e-3 of them (tq_write_check.h).
// quantize_write_kv: K and V of different formats in one launch (decode size) and in two
// (prefill size), and grids where every team walks several vectors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "tq/backend/cuda/device_tables.h"
#include "tq/backend/cuda/kv_cuda.h"
#include "tq/quant/codec.h"
#include "tq/quant/qjl.h"
#include "tq_write_check.h"

namespace tq::backend::cuda {
namespace {

using test::DeviceBuffer;

constexpr uint64_t kSeed = 0x5eed0006u;
// Ties: at most one vector in 1000 may differ from the CPU bytes (expected: none).
constexpr double kMaxTieFraction = 1e-3;
// The float32 kernels' decoded error may not exceed the codebook's Lloyd-Max error by more than
// this factor (outlier data measures 0.7-0.9 of it).
constexpr double kMseOfBook = 1.25;

const char* kernel_name(WriteKernel k) {
  switch (k) {
    case WriteKernel::kAuto:
      return "auto";
    case WriteKernel::kLegacy:
      return "legacy";
    case WriteKernel::kTeam:
      return "team";
    case WriteKernel::kWarp:
      return "warp";
  }
  return "?";
}

// One layer's pool of one format written by the CPU codec (the reference) and by the GPU.
struct PoolCase {
  quant::Format format;
  int dim = 0, heads = 0, tokens = 0, cap = 32;
  bool f16_input = false;
  uint64_t seed = kSeed;

  mutable quant::CodebookCache books;  // get() locks; the codec points into it
  std::unique_ptr<quant::VectorCodec> codec;
  std::unique_ptr<DeviceCodecTables> tables;
  quant::CodecOptions opt;
  size_t head_stride = 0, block_stride = 0;
  std::vector<float> x;
  std::vector<int32_t> slots;
  std::vector<uint8_t> cpu;
  DeviceBuffer pool, xs, sm;

  // Token t goes to physical block perm[t / cap], slot t % cap; token 11 is skipped, token 5's
  // second head is a zero vector; spare blocks stay untouched.
  void build() {
    opt.seed = derive_seed(kSeed, 7);  // a layer seed
    opt.norm_correction = true;
    auto c = quant::make_codec(format, dim, opt, books);
    ASSERT_TRUE(c.ok()) << c.status().to_string();
    codec = std::move(*c);
    auto t = DeviceCodecTables::create(format, dim, opt.seed, books);
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    tables = std::make_unique<DeviceCodecTables>(std::move(*t));
    const int n_blocks = (tokens + cap - 1) / cap + 2;
    head_stride = codec->block_bytes(cap);
    block_stride = head_stride * heads;
    x = test::outlier_data(tokens, heads, dim, seed + dim, f16_input);
    if (tokens > 5 && heads > 1)
      std::fill(x.begin() + 5 * heads * dim + dim, x.begin() + 5 * heads * dim + 2 * dim, 0.0f);
    const std::vector<int32_t> perm = test::shuffled(n_blocks, seed);
    slots.assign(tokens, 0);
    for (int i = 0; i < tokens; ++i) slots[i] = perm[i / cap] * cap + i % cap;
    if (tokens > 11) slots[11] = -1;
    cpu.assign(block_stride * n_blocks, 0xab);
    for (int i = 0; i < tokens; ++i) {
      if (slots[i] < 0) continue;
      for (int h = 0; h < heads; ++h)
        codec->encode(x.data() + (static_cast<size_t>(i) * heads + h) * dim,
                      cpu.data() + (slots[i] / cap) * block_stride + h * head_stride, cap,
                      slots[i] % cap);
    }
    pool = DeviceBuffer::from(std::vector<uint8_t>(cpu.size(), 0xab));
    xs = f16_input ? DeviceBuffer::from(test::to_f16(x)) : DeviceBuffer::from(x);
    sm = DeviceBuffer::from(slots);
  }

  QuantizeWriteParams params(WriteKernel kernel) const {
    QuantizeWriteParams p;
    p.pool.format = format;
    p.pool.head_dim = dim;
    p.pool.block_tokens = cap;
    p.pool.n_kv_heads = heads;
    p.pool.data = pool.get<uint8_t>();
    p.pool.norm_correction = opt.norm_correction;
    p.pool.tables = tables->view();
    p.x = xs.get();
    p.x_is_f16 = f16_input;
    p.slot_mapping = sm.get<int32_t>();
    p.tokens = tokens;
    p.kernel = kernel;
    return p;
  }

  bool float32_path(WriteKernel kernel) const {
    if (format.kind == quant::FormatKind::kTqProd)  // the QJL team kernel (tensor-core sketch)
      return kernel == WriteKernel::kTeam && (dim == 64 || dim == 128);
    return kernel != WriteKernel::kLegacy && format.kind == quant::FormatKind::kTqMse;
  }

  // Checks the GPU pool against the CPU one (see the file comment).
  void check(WriteKernel kernel, const std::string& what) const {
    const std::vector<uint8_t> gpu = pool.to_host<uint8_t>();
    if (!float32_path(kernel)) return check_bytes(gpu, what);
    const bool prod = format.kind == quant::FormatKind::kTqProd;
    const std::vector<float> qjl = prod ? quant::qjl_matrix(dim, opt.seed) : std::vector<float>{};
    test::TqPageGeometry g;
    g.dim = dim;
    g.bits = format.code_bits();
    g.qjl = prod ? &qjl : nullptr;
    g.heads = heads;
    g.cap = cap;
    g.head_stride = head_stride;
    g.block_stride = block_stride;
    g.norm_correction = opt.norm_correction && !prod;  // prod pools store the plain norm
    auto rot = quant::Rotation::create(dim, opt.seed);
    ASSERT_TRUE(rot.ok());
    auto book = books.get(dim, g.bits);
    ASSERT_TRUE(book.ok());
    const test::TqCheckResult r = test::check_tq_pages(x, slots, g, gpu, cpu, **book, *rot, *codec);
    testing::Test::RecordProperty(what + "_flips_vs_cpu", static_cast<int>(r.flips_vs_cpu));
    testing::Test::RecordProperty(what + "_near_boundary", static_cast<int>(r.near));
    std::printf(
        "[ measured ] %s: %d vectors, %lld coords, %lld near a boundary, %lld flips vs CPU, %lld "
        "vs float64, "
        "mse %.6g (CPU %.6g, codebook %.6g), max fp16 norm error %.2e, QJL signs %lld, %lld "
        "flips vs float64\n",
        what.c_str(), r.vectors, r.coords, r.near, r.flips_vs_cpu, r.flips_vs_f64, r.mse_gpu,
        r.mse_cpu, (*book)->mse_per_vector, r.max_norm_rel, r.signs, r.sign_flips);
    EXPECT_GT(r.vectors, 0) << what;
    EXPECT_EQ(r.bad_codes, 0) << what << ": codes differ away from cell boundaries";
    EXPECT_LE(static_cast<double>(r.flips_vs_cpu), test::kMaxFlipFraction * r.coords) << what;
    EXPECT_LE(static_cast<double>(r.flips_vs_f64), test::kMaxFlipFraction * r.coords) << what;
    EXPECT_EQ(r.bad_norms, 0) << what << ": fp16 norms not from within 1e-6 of the float64 norm";
    EXPECT_EQ(r.bad_zero, 0) << what << ": zero vector not stored as the CPU stores it";
    if (prod) {
      EXPECT_GT(r.signs, 0) << what;
      EXPECT_EQ(r.bad_signs, 0) << what << ": signs differ where (S r)_i is far from 0";
      EXPECT_LE(static_cast<double>(r.sign_flips), test::kMaxSignFlipFraction * r.signs) << what;
      EXPECT_EQ(r.bad_residuals, 0) << what << ": residual norms not from the float64 ||r||";
      EXPECT_NEAR(r.mse_gpu, r.mse_cpu, test::kMseRelQjl * r.mse_cpu) << what;
    } else {
      EXPECT_NEAR(r.mse_gpu, r.mse_cpu, test::kMseRel * r.mse_cpu) << what;
      EXPECT_LE(r.mse_gpu, kMseOfBook * (*book)->mse_per_vector) << what;
    }
    // Every byte outside the written slots (and the skipped token's) is untouched: patch the
    // written slots with the CPU's bytes and compare everything.
    std::vector<uint8_t> patched = gpu;
    const size_t code_bytes = static_cast<size_t>(dim) * g.bits / 8;
    const size_t sign_bytes = prod ? static_cast<size_t>(dim) / 8 : 0;
    const size_t norms_at = cap * (code_bytes + sign_bytes);
    for (int i = 0; i < tokens; ++i) {
      if (slots[i] < 0) continue;
      for (int h = 0; h < heads; ++h) {
        const size_t off = (slots[i] / cap) * block_stride + h * head_stride;
        const int s = slots[i] % cap;
        const auto patch = [&](size_t at, size_t n) {
          std::memcpy(patched.data() + off + at, cpu.data() + off + at, n);
        };
        patch(s * code_bytes, code_bytes);
        patch(norms_at + 2 * s, 2);
        if (prod) {
          patch(cap * code_bytes + s * sign_bytes, sign_bytes);
          patch(norms_at + 2 * cap + 2 * s, 2);
        }
      }
    }
    EXPECT_TRUE(patched == cpu) << what << ": bytes outside the written slots changed";
  }

  void check_bytes(const std::vector<uint8_t>& gpu, const std::string& what) const {
    // Vectors whose decoded value differs (a tie decided the other way), and differing bytes.
    int diff_vectors = 0, vectors = 0;
    std::vector<float> a(dim), b(dim);
    for (int i = 0; i < tokens; ++i) {
      if (slots[i] < 0) continue;
      for (int h = 0; h < heads; ++h, ++vectors) {
        const size_t off = (slots[i] / cap) * block_stride + h * head_stride;
        codec->decode(cpu.data() + off, cap, slots[i] % cap, a.data());
        codec->decode(gpu.data() + off, cap, slots[i] % cap, b.data());
        if (std::memcmp(a.data(), b.data(), dim * sizeof(float)) != 0) ++diff_vectors;
      }
    }
    size_t diff_bytes = 0;
    for (size_t i = 0; i < cpu.size(); ++i) diff_bytes += cpu[i] != gpu[i];
    testing::Test::RecordProperty(what + "_diff_vectors", diff_vectors);
    EXPECT_LE(diff_vectors, std::max(0.0, kMaxTieFraction * vectors))
        << what << " seed " << seed << ": " << diff_vectors << " of " << vectors
        << " vectors differ from the CPU codec";
    if (diff_vectors == 0) EXPECT_EQ(diff_bytes, 0u) << what << ": bytes differ but decodes agree";
  }
};

struct WriteCase {
  const char* format;
  int dim;
  bool f16_input;
  WriteKernel kernel;
};

std::string case_name(const testing::TestParamInfo<WriteCase>& i) {
  return std::string(i.param.format) + "_d" + std::to_string(i.param.dim) +
         (i.param.f16_input ? "_f16in_" : "_f32in_") + kernel_name(i.param.kernel);
}

class QuantizeWrite : public testing::TestWithParam<WriteCase> {};

TEST_P(QuantizeWrite, MatchesCpuCodec) {
  TQ_REQUIRE_GPU();
  const WriteCase c = GetParam();
  auto fmt = quant::parse_format(c.format);
  ASSERT_TRUE(fmt.ok());
  PoolCase pc;
  pc.format = *fmt;
  pc.dim = c.dim;
  pc.heads = 3;
  pc.tokens = 77;
  pc.f16_input = c.f16_input;
  ASSERT_NO_FATAL_FAILURE(pc.build());
  const Status st = quantize_write(pc.params(c.kernel), nullptr);
  ASSERT_TRUE(st.ok()) << st.to_string();
  TQ_CUDA_OK(cudaDeviceSynchronize());
  pc.check(c.kernel,
           std::string(c.format) + "_d" + std::to_string(c.dim) + "_" + kernel_name(c.kernel));
}

std::vector<WriteCase> write_cases() {
  const WriteCase base[] = {
      {"f16", 128, false},  {"q8_0", 128, false}, {"q4_0", 128, false}, {"q8_0", 64, true},
      {"q4_0", 64, true},   {"tq1", 128, false},  {"tq2", 128, false},  {"tq3", 128, false},
      {"tq4", 128, false},  {"tq4", 128, true},   {"tq2", 64, true},    {"tq3", 64, false},
      {"tq4", 64, false},   {"tq4", 256, false},  {"q4_0", 256, false}, {"tq2j", 128, false},
      {"tq3j", 128, false}, {"tq4j", 128, true},  {"tq5j", 128, false}, {"tq3j", 64, false},
      {"f16", 64, true},    {"tq3", 256, true},   {"tq1", 64, true}};
  std::vector<WriteCase> v;
  for (WriteKernel k : {WriteKernel::kLegacy, WriteKernel::kTeam, WriteKernel::kWarp})
    for (WriteCase c : base) {
      c.kernel = k;
      v.push_back(c);
    }
  return v;
}

INSTANTIATE_TEST_SUITE_P(AllFormats, QuantizeWrite, testing::ValuesIn(write_cases()), case_name);

// Many vectors per team (the grid is at most one wave): the prefetch and the stepping of
// (token, head) with a head count that does not divide the stride, teams past the end inside a
// running warp, and slot / block_tokens for a block_tokens that is not a power of two.
TEST(QuantizeWriteTeam, GridStrideOverManyVectors) {
  TQ_REQUIRE_GPU();
  struct Big {
    const char* format;
    int dim, tokens;
    bool f16_input;
    int cap;
  };
  for (const Big b : {Big{"tq4", 128, 8000, true, 32}, Big{"tq3", 64, 14000, false, 32},
                      Big{"tq2", 256, 5000, true, 32}, Big{"tq4", 128, 7001, true, 96},
                      Big{"tq1", 64, 3001, false, 160}, Big{"tq4j", 128, 6000, false, 32},
                      Big{"tq4j", 128, 7001, true, 96}, Big{"tq3j", 64, 5001, true, 96}}) {
    PoolCase pc;
    pc.format = *quant::parse_format(b.format);
    pc.dim = b.dim;
    pc.cap = b.cap;
    pc.heads = 3;
    pc.tokens = b.tokens;
    pc.f16_input = b.f16_input;
    ASSERT_NO_FATAL_FAILURE(pc.build());
    const Status st = quantize_write(pc.params(WriteKernel::kTeam), nullptr);
    ASSERT_TRUE(st.ok()) << st.to_string();
    TQ_CUDA_OK(cudaDeviceSynchronize());
    pc.check(WriteKernel::kTeam, std::string("grid_") + b.format + "_d" + std::to_string(b.dim) +
                                     "_cap" + std::to_string(b.cap));
  }
}

// K and V of one layer: decode-sized (one warp-kernel launch for both, formats differing per
// half) and prefill-sized (team kernel, two launches), f32 input as the model writes it.
TEST(QuantizeWriteKv, KeysAndValuesTogether) {
  TQ_REQUIRE_GPU();
  struct Pair {
    const char* k;
    const char* v;
    int tokens;
    WriteKernel kernel;
  };
  for (const Pair pr :
       {Pair{"tq4", "tq3", 4, WriteKernel::kAuto}, Pair{"f16", "f16", 4, WriteKernel::kAuto},
        Pair{"tq2", "f16", 3, WriteKernel::kAuto}, Pair{"tq4", "q8_0", 4, WriteKernel::kAuto},
        Pair{"tq4", "tq3", 700, WriteKernel::kAuto},
        Pair{"tq3", "tq4", 64, WriteKernel::kLegacy}}) {
    PoolCase k, v;
    k.format = *quant::parse_format(pr.k);
    v.format = *quant::parse_format(pr.v);
    for (PoolCase* p : {&k, &v}) {
      p->dim = 128;
      p->heads = 8;
      p->tokens = pr.tokens;
      p->seed = kSeed + (p == &v ? 17 : 0);
      ASSERT_NO_FATAL_FAILURE(p->build());
    }
    const Status st = quantize_write_kv(k.params(pr.kernel), v.params(pr.kernel), nullptr);
    ASSERT_TRUE(st.ok()) << st.to_string();
    TQ_CUDA_OK(cudaDeviceSynchronize());
    // kAuto: warp kernel up to 4096 vectors per pool, team kernel above.
    const WriteKernel taken = pr.kernel != WriteKernel::kAuto ? pr.kernel
                              : pr.tokens * 8 <= 4096         ? WriteKernel::kWarp
                                                              : WriteKernel::kTeam;
    const std::string what =
        std::string("kv_") + pr.k + "_" + pr.v + "_t" + std::to_string(pr.tokens);
    k.check(taken, what + "_K");
    v.check(taken, what + "_V");
  }
}

// A layer's K and V into its pages and into the f16 exact rows (quantize_write_group): the four
// warp-kernel writes share one launch and each pool gets what a write of its own gives; a q8_0
// pool among them launches alone; five writes are refused.
TEST(QuantizeWriteGroup, FourPoolsInOneLaunch) {
  TQ_REQUIRE_GPU();
  for (const std::vector<const char*>& formats :
       {std::vector<const char*>{"tq4", "tq3", "f16", "f16"},
        std::vector<const char*>{"tq2", "q8_0", "f16", "tq4"}}) {
    std::vector<PoolCase> pools(formats.size());
    std::vector<QuantizeWriteParams> writes;
    std::string what = "group";
    for (size_t i = 0; i < pools.size(); ++i) {
      PoolCase& p = pools[i];
      p.format = *quant::parse_format(formats[i]);
      p.dim = 128;
      p.heads = 8;
      p.tokens = 3;
      p.seed = kSeed + 31 * i;
      ASSERT_NO_FATAL_FAILURE(p.build());
      writes.push_back(p.params(WriteKernel::kAuto));
      what += std::string("_") + formats[i];
    }
    const Status st = quantize_write_group(writes, nullptr);
    ASSERT_TRUE(st.ok()) << st.to_string();
    TQ_CUDA_OK(cudaDeviceSynchronize());
    for (size_t i = 0; i < pools.size(); ++i) {
      const bool warp = std::string(formats[i]) != "q8_0";
      pools[i].check(warp ? WriteKernel::kWarp : WriteKernel::kLegacy,
                     what + "_" + std::to_string(i));
    }
    writes.push_back(writes[0]);
    EXPECT_EQ(quantize_write_group(writes, nullptr).code(), StatusCode::kInvalidArgument);
  }
}

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
  p.pool.block_tokens = 16;
  p.pool.head_dim = 128;
  EXPECT_EQ(quantize_write(p, nullptr).code(), StatusCode::kUnsupported);
  EXPECT_EQ(quantize_write_kv(p, p, nullptr).code(), StatusCode::kUnsupported);
}

}  // namespace
}  // namespace tq::backend::cuda
