// GPU decode attention against a float64 reference computed from the CPU codec's decoded
// vectors (quant::VectorCodec::decode), over paged blocks in shuffled pool order, mixed
// sequence lengths (split-K and its merge included, splits by length and as the longest), GQA
// groups, with and without the f16 window.
//
// Tolerance: the kernel rounds the rotated query, the codebook values and the softmax weights to
// fp16 (relative 2^-11 each), so a score of magnitude |s| moves by about |s| * 2^-11; with the
// outlier channels below (|s| up to ~20 in natural units) the output moves by < 1% of its
// largest element. kAttnTol states that bound for every format.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <functional>
#include <initializer_list>
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

constexpr double kAttnTol = 1e-2;  // max |gpu - ref| / max |ref| per (sequence, head)
constexpr uint64_t kSeed = 0xa77e0006u;

// One paged K/V segment built on the host with the CPU codecs, then uploaded.
struct HostSegment {
  std::unique_ptr<quant::VectorCodec> k_codec, v_codec;
  std::vector<uint8_t> k_pool, v_pool;
  size_t k_head_stride = 0, v_head_stride = 0;
  std::vector<int32_t> tables;  // [seq][max_blocks]
  int max_blocks = 0;
  std::vector<int32_t> lengths;
  // decoded[seq][token][head][dim] for the reference
  std::vector<std::vector<float>> k_dec, v_dec;
};

Expected<HostSegment> build_segment(quant::Format kf, quant::Format vf, int dim, int kv_heads,
                                    int kCap, const std::vector<int>& lengths, uint64_t seed,
                                    quant::CodebookCache& books, uint64_t layer_seed) {
  HostSegment s;
  quant::CodecOptions opt;
  opt.seed = layer_seed;
  opt.norm_correction = true;
  TQ_ASSIGN_OR_RETURN(s.k_codec, quant::make_codec(kf, dim, opt, books));
  TQ_ASSIGN_OR_RETURN(s.v_codec, quant::make_codec(vf, dim, opt, books));
  int total_blocks = 0;
  for (int len : lengths) {
    s.max_blocks = std::max(s.max_blocks, (len + kCap - 1) / kCap);
    total_blocks += (len + kCap - 1) / kCap;
  }
  s.max_blocks = std::max(s.max_blocks, 1);
  total_blocks = std::max(total_blocks, 1);
  const std::vector<int32_t> perm = test::shuffled(total_blocks, seed);
  s.k_head_stride = s.k_codec->block_bytes(kCap);
  s.v_head_stride = s.v_codec->block_bytes(kCap);
  s.k_pool.assign(s.k_head_stride * kv_heads * total_blocks,
                  0x7f);  // stale bytes (fp16 NaN patterns)
  s.v_pool.assign(s.v_head_stride * kv_heads * total_blocks, 0x7f);
  s.tables.assign(lengths.size() * s.max_blocks, 0);
  int next = 0;
  for (size_t q = 0; q < lengths.size(); ++q) {
    const int len = lengths[q];
    s.lengths.push_back(len);
    for (int b = 0; b < (len + kCap - 1) / kCap; ++b) s.tables[q * s.max_blocks + b] = perm[next++];
    const std::vector<float> k = test::outlier_data(len, kv_heads, dim, seed + 2 * q, false, 10.0f);
    const std::vector<float> v =
        test::outlier_data(len, kv_heads, dim, seed + 2 * q + 1, false, 1.0f);
    std::vector<float> kd(k.size()), vd(v.size());
    for (int t = 0; t < len; ++t)
      for (int h = 0; h < kv_heads; ++h) {
        const int blk = s.tables[q * s.max_blocks + t / kCap];
        const size_t i = (static_cast<size_t>(t) * kv_heads + h) * dim;
        uint8_t* kb = s.k_pool.data() + (static_cast<size_t>(blk) * kv_heads + h) * s.k_head_stride;
        uint8_t* vb = s.v_pool.data() + (static_cast<size_t>(blk) * kv_heads + h) * s.v_head_stride;
        s.k_codec->encode(k.data() + i, kb, kCap, t % kCap);
        s.v_codec->encode(v.data() + i, vb, kCap, t % kCap);
        s.k_codec->decode(kb, kCap, t % kCap, kd.data() + i);
        s.v_codec->decode(vb, kCap, t % kCap, vd.data() + i);
      }
    s.k_dec.push_back(std::move(kd));
    s.v_dec.push_back(std::move(vd));
  }
  return Expected<HostSegment>(std::move(s));
}

