// Bulk quantize-on-write of tq prod (QJL) formats: the mse part as tq_team_kernel encodes it
// (from fp16 rows at d 128 with six of the Hadamard's seven levels on the tensor cores,
// QuadMmaLayout in quantize_write_fast.cuh), the 1-bit sketch sign(S r) of the residual
// r = y - C[idx] on the tensor cores.
//
// The CPU-order kernel (quantize_write.cuh) computes S r per vector as d x d float64 products,
// 16k FMA64 per vector at d 128: 0.01 of the copy bandwidth. Here each warp takes R S^T for its
// own vectors, m16n8k16 with fp32 accumulation, with no barrier and no staging:
// - M (16 rows): the warp's vectors, 16 of them: at d 128 its 8 teams' vectors of two rounds
//   (row g: team g's first, row g + 8 its second), at d 64 its 16 teams' vectors of one round
//   (rows g, g + 8: teams 2g, 2g + 1);
// - K: the dims, in an order chosen so that the A fragment a lane supplies is made of its own
//   residual elements (at d 128 lane t of a team holds exactly the columns 2t, 2t + 1, 2t + 8,
//   2t + 9 of every k-tile; at d 64 the two lanes of a team split them with the other team of
//   their quad, one exchange of 8 registers);
// - N: the sketch rows, in an order chosen so that each accumulator a lane holds is a sign of
//   its own vector's word: at d 128 lane t of a team ends with bits 32t..32t + 31 of each of its
//   vectors' sketches and stores that word; at d 64 a quad's lanes trade halves (two shuffles).
// S sits in shared memory as fp16 in that order (rows: N, columns: K; copied once per CTA from
// the pool's image of it, qjl_team_images), read as B fragments with ldmatrix, two n-tiles a load.
// Built for sm_90a, the 4 warps take the GEMM together as warpgroup MMA instead (M = their 64
// vectors, the same A registers, S read by the tensor cores through a descriptor: wgmma_m64n32k16
// below). (Before 2026-12-05 a CTA staged a round's residuals in shared memory and its warps split
// the sketch rows, S's B fragments in 64 registers a lane: 168 registers, 3 CTAs an SM, a barrier a
// round, 0.22 of copy on an H200 from fp16 rows.)
//
// Precision: fp16 operands (relative rounding 2^-11 of S and of r) put the computed
// (S r)_i within ~4e-4 ||r|| (one sigma) of the float64 value, so a sign can differ from the CPU
// codec's where |(S r)_i| is that small: 0.7-1e-4 of the signs in the tests (tq4j d 128, tq3j
// d 64), each where the projection is ambiguous to begin with. Codes, norms and the residual norm
// follow tq_team_kernel's float32 contract. Head dims 64 and 128 (d 256 would need 136 KB of S a
// CTA; it takes the CPU-order kernel).
#pragma once

#include "tq/backend/cuda/quantize_write_fast.cuh"

