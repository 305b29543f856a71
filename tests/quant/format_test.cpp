#include <gtest/gtest.h>

#include "tq/quant/format.h"

namespace tq::quant {
namespace {

TEST(Format, BytesPerVectorMatchTheQualityMethodTable) {
  // ../shared/docs/quality-method.md, head_dim 128.
  const std::pair<const char*, size_t> table[] = {{"f16", 256}, {"q8_0", 136}, {"q4_0", 72},
                                                  {"tq8", 130}, {"tq4", 66},   {"tq3", 50},
                                                  {"tq2", 34},  {"tq3j", 52},  {"tq4j", 68}};
  for (const auto& [name, bytes] : table) {
    auto f = parse_format(name);
    ASSERT_TRUE(f.ok()) << name;
    EXPECT_EQ(f->bytes_per_vector(128), bytes) << name;
    EXPECT_EQ(f->name(), name);
  }
  EXPECT_DOUBLE_EQ(parse_format("tq4")->bits_per_element(128), 4.125);
}

TEST(Format, RejectsBadNamesAndDims) {
  for (const char* bad : {"", "tq", "tq0", "tq9", "tq1j", "q4_1", "tq4x", "TQ4", "tq-3"})
    EXPECT_FALSE(parse_format(bad).ok()) << bad;
  EXPECT_EQ(parse_format("q4_0")->validate(80).code(), StatusCode::kUnsupported);
  EXPECT_TRUE(parse_format("tq3")->validate(80).ok());
  EXPECT_EQ(parse_format("tq3")->bytes_per_vector(80), 80u * 3 / 8 + 2);
}

}  // namespace
}  // namespace tq::quant
