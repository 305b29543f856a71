// Random-weight model files (see random_model.h).
#include "tq/model/random_model.h"

#include <cmath>
#include <cstdio>
#include <string>
#include <unordered_set>
#include <vector>

#include "tq/core/rng.h"
#include "tq/core/thread_pool.h"
#include "tq/quant/weight_quant.h"

namespace tq::model {
namespace {

constexpr const char* kChatMlTemplate =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}";

void append_utf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest map to U+0100...
std::vector<std::string> byte_level_symbols() {
  std::vector<std::string> sym(256);
  uint32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    append_utf8(printable ? static_cast<uint32_t>(b) : next++, sym[b]);
  }
  return sym;
}

struct Vocab {
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  std::vector<std::string> merges;
  int32_t eos = 0, im_start = 0, im_end = 0;
};

// 256 byte tokens, then merges of lowercase words (optionally with a leading space, "Ġ")
// drawn from the seed, then the special tokens at the end of the vocabulary.
Vocab make_vocab(int vocab_size, uint64_t seed) {
  Vocab v;
  const std::vector<std::string> sym = byte_level_symbols();
  for (int b = 0; b < 256; ++b) {
    v.tokens.push_back(sym[b]);
    v.types.push_back(1);
  }
  std::vector<std::string> word_tokens;  // candidates to merge: [Ġ]?[a-z]+
  word_tokens.push_back(sym[' ']);
  for (char c = 'a'; c <= 'z'; ++c) word_tokens.push_back(sym[static_cast<unsigned char>(c)]);
  std::unordered_set<std::string> seen(v.tokens.begin(), v.tokens.end());
  const int n_merged = vocab_size - 256 - 3;
  Rng rng(derive_seed(seed, 0x766f636162ull));  // "vocab"
  const std::string space = sym[' '];
  while (static_cast<int>(v.merges.size()) < n_merged) {
    const std::string& l = word_tokens[rng.next_u64() % word_tokens.size()];
    const std::string& r = word_tokens[1 + rng.next_u64() % (word_tokens.size() - 1)];
    if (r.rfind(space, 0) == 0 || l.size() + r.size() > 24) continue;  // space only in front
    std::string t = l + r;
    if (!seen.insert(t).second) continue;
    v.merges.push_back(l + " " + r);
    v.tokens.push_back(t);
    v.types.push_back(1);
    word_tokens.push_back(std::move(t));
  }
  v.eos = static_cast<int32_t>(v.tokens.size());
  for (const char* s : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}) {
    v.tokens.push_back(s);
    v.types.push_back(3);  // control
  }
  v.im_start = v.eos + 1;
  v.im_end = v.eos + 2;
  return v;
}

uint32_t file_type_of(quant::GgmlType t) {
  switch (t) {
    case quant::GgmlType::kF32:
      return 0;
    case quant::GgmlType::kF16:
      return 1;
    case quant::GgmlType::kQ4_0:
      return 2;
    case quant::GgmlType::kQ4_1:
      return 3;
    case quant::GgmlType::kQ8_0:
      return 7;
    default:
      return 0;
  }
}

// Queues the tensors in file order and draws them in finish(). Each tensor has its own stream,
// Rng(derive_seed(seed, queue index)), so matrices are drawn in parallel (a Llama-3-8B shape
// in seconds, not minutes) with bytes that do not depend on the thread count.
class TensorMaker {
 public:
  TensorMaker(const RandomModelSpec& spec, GgufWriter& out) : spec_(spec), out_(out) {}

  // rows x cols matrix of N(0, sigma^2), quantized row by row to `type`.
  void matrix(const std::string& name, int64_t rows, int64_t cols, double sigma,
              quant::GgmlType type) {
    jobs_.push_back({name, rows, cols, sigma, type, true, 0.0f, index_++});
  }

  // F32 vector: all `value`, or N(0, sigma^2) when sigma > 0.
  void vector(const std::string& name, int64_t n, float value, double sigma = 0.0) {
    jobs_.push_back({name, 1, n, sigma, quant::GgmlType::kF32, false, value, index_++});
  }

