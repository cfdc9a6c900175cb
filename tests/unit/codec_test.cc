// The gradient-codec registry: lookups by name and by wire id, the identity codec's round trip and
// its size checks.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "shardps/base/codec.h"

namespace shardps {
namespace {

TEST(CodecRegistry, IdentityIsRegisteredUnderItsNameAndIdZero) {
  auto by_name = LookupCodec(kIdentityCodec);
  ASSERT_TRUE(by_name.ok()) << by_name.status().ToString();
  EXPECT_EQ((*by_name)->name(), "identity");
  EXPECT_EQ((*by_name)->id(), 0u);  // what a header without a codec means
  EXPECT_TRUE((*by_name)->raw());
  auto by_id = LookupCodecById(0);
  ASSERT_TRUE(by_id.ok()) << by_id.status().ToString();
  EXPECT_EQ(*by_id, *by_name);
}

TEST(CodecRegistry, NamesAndIdsAreUnique) {
  auto all = RegisteredCodecs();
  for (size_t i = 0; i < all.size(); ++i) {
    for (size_t j = i + 1; j < all.size(); ++j) {
      EXPECT_NE(all[i]->name(), all[j]->name());
      EXPECT_NE(all[i]->id(), all[j]->id());
    }
    EXPECT_EQ(FindCodec(all[i]->name()), all[i]);
    EXPECT_EQ(FindCodecById(all[i]->id()), all[i]);
  }
}

TEST(CodecRegistry, UnknownNameOrIdIsInvalidArgumentNamingIt) {
  auto n = LookupCodec("fp13");
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(n.status().message().find("'fp13'"), std::string::npos) << n.status().ToString();
  EXPECT_NE(n.status().message().find("identity"), std::string::npos) << n.status().ToString();
  EXPECT_EQ(FindCodec("fp13"), nullptr);
  auto i = LookupCodecById(77);
  ASSERT_FALSE(i.ok());
  EXPECT_EQ(i.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(i.status().message().find("77"), std::string::npos) << i.status().ToString();
  EXPECT_EQ(FindCodecById(77), nullptr);
}

TEST(IdentityCodec, RoundTripIsBitExactAndTheBytesAreTheFloats) {
  const Codec& c = **LookupCodec(kIdentityCodec);
  const std::vector<float> v = {0.0f, -0.0f, 1.5f, -3.25e-38f, std::numeric_limits<float>::denorm_min(),
                                std::numeric_limits<float>::infinity(), std::nanf("7"), 1e38f};
  const CodecContext ctx{.table = 1, .chunk = 2, .step = 3, .rank = 4};
  std::vector<uint8_t> bytes = c.Encode(v, ctx);
  ASSERT_EQ(bytes.size(), v.size() * sizeof(float));
  EXPECT_EQ(std::memcmp(bytes.data(), v.data(), bytes.size()), 0);  // raw(): senders may skip Encode
  EXPECT_TRUE(c.CheckEncodedSize(v.size(), bytes.size()).ok());
  std::vector<float> out(v.size(), 42.0f);
  ASSERT_TRUE(c.Decode(bytes, out, ctx).ok());
  EXPECT_EQ(std::memcmp(out.data(), v.data(), bytes.size()), 0);  // bit for bit, NaN payload and -0 too
}

TEST(IdentityCodec, WrongSizesAreRefused) {
  const Codec& c = **LookupCodec(kIdentityCodec);
  Status s = c.CheckEncodedSize(10, 39);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("40"), std::string::npos) << s.ToString();
  std::vector<uint8_t> bytes(7);
  std::vector<float> out(2);
  EXPECT_EQ(c.Decode(bytes, out, {}).code(), StatusCode::kDataLoss);
}

}  // namespace
}  // namespace shardps
