#include "tq/backend/cuda/device_tables.h"

#include <cstring>
#include <utility>
#include <vector>

#include "tq/backend/cuda/cuda_common.cuh"
#include "tq/backend/cuda/quantize_write.cuh"
#include "tq/quant/cell_lut.h"
#include "tq/quant/qjl.h"
#include "tq/quant/rotation.h"

namespace tq::backend::cuda {

DeviceCodecTables& DeviceCodecTables::operator=(DeviceCodecTables&& o) noexcept {
  if (this != &o) {
    if (mem_) cudaFree(mem_);
    mem_ = o.mem_;
    view_ = o.view_;
    o.mem_ = nullptr;
    o.view_ = {};
  }
  return *this;
}

DeviceCodecTables::~DeviceCodecTables() {
  if (mem_) cudaFree(mem_);
}

Expected<DeviceCodecTables> DeviceCodecTables::create(quant::Format format, int dim, uint64_t seed,
                                                      quant::CodebookCache& books) {
  TQ_RETURN_IF_ERROR(format.validate(dim));
  DeviceCodecTables t;
  if (!format.is_tq()) return Expected<DeviceCodecTables>(std::move(t));
  TQ_ASSIGN_OR_RETURN(const quant::Codebook* book, books.get(dim, format.code_bits()));
  TQ_ASSIGN_OR_RETURN(quant::Rotation rot, quant::Rotation::create(dim, seed));
  const std::vector<float> p = rot.matrix();
  const std::vector<float> s =
      format.has_qjl() ? quant::qjl_matrix(dim, seed) : std::vector<float>{};
  // The float32 write kernels' cell lookup (quant/cell_lut.h), for the widths they write.
  std::vector<float> lut;
  if (format.code_bits() <= 4) {
    TQ_ASSIGN_OR_RETURN(const quant::CellLut cl, quant::build_cell_lut(*book));
    const std::vector<uint32_t> img = cl.image();
    lut.resize(img.size());
    std::memcpy(lut.data(), img.data(), img.size() * sizeof(uint32_t));
  }
  // Host image: [centroids][boundaries][rotation][signs][qjl][qjl^T][cell lut][qjl smem], each
  // 16-byte aligned.
  std::vector<float> host;
  const auto append = [&](const std::vector<float>& v) {
    while (host.size() % 4 != 0) host.push_back(0.0f);
    const size_t off = host.size();
    host.insert(host.end(), v.begin(), v.end());
    return off;
  };
  const size_t o_c = append(book->centroids);
  const size_t o_b = append(book->boundaries);
  const size_t o_p = append(p);
  const size_t o_d = append(rot.signs());
  const size_t o_s = append(s);
  std::vector<float> st(s.size());
  for (int i = 0; i < dim && !s.empty(); ++i)
    for (int j = 0; j < dim; ++j)
      st[static_cast<size_t>(j) * dim + i] = s[static_cast<size_t>(i) * dim + j];
  const size_t o_st = append(st);
  const size_t o_l = append(lut);
  // The QJL team write kernels' S, fp16 halves two to a float slot.
  const std::vector<uint16_t> s_img =
      s.empty() ? std::vector<uint16_t>{} : qjl_team_images(s.data(), dim);
  std::vector<float> s_words((s_img.size() + 1) / 2);
  if (!s_img.empty()) std::memcpy(s_words.data(), s_img.data(), s_img.size() * sizeof(uint16_t));
  const size_t o_si = append(s_words);
  TQ_CUDA_TRY(cudaMalloc(&t.mem_, host.size() * sizeof(float)));
  TQ_CUDA_TRY(cudaMemcpy(t.mem_, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
  const float* base = static_cast<const float*>(t.mem_);
  t.view_.centroids = base + o_c;
  t.view_.boundaries = base + o_b;
  t.view_.rotation = base + o_p;
  t.view_.hadamard_signs = rot.is_hadamard() ? base + o_d : nullptr;
  t.view_.qjl = format.has_qjl() ? base + o_s : nullptr;
  t.view_.qjl_t = format.has_qjl() ? base + o_st : nullptr;
  t.view_.cell_lut = lut.empty() ? nullptr : reinterpret_cast<const uint32_t*>(base + o_l);
  t.view_.qjl_smem = s_img.empty() ? nullptr : reinterpret_cast<const uint16_t*>(base + o_si);
  return Expected<DeviceCodecTables>(std::move(t));
}

}  // namespace tq::backend::cuda
