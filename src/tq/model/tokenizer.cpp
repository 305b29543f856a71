// Tokenizer construction, special-token matching, encode dispatch and decoding (tokenizer.h).
// The two merge algorithms live in tokenizer_bpe.cpp and tokenizer_spm.cpp.
#include "tq/model/tokenizer.h"

#include <algorithm>
#include <cstdio>

#include "tq/core/log.h"
#include "tq/model/unicode.h"

namespace tq::model {
namespace {

constexpr std::string_view kSpmSpace = "\xE2\x96\x81";  // U+2581 "▁"

// End-of-turn markers of common chat formats, most specific first (the eot guess takes the
// first one present).
constexpr std::string_view kEotMarkers[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>",
};

bool is_special_type(TokenType t) {
  return t == TokenType::kControl || t == TokenType::kUserDefined;
}

// "<0x4A>" -> 0x4A, or -1.
int parse_byte_token(std::string_view s) {
  if (s.size() != 6 || s.substr(0, 3) != "<0x" || s[5] != '>') return -1;
  int v = 0;
  for (size_t i = 3; i < 5; ++i) {
    const char c = s[i];
    int d = -1;
    if (c >= '0' && c <= '9') d = c - '0';
    if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
    if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

}  // namespace

Expected<PreTokenizerKind> pre_tokenizer_from_name(std::string_view name) {
  // Names as written by llama.cpp's convert_hf_to_gguf.py; each group shares one regex set.
  static constexpr std::string_view kGpt2[] = {"gpt2", "mpt", "olmo", "jais", "trillion"};
  static constexpr std::string_view kLlama3[] = {"llama3", "llama-v3", "llama-bpe", "falcon3",
                                                 "pixtral"};
  static constexpr std::string_view kQwen2[] = {"qwen2", "stablelm2", "deepseek-r1-qwen",
                                                "hunyuan"};
  static constexpr std::string_view kSmollm[] = {"smollm",    "starcoder", "refact", "command-r",
                                                 "codeshell", "exaone",    "minerva"};
  auto in = [&](const auto& list) {
    return std::find(std::begin(list), std::end(list), name) != std::end(list);
  };
  if (name.empty() || name == "default") return PreTokenizerKind::kDefault;
  if (in(kGpt2)) return PreTokenizerKind::kGpt2;
  if (in(kLlama3)) return PreTokenizerKind::kLlama3;
  if (in(kQwen2)) return PreTokenizerKind::kQwen2;
  if (in(kSmollm)) return PreTokenizerKind::kSmollm;
  return unsupported("tokenizer.ggml.pre '" + std::string(name) +
                     "' is not implemented (known: default, gpt2, llama-bpe, qwen2, smollm and "
                     "their aliases)");
}

Expected<std::unique_ptr<Tokenizer>> Tokenizer::create(TokenizerData data) {
  std::unique_ptr<Tokenizer> t(new Tokenizer(std::move(data)));
  TQ_RETURN_IF_ERROR(t->init());
  return t;
}

Status Tokenizer::init() {
  const size_t n = data_.tokens.size();
  if (n == 0) return invalid_argument("tokenizer: empty vocabulary");
  if (n > static_cast<size_t>(INT32_MAX)) return invalid_argument("tokenizer: vocabulary too big");
  if (!data_.token_types.empty() && data_.token_types.size() != n)
    return invalid_argument("tokenizer: " + std::to_string(data_.token_types.size()) +
                            " token types for " + std::to_string(n) + " tokens");
  if (!data_.scores.empty() && data_.scores.size() != n)
    return invalid_argument("tokenizer: " + std::to_string(data_.scores.size()) + " scores for " +
                            std::to_string(n) + " tokens");
  for (int32_t* id :
       {&data_.bos_id, &data_.eos_id, &data_.unk_id, &data_.pad_id, &data_.eot_id, &data_.eom_id}) {
    if (*id < -1 || *id >= static_cast<int32_t>(n))
      return invalid_argument("tokenizer: special token id " + std::to_string(*id) +
                              " outside the vocabulary of " + std::to_string(n));
  }
  token_to_id_.reserve(n);
  for (size_t i = 0; i < n; ++i) token_to_id_.emplace(data_.tokens[i], static_cast<int32_t>(i));

  for (size_t i = 0; i < n; ++i) {
    const auto id = static_cast<int32_t>(i);
    if (is_special_type(token_type(id)) && !data_.tokens[i].empty()) specials_.push_back(id);
  }
  // Longest first, so that the first text match at a position is the longest one.
  std::stable_sort(specials_.begin(), specials_.end(), [&](int32_t a, int32_t b) {
    return data_.tokens[a].size() > data_.tokens[b].size();
  });
  specials_by_first_byte_.assign(256, {});
  for (int32_t id : specials_)
    specials_by_first_byte_[static_cast<uint8_t>(data_.tokens[id][0])].push_back(id);

  if (data_.model == TokenizerModel::kBpe) {
    TQ_RETURN_IF_ERROR(init_bpe());
  } else {
    init_spm();
  }
  init_eog();
  return ok_status();
}

void Tokenizer::init_spm() {
  std::fill(std::begin(spm_byte_ids_), std::end(spm_byte_ids_), -1);
  pieces_.resize(data_.tokens.size());
  for (size_t i = 0; i < data_.tokens.size(); ++i) {
    const std::string& text = data_.tokens[i];
    const TokenType type = token_type(static_cast<int32_t>(i));
    const int byte = parse_byte_token(text);
    if (type == TokenType::kByte && byte >= 0) {
      if (spm_byte_ids_[byte] < 0) spm_byte_ids_[byte] = static_cast<int32_t>(i);
      pieces_[i] = std::string(1, static_cast<char>(byte));
    } else if (is_special_type(type)) {
      pieces_[i] = text;
    } else {
      std::string& p = pieces_[i];
      for (size_t pos = 0; pos < text.size();) {
        if (text.compare(pos, kSpmSpace.size(), kSpmSpace) == 0) {
          p.push_back(' ');
          pos += kSpmSpace.size();
        } else {
          p.push_back(text[pos++]);
        }
      }
    }
  }
}

void Tokenizer::init_eog() {
  auto find_marker = [&](std::string_view text) -> int32_t {
    const int32_t id = token_id(text);
    return (id >= 0 && is_special_type(token_type(id))) ? id : -1;
  };
  if (data_.eot_id < 0) {
    for (std::string_view m : kEotMarkers) {
      if ((data_.eot_id = find_marker(m)) >= 0) break;
    }
  }
  if (data_.eom_id < 0) data_.eom_id = find_marker("<|eom_id|>");
  for (int32_t id : {data_.eos_id, data_.eot_id, data_.eom_id}) {
    if (id >= 0) eog_ids_.insert(id);
  }
  for (std::string_view m : kEotMarkers) {
    if (int32_t id = find_marker(m); id >= 0) eog_ids_.insert(id);
  }
}

std::string_view Tokenizer::token_text(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return {};
  return data_.tokens[id];
}

TokenType Tokenizer::token_type(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return TokenType::kUndefined;
  if (data_.token_types.empty()) return TokenType::kNormal;
  return static_cast<TokenType>(data_.token_types[id]);
}

int32_t Tokenizer::token_id(std::string_view text) const {
  auto it = token_to_id_.find(text);
  return it == token_to_id_.end() ? -1 : it->second;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos,
                                       bool parse_special) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (add_bos && data_.bos_id >= 0) out.push_back(data_.bos_id);

  bool prev_special = true;  // kSpm: the text start counts as "after a special token"
  auto encode_text = [&](std::string_view frag) {
    if (frag.empty()) return;
    if (data_.model == TokenizerModel::kBpe) {
      encode_bpe_text(frag, &out);
    } else {
      std::string escaped;
      escaped.reserve(frag.size() + 8);
      if (data_.add_space_prefix && prev_special) escaped.append(kSpmSpace);
      for (char c : frag) {
        if (c == ' ')
          escaped.append(kSpmSpace);
        else
          escaped.push_back(c);
      }
      encode_spm_text(escaped, &out);
    }
    prev_special = false;
  };

  // Leftmost-longest match of special token texts, as HF's added-token splitter does.
  size_t start = 0;
  for (size_t pos = 0; pos < text.size(); ++pos) {
    int32_t match = -1;
    for (int32_t id : specials_by_first_byte_[static_cast<uint8_t>(text[pos])]) {
      if (!parse_special && token_type(id) == TokenType::kControl) continue;
      const std::string& s = data_.tokens[id];
      if (text.size() - pos >= s.size() && text.compare(pos, s.size(), s) == 0) {
        match = id;
        break;
      }
    }
    if (match < 0) continue;
    encode_text(text.substr(start, pos - start));
    out.push_back(match);
    prev_special = true;
    start = pos + data_.tokens[match].size();
    pos = start - 1;
  }
  encode_text(text.substr(start));
  if (add_bos && data_.add_eos && data_.eos_id >= 0) out.push_back(data_.eos_id);
  return out;
}

std::string Tokenizer::token_to_piece(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return {};
  return pieces_[id];
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  bool first = true;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) continue;
    const std::string& p = pieces_[id];
    // kSpm: undo the space the encoder prepended (llama.cpp strips it from the first token).
    if (first && data_.model == TokenizerModel::kSpm && data_.add_space_prefix && !p.empty() &&
        p[0] == ' ')
      out.append(p, 1);
    else
      out.append(p);
    first = false;
  }
  return out;
}

std::string TokenStreamDecoder::push(int32_t id) {
  pending_ += tokenizer_->token_to_piece(id);
  // Find where the last, possibly incomplete, UTF-8 sequence starts.
  size_t keep = pending_.size();
  for (size_t back = 1; back <= 4 && back <= pending_.size(); ++back) {
    const auto b = static_cast<uint8_t>(pending_[pending_.size() - back]);
    if ((b & 0xC0) == 0x80) continue;  // continuation byte: look further back
    const size_t need = utf8_sequence_length(b);
    if (b >= 0xC0 && need > back) keep = pending_.size() - back;  // lead still waiting
    break;
  }
  std::string ready = pending_.substr(0, keep);
  pending_.erase(0, keep);
  return ready;
}

std::string TokenStreamDecoder::flush() {
  std::string rest;
  rest.swap(pending_);
  return rest;
}

}  // namespace tq::model
