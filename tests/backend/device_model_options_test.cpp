// DeviceModelOptions::validate (no GPU needed): every --kv-* option of the CPU cache is taken
// (sinks, window, key and value scaling run on the device too); value weights without value
// scaling, and bad sizes, are refused with the reason.
#include <gtest/gtest.h>

#include <string>

#include "tq/backend/device_model.h"

namespace tq::backend {
namespace {

TEST(DeviceModelOptions, TakesEveryKvOptionAndRefusesStrayValueWeights) {
  DeviceModelOptions o;
  ASSERT_TRUE(o.validate().ok());
  o.kv.sinks = 4;
  o.kv.window = 128;
  o.kv.key_scaling = true;
  o.kv.value_scaling = true;
  o.value_weights = {1.0f, 2.0f};
  EXPECT_TRUE(o.validate().ok()) << o.validate().to_string();
  o.kv.value_scaling = false;
  const Status s = o.validate();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("value weights"), std::string::npos) << s.to_string();
  o.value_weights.clear();
  EXPECT_TRUE(o.validate().ok());
  o.max_batch = 0;
  EXPECT_EQ(o.validate().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tq::backend
