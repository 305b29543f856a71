// Bulk quantize-on-write of tq prod (QJL) formats: the mse part as tq_team_kernel encodes it,
// the 1-bit sketch sign(S r) of the residual r = y - C[idx] on the tensor cores.
//
// The CPU-order kernel (quantize_write.cuh) computes S r per vector as d x d float64 products,
// 16k FMA64 per vector at d 128: 0.01 of the copy bandwidth. Here a CTA encodes kTeams vectors a
// round (one per team of d / 32 lanes, TeamLayout), stages their residuals in shared memory as
// fp16, and its warps take R S^T as one GEMM, m16n8k16 with fp32 accumulation: vectors are the
// M side, sketch rows the N side; each warp holds the B fragments of its d / 4 rows of S in
// registers for the whole kernel, so S is read once per CTA and every round reads only the
// staged residuals (ldmatrix). Each quad of lanes ORs its accumulators' sign bits into the
// vector's word of the warp's rows (two shuffles), and after the next round's barrier the
// team's lane 0 stores the vector's bitstream.
//
// Precision: fp16 operands (relative rounding 2^-11 of S and of r) put the computed
// (S r)_i within ~4e-4 ||r|| (one sigma) of the float64 value, so a sign can differ from the CPU
// codec's where |(S r)_i| is that small: 0.7-1e-4 of the signs in the tests (tq4j d 128, tq3j
// d 64), each where the projection is ambiguous to begin with. Codes, norms and the residual norm
// follow tq_team_kernel's float32 contract. Head dims 64 and 128 (the B fragments of d 256 would
// not fit in registers; d 256 takes the CPU-order kernel).
#pragma once

#include <type_traits>

#include "tq/backend/cuda/quantize_write_fast.cuh"

