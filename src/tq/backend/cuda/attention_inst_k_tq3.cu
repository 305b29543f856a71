// Attention instances (head dim 128 also specialised for 32-token pages) with tq3 keys and tq2 /
// tq3 / tq4 values, head dims 64 and 128.
#include "tq/backend/cuda/attention_instances.cuh"

namespace tq::backend::cuda {
namespace {
template <int kDim>
using K = dev::TqFmt<kDim, 3, false>;
template <int kDim, int kBits>
using V = dev::TqFmt<kDim, kBits, false>;
}  // namespace

AttnInstanceList attention_instances_k_tq3() {
  static constexpr AttnInstance kList[] = {
      attn_instance<K<64>, V<64, 2>, 64>(tq_mse(3), tq_mse(2)),
      attn_instance<K<64>, V<64, 3>, 64>(tq_mse(3), tq_mse(3)),
      attn_instance<K<64>, V<64, 4>, 64>(tq_mse(3), tq_mse(4)),
      attn_instance<K<128>, V<128, 2>, 128>(tq_mse(3), tq_mse(2)),
      attn_instance<K<128>, V<128, 2>, 128, 32>(tq_mse(3), tq_mse(2)),
      attn_instance<K<128>, V<128, 3>, 128>(tq_mse(3), tq_mse(3)),
      attn_instance<K<128>, V<128, 3>, 128, 32>(tq_mse(3), tq_mse(3)),
      attn_instance<K<128>, V<128, 4>, 128>(tq_mse(3), tq_mse(4)),
      attn_instance<K<128>, V<128, 4>, 128, 32>(tq_mse(3), tq_mse(4)),
  };
  return {kList, static_cast<int>(sizeof(kList) / sizeof(kList[0]))};
}

}  // namespace tq::backend::cuda
