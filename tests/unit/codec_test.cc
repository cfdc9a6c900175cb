// The gradient-codec registry: lookups by name and by wire id, the identity codec's round trip and
// its size checks; half precision (half.h) on fixed values and on all 65536 halves, and the fp16
// codec.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "shardps/base/codec.h"
#include "shardps/base/half.h"

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

uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

TEST(Half, FixedValuesRoundToNearestEven) {
  EXPECT_EQ(FloatToHalf(1.0f), 0x3C00u);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xC000u);
  EXPECT_EQ(FloatToHalf(0.0f), 0x0000u);
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000u);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7BFFu);   // the largest half
  EXPECT_EQ(FloatToHalf(65519.0f), 0x7BFFu);   // below the midpoint to 2^16: stays finite
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7C00u);   // the midpoint rounds to even: infinity
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::infinity()), 0x7C00u);
  EXPECT_EQ(FloatToHalf(1.0f + 0x1p-11f), 0x3C00u);      // halfway between 1 and 1 + 2^-10: to even (1)
  EXPECT_EQ(FloatToHalf(1.0f + 3 * 0x1p-11f), 0x3C02u);  // halfway between odd and even: up to even
  EXPECT_EQ(FloatToHalf(1.0f + 0x1p-11f + 0x1p-20f), 0x3C01u);  // above halfway: up
  EXPECT_EQ(FloatToHalf(0x1p-24f), 0x0001u);   // the smallest subnormal half
  EXPECT_EQ(FloatToHalf(0x1p-25f), 0x0000u);   // half of it: ties to even, zero
  EXPECT_EQ(FloatToHalf(0x1.8p-25f), 0x0001u); // above half of it: up
  EXPECT_EQ(FloatToHalf(0x1p-14f), 0x0400u);   // the smallest normal half
  const uint16_t nan = FloatToHalf(std::nanf(""));
  EXPECT_EQ(nan & 0x7C00u, 0x7C00u);
  EXPECT_NE(nan & 0x03FFu, 0u);
  EXPECT_EQ(HalfToFloat(0x3555u), 0x1.554p-2f);  // 0.333...: exact widening
  EXPECT_EQ(HalfToFloat(0x0001u), 0x1p-24f);
  EXPECT_EQ(Bits(HalfToFloat(0x8000u)), Bits(-0.0f));
}

// Every half widens to a float that narrows back to the same half (NaNs to some NaN).
TEST(Half, EveryHalfRoundTrips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    const uint16_t back = FloatToHalf(f);
    if (std::isnan(f)) {
      ASSERT_TRUE((back & 0x7C00u) == 0x7C00u && (back & 0x03FFu) != 0) << std::hex << h;
      ASSERT_EQ(back & 0x8000u, h & 0x8000u) << std::hex << h;
    } else {
      ASSERT_EQ(back, h) << std::hex << h << " -> " << f;
    }
  }
}

TEST(Fp16Codec, IsRegisteredWithIdOneAndCodesTwoBytesAValue) {
  auto c = LookupCodec("fp16");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ((*c)->id(), 1u);
  EXPECT_FALSE((*c)->raw());
  const std::vector<float> v = {0.0f, -0.0f, 1.0f, 0.1f, -65504.0f, 1e6f, 0x1p-26f, 3.14159f};
  const CodecContext ctx{.table = 1, .chunk = 2, .step = 3, .rank = 4};
  const std::vector<uint8_t> bytes = (*c)->Encode(v, ctx);
  ASSERT_EQ(bytes.size(), v.size() * 2);
  EXPECT_TRUE((*c)->CheckEncodedSize(v.size(), bytes.size()).ok());
  for (size_t i = 0; i < v.size(); ++i) {  // little-endian binary16
    EXPECT_EQ(bytes[2 * i] | (bytes[2 * i + 1] << 8), FloatToHalf(v[i])) << i;
  }
  std::vector<float> out(v.size(), 42.0f);
  ASSERT_TRUE((*c)->Decode(bytes, out, ctx).ok());
  for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(Bits(out[i]), Bits(HalfToFloat(FloatToHalf(v[i])))) << i;
  EXPECT_EQ(out[2], 1.0f);
  EXPECT_EQ(out[3], 0x1.998p-4f);  // 0.1 to the nearest half
  EXPECT_EQ(out[5], std::numeric_limits<float>::infinity());
  EXPECT_EQ(Bits(out[6]), Bits(0.0f));
}

TEST(Fp16Codec, WrongSizesAreRefused) {
  const Codec& c = **LookupCodec("fp16");
  Status s = c.CheckEncodedSize(10, 40);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("20 bytes"), std::string::npos) << s.ToString();
  EXPECT_FALSE(c.CheckEncodedSize(UINT64_MAX, 2).ok());  // no overflow into a match
  std::vector<uint8_t> bytes(5);
  std::vector<float> out(2);
  EXPECT_EQ(c.Decode(bytes, out, {}).code(), StatusCode::kDataLoss);
}

}  // namespace
}  // namespace shardps