  Status finish() {
    std::vector<std::vector<uint8_t>> data(jobs_.size());
    std::vector<Status> status(jobs_.size());
    ThreadPool pool(default_thread_count());
    pool.parallel_for(jobs_.size(), 1, [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i)
        if (jobs_[i].is_matrix) status[i] = draw_matrix(jobs_[i], data[i]);
    });
    for (size_t i = 0; i < jobs_.size(); ++i) {
      const Job& j = jobs_[i];
      TQ_RETURN_IF_ERROR(status[i]);
      if (j.is_matrix) {
        TQ_RETURN_IF_ERROR(
            out_.add_tensor(j.name, {static_cast<uint64_t>(j.cols), static_cast<uint64_t>(j.rows)},
                            j.type, std::move(data[i])));
        continue;
      }
      Rng rng(derive_seed(spec_.seed, j.index));
      std::vector<float> v(static_cast<size_t>(j.cols), j.value);
      if (j.sigma > 0.0)
        for (auto& x : v) x = static_cast<float>(rng.normal() * j.sigma);
      TQ_RETURN_IF_ERROR(out_.add_tensor_from_f32(j.name, {static_cast<uint64_t>(j.cols)},
                                                  quant::GgmlType::kF32, v.data()));
    }
    jobs_.clear();
    return ok_status();
  }

 private:
  struct Job {
    std::string name;
    int64_t rows, cols;
    double sigma;
    quant::GgmlType type;
    bool is_matrix;
    float value;     // vectors without sigma
    uint64_t index;  // queue position: the tensor's stream
  };

  Status draw_matrix(const Job& j, std::vector<uint8_t>& data) const {
    Rng rng(derive_seed(spec_.seed, j.index));
    const size_t row_bytes = quant::ggml_row_bytes(j.type, static_cast<uint64_t>(j.cols));
    data.resize(row_bytes * static_cast<size_t>(j.rows));
    std::vector<float> row(static_cast<size_t>(j.cols));
    for (int64_t r = 0; r < j.rows; ++r) {
      for (auto& x : row) x = static_cast<float>(rng.normal() * j.sigma);
      TQ_RETURN_IF_ERROR(
          quant::quantize_row_ref(j.type, row.data(), data.data() + row_bytes * r, j.cols));
    }
    return ok_status();
  }

  const RandomModelSpec& spec_;
  GgufWriter& out_;
  uint64_t index_ = 0;
  std::vector<Job> jobs_;
};

}  // namespace

Status RandomModelSpec::validate() const {
  auto bad = [](const std::string& m) { return invalid_argument("random model: " + m); };
  if (n_layers < 1 || n_layers > 256) return bad("layers must be in [1, 256]");
  if (n_heads < 1 || n_kv_heads < 1 || n_heads % n_kv_heads != 0)
    return bad("kv heads must divide heads");
  if (dim < 1 || dim % n_heads != 0) return bad("dim must be a multiple of heads");
  if ((dim / n_heads) % 2 != 0 || dim / n_heads > 512) return bad("head dim must be even, <= 512");
  if (ffn_dim < 1) return bad("ffn must be positive");
  if (vocab_size < kRandomModelMinVocab || vocab_size > (1 << 22))
    return bad("vocab must be in [" + std::to_string(kRandomModelMinVocab) + ", 4194304]");
  if (context_length < 1) return bad("context length must be positive");
  if (!quant::can_quantize(type)) return bad("weight type cannot be written");
  const quant::GgmlTypeTraits* tr = quant::ggml_type_traits(static_cast<uint32_t>(type));
  if (tr == nullptr) return bad("unknown weight type");
  const int kv_dim = dim / n_heads * n_kv_heads;
  for (int cols : {dim, ffn_dim, kv_dim})
    if (cols % static_cast<int>(tr->block_elems) != 0)
      return bad("dims must be multiples of " + std::to_string(tr->block_elems) + " for " +
                 std::string(tr->name));
  if (!(rope_freq_base > 1.0f) || !(rms_eps > 0.0f)) return bad("rope base / eps out of range");
  return ok_status();
}

std::string RandomModelSpec::to_string() const {
  const quant::GgmlTypeTraits* tr = quant::ggml_type_traits(static_cast<uint32_t>(type));
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "%s: %d layers, dim %d, ffn %d, heads %d/%d, vocab %d, ctx %d, %s, %s, seed %llu",
                arch == Arch::kQwen2 ? "qwen2" : "llama", n_layers, dim, ffn_dim, n_heads,
                n_kv_heads, vocab_size, context_length, tr ? std::string(tr->name).c_str() : "?",
                tied_output ? "tied output" : "separate output",
                static_cast<unsigned long long>(seed));
  return buf;
}

Expected<RandomModelSpec> random_model_preset(std::string_view shape) {
  RandomModelSpec s;
  if (shape == "llama3-8b") {
    s.n_layers = 32, s.dim = 4096, s.ffn_dim = 14336, s.n_heads = 32, s.n_kv_heads = 8;
    s.vocab_size = 128256, s.context_length = 8192, s.rope_freq_base = 500000.0f;
    s.tied_output = false;
  } else if (shape == "qwen2.5-7b") {
    s.arch = Arch::kQwen2;
    s.n_layers = 28, s.dim = 3584, s.ffn_dim = 18944, s.n_heads = 28, s.n_kv_heads = 4;
    s.vocab_size = 152064, s.context_length = 32768, s.rope_freq_base = 1000000.0f;
    s.rms_eps = 1e-6f, s.tied_output = false;
  } else if (shape == "smollm2-135m") {
    s.n_layers = 30, s.dim = 576, s.ffn_dim = 1536, s.n_heads = 9, s.n_kv_heads = 3;
    s.vocab_size = 49152, s.context_length = 8192, s.rope_freq_base = 100000.0f;
    s.tied_output = true;
  } else {
    return not_found("unknown shape '" + std::string(shape) +
                     "' (known: llama3-8b, qwen2.5-7b, smollm2-135m, custom)");
  }
  return s;
}

