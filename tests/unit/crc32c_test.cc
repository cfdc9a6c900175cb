// CRC32C (Castagnoli): published vectors, incremental extension, alignment and length coverage.
#include "shardps/base/crc32c.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace shardps {
namespace {

// Bit-at-a-time reference, independent of both the table and the SSE4.2 paths.
uint32_t ReferenceCrc32c(const uint8_t* p, size_t n) {
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) {
    crc ^= p[i];
    for (int k = 0; k < 8; ++k) crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
  }
  return ~crc;
}

std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

TEST(Crc32cTest, CheckValue) {
  const std::string s = "123456789";
  EXPECT_EQ(Crc32c(s.data(), s.size()), 0xE3069283u);
}

TEST(Crc32cTest, Rfc3720Vectors) {
  std::vector<uint8_t> zeros(32, 0x00);
  EXPECT_EQ(Crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  std::vector<uint8_t> ones(32, 0xFF);
  EXPECT_EQ(Crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  // RFC 3720 B.4: 32 bytes ascending 0..31 and descending 31..0.
  std::vector<uint8_t> inc(32), dec(32);
  for (int i = 0; i < 32; ++i) {
    inc[i] = static_cast<uint8_t>(i);
    dec[i] = static_cast<uint8_t>(31 - i);
  }
  EXPECT_EQ(Crc32c(inc.data(), inc.size()), 0x46DD794Eu);
  EXPECT_EQ(Crc32c(dec.data(), dec.size()), 0x113FDB5Cu);
}

TEST(Crc32cTest, EmptyInput) {
  EXPECT_EQ(Crc32c(nullptr, 0), 0u);
  const uint8_t b = 0x42;
  // Extending by nothing leaves any running value unchanged.
  EXPECT_EQ(Crc32cExtend(0xDEADBEEFu, &b, 0), 0xDEADBEEFu);
  const uint32_t c = Crc32c(&b, 1);
  EXPECT_EQ(Crc32cExtend(c, &b, 0), c);
}

TEST(Crc32cTest, SingleByteDiffers) {
  const uint8_t a = 0x00, b = 0x01;
  EXPECT_NE(Crc32c(&a, 1), Crc32c(&b, 1));
  EXPECT_EQ(Crc32c(&a, 1), ReferenceCrc32c(&a, 1));
  EXPECT_EQ(Crc32c(&b, 1), ReferenceCrc32c(&b, 1));
}

TEST(Crc32cTest, ExtendOverSplitsEqualsOneShot) {
  const std::vector<uint8_t> data = RandomBytes(257, 1);
  const uint32_t whole = Crc32c(data.data(), data.size());
  ASSERT_EQ(whole, ReferenceCrc32c(data.data(), data.size()));
  for (size_t cut = 0; cut <= data.size(); ++cut) {
    uint32_t c = Crc32cExtend(0, data.data(), cut);
    c = Crc32cExtend(c, data.data() + cut, data.size() - cut);
    ASSERT_EQ(c, whole) << "cut at " << cut;
  }
}

TEST(Crc32cTest, ExtendOverThreePiecesEqualsOneShot) {
  const std::vector<uint8_t> data = RandomBytes(100, 2);
  const uint32_t whole = Crc32c(data.data(), data.size());
  for (size_t a = 0; a <= data.size(); a += 7) {
    for (size_t b = a; b <= data.size(); b += 5) {
      uint32_t c = Crc32c(data.data(), a);
      c = Crc32cExtend(c, data.data() + a, b - a);
      c = Crc32cExtend(c, data.data() + b, data.size() - b);
      ASSERT_EQ(c, whole) << a << "," << b;
    }
  }
}

TEST(Crc32cTest, ByteAtATimeEqualsOneShot) {
  const std::vector<uint8_t> data = RandomBytes(73, 3);
  uint32_t c = 0;
  for (uint8_t b : data) c = Crc32cExtend(c, &b, 1);
  EXPECT_EQ(c, Crc32c(data.data(), data.size()));
}

TEST(Crc32cTest, AllLengthsAndUnalignedStartsMatchReference) {
  // Room for every start offset 0..15 and length 0..64.
  const std::vector<uint8_t> data = RandomBytes(16 + 64 + 8, 4);
  for (size_t offset = 0; offset < 16; ++offset) {
    for (size_t len = 0; len <= 64; ++len) {
      const uint8_t* p = data.data() + offset;
      ASSERT_EQ(Crc32c(p, len), ReferenceCrc32c(p, len)) << "offset " << offset << " len " << len;
    }
  }
}

TEST(Crc32cTest, SameBytesAtDifferentAlignmentsGiveSameCrc) {
  const std::vector<uint8_t> src = RandomBytes(64, 5);
  const uint32_t expected = Crc32c(src.data(), src.size());
  std::vector<uint8_t> buf(64 + 16);
  for (size_t offset = 0; offset < 16; ++offset) {
    std::memcpy(buf.data() + offset, src.data(), src.size());
    EXPECT_EQ(Crc32c(buf.data() + offset, src.size()), expected) << "offset " << offset;
  }
}

TEST(Crc32cTest, LargeBufferMatchesReference) {
  const std::vector<uint8_t> data = RandomBytes(1 << 16, 6);
  EXPECT_EQ(Crc32c(data.data(), data.size()), ReferenceCrc32c(data.data(), data.size()));
}

TEST(Crc32cTest, DetectsEverySingleBitFlip) {
  std::vector<uint8_t> data = RandomBytes(48, 7);
  const uint32_t base = Crc32c(data.data(), data.size());
  for (size_t bit = 0; bit < data.size() * 8; ++bit) {
    data[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    EXPECT_NE(Crc32c(data.data(), data.size()), base) << "bit " << bit;
    data[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
  }
  EXPECT_EQ(Crc32c(data.data(), data.size()), base);
}

}  // namespace
}  // namespace shardps
