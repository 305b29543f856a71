// CudaModel::read_stored (model_cuda.h): one layer's stored K or V rows of a slot, copied to the
// host and decoded there. The device pools hold exactly the CPU codec's bytes (kv_cuda.h,
// "Layout": per pool block, per KV head, one quant::VectorCodec block of block_tokens slots), so
// the CPU codec built with the layer's seed and options decodes them as kv::PagedKv::read_stored
// decodes its own blocks. Slow by design (a copy and a scalar decode): tq verify and tests only.
#include <algorithm>
#include <climits>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tq/backend/cuda/cuda_common.cuh"
#include "tq/backend/cuda/model_cuda_impl.cuh"
#include "tq/core/fp16.h"

namespace tq::backend::cuda {
namespace {

// The CPU codecs of the device pools, with the same seed, norm correction and codebooks as
// allocate_cache gave the device tables; checks that each agrees with its pool's byte layout.
Status build_host_codecs(CudaModel::Impl& m) {
  if (!m.host_codecs.empty()) return ok_status();
  const kv::KvConfig& kc = m.opt.kv;
  auto books = std::make_unique<quant::CodebookCache>();
  std::vector<std::unique_ptr<quant::VectorCodec>> codecs;
  for (size_t l = 0; l < m.layers.size(); ++l) {
    const DeviceLayer& D = m.layers[l];
    quant::CodecOptions co;
    co.seed = kc.layer_seed(static_cast<int>(l));
    co.norm_correction = kc.norm_correction;
    for (const PagedPool* pool : {&D.k, &D.v}) {
      TQ_ASSIGN_OR_RETURN(auto codec,
                          quant::make_codec(pool->format, m.shape.head_dim, co, *books));
      if (codec->block_bytes(pool->block_tokens) != pool->head_stride_or_default())
        return internal_error("read_stored: layer " + std::to_string(l) + " " +
                              pool->format.name() + ": the CPU codec block (" +
                              std::to_string(codec->block_bytes(pool->block_tokens)) +
                              " bytes) differs from the device pool's (" +
                              std::to_string(pool->head_stride_or_default()) + ")");
      codecs.push_back(std::move(codec));
    }
  }
  m.host_books = std::move(books);
  m.host_codecs = std::move(codecs);
  return ok_status();
}

}  // namespace

Status CudaModel::read_stored(int seq, int layer, bool value, int p0, int n, float* out) const {
  Impl& m = *impl_;
  const LlamaDesc& d = m.shape;
  if (seq < 0 || seq >= m.opt.max_sequences)
    return invalid_argument("read_stored: sequence slot " + std::to_string(seq) + " outside [0, " +
                            std::to_string(m.opt.max_sequences) + ")");
  if (layer < 0 || layer >= d.n_layers)
    return invalid_argument("read_stored: layer " + std::to_string(layer) + " outside [0, " +
                            std::to_string(d.n_layers) + ")");
  const int len = m.lengths[static_cast<size_t>(seq)];
  if (p0 < 0 || n < 0 || n > len - p0)
    return out_of_range("read_stored: positions [" + std::to_string(p0) + ", " +
                        std::to_string(static_cast<int64_t>(p0) + n) + ") of slot " +
                        std::to_string(seq) + ", which holds " + std::to_string(len));
  if (n == 0) return ok_status();
  if (out == nullptr) return invalid_argument("read_stored: output buffer is null");
  TQ_CUDA_TRY(cudaSetDevice(m.device));
  TQ_RETURN_IF_ERROR(build_host_codecs(m));

  const DeviceLayer& D = m.layers[static_cast<size_t>(layer)];
  const PagedPool& pool = value ? D.v : D.k;
  const quant::VectorCodec& codec =
      *m.host_codecs[static_cast<size_t>(2 * layer + (value ? 1 : 0))];
  const int bt = pool.block_tokens;
  const size_t stride = pool.block_stride_or_default();
  const size_t head = pool.head_stride_or_default();
  // Where position p lives (ops_cuda.cuh ExactRowsParams): a sink, the window's ring, or the
  // compressed pages at c = p - sinks.
  const int S = m.opt.kv.sinks, W = m.opt.kv.window;
  const int keep_from = std::max({S, len - W, m.exact_from[static_cast<size_t>(seq)]});
  const auto exact_row = [&](int p) { return p < S ? p : p >= keep_from ? S + (p - S) % W : -1; };
  int c_first = INT_MAX, c_last = -1;
  bool any_exact = false;
  for (int p = p0; p < p0 + n; ++p) {
    if (m.exact_blocks > 0 && exact_row(p) >= 0) {
      any_exact = true;
    } else {
      c_first = std::min(c_first, p - S);
      c_last = std::max(c_last, p - S);
    }
  }
  // Slot s owns pool blocks [s * pages_per_seq, (s + 1) * pages_per_seq) in order
  // (allocate_cache), so the compressed rows asked for are one contiguous byte range.
  const int first = c_last >= 0 ? c_first / bt : 0;
  std::vector<uint8_t> bytes(c_last >= 0 ? static_cast<size_t>(c_last / bt - first + 1) * stride
                                         : 0);
  if (!bytes.empty()) {
    const size_t block0 = static_cast<size_t>(seq) * m.pages_per_seq + first;
    TQ_CUDA_TRY(cudaMemcpyAsync(bytes.data(), pool.data + block0 * stride, bytes.size(),
                                cudaMemcpyDeviceToHost, m.stream));
  }
  const PagedPool& epool = value ? D.ev : D.ek;
  std::vector<uint8_t> exact;
  if (any_exact) {
    exact.resize(static_cast<size_t>(m.exact_blocks) * epool.block_stride_or_default());
    TQ_CUDA_TRY(cudaMemcpyAsync(exact.data(), epool.data + static_cast<size_t>(seq) * exact.size(),
                                exact.size(), cudaMemcpyDeviceToHost, m.stream));
  }
  const size_t kv_dim = static_cast<size_t>(d.kv_dim());
  // [kv_head][head_dim] each: the slot's key mean and scale (rows hold (k - mu) / s), or its
  // value scale (rows hold v / t); empty where the layer has none.
  std::vector<float> mu, scale;
  const auto fetch = [&](const DeviceMem& from, std::vector<float>& to) -> Status {
    if (from.empty()) return ok_status();
    to.resize(kv_dim);
    TQ_CUDA_TRY(cudaMemcpyAsync(to.data(), from.as<float>() + seq * kv_dim, kv_dim * sizeof(float),
                                cudaMemcpyDeviceToHost, m.stream));
    return ok_status();
  };
  if (!value) TQ_RETURN_IF_ERROR(fetch(D.k_mean, mu));
  TQ_RETURN_IF_ERROR(fetch(value ? D.v_scale : D.k_scale, scale));
  TQ_CUDA_TRY(cudaStreamSynchronize(m.stream));

  const size_t hd = static_cast<size_t>(d.head_dim);
  for (int i = 0; i < n; ++i) {
    const int p = p0 + i;
    const int er = m.exact_blocks > 0 ? exact_row(p) : -1;
    for (int h = 0; h < d.n_kv_heads; ++h) {
      float* dst = out + (static_cast<size_t>(i) * d.n_kv_heads + h) * hd;
      if (er >= 0) {  // an f16 row: [page][kv head][slot][head_dim]
        const uint8_t* row = exact.data() +
                             static_cast<size_t>(er / bt) * epool.block_stride_or_default() +
                             static_cast<size_t>(h) * epool.head_stride_or_default() +
                             static_cast<size_t>(er % bt) * hd * sizeof(uint16_t);
        for (size_t e = 0; e < hd; ++e) {
          uint16_t bits;
          std::memcpy(&bits, row + e * sizeof(uint16_t), sizeof bits);
          dst[e] = f16_to_f32(bits);
        }
      } else {
        const int c = p - S;
        const uint8_t* block = bytes.data() + static_cast<size_t>(c / bt - first) * stride;
        codec.decode(block + static_cast<size_t>(h) * head, bt, c % bt, dst);
      }
      if (!scale.empty())
        for (size_t e = 0; e < hd; ++e) dst[e] *= scale[static_cast<size_t>(h) * hd + e];
      if (!mu.empty())
        for (size_t e = 0; e < hd; ++e) dst[e] += mu[static_cast<size_t>(h) * hd + e];
    }
  }
  return ok_status();
}

}  // namespace tq::backend::cuda
