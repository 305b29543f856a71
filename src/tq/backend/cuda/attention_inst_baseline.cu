// Attention instances for the comparison formats: f16 (also the exact window), q8_0, q4_0.
#include "tq/backend/cuda/attention_instances.cuh"

namespace tq::backend::cuda {

AttnInstanceList attention_instances_baseline() {
  using quant::FormatKind;
  constexpr quant::Format f16{FormatKind::kF16, 16}, q8{FormatKind::kQ8_0, 8},
      q4{FormatKind::kQ4_0, 4};
  static constexpr AttnInstance kList[] = {
      attn_instance<dev::F16Fmt<64>, dev::F16Fmt<64>, 64>(f16, f16),
      attn_instance<dev::F16Fmt<128>, dev::F16Fmt<128>, 128>(f16, f16),
      attn_instance<dev::Q8Fmt<64>, dev::Q8Fmt<64>, 64>(q8, q8),
      attn_instance<dev::Q8Fmt<128>, dev::Q8Fmt<128>, 128>(q8, q8),
      attn_instance<dev::Q4Fmt<64>, dev::Q4Fmt<64>, 64>(q4, q4),
      attn_instance<dev::Q4Fmt<128>, dev::Q4Fmt<128>, 128>(q4, q4),
  };
  return {kList, static_cast<int>(sizeof(kList) / sizeof(kList[0]))};
}

}  // namespace tq::backend::cuda