struct DeviceSegment {
  DeviceBuffer k, v, tables, lengths;
  std::unique_ptr<DeviceCodecTables> kt, vt;
};

// h on the device as attention segment seg (its buffers in d).
Status upload_segment(const HostSegment& h, quant::Format kfmt, quant::Format vfmt, int dim,
                      int kv_heads, int kCap, uint64_t layer_seed, quant::CodebookCache& books,
                      AttentionSegment& seg, DeviceSegment& d) {
  d.k = DeviceBuffer::from(h.k_pool);
  d.v = DeviceBuffer::from(h.v_pool);
  d.tables = DeviceBuffer::from(h.tables);
  d.lengths = DeviceBuffer::from(h.lengths);
  TQ_ASSIGN_OR_RETURN(DeviceCodecTables kt,
                      DeviceCodecTables::create(kfmt, dim, layer_seed, books));
  TQ_ASSIGN_OR_RETURN(DeviceCodecTables vt,
                      DeviceCodecTables::create(vfmt, dim, layer_seed, books));
  d.kt = std::make_unique<DeviceCodecTables>(std::move(kt));
  d.vt = std::make_unique<DeviceCodecTables>(std::move(vt));
  for (PagedPool* p : {&seg.k, &seg.v}) {
    const bool is_k = p == &seg.k;
    p->format = is_k ? kfmt : vfmt;
    p->head_dim = dim;
    p->block_tokens = kCap;
    p->n_kv_heads = kv_heads;
    p->data = is_k ? d.k.get<uint8_t>() : d.v.get<uint8_t>();
    p->norm_correction = true;
    p->tables = is_k ? d.kt->view() : d.vt->view();
  }
  seg.block_tables = d.tables.get<int32_t>();
  seg.max_blocks = h.max_blocks;
  seg.lengths = d.lengths.get<int32_t>();
  seg.max_length = *std::max_element(h.lengths.begin(), h.lengths.end());
  return ok_status();
}

// One segment's part of a reference: the first `len` tokens of sequence `seq` (none when seg is
// null).
struct RefPart {
  const HostSegment* seg;
  int seq;
  int len;
};

// max |o - ref| / max |ref| of query head qh (KV head kvh) over the parts' tokens, the reference
// in float64 from the decoded vectors; -1 when o is not finite, or not 0 where there are no
// tokens at all (the kernel defines that output as 0; it returns 0 then).
double reference_error(std::initializer_list<RefPart> parts, const float* qh, int kvh, int kv_heads,
                       int dim, double scale, const float* o) {
  std::vector<double> scores, ref(dim, 0.0);
  std::vector<const float*> vals;
  for (const RefPart& p : parts)
    for (int t = 0; p.seg && t < p.len; ++t) {
      const size_t i = (static_cast<size_t>(t) * kv_heads + kvh) * dim;
      double dot = 0.0;
      for (int j = 0; j < dim; ++j) dot += static_cast<double>(qh[j]) * p.seg->k_dec[p.seq][i + j];
      scores.push_back(dot * scale);
      vals.push_back(p.seg->v_dec[p.seq].data() + i);
    }
  if (scores.empty()) {
    for (int j = 0; j < dim; ++j)
      if (o[j] != 0.0f) return -1.0;
    return 0.0;
  }
  const double m = *std::max_element(scores.begin(), scores.end());
  double z = 0.0;
  for (size_t t = 0; t < scores.size(); ++t) {
    const double w = std::exp(scores[t] - m);
    z += w;
    for (int j = 0; j < dim; ++j) ref[j] += w * vals[t][j];
  }
  double ref_max = 0.0, err = 0.0;
  for (int j = 0; j < dim; ++j) {
    ref[j] /= z;
    ref_max = std::max(ref_max, std::fabs(ref[j]));
  }
  for (int j = 0; j < dim; ++j) {
    if (!std::isfinite(o[j])) return -1.0;
    err = std::max(err, std::fabs(o[j] - ref[j]));
  }
  return err / std::max(ref_max, 1e-30);
}

