// Tensor binding with shape and type checks.
#include "tq/model/weights.h"

#include <string>

#include "tq/model/gguf.h"
#include "tq/quant/weight_dequant.h"

namespace tq::model {
namespace {

using backend::cpu::WeightView;

std::string shape_str(const std::vector<uint64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

Status check_type(const GgufTensor& t, bool need_matmul) {
  const quant::GgmlTypeTraits* tr = quant::ggml_type_traits(static_cast<uint32_t>(t.type));
  if (tr == nullptr || !tr->supported || !quant::can_dequantize(t.type))
    return unsupported("tensor '" + t.name + "' has type " +
                       std::string(tr ? tr->name : "unknown") + " which tq cannot " +
                       (need_matmul ? "multiply" : "read"));
  return ok_status();
}

// A 2-D weight of `rows` rows by `cols` columns (GGUF shape [cols, rows]).
Expected<WeightView> bind_matrix(const GgufFile& f, const std::string& name, int64_t rows,
                                 int64_t cols) {
  const GgufTensor* t = f.find_tensor(name);
  if (t == nullptr) return not_found("tensor '" + name + "' is missing");
  const std::vector<uint64_t> want = {static_cast<uint64_t>(cols), static_cast<uint64_t>(rows)};
  if (t->shape != want)
    return invalid_argument("tensor '" + name + "' has shape " + shape_str(t->shape) +
                            ", expected " + shape_str(want));
  TQ_RETURN_IF_ERROR(check_type(*t, true));
  const size_t row_bytes = quant::ggml_row_bytes(t->type, static_cast<uint64_t>(cols));
  if (row_bytes == 0 || t->nbytes != row_bytes * static_cast<size_t>(rows) || t->data == nullptr)
    return corrupt("tensor '" + name + "': " + std::to_string(t->nbytes) + " bytes do not hold " +
                   std::to_string(rows) + " rows of " + std::to_string(cols) + " elements");
  return WeightView{t->type, t->data, rows, cols};
}

// A 1-D tensor of n elements, copied out as float32. Absent -> NotFound.
Expected<std::vector<float>> read_vector(const GgufFile& f, const std::string& name, int64_t n) {
  const GgufTensor* t = f.find_tensor(name);
  if (t == nullptr) return not_found("tensor '" + name + "' is missing");
  const std::vector<uint64_t> want = {static_cast<uint64_t>(n)};
  if (t->shape != want)
    return invalid_argument("tensor '" + name + "' has shape " + shape_str(t->shape) +
                            ", expected " + shape_str(want));
  TQ_RETURN_IF_ERROR(check_type(*t, false));
  if (t->data == nullptr || t->nbytes != quant::ggml_row_bytes(t->type, static_cast<uint64_t>(n)))
    return corrupt("tensor '" + name + "' has the wrong byte size");
  std::vector<float> out(static_cast<size_t>(n));
  TQ_RETURN_IF_ERROR(quant::dequantize_row_ref(t->type, t->data, out.data(), n)
                         .with_context("tensor '" + name + "'"));
  return out;
}

// Optional 1-D tensor: empty when absent, an error only when present and malformed.
Expected<std::vector<float>> read_optional_vector(const GgufFile& f, const std::string& name,
                                                  int64_t n) {
  if (f.find_tensor(name) == nullptr) return std::vector<float>{};
  return read_vector(f, name, n);
}

size_t view_bytes(const WeightView& w) {
  return quant::ggml_row_bytes(w.type, static_cast<uint64_t>(w.cols)) * static_cast<size_t>(w.rows);
}

}  // namespace

Expected<ModelWeights> bind_weights(const GgufFile& f, const ModelConfig& c) {
  ModelWeights w;
  const int64_t dim = c.dim, q_dim = c.q_dim(), kv_dim = c.kv_dim(), ffn = c.ffn_dim;
  TQ_ASSIGN_OR_RETURN(w.token_embd, bind_matrix(f, "token_embd.weight", c.vocab_size, dim));
  TQ_ASSIGN_OR_RETURN(w.output_norm, read_vector(f, "output_norm.weight", dim));
  if (f.find_tensor("output.weight") != nullptr) {
    TQ_ASSIGN_OR_RETURN(w.output, bind_matrix(f, "output.weight", c.vocab_size, dim));
  } else {
    w.output = w.token_embd;
    w.tied_output = true;
  }
  TQ_ASSIGN_OR_RETURN(w.rope_freqs, read_optional_vector(f, "rope_freqs.weight", c.rope_dims / 2));

  w.layers.resize(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    LayerWeights& L = w.layers[l];
    const std::string p = "blk." + std::to_string(l) + ".";
    TQ_ASSIGN_OR_RETURN(L.attn_norm, read_vector(f, p + "attn_norm.weight", dim));
    TQ_ASSIGN_OR_RETURN(L.wq, bind_matrix(f, p + "attn_q.weight", q_dim, dim));
    TQ_ASSIGN_OR_RETURN(L.wk, bind_matrix(f, p + "attn_k.weight", kv_dim, dim));
    TQ_ASSIGN_OR_RETURN(L.wv, bind_matrix(f, p + "attn_v.weight", kv_dim, dim));
    TQ_ASSIGN_OR_RETURN(L.wo, bind_matrix(f, p + "attn_output.weight", dim, q_dim));
    TQ_ASSIGN_OR_RETURN(L.bq, read_optional_vector(f, p + "attn_q.bias", q_dim));
    TQ_ASSIGN_OR_RETURN(L.bk, read_optional_vector(f, p + "attn_k.bias", kv_dim));
    TQ_ASSIGN_OR_RETURN(L.bv, read_optional_vector(f, p + "attn_v.bias", kv_dim));
    if (c.qkv_bias && (L.bq.empty() || L.bk.empty() || L.bv.empty()))
      return not_found("tensor '" + p + "attn_{q,k,v}.bias' is missing (" + c.arch_name +
                       " needs q/k/v biases)");
    TQ_ASSIGN_OR_RETURN(L.ffn_norm, read_vector(f, p + "ffn_norm.weight", dim));
    TQ_ASSIGN_OR_RETURN(L.w_gate, bind_matrix(f, p + "ffn_gate.weight", ffn, dim));
    TQ_ASSIGN_OR_RETURN(L.w_up, bind_matrix(f, p + "ffn_up.weight", ffn, dim));
    TQ_ASSIGN_OR_RETURN(L.w_down, bind_matrix(f, p + "ffn_down.weight", dim, ffn));
    w.bytes += view_bytes(L.wq) + view_bytes(L.wk) + view_bytes(L.wv) + view_bytes(L.wo) +
               view_bytes(L.w_gate) + view_bytes(L.w_up) + view_bytes(L.w_down);
  }
  w.bytes += view_bytes(w.output);
  return w;
}

}  // namespace tq::model