Status build_random_model(const RandomModelSpec& spec, GgufWriter& w) {
  TQ_RETURN_IF_ERROR(spec.validate());
  const std::string arch = spec.arch == Arch::kQwen2 ? "qwen2" : "llama";
  const std::string p = arch + ".";
  const int head_dim = spec.dim / spec.n_heads;
  const int kv_dim = head_dim * spec.n_kv_heads;

  w.set_string("general.architecture", arch);
  w.set_string("general.name", spec.name);
  w.set_u32("general.file_type", file_type_of(spec.type));
  w.set_u32("general.quantization_version", 2);
  w.set_u32(p + "context_length", static_cast<uint32_t>(spec.context_length));
  w.set_u32(p + "embedding_length", static_cast<uint32_t>(spec.dim));
  w.set_u32(p + "block_count", static_cast<uint32_t>(spec.n_layers));
  w.set_u32(p + "feed_forward_length", static_cast<uint32_t>(spec.ffn_dim));
  w.set_u32(p + "attention.head_count", static_cast<uint32_t>(spec.n_heads));
  w.set_u32(p + "attention.head_count_kv", static_cast<uint32_t>(spec.n_kv_heads));
  w.set_f32(p + "attention.layer_norm_rms_epsilon", spec.rms_eps);
  w.set_f32(p + "rope.freq_base", spec.rope_freq_base);
  w.set_u32(p + "rope.dimension_count", static_cast<uint32_t>(head_dim));
  w.set_u32(p + "vocab_size", static_cast<uint32_t>(spec.vocab_size));

  Vocab v = make_vocab(spec.vocab_size, spec.seed);
  w.set_string("tokenizer.ggml.model", "gpt2");
  w.set_string("tokenizer.ggml.pre", "default");
  w.set_string_array("tokenizer.ggml.tokens", v.tokens);
  w.set_i32_array("tokenizer.ggml.token_type", v.types);
  w.set_string_array("tokenizer.ggml.merges", v.merges);
  w.set_u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(v.eos));
  w.set_u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(v.eos));
  w.set_u32("tokenizer.ggml.eot_token_id", static_cast<uint32_t>(v.im_end));
  w.set_u32("tokenizer.ggml.padding_token_id", static_cast<uint32_t>(v.eos));
  w.set_bool("tokenizer.ggml.add_bos_token", false);
  w.set_bool("tokenizer.ggml.add_space_prefix", false);
  w.set_string("tokenizer.chat_template", kChatMlTemplate);

  // sigma = 1/sqrt(fan_in) keeps every projection's output at the input's scale; the two
  // projections back into the residual stream get another 1/sqrt(2 layers) (GPT-2's scheme) so
  // the stream grows like sqrt(depth) at most. Embeddings of norm ~1 give logits of std ~1.
  TensorMaker mk(spec, w);
  const double s_in = 1.0 / std::sqrt(static_cast<double>(spec.dim));
  const double s_res = 1.0 / std::sqrt(2.0 * spec.n_layers);
  const quant::GgmlType t = spec.type;
  mk.matrix("token_embd.weight", spec.vocab_size, spec.dim, s_in, t);
  mk.vector("output_norm.weight", spec.dim, 1.0f);
  if (!spec.tied_output) mk.matrix("output.weight", spec.vocab_size, spec.dim, s_in, t);
  for (int l = 0; l < spec.n_layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    mk.vector(b + "attn_norm.weight", spec.dim, 1.0f);
    mk.matrix(b + "attn_q.weight", spec.dim, spec.dim, s_in, t);
    mk.matrix(b + "attn_k.weight", kv_dim, spec.dim, s_in, t);
    mk.matrix(b + "attn_v.weight", kv_dim, spec.dim, s_in, t);
    if (spec.arch == Arch::kQwen2) {
      mk.vector(b + "attn_q.bias", spec.dim, 0.0f, 0.1);
      mk.vector(b + "attn_k.bias", kv_dim, 0.0f, 0.1);
      mk.vector(b + "attn_v.bias", kv_dim, 0.0f, 0.1);
    }
    mk.matrix(b + "attn_output.weight", spec.dim, spec.dim, s_in * s_res, t);
    mk.vector(b + "ffn_norm.weight", spec.dim, 1.0f);
    mk.matrix(b + "ffn_gate.weight", spec.ffn_dim, spec.dim, s_in, t);
    mk.matrix(b + "ffn_up.weight", spec.ffn_dim, spec.dim, s_in, t);
    mk.matrix(b + "ffn_down.weight", spec.dim, spec.ffn_dim,
              s_res / std::sqrt(static_cast<double>(spec.ffn_dim)), t);
  }
  return mk.finish();
}

}  // namespace tq::model