// The rows of one sequence as n queries that share its block table (a prefill pass): every
// query's table is the sequence's, query i sees lengths[i] of its tokens.
void share_table(HostSegment& h, const std::vector<int>& lengths) {
  const std::vector<int32_t> table(h.tables.begin(), h.tables.begin() + h.max_blocks);
  h.tables.clear();
  h.lengths.clear();
  for (int len : lengths) {
    h.tables.insert(h.tables.end(), table.begin(), table.end());
    h.lengths.push_back(len);
  }
}

struct AttnCase {
  const char* k;
  const char* v;
  int dim;
  bool window;
  int group;
  int block_tokens = 32;  // 32 takes the kernels specialised for 32-token pages (head dim 128)
  // The long sequence's length and the split cap: 17000 tokens in one split is 532 pages, more
  // than the kernel lists in shared memory (kAttnPages), so the rest come from the block table.
  static constexpr int kLongLen = 2100, kMaxSplits = 5;  // several splits (exercises the merge)
  int long_len = kLongLen;
  int max_splits = kMaxSplits;
  // Splits by length (DecodeAttentionParams::split_by_length; batches of 2..128 sequences take
  // them) or as the longest is cut.
  bool by_length = true;
  // 0: three or four sequences ({1, 77, long_len, 0} and the window's {5, 0, 33, 9}); else this
  // many of mixed lengths (zeros among them), so the by-length plan's scan spans many lanes.
  int many = 0;
};

std::string case_name(const testing::TestParamInfo<AttnCase>& i) {
  return std::string(i.param.k) + "_" + i.param.v + "_d" + std::to_string(i.param.dim) +
         (i.param.window ? "_window" : "") + "_g" + std::to_string(i.param.group) + "_b" +
         std::to_string(i.param.block_tokens) +
         (i.param.long_len != AttnCase::kLongLen ? "_len" + std::to_string(i.param.long_len) : "") +
         (i.param.max_splits != AttnCase::kMaxSplits
              ? "_splits" + std::to_string(i.param.max_splits)
              : "") +
         (i.param.by_length ? "" : "_longest") +
         (i.param.many ? "_n" + std::to_string(i.param.many) : "");
}

class DecodeAttention : public testing::TestWithParam<AttnCase> {};