namespace tq::backend::cuda {

namespace dev {

__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// The sketch GEMM as warpgroup MMA (sm_90a, the kernels built for compute_90a): the CTA's 4 warps
// are one warpgroup, M = their 64 vectors (warp w's A fragments are rows 16 w..16 w + 15, the
// same registers as an m16n8k16 A fragment), B = S straight from shared memory through a matrix
// descriptor. Each warp then reads S through the tensor cores once per 64 vectors instead of
// ldmatrix-ing all of it per 16 (2 KB of shared-memory reads and 16 L1 wavefronts a vector, the
// kernel's busiest unit: docs/benchmarks.md, session 28). Elsewhere (sm_80, plain sm_90) the
// m16n8k16 path below.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TQ_QJL_WGMMA 1
#else
#define TQ_QJL_WGMMA 0
#endif

// A 16-byte copy from global to shared memory that holds no register (cp.async, sm_80), and the
// wait for this thread's copies.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;"); }
// Orders this thread's shared-memory writes (generic proxy, cp.async's included) before the
// async proxy's reads that follow a barrier (wgmma's operands); nothing without wgmma.
__device__ __forceinline__ void fence_proxy_async_shared() {
#if TQ_QJL_WGMMA
  asm volatile("fence.proxy.async.shared::cta;");
#endif
}

// wgmma's fence (before registers written by ordinary instructions feed it), and the commit of
// the MMAs issued since the last one with the wait for all of them (one chunk in flight).
__device__ __forceinline__ void wgmma_fence() {
#if TQ_QJL_WGMMA
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit_and_wait() {
#if TQ_QJL_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
  asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
#endif
}
// Placed after a wait, on the accumulators (and the A registers) of the MMAs it waited for: the
// compiler sees them change there, so it neither reads an accumulator before the wait (the
// asynchronous MMA writes it until then) nor reuses an operand register earlier.
__device__ __forceinline__ void wgmma_hold(float& v) { asm volatile("" : "+f"(v)::"memory"); }
__device__ __forceinline__ void wgmma_hold(uint32_t& v) { asm volatile("" : "+r"(v)::"memory"); }

// D (64 x 32, f32) = A (64 x 16, f16 registers) * B (16 x 32, f16 K-major in shared memory),
// plus D when kAccumulate (without, D needs no zeroing: the products' sum alone, which differs
// from an accumulation from +0 only when every product is -0, i.e. for a zero residual, whose
// vector stores norm 0). A thread's d[4 j..4 j + 3] are n-tile j's c0..c3, as m16n8k16's.
template <bool kAccumulate>
__device__ __forceinline__ void wgmma_m64n32k16(float (&d)[16], uint32_t a0, uint32_t a1,
                                                uint32_t a2, uint32_t a3, uint64_t desc) {
#if TQ_QJL_WGMMA
#define TQ_WGMMA_D16(c)                                                                     \
  c(d[0]), c(d[1]), c(d[2]), c(d[3]), c(d[4]), c(d[5]), c(d[6]), c(d[7]), c(d[8]), c(d[9]), \
      c(d[10]), c(d[11]), c(d[12]), c(d[13]), c(d[14]), c(d[15])
  if constexpr (kAccumulate) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, "
        "%9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %20, 1, 1, 1, 0;"
        : TQ_WGMMA_D16("+f")
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc));
  } else {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, "
        "%9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %20, 0, 1, 1, 0;"
        : TQ_WGMMA_D16("=f")
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc));
  }
#undef TQ_WGMMA_D16
#else
  (void)d, (void)a0, (void)a1, (void)a2, (void)a3, (void)desc;
#endif
}

// S's layout for the descriptor: K-major core matrices (8 N rows x 8 K halves, 128 contiguous
// bytes) without swizzle; the kDim / 8 core matrices of an 8-row N block lie K-ascending at
// kLbo = 128 bytes, N blocks at kSbo = kDim * 16 bytes. Returns the half index of (n, k).
template <int kDim>
__host__ __device__ constexpr int qjl_wgmma_index(int n, int k) {
  return ((n / 8) * (kDim / 8) + k / 8) * 64 + (n % 8) * 8 + k % 8;
}
// A descriptor of S's tiles: start address, leading byte offset (between core matrices along K)
// and stride byte offset (along N), each in 16-byte units, swizzle mode 0. tile() adds the start
// of the 16 x kN tile at K-tile kk and N chunk c (n kN c..) to S's, an immediate (every address
// of the CTA's 228 KB fits the 14-bit field, so no carry leaves it).
template <int kDim>
struct QjlDesc {
  static constexpr uint32_t kLbo = 128, kSbo = kDim * 16;
  uint32_t lo;
  __device__ __forceinline__ explicit QjlDesc(uint32_t s_addr)
      : lo((s_addr >> 4) | (kLbo >> 4) << 16) {}
  template <int kN>
  __device__ __forceinline__ uint64_t tile(int c, int kk) const {
    const uint32_t off = ((kN / 8) * kSbo * static_cast<uint32_t>(c) + 2u * kLbo * kk) >> 4;
    return static_cast<uint64_t>(lo + off) | static_cast<uint64_t>(kSbo >> 4) << 32;
  }
};

