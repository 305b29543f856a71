// DeviceModelOptions::validate: what the CUDA forward pass cannot do yet is refused up front,
// naming the flag to drop.
#include <gtest/gtest.h>

#include <string>

#include "tq/backend/device_model.h"

namespace tq::backend {
namespace {

TEST(DeviceModelOptions, RefusesKeyAndValueScalingNamingTheFlag) {
  DeviceModelOptions o;
  ASSERT_TRUE(o.validate().ok());
  o.kv.key_scaling = true;
  Status s = o.validate();
  EXPECT_EQ(s.code(), StatusCode::kUnsupported);
  EXPECT_NE(s.message().find("--kv-key-scaling"), std::string::npos) << s.to_string();
  o.kv.key_scaling = false;
  o.kv.value_scaling = true;
  s = o.validate();
  EXPECT_EQ(s.code(), StatusCode::kUnsupported);
  EXPECT_NE(s.message().find("--kv-value-scaling"), std::string::npos) << s.to_string();
}

}  // namespace
}  // namespace tq::backend