TEST_P(DecodeAttention, MatchesFloat64Reference) {
  TQ_REQUIRE_GPU();
  const AttnCase c = GetParam();
  const quant::Format kf = *quant::parse_format(c.k), vf = *quant::parse_format(c.v);
  const int dim = c.dim, kv_heads = 2, n_heads = kv_heads * c.group, kCap = c.block_tokens;
  std::vector<int> main_len = {1, 77, c.long_len, 0};
  std::vector<int> win_len = {5, 0, 33, 9};
  int n_seqs = c.window ? 4 : 3;
  if (c.many > 0) {
    n_seqs = c.many;
    main_len.clear(), win_len.clear();
    for (int i = 0; i < n_seqs; ++i) {
      main_len.push_back(i % 7 == 3 ? 0 : (i * 397 + 13) % 700 + (i == 5 ? c.long_len : 0));
      win_len.push_back((i * 5) % 40);
    }
  }
  const std::vector<int> lens_main(main_len.begin(), main_len.begin() + n_seqs);
  const std::vector<int> lens_win(win_len.begin(), win_len.begin() + n_seqs);
  const uint64_t layer_seed = derive_seed(kSeed, 3);
  quant::CodebookCache books;

  auto main = build_segment(kf, vf, dim, kv_heads, kCap, lens_main, kSeed, books, layer_seed);
  ASSERT_TRUE(main.ok()) << main.status().to_string();
  Expected<HostSegment> win = Status(StatusCode::kNotFound, "no window");
  if (c.window) {
    win = build_segment(quant::kFormatF16, quant::kFormatF16, dim, kv_heads, kCap, lens_win,
                        kSeed + 99, books, layer_seed);
    ASSERT_TRUE(win.ok()) << win.status().to_string();
  }
  const std::vector<float> q = test::outlier_data(n_seqs, n_heads, dim, kSeed + 7, false, 1.0f);
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));

  const auto upload = [&](const HostSegment& h, quant::Format kfmt, quant::Format vfmt,
                          AttentionSegment& seg, DeviceSegment& d) {
    return upload_segment(h, kfmt, vfmt, dim, kv_heads, kCap, layer_seed, books, seg, d);
  };

  DecodeAttentionParams p;
  p.n_seqs = n_seqs;
  p.n_heads = n_heads;
  p.scale = scale;
  DeviceSegment dmain, dwin;
  Status st = upload(*main, kf, vf, p.main, dmain);
  ASSERT_TRUE(st.ok()) << st.to_string();
  if (c.window) {
    st = upload(*win, quant::kFormatF16, quant::kFormatF16, p.window, dwin);
    ASSERT_TRUE(st.ok()) << st.to_string();
  }
  DeviceBuffer dq = DeviceBuffer::from(q);
  DeviceBuffer dout = DeviceBuffer::from(std::vector<float>(q.size(), NAN));  // poisoned
  p.q = dq.get<float>();
  p.out = dout.get<float>();
  p.max_splits = c.max_splits;
  p.split_by_length = c.by_length;
  {  // the path the case names is the one taken
    auto plan = plan_decode_attention(p);
    ASSERT_TRUE(plan.ok()) << plan.status().to_string();
    // (splits by length: tq keys and 2- or 4-bit tq values on 32-token pages at head dim 128,
    // f16, q8_0, q4_0; splits of at least 2048 tokens)
    const bool takes =
        (kf.is_tq() && !kf.has_qjl() && vf.is_tq() && vf.bits != 3 && dim == 128 && kCap == 32) ||
        !kf.is_tq();
    EXPECT_EQ(plan->main_split_budget > 0, takes && c.by_length && n_seqs > 1 &&
                                               plan->main_splits > 1 &&
                                               plan->main_tokens_per_split >= 2048);
    // (the long cases are there to take them, 100000 in two splits of ~50000 tokens: ~1560
    // pages, more than the longest's-cut kernel lists)
    if (takes && c.by_length && c.long_len >= 9000 && c.max_splits != 1)
      EXPECT_GT(plan->main_split_budget, 0);
  }
  auto ws_bytes = decode_attention_workspace_bytes(p);
  ASSERT_TRUE(ws_bytes.ok()) << ws_bytes.status().to_string();
  DeviceBuffer ws(*ws_bytes);
  p.workspace = ws.get();
  p.workspace_bytes = ws.bytes();
  st = decode_attention(p, nullptr);
  ASSERT_TRUE(st.ok()) << st.to_string();
  TQ_CUDA_OK(cudaDeviceSynchronize());
  const std::vector<float> out = dout.to_host<float>();

  // The merge in the attention kernel (merge_counters; no window): the merge kernel's bits, on
  // two calls in a row, with the counters back at zero after each.
  DeviceBuffer dctr = DeviceBuffer::from(std::vector<int32_t>(n_seqs * kv_heads, 0));
  const auto fused_matches = [&](DecodeAttentionParams f, const std::vector<float>& want,
                                 DeviceBuffer& fout, const std::function<void()>& more) {
    f.merge_counters = dctr.get<int32_t>();
    auto plan = plan_decode_attention(f);
    ASSERT_TRUE(plan.ok()) << plan.status().to_string();
    // (no window, one query a CTA, Hadamard-rotated or plain values; cut as the longest, <= 16
    // splits)
    ASSERT_EQ(plan->fused_merge,
              !c.window && (plan->main_split_budget > 0 || plan->main_splits <= 16));
    if (!plan->fused_merge) return;
    for (int call = 0; call < 2; ++call) {
      TQ_CUDA_OK(cudaMemset(fout.get(), 0xff, fout.bytes()));  // (NaN)
      Status fst = decode_attention(f, *plan, nullptr);
      ASSERT_TRUE(fst.ok()) << fst.to_string();
      TQ_CUDA_OK(cudaDeviceSynchronize());
      const std::vector<float> got = fout.to_host<float>();
      for (size_t i = 0; i < got.size(); ++i)
        ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i]))
            << "call " << call << " element " << i << ": fused " << got[i] << ", merge kernel "
            << want[i];
      for (int32_t v : dctr.to_host<int32_t>()) ASSERT_EQ(v, 0) << "call " << call;
      more();
    }
  };
  {
    DeviceBuffer fout(q.size() * sizeof(float));
    DecodeAttentionParams f = p;
    f.out = fout.get<float>();
    fused_matches(f, out, fout, [] {});
  }

  // The model's epilogue in a second call: the output times a per-(row, KV head dim) scale
  // (rows picked per sequence), as fp16 and 8-bit activations. Exact: the same float
  // multiply, fp16 rounding and q8_act.cuh arithmetic done on the host.
  {
    const int kv_dim = kv_heads * dim;
    std::vector<float> sc(2 * static_cast<size_t>(kv_dim));
    Rng rng(kSeed + 11);
    for (float& x : sc) x = rng.uniform_f(0.25f, 2.25f);
    std::vector<int32_t> sc_rows(n_seqs);
    for (int s = 0; s < n_seqs; ++s) sc_rows[s] = (s + 1) % 2;
    DeviceBuffer dsc = DeviceBuffer::from(sc), dsc_rows = DeviceBuffer::from(sc_rows);
    DeviceBuffer dout2 = DeviceBuffer::from(std::vector<float>(q.size(), NAN));
    DeviceBuffer dh = DeviceBuffer::from(std::vector<uint16_t>(q.size(), 0x7e00));
    DeviceBuffer dq8 = DeviceBuffer::from(std::vector<int8_t>(q.size(), 99));
    DeviceBuffer dq8s = DeviceBuffer::from(std::vector<Q8Scale>(q.size() / 32, Q8Scale{NAN, 7}));
    DecodeAttentionParams e = p;
    e.out = dout2.get<float>();
    e.out_scale = dsc.get<float>();
    e.out_scale_rows = dsc_rows.get<int32_t>();
    e.out_f16 = dh.get<uint16_t>();
    e.out_q8 = dq8.get<int8_t>();
    e.out_q8_scales = dq8s.get<Q8Scale>();
    st = decode_attention(e, nullptr);
    ASSERT_TRUE(st.ok()) << st.to_string();
    TQ_CUDA_OK(cudaDeviceSynchronize());
    const std::vector<float> out2 = dout2.to_host<float>();
    const std::vector<uint16_t> h16 = dh.to_host<uint16_t>();
    const std::vector<int8_t> q8 = dq8.to_host<int8_t>();
    const std::vector<Q8Scale> q8s = dq8s.to_host<Q8Scale>();
    {  // the same epilogue from the merge in the attention kernel: the same bits
      DeviceBuffer fout(q.size() * sizeof(float));
      DeviceBuffer fh(q.size() * 2), fq8(q.size()), fq8s(q.size() / 32 * sizeof(Q8Scale));
      DecodeAttentionParams f = e;
      f.out = fout.get<float>();
      f.out_f16 = fh.get<uint16_t>();
      f.out_q8 = fq8.get<int8_t>();
      f.out_q8_scales = fq8s.get<Q8Scale>();
      fused_matches(f, out2, fout, [&] {
        ASSERT_EQ(fh.to_host<uint16_t>(), h16);
        ASSERT_EQ(fq8.to_host<int8_t>(), q8);
        const std::vector<Q8Scale> got = fq8s.to_host<Q8Scale>();
        for (size_t i = 0; i < got.size(); ++i) {
          ASSERT_EQ(std::bit_cast<uint32_t>(got[i].d), std::bit_cast<uint32_t>(q8s[i].d)) << i;
          ASSERT_EQ(got[i].sum, q8s[i].sum) << i;
        }
      });
    }
    for (int s = 0; s < n_seqs; ++s)
      for (int h = 0; h < n_heads; ++h)
        for (int b = 0; b < dim; b += 32) {
          const size_t o0 = (static_cast<size_t>(s) * n_heads + h) * dim + b;
          float amax = 0.0f, hv[32];
          for (int i = 0; i < 32; ++i) {
            const size_t o = o0 + i;
            const float want =
                out[o] * sc[static_cast<size_t>(sc_rows[s]) * kv_dim + (h / c.group) * dim + b + i];
            ASSERT_EQ(out2[o], want) << "seq " << s << " head " << h << " dim " << b + i;
            ASSERT_EQ(h16[o], f32_to_f16(want)) << "seq " << s << " head " << h << " dim " << b + i;
            hv[i] = f16_to_f32(h16[o]);
            amax = std::max(amax, std::fabs(hv[i]));
          }
          const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
          int sum = 0;
          for (int i = 0; i < 32; ++i) {
            const int qi = static_cast<int>(std::nearbyint(hv[i] * id));
            ASSERT_EQ(q8[o0 + i], qi) << "seq " << s << " head " << h << " dim " << b + i;
            sum += qi;
          }
          ASSERT_EQ(q8s[o0 / 32].d, amax / 127.0f);
          ASSERT_EQ(q8s[o0 / 32].sum, sum);
        }
  }

  double worst = 0.0;
  for (int s = 0; s < n_seqs; ++s)
    for (int h = 0; h < n_heads; ++h) {
      const float* qh = q.data() + (static_cast<size_t>(s) * n_heads + h) * dim;
      const float* o = out.data() + (static_cast<size_t>(s) * n_heads + h) * dim;
      const double rel = reference_error(
          {{&*main, s, lens_main[s]}, {c.window ? &*win : nullptr, s, c.window ? lens_win[s] : 0}},
          qh, h / c.group, kv_heads, dim, scale, o);
      ASSERT_GE(rel, 0.0) << "seq " << s << " head " << h
                          << ": not finite, or not 0 without tokens";
      worst = std::max(worst, rel);
      EXPECT_LE(rel, kAttnTol) << c.k << "/" << c.v << " d=" << dim << " seq " << s << " (len "
                               << lens_main[s] << ") head " << h << " seed " << kSeed;
    }
  RecordProperty("max_rel_err", std::to_string(worst));
  std::printf(
      "[          ] %s/%s d=%d window=%d group=%d block=%d: max rel err %.3g (bound %.0e)\n", c.k,
      c.v, dim, c.window, c.group, kCap, worst, kAttnTol);
}