// Shifts the signs of one n-tile's accumulators c0..c3 into the lane's words, highest column
// first (the caller walks the n-tiles highest first): c0, c1 (row g) into neg[0], c2, c3 (row
// g + 8) into neg[1]; a set bit is a negative (S r)_i.
__device__ __forceinline__ void push_signs(const float* c, uint32_t (&neg)[2]) {
#pragma unroll
  for (int b = 1; b >= 0; --b) {
    neg[0] = __funnelshift_l(__float_as_uint(c[b]), neg[0], 1);
    neg[1] = __funnelshift_l(__float_as_uint(c[2 + b]), neg[1], 1);
  }
}

}  // namespace dev

template <int kDim>
constexpr bool qjl_team_supported() {
  return kDim == 64 || kDim == 128;
}

// Halves per row of S in shared memory: a 16-byte skew, so the 8 rows an ldmatrix reads fall in
// distinct banks.
template <int kDim>
constexpr int qjl_row_halves() {
  return kDim + 8;
}
// The kernel's dynamic shared memory: S as fp16 rows (the wgmma layout takes kDim * kDim of
// them: the host, which cannot tell which the device code uses, sizes for the larger).
template <int kDim>
constexpr int qjl_smem_bytes() {
  return kDim * qjl_row_halves<kDim>() * 2;
}

// Where a lane's elements sit (quantize_write_fast.cuh): from fp16 rows at d 128 the transform
// on the tensor cores (QuadMmaLayout; the team is the mma quad, as the sketch GEMM's), 1.16x
// TeamLayout's kernel on an H100 (docs/benchmarks.md, session 30).
template <int kDim, bool kF16In>
using QjlLayout =
    std::conditional_t<kF16In && kDim == 128, dev::QuadMmaLayout, dev::TeamLayout<kDim, kF16In>>;

// S as each kernel variant holds it in shared memory, made once per pool on the host
// (qjl_team_images, quantize_write.cu) and copied by every CTA with 16-byte asynchronous copies.
// The CTAs used to convert and permute the float S themselves: 128 dependent 4-byte loads a
// thread, 32 L2 round trips and 64 KB a CTA (34 MB over one wave of 528 CTAs) before the first
// vector. Four images of qjl_image_halves each, variant qjl_image_variant: fp32 or fp16 rows (the
// layouts differ), m16n8k16 rows of qjl_row_halves or the wgmma core matrices.
template <int kDim>
constexpr int qjl_image_halves() {
  return qjl_smem_bytes<kDim>() / 2;
}
constexpr int qjl_image_variant(bool f16_in, bool wgmma) {
  return (wgmma ? 2 : 0) + (f16_in ? 1 : 0);
}
inline constexpr int kQjlImages = 4;

namespace dev {

// The GEMM's orders. Column p of a k-tile is what quad lane t = (p & 7) >> 1 supplies in its A
// fragment, as piece q = (p & 1) + 2 (p >> 3) (a0/a1 pair, a2/a3 pair). At d 128 that lane is
// team lane t and the piece its slot 4 kk + q; at d 64 team lane t & 1, slots [0, 16) for the
// quad lanes t < 2 and [16, 32) for t >= 2. Returns the rotated coordinate (the team lane's kE
// elements after the transform, Layout::position) that K position k = 16 kk + p stands for.
template <int kDim, class Layout>
__host__ __device__ constexpr int qjl_k_coordinate(int k) {
  constexpr int kLanes = kDim / 32, kKT = kDim / 16;
  const int kk = k / 16, p = k % 16, t = (p & 7) >> 1, q = (p & 1) + 2 * (p >> 3);
  const int j = t % kLanes, e = 4 * kKT * (t / kLanes) + 4 * kk + q;
  return 32 * j + Layout::position(e);
}
// The sketch row N position n = 8 nt + 2t + b stands for: quad lane t's accumulators of n-tile nt
// (column 2t + b) are rows 2 kNT t + 2 nt + b, so lane t collects rows [2 kNT t, 2 kNT (t + 1)).
template <int kDim>
__host__ __device__ constexpr int qjl_sketch_row(int n) {
  constexpr int kNT = kDim / 8;
  const int nt = n / 8, t = (n % 8) >> 1, b = n & 1;
  return 2 * kNT * t + 2 * nt + b;
}

}  // namespace dev

