// Model::value_output_weights against W_o's columns read back through the float matmul
// (W_o times the unit vectors), norms in float64: per layer, KV head and channel, the root of
// the sum of squares over the query heads of the group.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "model/tiny_model.h"
#include "tq/backend/cpu/matmul.h"
#include "tq/core/thread_pool.h"

namespace tq::model {
namespace {

TEST(ValueOutputWeights, AreTheGroupedColumnNormsOfWo) {
  for (quant::GgmlType type : {quant::GgmlType::kQ8_0, quant::GgmlType::kQ4_0}) {
    auto m = test::build_model(test::tiny_spec(Arch::kLlama, type, 31));
    ASSERT_TRUE(m);
    const ModelConfig& c = m->config();
    auto w = m->value_output_weights();
    ASSERT_TRUE(w.ok()) << w.status().to_string();
    const size_t hd = static_cast<size_t>(c.head_dim);
    const size_t q_dim = static_cast<size_t>(c.n_heads) * hd;
    ASSERT_EQ(w->size(), static_cast<size_t>(c.n_layers) * c.n_kv_heads * hd);
    const int group = c.n_heads / c.n_kv_heads;
    ThreadPool pool(1);
    std::vector<float> eye(q_dim * q_dim, 0.0f), cols(q_dim * static_cast<size_t>(c.dim));
    for (size_t i = 0; i < q_dim; ++i) eye[i * q_dim + i] = 1.0f;
    double worst = 0, lo = 1e300, hi = 0;
    for (int l = 0; l < c.n_layers; ++l) {
      // Row t of the product is column t of W_o.
      ASSERT_TRUE(backend::cpu::matmul(pool, m->weights().layers[static_cast<size_t>(l)].wo,
                                       eye.data(), static_cast<int>(q_dim), cols.data(),
                                       backend::cpu::Activations::kFloat)
                      .ok());
      for (int g = 0; g < c.n_kv_heads; ++g)
        for (size_t j = 0; j < hd; ++j) {
          double sum = 0;
          for (int h = g * group; h < (g + 1) * group; ++h)
            for (int r = 0; r < c.dim; ++r) {
              const double x = cols[(static_cast<size_t>(h) * hd + j) * c.dim + r];
              sum += x * x;
            }
          const double want = std::sqrt(sum);
          const double got = (*w)[(static_cast<size_t>(l) * c.n_kv_heads + g) * hd + j];
          worst = std::max(worst, std::abs(got - want) / want);
          lo = std::min(lo, want);
          hi = std::max(hi, want);
        }
    }
    EXPECT_LT(worst, 1e-5);  // float32 rounding of the result only
    EXPECT_GT(lo, 0.0);
    EXPECT_GT(hi, lo);  // random weights: the norms differ
  }
}

}  // namespace
}  // namespace tq::model