// Queries that share one block table (DecodeAttentionParams::queries_share_table: a prefill
// pass's rows, 8 / group of them a CTA) against the float64 reference, each at its own length:
// an empty query, a plateau of three (rows whose prefix stops at the window's cut) and the last
// 17 causal positions of a sequence, with and without the f16 window (its rows: 0, 1, 2, ...,
// as the sinks and the pass's own rows). Groups 4 and 3 (two queries a CTA; with 3 a lane's two
// columns can be two queries) and 1 (eight); 17000 tokens in one split read pages past the
// listed ones from the block table.
TEST(DecodeAttentionShared, EveryQueryMatchesFloat64Reference) {
  TQ_REQUIRE_GPU();
  struct SharedCase {
    const char* k;
    const char* v;
    int dim, group;
    bool window;
    int depth, max_splits;
  };
  const SharedCase cases[] = {{"tq4", "tq4", 128, 4, false, 2100, 5},
                              {"tq4", "tq3", 128, 1, true, 700, 0},
                              {"f16", "f16", 128, 3, false, 1500, 0},
                              {"tq2", "tq2", 64, 4, true, 900, 3},
                              {"tq4", "tq2", 128, 3, false, 17000, 1}};
  for (const SharedCase& c : cases) {
    SCOPED_TRACE(std::string(c.k) + "/" + c.v + " d" + std::to_string(c.dim) + " g" +
                 std::to_string(c.group));
    const quant::Format kf = *quant::parse_format(c.k), vf = *quant::parse_format(c.v);
    const int dim = c.dim, kv_heads = 2, n_heads = kv_heads * c.group, kCap = 32;
    std::vector<int> lens = {0, c.depth - 40, c.depth - 40, c.depth - 40}, wins;
    for (int i = 16; i >= 0; --i) lens.push_back(c.depth - i);
    for (size_t i = 0; i < lens.size(); ++i) wins.push_back(static_cast<int>(i));
    const int n = static_cast<int>(lens.size());
    const uint64_t layer_seed = derive_seed(kSeed, 5);
    quant::CodebookCache books;
    auto main = build_segment(kf, vf, dim, kv_heads, kCap, {c.depth}, kSeed + 3, books, layer_seed);
    ASSERT_TRUE(main.ok()) << main.status().to_string();
    share_table(*main, lens);
    Expected<HostSegment> win = Status(StatusCode::kNotFound, "no window");
    if (c.window) {
      win = build_segment(quant::kFormatF16, quant::kFormatF16, dim, kv_heads, kCap, {n}, kSeed + 4,
                          books, layer_seed);
      ASSERT_TRUE(win.ok()) << win.status().to_string();
      share_table(*win, wins);
    }
    const std::vector<float> q = test::outlier_data(n, n_heads, dim, kSeed + 9, false, 1.0f);
    const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
    DecodeAttentionParams p;
    p.n_seqs = n;
    p.n_heads = n_heads;
    p.scale = scale;
    p.queries_share_table = true;
    p.max_splits = c.max_splits;
    DeviceSegment dmain, dwin;
    Status st =
        upload_segment(*main, kf, vf, dim, kv_heads, kCap, layer_seed, books, p.main, dmain);
    ASSERT_TRUE(st.ok()) << st.to_string();
    if (c.window) {
      st = upload_segment(*win, quant::kFormatF16, quant::kFormatF16, dim, kv_heads, kCap,
                          layer_seed, books, p.window, dwin);
      ASSERT_TRUE(st.ok()) << st.to_string();
    }
    DeviceBuffer dq = DeviceBuffer::from(q);
    DeviceBuffer dout = DeviceBuffer::from(std::vector<float>(q.size(), NAN));  // poisoned
    p.q = dq.get<float>();
    p.out = dout.get<float>();
    auto plan = plan_decode_attention(p);
    ASSERT_TRUE(plan.ok()) << plan.status().to_string();
    EXPECT_EQ(plan->queries, 8 / c.group);
    EXPECT_EQ(plan->main_split_budget, 0);
    DeviceBuffer ws(plan->workspace_bytes);
    p.workspace = ws.get();
    p.workspace_bytes = ws.bytes();
    st = decode_attention(p, *plan, nullptr);
    ASSERT_TRUE(st.ok()) << st.to_string();
    TQ_CUDA_OK(cudaDeviceSynchronize());
    const std::vector<float> out = dout.to_host<float>();
    double worst = 0.0;
    for (int s = 0; s < n; ++s)
      for (int h = 0; h < n_heads; ++h) {
        const float* qh = q.data() + (static_cast<size_t>(s) * n_heads + h) * dim;
        const float* o = out.data() + (static_cast<size_t>(s) * n_heads + h) * dim;
        const double rel = reference_error(
            {{&*main, 0, lens[s]}, {c.window ? &*win : nullptr, 0, c.window ? wins[s] : 0}}, qh,
            h / c.group, kv_heads, dim, scale, o);
        ASSERT_GE(rel, 0.0) << "query " << s << " head " << h;
        worst = std::max(worst, rel);
        EXPECT_LE(rel, kAttnTol) << "query " << s << " (len " << lens[s] << ") head " << h;
      }
    std::printf("[          ] shared table %s/%s d=%d group=%d window=%d: max rel err %.3g\n", c.k,
                c.v, dim, c.group, c.window, worst);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Formats, DecodeAttention,
    testing::Values(
        AttnCase{"f16", "f16", 128, false, 4}, AttnCase{"f16", "f16", 64, true, 4},
        AttnCase{"q8_0", "q8_0", 128, true, 4}, AttnCase{"q8_0", "q8_0", 64, false, 4},
        AttnCase{"q4_0", "q4_0", 128, false, 4}, AttnCase{"q4_0", "q4_0", 64, true, 4},
        AttnCase{"tq4", "tq4", 128, false, 4}, AttnCase{"tq4", "tq4", 128, true, 4},
        AttnCase{"tq4", "tq3", 128, true, 4}, AttnCase{"tq3", "tq3", 128, false, 4},
        AttnCase{"tq2", "tq2", 128, true, 4}, AttnCase{"tq4", "tq4", 64, true, 3},
        AttnCase{"tq3", "tq2", 64, false, 4}, AttnCase{"tq2", "tq4", 64, false, 8},
        AttnCase{"tq4", "tq3", 64, false, 3}, AttnCase{"tq4j", "tq3", 128, false, 4},
        AttnCase{"tq3j", "tq2", 64, true, 4}, AttnCase{"tq3", "tq4", 128, false, 1},
        AttnCase{"tq4", "tq4", 128, true, 4, 64}, AttnCase{"tq3", "tq2", 128, false, 4, 96},
        AttnCase{"tq4", "tq3", 128, false, 4, 32, 17000, 1},
        AttnCase{"tq4", "tq4", 128, false, 4, 32, 100000, 2},
        AttnCase{"tq4", "tq4", 128, true, 4, 32, AttnCase::kLongLen, AttnCase::kMaxSplits, false},
        AttnCase{"tq4", "tq3", 64, false, 3, 32, AttnCase::kLongLen, AttnCase::kMaxSplits, false},
        AttnCase{"f16", "f16", 128, true, 4, 32, AttnCase::kLongLen, AttnCase::kMaxSplits, false},
        // splits by length need splits of >= 2048 tokens: long sequences
        AttnCase{"tq4", "tq4", 128, true, 4, 32, 12000, 5},
        AttnCase{"tq2", "tq2", 128, false, 4, 32, 12000, 5},
        // 2-bit codes and QJL signs looked up as token pairs (lookup_token_pairs, pair-major
        // value tables) at head dim 128 beside the cases above
        AttnCase{"tq2", "tq4", 128, false, 4}, AttnCase{"tq4j", "tq2", 128, true, 4},
        AttnCase{"tq4", "tq2", 128, true, 4, 32, 9000, 4, true, 75},
        AttnCase{"tq3", "tq3", 128, false, 4, 32, 3000, 0, false, 75},
        AttnCase{"f16", "f16", 128, false, 4, 32, 9000, 4, true, 33}),
    case_name);

TEST(DecodeAttentionApi, ReportsUnsupportedCombinations) {
  EXPECT_TRUE(
      decode_attention_supported(*quant::parse_format("tq4"), *quant::parse_format("tq3"), 128));
  EXPECT_TRUE(decode_attention_supported(quant::kFormatF16, quant::kFormatF16, 64));
  EXPECT_FALSE(
      decode_attention_supported(*quant::parse_format("tq4"), *quant::parse_format("tq4j"), 128));
  EXPECT_FALSE(
      decode_attention_supported(*quant::parse_format("tq4"), *quant::parse_format("tq4"), 80));
  EXPECT_FALSE(
      decode_attention_supported(*quant::parse_format("q8_0"), *quant::parse_format("tq4"), 128));
}

}  // namespace
}  // namespace tq::backend::cuda