// The CTA's shape, as measured on an H100. From fp16 rows: 512 threads, four warpgroups sharing
// one copy of S, one CTA an SM (128 registers, no spill). Four CTAs of 128 threads each copied S
// (32 KB a CTA, 17 MB from L2 over the wave at the kernel's start): the shared copy ran 1.06x
// (docs/benchmarks.md, session 31). From fp32 rows: 3 CTAs of 128 threads at 168 registers (at 128
// the raw fp32 input of the vector in flight spilled 200+ bytes; 1.14x, session 29). The m16n8k16
// path (sm_80, plain sm_90) takes 512 threads from fp16 rows too, 4 CTAs of 128 from fp32. Host
// and device must agree, so the thread count does not depend on the device code's path.
#ifndef TQ_QJL_F16_THREADS
#define TQ_QJL_F16_THREADS 512
#endif
template <bool kF16In>
struct QjlTuning {
  static constexpr int kThreads = kF16In ? TQ_QJL_F16_THREADS : kWriteThreads;
  static_assert(kThreads % 128 == 0 && kThreads <= 512);
  static constexpr int kBlocks = kThreads > 128 ? 512 / kThreads : kF16In || !TQ_QJL_WGMMA ? 4 : 3;
};

// kBits: the mse code bits (the prod format's bits - 1). Grid-stride as tq_team_kernel: a team
// loads its next vector while it encodes the current one; the loop is warp-uniform (the warp's
// first team decides; warpgroup-uniform for wgmma), teams past the end encode their last vector
// again and store nothing.
template <int kDim, int kBits, bool kF16In>
__global__ void __launch_bounds__(QjlTuning<kF16In>::kThreads, QjlTuning<kF16In>::kBlocks)
    tq_qjl_team_kernel(const WriteArgs a) {
  static_assert(qjl_team_supported<kDim>());
  constexpr int kThreads = QjlTuning<kF16In>::kThreads;
  constexpr int kE = 32, kLanes = kDim / kE, kTeams = kThreads / kLanes;
  constexpr int kCodeBytes = kDim * kBits / 8, kSignBytes = kDim / 8;
  constexpr int kKT = kDim / 16, kNT = kDim / 8;  // k-tiles, n-tiles
  constexpr int kRounds = kLanes == 4 ? 2 : 1;    // rounds per GEMM: 16 vectors a warp
  constexpr int kRow = qjl_row_halves<kDim>();
  static_assert(kE / 2 == 2 * kKT * (4 / kLanes) && kNT % 2 == 0);  // packed pairs a round
  using Layout = QjlLayout<kDim, kF16In>;
  using Input = dev::LaneInput<kE, kF16In, Layout::kChunk>;
  __shared__ uint32_t s_lut[dev::CellLut::kWords];
  extern __shared__ __align__(16) uint8_t s_dyn[];
  __half* s_s = reinterpret_cast<__half*>(s_dyn);

  const int team = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const int wl = threadIdx.x % 32, t = wl & 3;
  const int heads = a.n_kv_heads, nvec = a.tokens * heads;
  const int flip = Layout::flip(lane);
  const int stride = static_cast<int>(gridDim.x) * kTeams;
  int v = static_cast<int>(blockIdx.x) * kTeams + team;
  // v < warp_end: the warp's first team has a vector (the warpgroup's first team for wgmma,
  // which takes the whole warpgroup every round; in a 128-thread CTA that is `team` itself,
  // spelled so because ptxas allocated the modulo's form differently).
  const int warp_end = nvec + (TQ_QJL_WGMMA ? (kThreads == 128 ? team : team % (128 / kLanes))
                                            : team % (32 / kLanes));

  // The (token, head) of the vector the team loads (its last one once past the end), stepped
  // without divisions, as tq_team_kernel.
  const int stride_tokens = stride / heads, stride_heads = stride % heads;
  int token = min(v, nvec - 1) / heads, head = min(v, nvec - 1) % heads;
  Input cur, other;
  // in flight while S and the tables are filled
  if (v < warp_end) cur.template load<kDim>(a, token, head, lane, flip);

  // S in the GEMM's orders, this variant's image (qjl_team_images), in flight while the tables
  // are filled; waited for, fenced for wgmma's reads (the async proxy) and published after
  // team_tables' barrier.
  {
    constexpr int kCopies = (TQ_QJL_WGMMA ? kDim * kDim * 2 : qjl_smem_bytes<kDim>()) / 16;
    const uint4* image = reinterpret_cast<const uint4*>(
        a.qjl_smem + qjl_image_halves<kDim>() * qjl_image_variant(kF16In, TQ_QJL_WGMMA));
    const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(s_dyn));
#pragma unroll 1
    for (int i = threadIdx.x; i < kCopies; i += kThreads)
      dev::cp_async_16(dst + 16u * static_cast<uint32_t>(i), image + i);
  }
  dev::SignMasks<kE, kF16In> masks;
  const dev::CellLut lut =
      dev::team_tables<kDim, kE, kF16In, Layout::kChunk>(a, lane, flip, s_lut, masks);
  dev::cp_async_wait_all();
  dev::fence_proxy_async_shared();
  __syncthreads();
  const dev::QuadMmaHadamard rot(wl);
  const int cap = a.block_tokens;
  // This lane's ldmatrix row of S: matrices (n-tile 2np, k 0-7), (2np, 8-15), (2np + 1, 0-7),
  // (2np + 1, 8-15) of a k-tile are b0, b1 of n-tile 2np, then of 2np + 1.
  [[maybe_unused]] const uint32_t b_base =
      static_cast<uint32_t>(__cvta_generic_to_shared(s_s)) +
      2u * static_cast<uint32_t>((8 * (wl >> 4) + (wl & 7)) * kRow + 8 * ((wl >> 3) & 1));

  // One vector of the team: encode now's, store its codes and norms, load the next into nxt;
  // packed gets its residual as fp16 pairs (element 2m low, 2m + 1 high), signs where its sketch
  // goes (null: not stored).
  const auto encode = [&](const Input& now, Input& nxt, uint32_t(&packed)[kE / 2], uint32_t*& signs,
                          uint32_t& dead) {
    const bool store = v < nvec && now.sm >= 0;
    const int vec_head = head;
    float y[kE];
    const float lane_n2 = dev::team_rotate<Layout>(now, masks, &rot, y);
    const int32_t sm = now.sm;
    if (v + stride < nvec) {  // else reload this one (not stored)
      token += stride_tokens, head += stride_heads;
      if (head >= heads) head -= heads, ++token;
    }
    v += stride;
    nxt.template load<kDim>(a, token, head, lane, flip);
    uint32_t words[kBits];
    float res[kE];
    const float stored = dev::tq_encode<kDim, kBits, Layout>(y, lane_n2, lane, 0xffffffffu, lut,
                                                             a.hadamard_scale, false, words, res);
    dev::LaneSum<kE> r2;
#pragma unroll
    for (int e = 0; e < kE; ++e) r2.add_sq(e, res[e]);
    // A zero or non-finite vector (stored not > 0) has residual 0: norm 0 and every sign bit set
    // (S 0 = +0), as the CPU codec; its row of the GEMM (res may be NaN) touches no other row.
    const bool live = stored > 0.0f;
    dead = live ? 0u : ~0u;
    const float team_r2 = dev::team_sum<kLanes>(0xffffffffu, r2.total());  // every lane shuffles
    const float rn2 = live ? team_r2 : 0.0f;
    // r is a residual of the unit vector (||r|| ~ 0.05-0.3): only parts far below ||r|| reach
    // fp16's subnormals.
#pragma unroll
    for (int m = 0; m < kE / 2; ++m) packed[m] = dev::pack_h2(res[2 * m], res[2 * m + 1]);
    signs = nullptr;
    if (store) {
      int slot;
      uint8_t* blk = dev::slot_block(a, sm, vec_head, slot);
      uint32_t* codes = reinterpret_cast<uint32_t*>(blk + slot * kCodeBytes + lane * kBits * 4);
#pragma unroll
      for (int w = 0; w < kBits; ++w) codes[w] = words[w];
      if (lane == 0) {
        uint16_t* norms = reinterpret_cast<uint16_t*>(blk + cap * (kCodeBytes + kSignBytes));
        norms[slot] = dev::norm_to_f16(stored);
        norms[cap + slot] = dev::norm_to_f16(sqrtf(rn2));  // the residual norms follow
      }
      signs = reinterpret_cast<uint32_t*>(blk + cap * kCodeBytes + slot * kSignBytes);
    }
  };

  // D = R S^T for the warp's 16 vectors: lo / hi are the A fragments' rows g / g + 8 (2 kKT
  // registers each: k-tile kk's a0 / a1 is [2 kk], its a2 / a3 [2 kk + 1]). Each accumulator's
  // sign is shifted into the lane's word for its row half h (c0, c1: h 0; c2, c3: h 1) at bit
  // 2 nt + b, highest first (a funnel shift each); bit = (S r)_i >= 0 (the sum starts at +0, so a
  // zero product sum is +0).
  [[maybe_unused]] const dev::QjlDesc<kDim> s_desc(
      static_cast<uint32_t>(__cvta_generic_to_shared(s_s)));
  const auto sketch = [&](uint32_t(&lo)[2 * kKT], uint32_t(&hi)[2 * kKT], uint32_t(&neg)[2]) {
    neg[0] = neg[1] = 0u;
#if TQ_QJL_WGMMA
    // N chunks of kWN = 32 (n-tiles 4c..4c + 3: acc[4j..4j + 3] is the chunk's n-tile j's
    // c0..c3), highest first, as the m16n8k16 path; one chunk in flight at a time. (H100: N 32
    // 1.03-1.04x N 16, N 64 spills; two chunks in flight made ptxas serialise the fp32-input
    // kernels' MMAs, C7518, and the fp16 ones ran 0.96x.)
    constexpr int kWN = 32, kChunks = kDim / kWN;
#pragma unroll
    for (int c = kChunks - 1; c >= 0; --c) {
      float acc[kWN / 2];
      dev::wgmma_fence();
      dev::wgmma_m64n32k16<false>(acc, lo[0], hi[0], lo[1], hi[1], s_desc.template tile<kWN>(c, 0));
#pragma unroll
      for (int kk = 1; kk < kKT; ++kk)
        dev::wgmma_m64n32k16<true>(acc, lo[2 * kk], hi[2 * kk], lo[2 * kk + 1], hi[2 * kk + 1],
                                   s_desc.template tile<kWN>(c, kk));
      dev::wgmma_commit_and_wait();
#pragma unroll
      for (int i = 0; i < kWN / 2; ++i) dev::wgmma_hold(acc[i]);
#pragma unroll
      for (int j = kWN / 8 - 1; j >= 0; --j) dev::push_signs(acc + 4 * j, neg);
    }
#pragma unroll
    for (int i = 0; i < 2 * kKT; ++i) dev::wgmma_hold(lo[i]), dev::wgmma_hold(hi[i]);
#else
#pragma unroll
    for (int np = kNT / 2 - 1; np >= 0; --np) {
      float acc[2][4] = {};
#pragma unroll
      for (int kk = 0; kk < kKT; ++kk) {
        uint32_t b[4];
        dev::ldmatrix_x4(b_base + 2u * static_cast<uint32_t>(16 * np * kRow + 16 * kk), b);
        dev::mma_16816(acc[0], lo[2 * kk], hi[2 * kk], lo[2 * kk + 1], hi[2 * kk + 1], b[0], b[1]);
        dev::mma_16816(acc[1], lo[2 * kk], hi[2 * kk], lo[2 * kk + 1], hi[2 * kk + 1], b[2], b[3]);
      }
#pragma unroll
      for (int j = 1; j >= 0; --j) dev::push_signs(acc[j], neg);
    }
#endif
  };

  uint32_t p0[kE / 2];
  uint32_t* s0;
  uint32_t dead0;
  if constexpr (kRounds == 2) {
    // d 128: lane t of team g holds columns 2t, 2t + 1, 2t + 8, 2t + 9 of every k-tile of its own
    // vectors (rows g: the first round's, g + 8: the second's) and ends with bits 32t.. of both.
    uint32_t p1[kE / 2];
    uint32_t* s1;
    uint32_t dead1;
    while (v < warp_end) {
      encode(cur, other, p0, s0, dead0);
      if (v < warp_end) {
        encode(other, cur, p1, s1, dead1);
      } else {
#pragma unroll
        for (int m = 0; m < kE / 2; ++m) p1[m] = 0u;
        s1 = nullptr;
      }
      uint32_t neg[2];
      sketch(p0, p1, neg);
      if (s0) s0[lane] = ~neg[0] | dead0;
      if (s1) s1[lane] = ~neg[1] | dead1;
    }
  } else {
    // d 64: rows g, g + 8 are teams 2g, 2g + 1 (quad lanes 0-1, 2-3). Team lane j holds the
    // columns of quad lanes j (slots 0-15) and j + 2 (16-31): one exchange across the quad's
    // halves gives each lane its columns of both rows. Lane t collects bits 16t.. of both teams'
    // sketches (h 0: team 2g, h 1: 2g + 1); team lane j stores word j (bits 32j..), the halves of
    // quad lanes 2j and 2j + 1.
    const bool upper = t >= 2;
    const int src = (wl & ~3) + 2 * (t & 1);
    const uint32_t halves = upper ? 0x7632u : 0x5410u;
    const auto round = [&](const Input& now, Input& nxt) {
      encode(now, nxt, p0, s0, dead0);
      uint32_t lo[2 * kKT], hi[2 * kKT];
#pragma unroll
      for (int i = 0; i < 2 * kKT; ++i) {
        const uint32_t got = __shfl_xor_sync(0xffffffffu, upper ? p0[i] : p0[2 * kKT + i], 2);
        lo[i] = upper ? got : p0[i];
        hi[i] = upper ? p0[2 * kKT + i] : got;
      }
      uint32_t neg[2];
      sketch(lo, hi, neg);
      const uint32_t mine = ~(neg[0] | neg[1] << 16);
      const uint32_t x0 = __shfl_sync(0xffffffffu, mine, src);
      const uint32_t x1 = __shfl_sync(0xffffffffu, mine, src + 1);
      if (s0) s0[lane] = __byte_perm(x0, x1, halves) | dead0;
    };
    while (v < warp_end) {
      round(cur, other);
      if (v >= warp_end) break;
      round(other, cur);
    }
  }
}

}  // namespace tq::backend::cuda
