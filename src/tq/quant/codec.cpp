// make_codec: validates a (format, dim) pair and builds its codec.
#include "tq/quant/codec.h"

#include <string>

#include "tq/quant/codec_impl.h"

namespace tq::quant {

VectorCodec::~VectorCodec() = default;

Expected<std::unique_ptr<VectorCodec>> make_codec(Format f, int dim, const CodecOptions& o,
                                                  CodebookCache& books) {
  TQ_RETURN_IF_ERROR(f.validate(dim));
  if (!f.is_tq()) return make_baseline_codec(f, dim, o);
  if (dim < 3) return unsupported("tq formats need a head dim >= 3, got " + std::to_string(dim));
  TQ_ASSIGN_OR_RETURN(const Codebook* book, books.get(dim, f.code_bits()));
  TQ_ASSIGN_OR_RETURN(Rotation rotation, Rotation::create(dim, o.seed));
  return make_tq_codec(f, dim, o, book, std::move(rotation));
}

}  // namespace tq::quant
