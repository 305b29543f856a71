// Text <-> token ids from a GGUF's tokenizer.ggml.* metadata: byte-level BPE ("gpt2": GPT-2,
// Llama-3, Qwen2, SmolLM) and SentencePiece-style BPE ("llama": Llama-2, Mistral), with special
// tokens, a whole-sequence decoder and a streaming decoder that never splits a UTF-8 sequence.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "tq/core/status.h"
#include "tq/model/tokenizer_pretokenize.h"

namespace tq::model {

class GgufFile;

enum class TokenizerModel {
  kBpe,  // tokenizer.ggml.model "gpt2": byte-level BPE, merges by rank
  kSpm,  // tokenizer.ggml.model "llama": SentencePiece BPE by score, "▁" spaces, <0xXX> bytes
};

// tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
enum class TokenType : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

// Everything a tokenizer is built from; load_tokenizer fills it from GGUF metadata, tests fill
// it by hand. Ids are -1 when absent.
struct TokenizerData {
  TokenizerModel model = TokenizerModel::kBpe;
  PreTokenizerKind pre = PreTokenizerKind::kDefault;
  std::vector<std::string> tokens;
  std::vector<int32_t> token_types;  // TokenType per token; empty means all kNormal
  std::vector<float> scores;         // kSpm merge priorities; empty means all 0
  std::vector<std::string> merges;   // kBpe: "left right", best (rank 0) first
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t unk_id = -1;
  int32_t pad_id = -1;
  int32_t eot_id = -1;  // end of turn; guessed from token text when the GGUF has none
  int32_t eom_id = -1;  // end of message (Llama-3.1 tool calls)
  bool add_bos = false;
  bool add_eos = false;
  bool add_space_prefix = false;  // kSpm: prepend "▁" to text at the start or after a special
  std::string chat_template;      // tokenizer.chat_template, may be empty
};

// "gpt2", "llama-bpe", "qwen2", "smollm", "default", ... -> kind; Unsupported for others.
Expected<PreTokenizerKind> pre_tokenizer_from_name(std::string_view name);

class Tokenizer {
 public:
  static Expected<std::unique_ptr<Tokenizer>> create(TokenizerData data);

  // parse_special: match control and user-defined token texts (e.g. "<|im_start|>") in `text`
  // and emit their ids, as for chat prompts. When false, control tokens are plain text (for
  // perplexity on untrusted text); user-defined tokens are still matched, as HF tokenizers and
  // llama.cpp do, since they are ordinary vocabulary that BPE cannot produce.
  std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special) const;
  // The bytes of all ids (special tokens as their text); invalid ids are skipped. For kSpm
  // the space the encoder put in front of the text is removed again.
  std::string decode(const std::vector<int32_t>& ids) const;
  // Raw bytes of one token: may be part of a UTF-8 sequence. Empty for an invalid id.
  std::string token_to_piece(int32_t id) const;

  int32_t bos_id() const { return data_.bos_id; }
  int32_t eos_id() const { return data_.eos_id; }
  int32_t eot_id() const { return data_.eot_id; }
  int32_t unk_id() const { return data_.unk_id; }
  // End of generation: eos, eot, eom and the end-of-turn markers of known chat formats.
  bool is_eog(int32_t id) const { return eog_ids_.count(id) != 0; }
  bool add_bos_default() const { return data_.add_bos; }
  int32_t vocab_size() const { return static_cast<int32_t>(data_.tokens.size()); }
  TokenizerModel model() const { return data_.model; }
  const std::string& chat_template() const { return data_.chat_template; }
  // The token's text as stored in the vocabulary ("Ġthe", "▁the", "<|im_end|>"), "" if invalid.
  std::string_view token_text(int32_t id) const;
  TokenType token_type(int32_t id) const;
  // -1 when `text` is not a token.
  int32_t token_id(std::string_view text) const;
  // kBpe: merges one pre-tokenized piece with the general heap algorithm (any length), the
  // reference the allocation-free path for short pieces is tested against.
  std::vector<int32_t> bpe_piece_ref(std::string_view piece) const;

 private:
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  struct MergeResult {
    int32_t rank;
    int32_t id;
  };

  explicit Tokenizer(TokenizerData data) : data_(std::move(data)) {}
  Status init();
  Status init_bpe();
  void init_spm();
  void init_eog();

  // Byte-level BPE of one pre-tokenized piece (tokenizer_bpe.cpp).
  void encode_bpe_piece(std::string_view piece, std::vector<int32_t>* out) const;
  void encode_bpe_small(std::string_view piece, std::vector<int32_t>* out) const;
  void encode_bpe_heap(std::string_view piece, std::vector<int32_t>* out) const;
  static constexpr int32_t kSmallPiece = 48;
  void encode_bpe_text(std::string_view text, std::vector<int32_t>* out) const;
  // SentencePiece BPE of one fragment, spaces already escaped (tokenizer_spm.cpp).
  void encode_spm_text(std::string_view text, std::vector<int32_t>* out) const;
  void spm_resegment(std::string_view symbol, std::vector<int32_t>* out) const;

  TokenizerData data_;
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> token_to_id_;
  std::vector<std::string> pieces_;  // decoded bytes per id
  std::vector<int32_t> specials_;    // control and user-defined ids, longest text first
  std::vector<std::vector<int32_t>> specials_by_first_byte_;  // [256] -> specials_ subsets
  std::unordered_set<int32_t> eog_ids_;
  // kBpe
  std::unordered_map<uint64_t, MergeResult> merges_;  // (left id << 32 | right id) -> merge
  int32_t byte_to_id_[256] = {};
  bool ignore_merges_ = false;  // Llama-3: a piece that is a whole token skips merging
  // kSpm
  int32_t spm_byte_ids_[256] = {};  // <0xXX> tokens, -1 when missing
};

Expected<std::unique_ptr<Tokenizer>> load_tokenizer(const GgufFile& gguf);
// The TokenizerData part of load_tokenizer, for callers that want to adjust it.
Expected<TokenizerData> read_tokenizer_data(const GgufFile& gguf);

// Turns ids into text one at a time for streaming output: returns the newly completed UTF-8
// text and holds back a trailing incomplete sequence until its last byte arrives.
class TokenStreamDecoder {
 public:
  explicit TokenStreamDecoder(const Tokenizer& tokenizer) : tokenizer_(&tokenizer) {}
  std::string push(int32_t id);
  // Whatever is still held (an incomplete sequence at the end of the stream), then resets.
  std::string flush();

 private:
  const Tokenizer* tokenizer_;
  std::string pending_;
};

}  // namespace tq::model
