// VectorCodec: one codec per KV Format (f16, q8_0, q4_0, tq{b}, tq{b}j), storing vectors in
// blocks of `capacity` slots in structure-of-arrays order (docs/formats.md, "Blocks"):
//   tq mse:  [codes: capacity x code_bytes][norms: capacity x fp16 (fp32 with norm_fp32)]
//   tq prod: [codes][qjl signs: capacity x dim/8][norms][residual norms]
//   f16:     [capacity x dim fp16];  q8_0 / q4_0: [capacity x (dim/32 ggml blocks)]
// so a block is capacity * bytes_per_vector() bytes and the GPU reads each plane coalesced.
//
// The attention primitives work on the packed codes without a dequantized copy: queries are
// rotated once (prepare_query), scores are dots in the rotated domain, values are accumulated
// in the rotated domain and rotated back once per query (finish). GQA: the nq query heads of
// one KV head are processed together, so each stored element is unpacked once for all of them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "tq/core/status.h"
#include "tq/quant/codebook.h"
#include "tq/quant/format.h"
#include "tq/quant/kernels.h"
#include "tq/quant/rotation.h"

namespace tq::quant {

struct CodecOptions {
  uint64_t seed = 0x7151u;       // the layer seed: rotation and QJL matrix derive from it
  bool norm_correction = false;  // tq mse: store ||x|| / ||C[idx]|| so x~ keeps the exact norm
  bool norm_fp32 = false;        // tq: store norms as fp32 (changes bytes_per_vector)
  // Fused-primitive implementation; nullptr = the scalar reference. The CPU backend's
  // tq::backend::cpu::cpu_kernel_table() gives the fastest one for this CPU.
  const KernelTable* kernels = nullptr;
};

class VectorCodec {
 public:
  virtual ~VectorCodec();

  virtual Format format() const = 0;
  virtual int dim() const = 0;
  virtual size_t bytes_per_vector() const = 0;
  size_t block_bytes(int capacity) const {
    return static_cast<size_t>(capacity) * bytes_per_vector();
  }

  // Writes vector x (dim floats) into slot `slot` of a block of `capacity` slots. Zero vectors
  // store norm 0; non-finite input stores a NaN norm (decodes to NaN, never crashes); fp16
  // norms saturate at 65504.
  virtual void encode(const float* x, uint8_t* block, int capacity, int slot) const = 0;
  virtual void decode(const uint8_t* block, int capacity, int slot, float* x) const = 0;

  // Floats per prepared query: dim (rotated q), 2*dim for prod (rotated q, then S P q).
  virtual int query_state_size() const = 0;
  virtual void prepare_query(const float* q, float* state) const = 0;
  // out[h*n + i] = <q_h, x~_i> for slots i = 0..n-1, states [nq][query_state_size()].
  virtual void score(const float* states, int nq, const uint8_t* block, int capacity, int n,
                     float* out) const = 0;
  // Accumulator floats per query: dim; 2*dim for prod (rotated mse part, then sketch part).
  virtual int acc_dim() const = 0;
  // acc[h*acc_dim() + .] += sum_i w[h*n + i] x~_i, in the codec's accumulation domain.
  virtual void accumulate(const float* w, int nq, const uint8_t* block, int capacity, int n,
                          float* acc) const = 0;
  // out (dim floats) = the accumulated vector in the original domain: one inverse rotation
  // per query for tq (plus S^T for prod), a copy otherwise.
  virtual void finish(const float* acc, float* out) const = 0;

  // The kernel table in use, and its name ("ref", "avx2", ...).
  virtual const KernelTable& kernels() const = 0;
  const char* kernels_name() const { return kernels().name; }
};

// Validates f against dim and builds the codec. The codec keeps a pointer into `books`, which
// must outlive it.
Expected<std::unique_ptr<VectorCodec>> make_codec(Format f, int dim, const CodecOptions& o,
                                                  CodebookCache& books);

}  // namespace tq::quant
