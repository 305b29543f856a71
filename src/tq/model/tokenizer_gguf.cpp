// Reads tokenizer.ggml.* and tokenizer.chat_template from a GGUF into TokenizerData, with
// llama.cpp's defaults where a key is absent.
#include "tq/core/log.h"
#include "tq/model/gguf.h"
#include "tq/model/tokenizer.h"

namespace tq::model {
namespace {

Expected<bool> get_bool_or(const GgufFile& g, std::string_view key, bool def) {
  if (g.find(key) == nullptr) return def;
  return g.get_bool(key);
}

// An id outside the vocabulary is dropped with a warning, as llama.cpp does: some converters
// write a padding id one past the end.
Expected<int32_t> get_id(const GgufFile& g, std::string_view key, size_t n_vocab) {
  TQ_ASSIGN_OR_RETURN(const int64_t id, g.get_int_or(key, -1));
  if (id < -1 || id >= static_cast<int64_t>(n_vocab)) {
    TQ_LOG(kWarn, "tokenizer: %.*s = %lld is outside the vocabulary (%zu); ignored",
           static_cast<int>(key.size()), key.data(), static_cast<long long>(id), n_vocab);
    return -1;
  }
  return static_cast<int32_t>(id);
}

}  // namespace

Expected<TokenizerData> read_tokenizer_data(const GgufFile& gguf) {
  TokenizerData d;
  TQ_ASSIGN_OR_RETURN(const std::string model, gguf.get_string("tokenizer.ggml.model"));
  if (model == "gpt2") {
    d.model = TokenizerModel::kBpe;
  } else if (model == "llama") {
    d.model = TokenizerModel::kSpm;
  } else {
    return unsupported("tokenizer.ggml.model '" + model +
                       "' is not implemented (only gpt2 byte-level BPE and llama SentencePiece)");
  }
  if (d.model == TokenizerModel::kBpe) {
    std::string pre = "default";
    if (gguf.find("tokenizer.ggml.pre") != nullptr) {
      TQ_ASSIGN_OR_RETURN(pre, gguf.get_string("tokenizer.ggml.pre"));
    } else {
      TQ_LOG(kWarn, "tokenizer: no tokenizer.ggml.pre; using the default pre-tokenizer");
    }
    TQ_ASSIGN_OR_RETURN(d.pre, pre_tokenizer_from_name(pre));
  }

  TQ_ASSIGN_OR_RETURN(d.tokens, gguf.get_string_array("tokenizer.ggml.tokens"));
  const size_t n = d.tokens.size();
  if (gguf.find("tokenizer.ggml.token_type") != nullptr) {
    TQ_ASSIGN_OR_RETURN(const std::vector<int64_t> types,
                        gguf.get_int_array("tokenizer.ggml.token_type"));
    d.token_types.reserve(types.size());
    for (int64_t t : types) d.token_types.push_back(static_cast<int32_t>(t));
  }
  if (gguf.find("tokenizer.ggml.scores") != nullptr) {
    TQ_ASSIGN_OR_RETURN(const std::vector<double> scores,
                        gguf.get_float_array("tokenizer.ggml.scores"));
    d.scores.assign(scores.begin(), scores.end());
  }
  if (gguf.find("tokenizer.ggml.merges") != nullptr) {
    TQ_ASSIGN_OR_RETURN(d.merges, gguf.get_string_array("tokenizer.ggml.merges"));
  }
  if (d.model == TokenizerModel::kBpe && d.merges.empty())
    return corrupt("tokenizer.ggml.model is gpt2 but tokenizer.ggml.merges is missing or empty");

  TQ_ASSIGN_OR_RETURN(d.bos_id, get_id(gguf, "tokenizer.ggml.bos_token_id", n));
  TQ_ASSIGN_OR_RETURN(d.eos_id, get_id(gguf, "tokenizer.ggml.eos_token_id", n));
  TQ_ASSIGN_OR_RETURN(d.unk_id, get_id(gguf, "tokenizer.ggml.unknown_token_id", n));
  TQ_ASSIGN_OR_RETURN(d.pad_id, get_id(gguf, "tokenizer.ggml.padding_token_id", n));
  TQ_ASSIGN_OR_RETURN(d.eot_id, get_id(gguf, "tokenizer.ggml.eot_token_id", n));
  TQ_ASSIGN_OR_RETURN(d.eom_id, get_id(gguf, "tokenizer.ggml.eom_token_id", n));

  // llama.cpp's defaults: SentencePiece models add BOS and a space prefix, BPE ones neither.
  const bool spm = d.model == TokenizerModel::kSpm;
  TQ_ASSIGN_OR_RETURN(d.add_bos, get_bool_or(gguf, "tokenizer.ggml.add_bos_token", spm));
  TQ_ASSIGN_OR_RETURN(d.add_eos, get_bool_or(gguf, "tokenizer.ggml.add_eos_token", false));
  TQ_ASSIGN_OR_RETURN(d.add_space_prefix,
                      get_bool_or(gguf, "tokenizer.ggml.add_space_prefix", spm));
  if (gguf.find("tokenizer.chat_template") != nullptr) {
    TQ_ASSIGN_OR_RETURN(d.chat_template, gguf.get_string("tokenizer.chat_template"));
  }
  return d;
}

Expected<std::unique_ptr<Tokenizer>> load_tokenizer(const GgufFile& gguf) {
  auto data = read_tokenizer_data(gguf);
  if (!data.ok()) return data.status().with_context("loading tokenizer");
  auto tok = Tokenizer::create(std::move(data).value());
  if (!tok.ok()) return tok.status().with_context("loading tokenizer");
  return tok;
}

}  // namespace tq::model
