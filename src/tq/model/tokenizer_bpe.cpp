// Byte-level BPE (tokenizer.ggml.model "gpt2"): text bytes become GPT-2's printable stand-in
// code points, then adjacent symbols merge by rank (lowest first, leftmost on ties) until no
// ranked pair is left, as HF tokenizers' BPE model does. A min-heap of candidate pairs with
// lazy invalidation keeps long pieces (CJK runs, long whitespace) at O(n log n).
#include <algorithm>
#include <queue>

#include "tq/core/log.h"
#include "tq/model/tokenizer.h"
#include "tq/model/unicode.h"

namespace tq::model {
namespace {

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the other 68 bytes
// take the code points 256.. in byte order.
struct ByteLevelMap {
  uint32_t byte_to_cp[256] = {};
  int16_t cp_to_byte[324] = {};  // -1 for code points no byte maps to

  constexpr ByteLevelMap() {
    for (int16_t& b : cp_to_byte) b = -1;
    uint32_t extra = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      byte_to_cp[b] = printable ? b : extra++;
      cp_to_byte[byte_to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};

constexpr ByteLevelMap kByteLevel{};

constexpr int32_t kDead = INT32_MIN;  // a symbol merged into its left neighbour

struct Symbol {
  int32_t id;  // token id, -1 for a byte the vocabulary lacks, kDead once merged away
  int32_t prev;
  int32_t next;
};

struct Candidate {
  int32_t rank;
  int32_t pos;  // index of the left symbol
  int32_t left_id;
  int32_t right_id;
  int32_t result;  // the merged token
  bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};

}  // namespace

Status Tokenizer::init_bpe() {
  const ByteLevelMap& m = kByteLevel;
  std::string buf;
  for (int b = 0; b < 256; ++b) {
    buf.clear();
    utf8_append(m.byte_to_cp[b], &buf);
    byte_to_id_[b] = token_id(buf);
  }

  pieces_.resize(data_.tokens.size());
  for (size_t i = 0; i < data_.tokens.size(); ++i) {
    const std::string& text = data_.tokens[i];
    const TokenType type = token_type(static_cast<int32_t>(i));
    if (type == TokenType::kControl || type == TokenType::kUserDefined) {
      pieces_[i] = text;  // added tokens are stored as plain text, not byte-level
      continue;
    }
    std::string& p = pieces_[i];
    for (size_t pos = 0; pos < text.size();) {
      size_t len = 1;
      const uint32_t cp = utf8_decode(text, pos, &len);
      if (cp < 324 && m.cp_to_byte[cp] >= 0)
        p.push_back(static_cast<char>(m.cp_to_byte[cp]));
      else
        p.append(text, pos, len);  // not byte-level: keep as written
      pos += len;
    }
  }

  merges_.reserve(data_.merges.size());
  size_t skipped = 0;
  for (size_t r = 0; r < data_.merges.size(); ++r) {
    const std::string& merge = data_.merges[r];
    const size_t sp = merge.find(' ', 1);  // a token may itself be " " in odd vocabularies
    if (sp == std::string::npos) {
      ++skipped;
      continue;
    }
    const std::string_view left(merge.data(), sp);
    const std::string_view right(merge.data() + sp + 1, merge.size() - sp - 1);
    const int32_t l = token_id(left);
    const int32_t rr = token_id(right);
    buf.assign(left);
    buf.append(right);
    const int32_t res = token_id(buf);
    if (l < 0 || rr < 0 || res < 0) {
      ++skipped;
      continue;
    }
    const uint64_t key = (static_cast<uint64_t>(l) << 32) | static_cast<uint32_t>(rr);
    merges_.emplace(key, MergeResult{static_cast<int32_t>(r), res});  // first rank wins
  }
  if (skipped > 0)
    TQ_LOG(kWarn, "tokenizer: skipped %zu of %zu merges naming unknown tokens", skipped,
           data_.merges.size());
  if (data_.merges.empty()) TQ_LOG(kWarn, "tokenizer: BPE vocabulary without merges");
  ignore_merges_ = data_.pre == PreTokenizerKind::kLlama3;
  return ok_status();
}

// Short pieces (nearly every word) without allocation: the rank of the pair starting at each
// symbol is kept in an array and the best (lowest rank, then leftmost) is found by a scan, the
// same order the heap gives. O(n^2) scans, which only pays below kSmallPiece bytes.
void Tokenizer::encode_bpe_small(std::string_view piece, std::vector<int32_t>* out) const {
  const auto n = static_cast<int32_t>(piece.size());
  int32_t ids[kSmallPiece], next[kSmallPiece], prev[kSmallPiece], rank[kSmallPiece],
      result[kSmallPiece];
  auto pair_rank = [&](int32_t i) {
    rank[i] = INT32_MAX;
    if (i < 0 || next[i] < 0 || ids[i] < 0 || ids[next[i]] < 0) return;
    auto it =
        merges_.find((static_cast<uint64_t>(ids[i]) << 32) | static_cast<uint32_t>(ids[next[i]]));
    if (it != merges_.end()) {
      rank[i] = it->second.rank;
      result[i] = it->second.id;
    }
  };
  for (int32_t i = 0; i < n; ++i) {
    ids[i] = byte_to_id_[static_cast<uint8_t>(piece[i])];
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  for (int32_t i = 0; i < n; ++i) pair_rank(i);
  while (true) {
    int32_t best = -1;
    for (int32_t i = 0; i >= 0; i = next[i])
      if (rank[i] != INT32_MAX && (best < 0 || rank[i] < rank[best])) best = i;
    if (best < 0) break;
    const int32_t r = next[best];
    ids[best] = result[best];
    next[best] = next[r];
    if (next[best] >= 0) prev[next[best]] = best;
    pair_rank(best);
    if (prev[best] >= 0) pair_rank(prev[best]);
  }
  for (int32_t i = 0; i >= 0; i = next[i])
    if (ids[i] >= 0) out->push_back(ids[i]);
}

void Tokenizer::encode_bpe_text(std::string_view text, std::vector<int32_t>* out) const {
  const std::vector<uint32_t> bounds = pretokenize(data_.pre, text);
  for (size_t i = 0; i + 1 < bounds.size(); ++i)
    encode_bpe_piece(text.substr(bounds[i], bounds[i + 1] - bounds[i]), out);
}

void Tokenizer::encode_bpe_piece(std::string_view piece, std::vector<int32_t>* out) const {
  const auto n = static_cast<int32_t>(piece.size());
  if (n == 0) return;
  // A byte the vocabulary lacks (SmolLM2 has no token for 0xFF, say) is dropped, as HF's BPE
  // without unk_token and llama.cpp both do: SmolLM2's "unknown" id is <|endoftext|>.
  auto emit = [&](int32_t id) {
    if (id >= 0) out->push_back(id);
  };
  if (ignore_merges_ && n > 1) {  // Llama-3: a piece that is a token is taken whole
    const ByteLevelMap& m = kByteLevel;
    std::string s;
    for (char c : piece) utf8_append(m.byte_to_cp[static_cast<uint8_t>(c)], &s);
    if (const int32_t id = token_id(s); id >= 0) {
      out->push_back(id);
      return;
    }
  }
  if (n == 1) {
    emit(byte_to_id_[static_cast<uint8_t>(piece[0])]);
    return;
  }
  if (n <= kSmallPiece)
    encode_bpe_small(piece, out);
  else
    encode_bpe_heap(piece, out);
}

std::vector<int32_t> Tokenizer::bpe_piece_ref(std::string_view piece) const {
  std::vector<int32_t> out;
  if (data_.model == TokenizerModel::kBpe && !piece.empty()) encode_bpe_heap(piece, &out);
  return out;
}

void Tokenizer::encode_bpe_heap(std::string_view piece, std::vector<int32_t>* out) const {
  const auto n = static_cast<int32_t>(piece.size());
  std::vector<Symbol> syms(n);
  for (int32_t i = 0; i < n; ++i)
    syms[i] = Symbol{byte_to_id_[static_cast<uint8_t>(piece[i])], i - 1, i + 1 < n ? i + 1 : -1};

  std::vector<Candidate> heap_storage;
  heap_storage.reserve(n);
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap(
      std::greater<Candidate>{}, std::move(heap_storage));
  auto try_pair = [&](int32_t left) {
    if (left < 0) return;
    const int32_t right = syms[left].next;
    if (right < 0) return;
    const int32_t a = syms[left].id;
    const int32_t b = syms[right].id;
    if (a < 0 || b < 0) return;
    auto it = merges_.find((static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b));
    if (it != merges_.end()) heap.push(Candidate{it->second.rank, left, a, b, it->second.id});
  };
  for (int32_t i = 0; i + 1 < n; ++i) try_pair(i);

  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    Symbol& left = syms[c.pos];
    // Stale if the left symbol changed (it only ever grows) or its neighbour is no longer the
    // symbol this pair was made with (a neighbour changes only when the left symbol merges).
    if (left.id != c.left_id || left.next < 0 || syms[left.next].id != c.right_id) continue;
    Symbol& right = syms[left.next];
    left.id = c.result;
    right.id = kDead;
    left.next = right.next;
    if (left.next >= 0) syms[left.next].prev = c.pos;
    try_pair(left.prev);
    try_pair(c.pos);
  }
  for (int32_t i = 0; i >= 0; i = syms[i].next)
    if (syms[i].id >= 0) out->push_back(syms[i].id);
}

}  // namespace tq::model
