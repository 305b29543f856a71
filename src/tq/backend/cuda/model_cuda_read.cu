// CudaModel::read_stored (model_cuda.h): one layer's stored K or V rows of a slot, copied to the
// host and decoded there. The device pools hold exactly the CPU codec's bytes (kv_cuda.h,
// "Layout": per pool block, per KV head, one quant::VectorCodec block of block_tokens slots), so
// the CPU codec built with the layer's seed and options decodes them as kv::PagedKv::read_stored
// decodes its own blocks. Slow by design (a copy and a scalar decode): tq verify and tests only.
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tq/backend/cuda/cuda_common.cuh"
#include "tq/backend/cuda/model_cuda_impl.cuh"

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
  // Slot s owns pool blocks [s * pages_per_seq, (s + 1) * pages_per_seq) in order
  // (allocate_cache), so the rows asked for are one contiguous byte range.
  const int first = p0 / bt, last = (p0 + n - 1) / bt;
  std::vector<uint8_t> bytes(static_cast<size_t>(last - first + 1) * stride);
  const size_t block0 = static_cast<size_t>(seq) * m.pages_per_seq + first;
  TQ_CUDA_TRY(cudaMemcpyAsync(bytes.data(), pool.data + block0 * stride, bytes.size(),
                              cudaMemcpyDeviceToHost, m.stream));
  const size_t kv_dim = static_cast<size_t>(d.kv_dim());
  std::vector<float> mu;  // [kv_head][head_dim]: the slot's key mean, when keys are centered
  if (!value && D.centered) {
    mu.resize(kv_dim);
    TQ_CUDA_TRY(cudaMemcpyAsync(mu.data(), D.k_mean.as<float>() + seq * kv_dim,
                                kv_dim * sizeof(float), cudaMemcpyDeviceToHost, m.stream));
  }
  TQ_CUDA_TRY(cudaStreamSynchronize(m.stream));

  const size_t hd = static_cast<size_t>(d.head_dim);
  for (int i = 0; i < n; ++i) {
    const int p = p0 + i;
    const uint8_t* block = bytes.data() + static_cast<size_t>(p / bt - first) * stride;
    for (int h = 0; h < d.n_kv_heads; ++h) {
      float* dst = out + (static_cast<size_t>(i) * d.n_kv_heads + h) * hd;
      codec.decode(block + static_cast<size_t>(h) * head, bt, p % bt, dst);
      if (!mu.empty())
        for (size_t e = 0; e < hd; ++e) dst[e] += mu[static_cast<size_t>(h) * hd + e];
    }
  }
  return ok_status();
}

}  // namespace tq::backend::cuda
