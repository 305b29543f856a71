// Causal attention straight from a sequence's paged, packed K/V: no dequantized copy of the
// history is made. The sources of one layer are
//   - exact f16 rows (sinks at positions [0, S) and the recent window),
//   - compressed pool blocks, block b holding positions [S + b*B, S + b*B + B),
// and they are merged with an online softmax (running max and sum per query head), so the
// result equals softmax over all positions at once. Per KV head, the G query heads of its GQA
// group and a tile of queries are scored and accumulated together: every packed element is
// unpacked once per tile. Queries are prepared (rotated) once per head; V is accumulated in the
// V codec's rotated domain and rotated back once per query head (codec.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "tq/core/status.h"
#include "tq/core/thread_pool.h"
#include "tq/kv/sequence_kv.h"
#include "tq/quant/codec.h"

namespace tq::kv {

// Exact rows of one source: row r of KV head h at k + h * head_stride + r * head_dim (f16),
// holding position pos0 + r.
struct ExactRows {
  const uint16_t* k = nullptr;
  const uint16_t* v = nullptr;
  size_t head_stride = 0;  // elements between KV heads
  int pos0 = 0;
  int count = 0;
};

struct PagedAttentionArgs {
  AttentionShape shape;
  const quant::VectorCodec* k_codec = nullptr;    // the layer's K format
  const quant::VectorCodec* v_codec = nullptr;    // the layer's V format
  const quant::VectorCodec* f16_codec = nullptr;  // exact rows (sinks, window)

  // Compressed tokens: token c (0-based) at position compressed_pos0 + c lives in block
  // k_blocks[c / block_tokens], slot c % block_tokens; a block holds one codec block of
  // block_tokens slots per KV head, head h at byte offset h * codec.block_bytes(block_tokens).
  std::span<const uint8_t* const> k_blocks;
  std::span<const uint8_t* const> v_blocks;
  int block_tokens = 0;
  int compressed = 0;
  int compressed_pos0 = 0;

  ExactRows exact[2];  // sinks and window (count 0 when absent)

  const float* q = nullptr;  // [n][n_heads][head_dim]
  float* out = nullptr;      // [n][n_heads][head_dim]
  int n = 0;
  int q_pos0 = 0;  // position of query 0; query i sees positions 0 .. q_pos0 + i
};

// Runs on `pool` over (KV head, query tile) work items. Positions a query may not see are
// skipped or masked; every query must see at least one stored position.
Status paged_attention(const PagedAttentionArgs& args, ThreadPool& pool);

}  // namespace tq::kv
