// SentencePiece-style BPE (tokenizer.ggml.model "llama", Llama-2 and Mistral): the text, its
// spaces already written as "▁", starts as one symbol per UTF-8 character; the adjacent pair
// whose concatenation is the vocabulary token with the highest score merges first (leftmost
// on ties), as llama.cpp's llm_tokenizer_spm does. Characters the vocabulary lacks fall back
// to <0xXX> byte tokens.
#include <queue>

#include "tq/model/tokenizer.h"
#include "tq/model/unicode.h"

namespace tq::model {
namespace {

struct SpmSymbol {
  uint32_t start;  // byte offset in the text
  uint32_t len;    // 0 once merged into the left neighbour
  int32_t prev;
  int32_t next;
};

struct SpmBigram {
  float score;
  int32_t left;
  uint32_t len;  // bytes of the merged text, to detect stale entries
  // priority_queue pops the largest: highest score, then the leftmost pair.
  bool operator<(const SpmBigram& o) const {
    return score != o.score ? score < o.score : left > o.left;
  }
};

}  // namespace

void Tokenizer::encode_spm_text(std::string_view text, std::vector<int32_t>* out) const {
  std::vector<SpmSymbol> syms;
  syms.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const size_t len =
        std::min(utf8_sequence_length(static_cast<uint8_t>(text[pos])), text.size() - pos);
    const auto i = static_cast<int32_t>(syms.size());
    syms.push_back(SpmSymbol{static_cast<uint32_t>(pos), static_cast<uint32_t>(len), i - 1, -1});
    if (i > 0) syms[i - 1].next = i;
    pos += len;
  }
  if (syms.empty()) return;

  std::priority_queue<SpmBigram> queue;
  auto try_pair = [&](int32_t left) {
    if (left < 0 || syms[left].next < 0) return;
    const SpmSymbol& l = syms[left];
    const SpmSymbol& r = syms[l.next];
    const int32_t id = token_id(text.substr(l.start, l.len + r.len));
    if (id < 0) return;
    const float score = data_.scores.empty() ? 0.0f : data_.scores[id];
    queue.push(SpmBigram{score, left, l.len + r.len});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(syms.size()); ++i) try_pair(i);

  while (!queue.empty()) {
    const SpmBigram b = queue.top();
    queue.pop();
    SpmSymbol& l = syms[b.left];
    // Stale if either side merged since: lengths only grow, so the sum no longer matches.
    if (l.len == 0 || l.next < 0) continue;
    SpmSymbol& r = syms[l.next];
    if (r.len == 0 || l.len + r.len != b.len) continue;
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (l.next >= 0) syms[l.next].prev = b.left;
    try_pair(l.prev);
    try_pair(b.left);
  }
  for (int32_t i = 0; i >= 0; i = syms[i].next)
    spm_resegment(text.substr(syms[i].start, syms[i].len), out);
}

// A final symbol is a token (every merge made one) or a single character the vocabulary lacks:
// that one becomes its UTF-8 bytes as <0xXX> tokens, or <unk> where those are missing too.
void Tokenizer::spm_resegment(std::string_view symbol, std::vector<int32_t>* out) const {
  if (const int32_t id = token_id(symbol); id >= 0) {
    out->push_back(id);
    return;
  }
  for (char c : symbol) {
    const int32_t id = spm_byte_ids_[static_cast<uint8_t>(c)];
    if (id >= 0)
      out->push_back(id);
    else if (data_.unk_id >= 0)
      out->push_back(data_.unk_id);
  }
}

}  // namespace tq::model