namespace tq::backend::cuda {

namespace dev {

__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

}  // namespace dev

template <int kDim>
constexpr bool qjl_team_supported() {
  return kDim == 64 || kDim == 128;
}

// kBits: the mse code bits (the prod format's bits - 1). Grid-stride over rounds of kTeams
// vectors, every CTA's trip count uniform (its barriers), teams past the end encode the last
// vector again and store nothing.
template <int kDim, int kBits, bool kF16In>
__global__ void __launch_bounds__(kWriteThreads, 3) tq_qjl_team_kernel(const WriteArgs a) {
  static_assert(qjl_team_supported<kDim>());
  constexpr int kE = 32, kLanes = kDim / kE, kTeams = kWriteThreads / kLanes;
  constexpr int kCodeBytes = kDim * kBits / 8, kSignBytes = kDim / 8;
  constexpr int kWarps = kWriteThreads / 32;
  constexpr int kMT = kTeams / 16;        // m-tiles: 16 vectors each
  constexpr int kNW = kDim / 8 / kWarps;  // n-tiles (8 sketch rows each) per warp
  constexpr int kKT = kDim / 16;          // k-tiles: 16 dimensions each
  constexpr int kRow = kDim + 8;          // halves per staged row: a 16-byte skew, so the
                                          // 8 rows an ldmatrix reads fall in distinct banks
  static_assert(kMT >= 1 && kNW >= 1 && kTeams % 16 == 0);
  using Layout = dev::TeamLayout<kDim, kF16In>;
  using Input = dev::LaneInput<kE, kF16In, Layout::kChunk>;
  // Signs of a round: per vector, kDim / kRowsW words of the kRowsW rows each warp computes.
  constexpr int kRowsW = kNW * 8;
  using SigWord = std::conditional_t<kRowsW == 32, uint32_t, uint16_t>;
  static_assert(kRowsW == 32 || kRowsW == 16);
  // Two buffers of residuals and signs, so that one barrier a round orders everything: round k
  // stages into buffer k & 1, and after its barrier stores round k - 1's signs (complete, since
  // every warp's GEMM of round k - 1 came before the barrier), then runs its own GEMM.
  __shared__ uint32_t s_lut[dev::CellLut::kWords];
  __shared__ __align__(16) __half s_r[2][kTeams * kRow];
  __shared__ __align__(16) SigWord s_sig[2][kTeams * kWarps];

  const int team = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const int warp = threadIdx.x / 32, wl = threadIdx.x % 32, g = wl >> 2, t = wl & 3;
  const int heads = a.n_kv_heads, nvec = a.tokens * heads;
  const int flip = Layout::flip(lane);

  // B fragments of S^T for this warp's sketch rows n = 8 (warp kNW + j) + g: dims 16 kk + 2t,
  // + 1 (b0) and + 8, + 9 (b1); a.qjl is S, row-major.
  uint32_t sb[kNW][kKT][2];
#pragma unroll
  for (int j = 0; j < kNW; ++j) {
    const float* row = a.qjl + static_cast<size_t>(8 * (warp * kNW + j) + g) * kDim + 2 * t;
#pragma unroll
    for (int kk = 0; kk < kKT; ++kk) {
      const float2 lo = __ldg(reinterpret_cast<const float2*>(row + 16 * kk));
      const float2 hi = __ldg(reinterpret_cast<const float2*>(row + 16 * kk + 8));
      sb[j][kk][0] = dev::pack_h2(lo.x, lo.y);
      sb[j][kk][1] = dev::pack_h2(hi.x, hi.y);
    }
  }
  uint32_t hmask[kE / 2];
  const dev::CellLut lut = dev::team_tables<kDim, kE, Layout::kChunk>(a, lane, flip, s_lut, hmask);
  const int cap = a.block_tokens;
  // This lane's ldmatrix row address within an m-tile (row wl % 16, column half wl / 16).
  const uint32_t a_off = 2u * static_cast<uint32_t>((wl % 16) * kRow + (wl / 16) * 8);
  const uint32_t a_base[2] = {static_cast<uint32_t>(__cvta_generic_to_shared(s_r[0])) + a_off,
                              static_cast<uint32_t>(__cvta_generic_to_shared(s_r[1])) + a_off};

  const auto load = [&](int base, Input& in) {
    const int v = min(base + team, nvec - 1);
    in.template load<kDim>(a, v / heads, v % heads, lane, flip);
  };
  // The previous round's vector of this team, whose signs its lane 0 stores after the barrier.
  uint32_t* prev_signs = nullptr;
  const auto store_signs = [&](int buf) {
    if (prev_signs && lane == 0) {  // as words, like the codes (pages are 4-byte aligned)
      const uint32_t* src = reinterpret_cast<const uint32_t*>(s_sig[buf] + team * kWarps);
#pragma unroll
      for (int i = 0; i < kSignBytes / 4; ++i) prev_signs[i] = src[i];
    }
  };
  const auto round = [&](int base, int buf, const Input& now, Input& nxt) {
    const int v = base + team;
    const bool store = v < nvec && now.sm >= 0;
    const int vec_head = min(v, nvec - 1) % heads;
    float y[kE];
    dev::signed_input(now, hmask, y);
    dev::LaneSum<kE> n2;
#pragma unroll
    for (int e = 0; e < kE; ++e) n2.add_sq(e, y[e]);
    const int32_t sm = now.sm;
    const int next = base + static_cast<int>(gridDim.x) * kTeams;
    if (next < nvec) load(next, nxt);  // CTA-uniform
    uint32_t words[kBits];
    float res[kE];
    const float stored = dev::tq_encode<kDim, kBits, Layout>(y, n2.total(), lane, 0xffffffffu, lut,
                                                             a.hadamard_scale, false, words, res);
    dev::LaneSum<kE> r2;
#pragma unroll
    for (int e = 0; e < kE; ++e) r2.add_sq(e, res[e]);
    const float rn2 = dev::team_sum<kLanes>(0xffffffffu, r2.total());
    // Staged as they are: r is a residual of the unit vector (||r|| ~ 0.05-0.3), so only parts
    // far below ||r|| reach fp16's subnormals. Element e is coordinate kE lane + position(e);
    // pairs (2m, 2m + 1) are adjacent there.
    __half* row = s_r[buf] + team * kRow + lane * kE;
#pragma unroll
    for (int m = 0; m < kE / 2; ++m)
      *reinterpret_cast<uint32_t*>(row + Layout::position(2 * m)) =
          dev::pack_h2(res[2 * m], res[2 * m + 1]);
    uint32_t* signs_at = nullptr;
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
      signs_at = reinterpret_cast<uint32_t*>(blk + cap * kCodeBytes + slot * kSignBytes);
    }
    __syncthreads();  // this round's residuals are staged, the previous round's signs complete
    store_signs(buf ^ 1);
    prev_signs = signs_at;

    // D = R S^T: rows are vectors (m-tile mt), columns sketch rows (this warp's n-tiles).
    float acc[kMT][kNW][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int j = 0; j < kNW; ++j)
        acc[mt][j][0] = acc[mt][j][1] = acc[mt][j][2] = acc[mt][j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < kKT; ++kk)
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        uint32_t af[4];
        dev::ldmatrix_x4(a_base[buf] + 2u * static_cast<uint32_t>(16 * mt * kRow + 16 * kk), af);
#pragma unroll
        for (int j = 0; j < kNW; ++j)
          dev::mma_16816(acc[mt][j], af[0], af[1], af[2], af[3], sb[j][kk][0], sb[j][kk][1]);
      }
      // acc[mt][j][c]: vector 16 mt + g + 8 (c >> 1), sketch row 8 (warp kNW + j) + 2t + (c & 1),
      // bit 8j + 2t + (c & 1) of the warp's word for the vector. Each lane collects the sign bits
      // (negative: 1) of its 2 x kNW values at 8j + (c & 1), the quad's 4 lanes OR theirs shifted
      // by 2t, and the word is inverted: bit = (S r)_i >= 0 (the sum starts at +0, so a zero
      // product sum is +0).
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      uint32_t neg[2] = {0u, 0u};
#pragma unroll
      for (int j = 0; j < kNW; ++j)
#pragma unroll
        for (int c = 0; c < 4; ++c)
          neg[c >> 1] |= (__float_as_uint(acc[mt][j][c]) >> 31) << (8 * j + (c & 1));
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        uint32_t w = neg[h] << (2 * t);
        w |= __shfl_xor_sync(0xffffffffu, w, 1);
        w |= __shfl_xor_sync(0xffffffffu, w, 2);
        if (t == 0) s_sig[buf][(16 * mt + g + 8 * h) * kWarps + warp] = static_cast<SigWord>(~w);
      }
    }
  };

  const int stride = static_cast<int>(gridDim.x) * kTeams;
  int base = static_cast<int>(blockIdx.x) * kTeams;
  if (base >= nvec) return;  // CTA-uniform
  Input cur, other;
  load(base, cur);
  for (;;) {
    round(base, 0, cur, other);
    base += stride;
    if (base >= nvec) break;
    round(base, 1, other, cur);
    base += stride;
    if (base >= nvec) break;
  }
  __syncthreads();  // the last round's signs are complete
  store_signs(((base - static_cast<int>(blockIdx.x) * kTeams) / stride - 1) & 1);
}

}  // namespace tq::backend::cuda
