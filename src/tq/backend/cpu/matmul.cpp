// matmul's driver: validates shapes, quantizes the activations once, and splits the weight
// rows across the thread pool. The arithmetic lives in the per-ISA tables (matmul_ref.cpp,
// matmul_weights_avx2.cpp).
#include "tq/backend/cpu/matmul.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "tq/backend/cpu/matmul_kernels.h"
#include "tq/core/cpu_features.h"
#include "tq/quant/weight_dequant.h"

namespace tq::backend::cpu {
namespace {

// Below this many multiply-adds a job runs on the calling thread: waking the pool costs
// more than it saves (the 576x576 decode matmul is ~330k MACs, ~20 us on one core).
constexpr int64_t kMinParallelMacs = 1 << 17;
// Rows per chunk handed to a thread; a multiple of every kernel's row tile.
constexpr int64_t kRowGrain = 16;
// The float path dequantizes this many rows at a time into a per-chunk buffer.
constexpr int64_t kDequantRows = 4;

TileFn int_tile(const MatmulKernels& k, quant::GgmlType type) {
  switch (type) {
    case quant::GgmlType::kQ4_0:
      return k.q4_0;
    case quant::GgmlType::kQ4_1:
      return k.q4_1;
    case quant::GgmlType::kQ5_0:
      return k.q5_0;
    case quant::GgmlType::kQ5_1:
      return k.q5_1;
    case quant::GgmlType::kQ8_0:
      return k.q8_0;
    default:
      return nullptr;
  }
}

void run_rows(ThreadPool& pool, const TileJob& base, const std::function<void(TileJob&)>& fn) {
  const int64_t macs = (base.row_end - base.row_begin) * base.cols * base.n_tokens;
  const size_t rows = static_cast<size_t>(base.row_end - base.row_begin);
  const size_t grain = macs < kMinParallelMacs ? rows : static_cast<size_t>(kRowGrain);
  pool.parallel_for(rows, grain, [&](size_t b, size_t e) {
    TileJob job = base;
    job.row_begin = base.row_begin + static_cast<int64_t>(b);
    job.row_end = base.row_begin + static_cast<int64_t>(e);
    fn(job);
  });
}

// Types without an integer path: dequantize kDequantRows rows, then the float kernel.
void dequant_tiles(const MatmulKernels& k, quant::GgmlType type, TileJob& job) {
  std::vector<float> buf(static_cast<size_t>(kDequantRows * job.cols));
  for (int64_t r = job.row_begin; r < job.row_end; r += kDequantRows) {
    const int64_t n = std::min(kDequantRows, job.row_end - r);
    prefetch_weights_ahead(job, r, n);
    for (int64_t i = 0; i < n; ++i)
      k.dequantize(type, job.w + (r + i) * job.row_bytes, buf.data() + i * job.cols, job.cols);
    TileJob sub = job;
    sub.w = reinterpret_cast<const uint8_t*>(buf.data());
    sub.row_bytes = job.cols * static_cast<int64_t>(sizeof(float));
    sub.row_begin = 0;
    sub.row_end = n;
    sub.w_rows = 0;  // the rows are in buf, in L1
    sub.y = job.y + r;
    k.f32(sub);
  }
}

}  // namespace

bool matmul_has_int_path(quant::GgmlType type) {
  return int_tile(matmul_kernels_ref(), type) != nullptr;
}

const MatmulKernels* matmul_kernels_avx2() {
  const CpuFeatures f = detect_cpu_features();
  return f.avx2 && f.fma && f.f16c ? &matmul_kernels_avx2_table() : nullptr;
}

const MatmulKernels& matmul_kernels_active() {
  // Chosen once; the table itself is immutable.
  static const MatmulKernels* const kActive = [] {
    const MatmulKernels* avx2 = matmul_kernels_avx2();
    return avx2 != nullptr ? avx2 : &matmul_kernels_ref();
  }();
  return *kActive;
}

Status matmul_with(const MatmulKernels& k, ThreadPool& pool, const WeightView& w, const float* x,
                   int n_tokens, float* y, Activations act) {
  const quant::GgmlTypeTraits* traits = quant::ggml_type_traits(static_cast<uint32_t>(w.type));
  if (traits == nullptr || !quant::can_dequantize(w.type))
    return unsupported(
        "matmul: weight type " +
        (traits ? std::string(traits->name) : std::to_string(static_cast<uint32_t>(w.type))) +
        " not supported");
  if (w.rows <= 0 || w.cols <= 0 || n_tokens < 0 || w.data == nullptr ||
      (n_tokens > 0 && (x == nullptr || y == nullptr)))
    return invalid_argument("matmul: bad shape rows=" + std::to_string(w.rows) + " cols=" +
                            std::to_string(w.cols) + " n_tokens=" + std::to_string(n_tokens));
  if (w.cols % traits->block_elems != 0)
    return invalid_argument(
        "matmul " + std::string(traits->name) + ": cols=" + std::to_string(w.cols) +
        " not a multiple of the block size " + std::to_string(traits->block_elems));
  if (n_tokens == 0) return ok_status();

  TileJob base;
  base.w = w.data;
  base.row_bytes = static_cast<int64_t>(quant::ggml_row_bytes(w.type, w.cols));
  base.row_begin = 0;
  base.row_end = w.rows;
  base.cols = w.cols;
  base.n_tokens = n_tokens;
  base.y = y;
  base.y_stride = w.rows;
  base.w_rows = w.rows;

  const TileFn fn = act == Activations::kQuantized ? int_tile(k, w.type) : nullptr;
  if (fn) {
    const int64_t n_blocks = w.cols / quant::kQK;
    std::vector<quant::BlockQ8A> act(static_cast<size_t>(n_blocks * n_tokens));
    for (int t = 0; t < n_tokens; ++t)
      k.quantize_q8a(x + t * w.cols, act.data() + t * n_blocks, w.cols);
    base.act = act.data();
    base.act_stride = n_blocks * static_cast<int64_t>(sizeof(quant::BlockQ8A));
    run_rows(pool, base, [fn](TileJob& job) { fn(job); });
    return ok_status();
  }
  base.act = x;
  base.act_stride = w.cols * static_cast<int64_t>(sizeof(float));
  if (w.type == quant::GgmlType::kF32) {
    run_rows(pool, base, [&k](TileJob& job) { k.f32(job); });
  } else {
    run_rows(pool, base, [&k, &w](TileJob& job) { dequant_tiles(k, w.type, job); });
  }
  return ok_status();
}

Status matmul(ThreadPool& pool, const WeightView& w, const float* x, int n_tokens, float* y,
              Activations act) {
  return matmul_with(matmul_kernels_active(), pool, w, x, n_tokens, y, act);
}

void dequantize_row(quant::GgmlType type, const uint8_t* src, float* dst, int64_t n) {
  const quant::GgmlTypeTraits* traits = quant::ggml_type_traits(static_cast<uint32_t>(type));
  if (traits == nullptr || !quant::can_dequantize(type) || n < 0 || n % traits->block_elems) {
    if (n > 0) std::memset(dst, 0, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  matmul_kernels_active().dequantize(type, src, dst, n);
}

}  // namespace tq::backend::cpu
