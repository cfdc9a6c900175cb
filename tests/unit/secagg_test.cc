// Secure aggregation (core/secagg): Shamir sharing, fixed point, masks, the message formats and
// whole rounds of the protocol driven through bytes, with dropouts at every phase. All randomness
// comes from seeded ChaCha20 sources, so every run of this binary does the same thing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "shardps/secagg/client.h"
#include "shardps/secagg/fixed_point.h"
#include "shardps/secagg/masks.h"
#include "shardps/secagg/messages.h"
#include "shardps/secagg/random_source.h"
#include "shardps/secagg/round.h"
#include "shardps/secagg/server.h"
#include "shardps/secagg/shamir.h"

namespace shardps::secagg {
namespace {

// EXPECT_CONTAINS(text, part): `text` (a std::string) contains `part`.
#define EXPECT_CONTAINS(text, part)                                              \
  do {                                                                           \
    const std::string secagg_text_ = (text);                                     \
    EXPECT_NE(secagg_text_.find(part), std::string::npos)                        \
        << "\"" << secagg_text_ << "\" does not contain \"" << (part) << "\""; \
  } while (0)

std::vector<uint8_t> RandomBytes(size_t n, uint64_t seed) {
  std::vector<uint8_t> out(n);
  ChaCha20RandomSource rng = ChaCha20RandomSource::FromSeed(seed);
  EXPECT_TRUE(rng.Fill(out).ok());
  return out;
}

std::vector<uint8_t> FromHex(const std::string& hex) {
  std::vector<uint8_t> out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out.push_back(static_cast<uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

template <size_t N>
std::array<uint8_t, N> ArrayFromHex(const std::string& hex) {
  std::array<uint8_t, N> out{};
  const std::vector<uint8_t> v = FromHex(hex);
  EXPECT_EQ(v.size(), N);
  std::copy_n(v.begin(), std::min(N, v.size()), out.begin());
  return out;
}

// Every size-k subset of {0, .., n-1}, in lexicographic order.
std::vector<std::vector<int>> Subsets(int n, int k) {
  std::vector<std::vector<int>> out;
  std::vector<int> cur;
  auto rec = [&](auto&& self, int start) -> void {
    if (static_cast<int>(cur.size()) == k) {
      out.push_back(cur);
      return;
    }
    for (int i = start; i < n; ++i) {
      cur.push_back(i);
      self(self, i + 1);
      cur.pop_back();
    }
  };
  rec(rec, 0);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Random sources

TEST(RandomSource, ChaCha20MatchesRfcVectorAndIsOneStreamAcrossCalls) {
  // RFC 8439 A.1 test vector #1: all-zero key and nonce, block counter 0.
  ChaCha20RandomSource zero = ChaCha20RandomSource::FromSeed(0);
  std::vector<uint8_t> block(64);
  ASSERT_TRUE(zero.Fill(block).ok());
  EXPECT_EQ(block, FromHex("76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
                           "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"));

  // Two fills of 37 and 63 bytes are the first 100 bytes of the stream.
  ChaCha20RandomSource a = ChaCha20RandomSource::FromSeed(5), b = ChaCha20RandomSource::FromSeed(5);
  std::vector<uint8_t> whole(100), part1(37), part2(63);
  ASSERT_TRUE(a.Fill(whole).ok());
  ASSERT_TRUE(b.Fill(part1).ok());
  ASSERT_TRUE(b.Fill(part2).ok());
  part1.insert(part1.end(), part2.begin(), part2.end());
  EXPECT_EQ(whole, part1);
  EXPECT_NE(RandomBytes(32, 5), RandomBytes(32, 6));

  SystemRandomSource sys;
  std::vector<uint8_t> s1(32), s2(32);
  ASSERT_TRUE(sys.Fill(s1).ok());
  ASSERT_TRUE(sys.Fill(s2).ok());
  EXPECT_NE(s1, s2);  // equal with probability 2^-256
}

// ---------------------------------------------------------------------------------------------
// Shamir

TEST(Shamir, EveryThresholdSubsetRecoversTheSecret) {
  const std::vector<uint8_t> secret = RandomBytes(32, 1);
  const std::vector<std::pair<int, int>> cases = {{1, 1}, {1, 4}, {2, 2}, {2, 5}, {3, 5}, {4, 7}, {5, 5}, {6, 10}};
  for (auto [t, n] : cases) {
    ChaCha20RandomSource rng = ChaCha20RandomSource::FromSeed(100 + t * 16 + n);
    auto shares = Split(secret, t, n, rng);
    ASSERT_TRUE(shares.ok()) << shares.status().ToString();
    ASSERT_EQ(shares->size(), static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) EXPECT_EQ((*shares)[i].x, i + 1);
    const auto subsets = Subsets(n, t);
    for (const auto& subset : subsets) {
      std::vector<Share> some;
      for (int i : subset) some.push_back((*shares)[i]);
      auto back = Recover(some, t);
      ASSERT_TRUE(back.ok()) << "t=" << t << " n=" << n << ": " << back.status().ToString();
      EXPECT_EQ(*back, secret) << "t=" << t << " n=" << n;
    }
    // All n shares together (the extra ones are checked for consistency) also recover it.
    auto all = Recover(*shares, t);
    ASSERT_TRUE(all.ok()) << all.status().ToString();
    EXPECT_EQ(*all, secret);
  }
}

TEST(Shamir, LargestFieldSamplesOfSubsetsRecover) {
  const std::vector<uint8_t> secret = RandomBytes(32, 2);
  ChaCha20RandomSource rng = ChaCha20RandomSource::FromSeed(3);
  auto shares = Split(secret, 128, 255, rng);
  ASSERT_TRUE(shares.ok()) << shares.status().ToString();
  std::vector<uint8_t> pick = RandomBytes(4096, 4);
  for (int sample = 0; sample < 8; ++sample) {
    // A pseudo-random 128-subset: a Fisher-Yates shuffle of the indices driven by `pick`.
    std::vector<int> idx(255);
    for (int i = 0; i < 255; ++i) idx[i] = i;
    for (int i = 254; i > 0; --i) std::swap(idx[i], idx[pick[(sample * 255 + i) % pick.size()] % (i + 1)]);
    std::vector<Share> some;
    for (int i = 0; i < 128; ++i) some.push_back((*shares)[idx[i]]);
    auto back = Recover(some, 128);
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(*back, secret);
  }
}

TEST(Shamir, FewerThanThresholdSharesAreRefusedAndRevealNothing) {
  const std::vector<uint8_t> secret = {0x42};
  ChaCha20RandomSource rng = ChaCha20RandomSource::FromSeed(9);
  auto shares = Split(secret, 3, 5, rng);
  ASSERT_TRUE(shares.ok());
  std::vector<Share> two = {(*shares)[0], (*shares)[1]};
  auto r = Recover(two, 3);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_CONTAINS(r.status().message(), "t = 3");
  EXPECT_CONTAINS(r.status().message(), "got 2");

  // Perfect secrecy: given two shares, each of the 256 values a third share could take leads to a
  // different secret, so the two shares alone leave every secret byte possible.
  std::set<uint8_t> secrets;
  for (int y = 0; y < 256; ++y) {
    std::vector<Share> three = {(*shares)[0], (*shares)[1], Share{.x = 3, .y = {static_cast<uint8_t>(y)}}};
    auto s = Recover(three, 3);
    ASSERT_TRUE(s.ok());
    secrets.insert((*s)[0]);
  }
  EXPECT_EQ(secrets.size(), 256u);
}

TEST(Shamir, BadArgumentsAreRefusedWithTheNumbers) {
  const std::vector<uint8_t> secret = RandomBytes(16, 3);
  ChaCha20RandomSource rng = ChaCha20RandomSource::FromSeed(1);
  auto t0 = Split(secret, 0, 3, rng);
  ASSERT_FALSE(t0.ok());
  EXPECT_EQ(t0.status().code(), StatusCode::kInvalidArgument);
  EXPECT_CONTAINS(t0.status().message(), "t = 0");

  auto t_above_n = Split(secret, 4, 3, rng);
  ASSERT_FALSE(t_above_n.ok());
  EXPECT_EQ(t_above_n.status().code(), StatusCode::kInvalidArgument);
  EXPECT_CONTAINS(t_above_n.status().message(), "t = 4");
  EXPECT_CONTAINS(t_above_n.status().message(), "n = 3");

  auto too_many = Split(secret, 2, 256, rng);
  ASSERT_FALSE(too_many.ok());
  EXPECT_CONTAINS(too_many.status().message(), "256");
  EXPECT_FALSE(Split(secret, 1, 0, rng).ok());

  const std::vector<uint8_t> dup_x = {1, 2, 2};
  auto dup = SplitAt(secret, 2, dup_x, rng);
  ASSERT_FALSE(dup.ok());
  EXPECT_CONTAINS(dup.status().message(), "x-coordinate 2 appears twice");
  const std::vector<uint8_t> zero_x = {0, 1};
  EXPECT_EQ(SplitAt(secret, 2, zero_x, rng).status().code(), StatusCode::kInvalidArgument);

  auto shares = Split(secret, 2, 3, rng);
  ASSERT_TRUE(shares.ok());
  std::vector<Share> same_x = {(*shares)[0], (*shares)[0]};
  auto r1 = Recover(same_x, 2);
  ASSERT_FALSE(r1.ok());
  EXPECT_EQ(r1.status().code(), StatusCode::kInvalidArgument);
  EXPECT_CONTAINS(r1.status().message(), "x-coordinate 1");

  std::vector<Share> uneven = {(*shares)[0], (*shares)[1]};
  uneven[1].y.pop_back();
  auto r2 = Recover(uneven, 2);
  ASSERT_FALSE(r2.ok());
  EXPECT_EQ(r2.status().code(), StatusCode::kInvalidArgument);
  EXPECT_CONTAINS(r2.status().message(), "different lengths");

  std::vector<Share> at_zero = {(*shares)[0], (*shares)[1]};
  at_zero[0].x = 0;
  EXPECT_EQ(Recover(at_zero, 2).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Recover(*shares, 0).status().code(), StatusCode::kInvalidArgument);
}

TEST(Shamir, AnInconsistentExtraShareIsDetected) {
  const std::vector<uint8_t> secret = RandomBytes(32, 8);
  ChaCha20RandomSource rng = ChaCha20RandomSource::FromSeed(8);
  auto shares = Split(secret, 3, 5, rng);
  ASSERT_TRUE(shares.ok());
  (*shares)[4].y[7] ^= 1;
  auto r = Recover(*shares, 3);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
  EXPECT_CONTAINS(r.status().message(), "x = 5");
}

TEST(Shamir, SharesAreReproducibleFromTheSeed) {
  const std::vector<uint8_t> secret = RandomBytes(32, 10);
  ChaCha20RandomSource a = ChaCha20RandomSource::FromSeed(11), b = ChaCha20RandomSource::FromSeed(11),
                       c = ChaCha20RandomSource::FromSeed(12);
  auto sa = Split(secret, 3, 4, a), sb = Split(secret, 3, 4, b), sc = Split(secret, 3, 4, c);
  ASSERT_TRUE(sa.ok() && sb.ok() && sc.ok());
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ((*sa)[i].y, (*sb)[i].y);
    EXPECT_NE((*sa)[i].y, (*sc)[i].y);
    EXPECT_NE((*sa)[i].y, secret);  // a share is not the secret (t > 1)
  }
}

// ---------------------------------------------------------------------------------------------
// Fixed point

std::vector<float> RandomFloats(size_t n, float lo, float hi, uint64_t seed) {
  std::vector<uint8_t> bytes = RandomBytes(n * 4, seed);
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) {
    uint32_t r = 0;
    for (int b = 0; b < 4; ++b) r |= static_cast<uint32_t>(bytes[i * 4 + b]) << (8 * b);
    out[i] = lo + (hi - lo) * static_cast<float>(r >> 8) / 16777216.0f;
  }
  return out;
}

TEST(FixedPoint, RoundTripIsWithinOneStepAndClips) {
  const FixedPoint fp{.clip = 0.5f, .bits = 12, .ring_bits = 12};
  const double step = 0.5 / 2047.0;
  std::vector<float> x = RandomFloats(20000, -1.0f, 1.0f, 20);
  x.push_back(0.5f);
  x.push_back(-0.5f);
  x.push_back(1e30f);
  auto q = Quantize(x, fp, {.seed = 1, .round = 2, .client = 3});
  ASSERT_TRUE(q.ok()) << q.status().ToString();
  auto back = Dequantize(*q, 1, fp);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ASSERT_EQ(back->size(), x.size());
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double clipped = std::clamp(static_cast<double>(x[i]), -0.5, 0.5);
    worst = std::max(worst, std::abs((*back)[i] - clipped));
  }
  EXPECT_LT(worst, step * (1 + 1e-6));
  EXPECT_EQ((*q)[x.size() - 3], 2047u);                // +c is the top level exactly
  EXPECT_EQ((*q)[x.size() - 2], RingMask(12) - 2046);  // -c is -2047 mod 2^12
  EXPECT_EQ((*q)[x.size() - 1], 2047u);                // clipped
}

TEST(FixedPoint, SumOfClientsDequantizesWithinNSteps) {
  const int n = 10, bits = 16;
  const int m = RingBits(n, bits);
  ASSERT_EQ(m, 20);
  const FixedPoint fp{.clip = 1.0f, .bits = bits, .ring_bits = m};
  const size_t len = 5000;
  std::vector<uint64_t> sum(len, 0);
  std::vector<double> exact(len, 0);
  for (int c = 0; c < n; ++c) {
    std::vector<float> x = RandomFloats(len, -1.0f, 1.0f, 30 + c);
    auto q = Quantize(x, fp, {.seed = 9, .round = 1, .client = static_cast<uint32_t>(c)});
    ASSERT_TRUE(q.ok());
    for (size_t i = 0; i < len; ++i) {
      sum[i] = (sum[i] + (*q)[i]) & RingMask(m);
      exact[i] += x[i];
    }
  }
  auto back = Dequantize(sum, n, fp);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  for (size_t i = 0; i < len; ++i) EXPECT_NEAR((*back)[i], exact[i], n / 32767.0 + 1e-5) << i;
}

TEST(FixedPoint, QuantizeIsDeterministicAndKeyedByRoundAndClient) {
  const FixedPoint fp{.clip = 1.0f, .bits = 8, .ring_bits = 12};
  const std::vector<float> x = RandomFloats(4096, -1.0f, 1.0f, 40);
  auto a = Quantize(x, fp, {.seed = 1, .round = 5, .client = 2});
  auto b = Quantize(x, fp, {.seed = 1, .round = 5, .client = 2});
  auto other_client = Quantize(x, fp, {.seed = 1, .round = 5, .client = 3});
  auto other_round = Quantize(x, fp, {.seed = 1, .round = 6, .client = 2});
  auto other_seed = Quantize(x, fp, {.seed = 2, .round = 5, .client = 2});
  ASSERT_TRUE(a.ok() && b.ok() && other_client.ok() && other_round.ok() && other_seed.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_NE(*a, *other_client);
  EXPECT_NE(*a, *other_round);
  EXPECT_NE(*a, *other_seed);
}

TEST(FixedPoint, StochasticRoundingIsUnbiased) {
  // q = x / c * L = 100.25: rounds to 101 with probability 1/4, to 100 otherwise.
  const FixedPoint fp{.clip = 127.0f, .bits = 8, .ring_bits = 8};
  const std::vector<float> x(100000, 100.25f);
  auto q = Quantize(x, fp, {.seed = 3, .round = 0, .client = 0});
  ASSERT_TRUE(q.ok());
  double mean = 0;
  for (uint64_t v : *q) {
    ASSERT_TRUE(v == 100 || v == 101) << v;
    mean += static_cast<double>(v);
  }
  mean /= static_cast<double>(q->size());
  EXPECT_NEAR(mean, 100.25, 0.01);
}

TEST(FixedPoint, CheckRingRefusesOverflowWithTheNumbers) {
  EXPECT_EQ(RingBits(1, 16), 16);
  EXPECT_EQ(RingBits(10, 16), 20);
  EXPECT_EQ(RingBits(16, 16), 20);
  EXPECT_EQ(RingBits(255, 16), 24);
  EXPECT_TRUE(CheckRing(10, 16, 20).ok());
  EXPECT_TRUE(CheckRing(255, 16, 24).ok());
  Status s = CheckRing(10, 16, 19);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_CONTAINS(s.message(), "n = 10");
  EXPECT_CONTAINS(s.message(), "m = 19");
  EXPECT_CONTAINS(s.message(), "10 x 32767 = 327670");
  EXPECT_CONTAINS(s.message(), "2^(m-1) - 1 = 262143");
  EXPECT_CONTAINS(s.message(), "use m >= 20");
  // RingBits is the smallest safe width whenever bits > ceil(log2 n).
  for (int bits : {16, 32}) {
    for (uint64_t n = 1; n <= 255; ++n) {
      const int m = RingBits(n, bits);
      EXPECT_TRUE(CheckRing(n, bits, m).ok()) << n << " " << bits;
      if (n > 1) {
        EXPECT_FALSE(CheckRing(n, bits, m - 1).ok()) << n << " " << bits;
      }
    }
  }
  EXPECT_FALSE(CheckRing(0, 16, 20).ok());
  EXPECT_FALSE(CheckRing(10, 1, 20).ok());
  EXPECT_FALSE(CheckRing(10, 16, 65).ok());
  // Dequantize checks the ring for its count.
  auto d = Dequantize(std::vector<uint64_t>{0}, 11, FixedPoint{.clip = 1.0f, .bits = 16, .ring_bits = 19});
  ASSERT_FALSE(d.ok());
  EXPECT_CONTAINS(d.status().message(), "n = 11");
}

TEST(FixedPoint, BadInputsAreRefused) {
  const FixedPoint fp{.clip = 1.0f, .bits = 16, .ring_bits = 20};
  std::vector<float> x = {0.1f, NAN, 0.3f};
  auto q = Quantize(x, fp, {});
  ASSERT_FALSE(q.ok());
  EXPECT_EQ(q.status().code(), StatusCode::kInvalidArgument);
  EXPECT_CONTAINS(q.status().message(), "value 1");
  EXPECT_FALSE(Quantize(std::vector<float>{0.1f}, FixedPoint{.clip = 0.0f, .bits = 16, .ring_bits = 20}, {}).ok());
  EXPECT_FALSE(Quantize(std::vector<float>{0.1f}, FixedPoint{.clip = 1.0f, .bits = 16, .ring_bits = 15}, {}).ok());
  EXPECT_FALSE(Quantize(std::vector<float>{0.1f}, FixedPoint{.clip = 1.0f, .bits = 33, .ring_bits = 40}, {}).ok());

  auto outside_ring = Dequantize(std::vector<uint64_t>{uint64_t{1} << 20}, 10, fp);
  ASSERT_FALSE(outside_ring.ok());
  EXPECT_CONTAINS(outside_ring.status().message(), "element 0");
  // 2 clients can sum to at most 2 x 32767 = 65534.
  auto too_big = Dequantize(std::vector<uint64_t>{65535}, 2, fp);
  ASSERT_FALSE(too_big.ok());
  EXPECT_CONTAINS(too_big.status().message(), "65535");
  auto negative = Dequantize(std::vector<uint64_t>{RingMask(20) - 65533}, 2, fp);  // -65534
  ASSERT_TRUE(negative.ok()) << negative.status().ToString();
  EXPECT_FLOAT_EQ((*negative)[0], -2.0f);
}

TEST(FixedPoint, PackingRoundTripsAndCostsMOverBitsOfTheClearVector) {
  for (int m : {1, 7, 8, 20, 24, 33, 63, 64}) {
    const std::vector<uint8_t> bytes = RandomBytes(8 * 1001, 50 + m);
    std::vector<uint64_t> v(1001);
    for (size_t i = 0; i < v.size(); ++i) {
      uint64_t r = 0;
      for (int b = 0; b < 8; ++b) r |= static_cast<uint64_t>(bytes[i * 8 + b]) << (8 * b);
      v[i] = r & RingMask(m);
    }
    const std::vector<uint8_t> packed = PackRing(v, m);
    EXPECT_EQ(packed.size(), (1001 * static_cast<size_t>(m) + 7) / 8) << m;
    auto back = UnpackRing(packed, v.size(), m);
    ASSERT_TRUE(back.ok()) << m << ": " << back.status().ToString();
    EXPECT_EQ(*back, v) << m;
  }
  // Element 0 sits in the low bits of byte 0.
  EXPECT_EQ(PackRing(std::vector<uint64_t>{0x5, 0x3}, 4), std::vector<uint8_t>({0x35}));

  // Wrong size and non-zero padding are refused.
  const std::vector<uint8_t> three = PackRing(std::vector<uint64_t>{1, 2, 3}, 5);  // 15 bits: 2 bytes
  EXPECT_EQ(UnpackRing(std::span(three).first(1), 3, 5).status().code(), StatusCode::kDataLoss);
  std::vector<uint8_t> padded = three;
  padded[1] |= 0x80;
  EXPECT_EQ(UnpackRing(padded, 3, 5).status().code(), StatusCode::kDataLoss);

  // The masked upload of 200K values, 16 bits, 255 clients: m = 24, 1.5 times the clear vector.
  const int m = RingBits(255, 16);
  const size_t n = 200000;
  MaskedInputMessage msg{.round = 1, .from = 1, .ring_bits = m, .y = std::vector<uint64_t>(n, RingMask(m))};
  const size_t clear_bytes = n * 16 / 8;
  const size_t wire = Serialize(msg).size();
  EXPECT_EQ(wire, kHeaderBytes + 4 + 1 + 8 + n * 24 / 8);
  EXPECT_LT(static_cast<double>(wire) / static_cast<double>(clear_bytes), 1.51);
}

// ---------------------------------------------------------------------------------------------
// Masks

TEST(Masks, X25519MatchesRfc7748) {
  // RFC 7748 section 6.1.
  const auto alice_sk = ArrayFromHex<32>("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
  const auto alice_pk = ArrayFromHex<32>("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
  const auto bob_sk = ArrayFromHex<32>("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
  const auto bob_pk = ArrayFromHex<32>("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
  auto a = DerivePublicKey(alice_sk);
  auto b = DerivePublicKey(bob_sk);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, alice_pk);
  EXPECT_EQ(*b, bob_pk);
}

TEST(Masks, AgreedKeysAreSymmetricAndBoundToRoundPairAndPurpose) {
  ChaCha20RandomSource rng = ChaCha20RandomSource::FromSeed(60);
  auto a = GenerateKeyPair(rng), b = GenerateKeyPair(rng), c = GenerateKeyPair(rng);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  auto ab = AgreeKey(a->private_key, b->public_key, 7, 1, 2, KeyPurpose::kPairwiseMask);
  auto ba = AgreeKey(b->private_key, a->public_key, 7, 2, 1, KeyPurpose::kPairwiseMask);
  auto ab_round8 = AgreeKey(a->private_key, b->public_key, 8, 1, 2, KeyPurpose::kPairwiseMask);
  auto ab_enc = AgreeKey(a->private_key, b->public_key, 7, 1, 2, KeyPurpose::kShareEncryption);
  auto ab_ids = AgreeKey(a->private_key, b->public_key, 7, 1, 3, KeyPurpose::kPairwiseMask);
  auto ac = AgreeKey(a->private_key, c->public_key, 7, 1, 2, KeyPurpose::kPairwiseMask);
  ASSERT_TRUE(ab.ok() && ba.ok() && ab_round8.ok() && ab_enc.ok() && ab_ids.ok() && ac.ok());
  EXPECT_EQ(*ab, *ba);
  EXPECT_NE(*ab, *ab_round8);
  EXPECT_NE(*ab, *ab_enc);
  EXPECT_NE(*ab, *ab_ids);
  EXPECT_NE(*ab, *ac);

  // A small-order public key (u = 0) gives an all-zero X25519 output, which OpenSSL refuses.
  auto bad = AgreeKey(a->private_key, PublicKey{}, 7, 1, 2, KeyPurpose::kPairwiseMask);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
}

TEST(Masks, PairwiseMasksCancelExactly) {
  const int m = 20;
  const size_t len = 3000;
  const std::vector<ClientId> ids = {2, 3, 5, 8, 13};
  ChaCha20RandomSource rng = ChaCha20RandomSource::FromSeed(61);
  std::map<ClientId, KeyPair> keys;
  for (ClientId id : ids) keys[id] = *GenerateKeyPair(rng);
  std::vector<uint64_t> total(len, 0);
  for (ClientId u : ids) {
    std::vector<uint64_t> y(len, 0);
    for (ClientId v : ids) {
      if (v == u) continue;
      auto k = AgreeKey(keys[u].private_key, keys[v].public_key, 3, u, v, KeyPurpose::kPairwiseMask);
      ASSERT_TRUE(k.ok());
      ASSERT_TRUE(ApplyMask(y, *k, m, PairwiseSign(u, v)).ok());
    }
    // Each client's masks alone look random: almost no element is zero, all are in the ring.
    const size_t zeros = static_cast<size_t>(std::count(y.begin(), y.end(), 0u));
    EXPECT_LT(zeros, 5u);
    for (uint64_t e : y) ASSERT_EQ(e & ~RingMask(m), 0u);
    for (size_t i = 0; i < len; ++i) total[i] = (total[i] + y[i]) & RingMask(m);
  }
  EXPECT_EQ(total, std::vector<uint64_t>(len, 0));

  // Applying a mask and its opposite is the identity, also at m = 64.
  std::vector<uint64_t> v = {1, 2, ~uint64_t{0}};
  const std::vector<uint64_t> orig = v;
  SymmetricKey key{};
  key[0] = 1;
  ASSERT_TRUE(ApplyMask(v, key, 64, MaskSign::kAdd).ok());
  EXPECT_NE(v, orig);
  ASSERT_TRUE(ApplyMask(v, key, 64, MaskSign::kSubtract).ok());
  EXPECT_EQ(v, orig);
}

// ---------------------------------------------------------------------------------------------
// Rounds of the protocol, every message through Serialize and Parse.

constexpr int kBits = 16;

RoundConfig TenClients(uint64_t round = 7, uint64_t len = 1000) {
  RoundConfig c;
  c.round_id = round;
  c.threshold = 6;
  for (ClientId id = 1; id <= 10; ++id) c.participants.push_back(id);
  c.vector_length = len;
  c.ring_bits = RingBits(10, kBits);
  return c;
}

FixedPoint FixedPointOf(const RoundConfig& c) { return {.clip = 1.0f, .bits = kBits, .ring_bits = c.ring_bits}; }

// Client id's update as floats (some beyond the clip range 1).
std::vector<float> Floats(const RoundConfig& c, ClientId id) { return RandomFloats(c.vector_length, -1.5f, 1.5f, 1000 + id); }

// Each client's quantized update.
std::map<ClientId, std::vector<uint64_t>> Inputs(const RoundConfig& c) {
  std::map<ClientId, std::vector<uint64_t>> out;
  for (ClientId id : c.participants) {
    auto q = Quantize(Floats(c, id), FixedPointOf(c),
                      {.seed = 77, .round = c.round_id, .client = id});
    EXPECT_TRUE(q.ok());
    out[id] = *q;
  }
  return out;
}

std::vector<uint64_t> PlainSum(const RoundConfig& c, const std::map<ClientId, std::vector<uint64_t>>& inputs,
                               const std::vector<ClientId>& who) {
  std::vector<uint64_t> sum(c.vector_length, 0);
  for (ClientId id : who) {
    for (size_t i = 0; i < sum.size(); ++i) sum[i] = (sum[i] + inputs.at(id)[i]) & RingMask(c.ring_bits);
  }
  return sum;
}

// Who stops answering, and after which of its messages.
struct Dropouts {
  std::set<ClientId> before_advertise;   // never shows up
  std::set<ClientId> after_advertise;    // advertised keys, sends no ShareKeys
  std::set<ClientId> after_share_keys;   // shared keys, sends no masked input
  std::set<ClientId> after_masked_input; // sent its masked input, does not answer the unmasking
  size_t size() const {
    return before_advertise.size() + after_advertise.size() + after_share_keys.size() + after_masked_input.size();
  }
};

struct Outcome {
  Status status;  // of the server's Finish that ended the round
  std::vector<uint64_t> sum;
  std::vector<ClientId> survivors;
  std::map<ClientId, std::vector<uint64_t>> masked;
  std::vector<std::vector<uint8_t>> masked_input_bytes;
  Phase phase = Phase::kAdvertiseKeys;
};

template <typename T>
T Through(const T& m, Result<T> (*parse)(std::span<const uint8_t>)) {
  auto parsed = parse(Serialize(m));
  EXPECT_TRUE(parsed.ok()) << parsed.status().ToString();
  return parsed.ok() ? *parsed : T{};
}

// One round with these dropouts; client and server errors other than the server's threshold
// aborts fail the test.
void RunRound(const RoundConfig& config, const std::map<ClientId, std::vector<uint64_t>>& inputs, const Dropouts& drop,
              uint64_t seed, Outcome* out) {
  auto server = SecAggServer::Create(config, {.retain_masked_inputs_for_testing = true});
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  std::map<ClientId, SecAggClient> clients;
  std::map<ClientId, ChaCha20RandomSource> rngs;
  for (ClientId id : config.participants) {
    auto c = SecAggClient::Create(config, id);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    clients.emplace(id, std::move(c).value());
    rngs.emplace(id, ChaCha20RandomSource::FromSeed(seed * 1000 + id));
  }
  auto finish = [&](const Status& s) {
    out->status = s;
    out->phase = server->phase();
  };

  // (0)
  for (auto& [id, c] : clients) {
    if (drop.before_advertise.count(id)) continue;
    auto a = c.AdvertiseKeys(rngs.at(id));
    ASSERT_TRUE(a.ok()) << a.status().ToString();
    ASSERT_TRUE(server->OnAdvertiseKeys(Through(*a, ParseAdvertiseKeys)).ok());
  }
  auto keys = server->FinishAdvertiseKeys();
  if (!keys.ok()) return finish(keys.status());
  // (1)
  for (const auto& e : keys->clients) {
    if (drop.after_advertise.count(e.id)) continue;
    auto s = clients.at(e.id).ShareKeys(Through(*keys, ParseKeyList), rngs.at(e.id));
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    Status st = server->OnShareKeys(Through(*s, ParseShareKeys));
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
  auto routed = server->FinishShareKeys();
  if (!routed.ok()) return finish(routed.status());
  // (2)
  for (const RoutedSharesMessage& r : *routed) {
    if (drop.after_share_keys.count(r.to)) continue;
    auto y = clients.at(r.to).MaskInput(Through(r, ParseRoutedShares), inputs.at(r.to));
    ASSERT_TRUE(y.ok()) << y.status().ToString();
    out->masked_input_bytes.push_back(Serialize(*y));
    Status st = server->OnMaskedInput(Through(*y, ParseMaskedInput));
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
  auto request = server->FinishMaskedInput();
  if (!request.ok()) return finish(request.status());
  // (3)
  for (ClientId id : request->survivors) {
    if (drop.after_masked_input.count(id)) continue;
    auto r = clients.at(id).Unmask(Through(*request, ParseUnmaskRequest));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    Status st = server->OnUnmaskResponse(Through(*r, ParseUnmaskResponse));
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
  out->masked = server->masked_inputs_for_testing();
  auto sum = server->FinishUnmasking();
  out->survivors = server->survivors();
  if (!sum.ok()) return finish(sum.status());
  out->sum = *sum;
  finish(Status::Ok());
}

std::vector<ClientId> Without(const RoundConfig& c, const std::set<ClientId>& gone) {
  std::vector<ClientId> out;
  for (ClientId id : c.participants) {
    if (!gone.count(id)) out.push_back(id);
  }
  return out;
}

TEST(SecAggRound, NoDropoutSumIsExactlyThePlainSum) {
  const RoundConfig config = TenClients();
  const auto inputs = Inputs(config);
  Outcome out;
  ASSERT_NO_FATAL_FAILURE(RunRound(config, inputs, {}, 1, &out));
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  EXPECT_EQ(out.phase, Phase::kDone);
  EXPECT_EQ(out.survivors, config.participants);
  EXPECT_EQ(out.sum, PlainSum(config, inputs, config.participants));

  // And as floats: within n steps of the sum of the clipped inputs.
  auto floats = Dequantize(out.sum, 10, FixedPointOf(config));
  ASSERT_TRUE(floats.ok()) << floats.status().ToString();
  std::vector<double> exact(config.vector_length, 0);
  for (ClientId id : config.participants) {
    const std::vector<float> x = Floats(config, id);
    for (size_t i = 0; i < x.size(); ++i) exact[i] += std::clamp(x[i], -1.0f, 1.0f);
  }
  for (size_t i = 0; i < config.vector_length; ++i) ASSERT_NEAR((*floats)[i], exact[i], 10.0 / 32767 + 1e-5) << i;
}

TEST(SecAggRound, ServerNeverHoldsAClearInput) {
  const RoundConfig config = TenClients();
  const auto inputs = Inputs(config);
  Outcome out;
  ASSERT_NO_FATAL_FAILURE(RunRound(config, inputs, {.after_masked_input = {4}}, 2, &out));
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  ASSERT_EQ(out.masked.size(), 10u);
  for (const auto& [id, y] : out.masked) {
    const auto& x = inputs.at(id);
    EXPECT_NE(y, x) << "client " << id;
    size_t same = 0;
    for (size_t i = 0; i < x.size(); ++i) same += y[i] == x[i];
    EXPECT_LT(same, x.size() / 100) << "client " << id;  // by chance: about 1 in 2^20 per element
  }
}

TEST(SecAggRound, RoundsAreReproducibleFromTheSeeds) {
  const RoundConfig config = TenClients();
  const auto inputs = Inputs(config);
  Outcome a, b, c;
  ASSERT_NO_FATAL_FAILURE(RunRound(config, inputs, {.after_share_keys = {3}}, 5, &a));
  ASSERT_NO_FATAL_FAILURE(RunRound(config, inputs, {.after_share_keys = {3}}, 5, &b));
  ASSERT_NO_FATAL_FAILURE(RunRound(config, inputs, {.after_share_keys = {3}}, 6, &c));
  ASSERT_TRUE(a.status.ok() && b.status.ok() && c.status.ok());
  EXPECT_EQ(a.masked_input_bytes, b.masked_input_bytes);
  EXPECT_NE(a.masked_input_bytes, c.masked_input_bytes);  // other keys, other masks
  EXPECT_EQ(a.sum, c.sum);                                // the same sum
}

// Dropouts at one phase, parameterized by the phase.
enum class DropAt { kBeforeAdvertise, kAfterAdvertise, kAfterShareKeys, kAfterMaskedInput };

Dropouts DropoutsAt(DropAt at, const std::set<ClientId>& who) {
  Dropouts d;
  switch (at) {
    case DropAt::kBeforeAdvertise: d.before_advertise = who; break;
    case DropAt::kAfterAdvertise: d.after_advertise = who; break;
    case DropAt::kAfterShareKeys: d.after_share_keys = who; break;
    case DropAt::kAfterMaskedInput: d.after_masked_input = who; break;
  }
  return d;
}

class SecAggDropouts : public ::testing::TestWithParam<DropAt> {};

TEST_P(SecAggDropouts, UpToNMinusTDropoutsStillGiveTheExactSumOfTheSurvivors) {
  const RoundConfig config = TenClients();
  const auto inputs = Inputs(config);
  const std::set<ClientId> gone = {2, 5, 9, 10};  // n - t = 4
  Outcome out;
  ASSERT_NO_FATAL_FAILURE(RunRound(config, inputs, DropoutsAt(GetParam(), gone), 3, &out));
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  // Clients that sent their masked input are in the sum even if they vanish afterwards.
  const std::vector<ClientId> in_sum =
      GetParam() == DropAt::kAfterMaskedInput ? config.participants : Without(config, gone);
  EXPECT_EQ(out.survivors, in_sum);
  EXPECT_EQ(out.sum, PlainSum(config, inputs, in_sum));
}

TEST_P(SecAggDropouts, NMinusTPlusOneDropoutsAbortTheRound) {
  const RoundConfig config = TenClients();
  const auto inputs = Inputs(config);
  const std::set<ClientId> gone = {1, 2, 5, 9, 10};  // n - t + 1 = 5
  Outcome out;
  ASSERT_NO_FATAL_FAILURE(RunRound(config, inputs, DropoutsAt(GetParam(), gone), 4, &out));
  ASSERT_FALSE(out.status.ok());
  EXPECT_EQ(out.status.code(), StatusCode::kUnavailable);
  EXPECT_CONTAINS(out.status.message(), "aborted");
  EXPECT_CONTAINS(out.status.message(), ": 5 clients");       // how many remained
  EXPECT_CONTAINS(out.status.message(), "threshold needs 6");  // how many were needed
  EXPECT_EQ(out.phase, Phase::kAborted);
  EXPECT_TRUE(out.sum.empty());
}

INSTANTIATE_TEST_SUITE_P(AtEachPhase, SecAggDropouts,
                         ::testing::Values(DropAt::kBeforeAdvertise, DropAt::kAfterAdvertise, DropAt::kAfterShareKeys,
                                           DropAt::kAfterMaskedInput),
                         [](const ::testing::TestParamInfo<DropAt>& info) {
                           switch (info.param) {
                             case DropAt::kBeforeAdvertise: return std::string("BeforeAdvertiseKeys");
                             case DropAt::kAfterAdvertise: return std::string("AfterAdvertiseKeys");
                             case DropAt::kAfterShareKeys: return std::string("AfterShareKeys");
                             case DropAt::kAfterMaskedInput: return std::string("AfterMaskedInput");
                           }
                           return std::string("unknown");
                         });

TEST(SecAggRound, DropoutsAtSeveralPhasesTogether) {
  const RoundConfig config = TenClients();
  const auto inputs = Inputs(config);
  Dropouts d{.before_advertise = {}, .after_advertise = {1}, .after_share_keys = {6, 7}, .after_masked_input = {10}};
  Outcome out;
  ASSERT_NO_FATAL_FAILURE(RunRound(config, inputs, d, 7, &out));
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  const std::vector<ClientId> in_sum = Without(config, {1, 6, 7});
  EXPECT_EQ(out.survivors, in_sum);
  EXPECT_EQ(out.sum, PlainSum(config, inputs, in_sum));
}

TEST(SecAggRound, AbortedServerRefusesEverythingAfterwards) {
  const RoundConfig config = TenClients();
  auto server = SecAggServer::Create(config);
  ASSERT_TRUE(server.ok());
  ChaCha20RandomSource rng = ChaCha20RandomSource::FromSeed(1);
  for (ClientId id = 1; id <= 5; ++id) {
    auto c = SecAggClient::Create(config, id);
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE(server->OnAdvertiseKeys(*c->AdvertiseKeys(rng)).ok());
  }
  auto keys = server->FinishAdvertiseKeys();
  ASSERT_FALSE(keys.ok());
  EXPECT_CONTAINS(keys.status().message(), "5 clients advertised keys, the threshold needs 6");
  EXPECT_EQ(server->phase(), Phase::kAborted);
  EXPECT_EQ(server->FinishShareKeys().status().message(), keys.status().message());
  EXPECT_EQ(server->OnShareKeys({.round = 7, .from = 1, .shares = {}}).message(), keys.status().message());
  EXPECT_EQ(server->abort_status().code(), StatusCode::kUnavailable);
}

// ---------------------------------------------------------------------------------------------
// Refusals: unknown clients, duplicates, replays, out-of-phase and malformed messages.

// A round driven by hand up to a chosen point.
struct Manual {
  RoundConfig config = TenClients(7, 64);
  std::map<ClientId, std::vector<uint64_t>> inputs = Inputs(config);
  std::optional<SecAggServer> server;
  std::map<ClientId, SecAggClient> clients;
  std::map<ClientId, ChaCha20RandomSource> rngs;
  std::map<ClientId, AdvertiseKeysMessage> advertised;
  std::optional<KeyListMessage> keys;
  std::map<ClientId, ShareKeysMessage> shared;
  std::map<ClientId, RoutedSharesMessage> routed;
  std::map<ClientId, MaskedInputMessage> masked;
  std::optional<UnmaskRequestMessage> request;

  void Start() {
    server.emplace(SecAggServer::Create(config).value());
    for (ClientId id : config.participants) {
      clients.emplace(id, SecAggClient::Create(config, id).value());
      rngs.emplace(id, ChaCha20RandomSource::FromSeed(500 + id));
    }
  }
  void Advertise() {
    for (auto& [id, c] : clients) {
      advertised[id] = *c.AdvertiseKeys(rngs.at(id));
      ASSERT_TRUE(server->OnAdvertiseKeys(advertised[id]).ok());
    }
    auto k = server->FinishAdvertiseKeys();
    ASSERT_TRUE(k.ok()) << k.status().ToString();
    keys = *k;
  }
  void ShareKeys() {
    for (auto& [id, c] : clients) {
      auto s = c.ShareKeys(*keys, rngs.at(id));
      ASSERT_TRUE(s.ok()) << s.status().ToString();
      shared[id] = *s;
      ASSERT_TRUE(server->OnShareKeys(*s).ok());
    }
    auto r = server->FinishShareKeys();
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    for (const auto& m : *r) routed[m.to] = m;
  }
  // Every client but those in `skip` sends its masked input; then the phase closes if `finish`.
  void MaskInputs(const std::set<ClientId>& skip = {}, bool finish = true) {
    for (auto& [id, c] : clients) {
      if (skip.count(id)) continue;
      auto y = c.MaskInput(routed.at(id), inputs.at(id));
      ASSERT_TRUE(y.ok()) << y.status().ToString();
      masked[id] = *y;
      ASSERT_TRUE(server->OnMaskedInput(*y).ok());
    }
    if (!finish) return;
    auto q = server->FinishMaskedInput();
    ASSERT_TRUE(q.ok()) << q.status().ToString();
    request = *q;
  }
};

TEST(SecAggRefusals, UnknownClientIsRefusedNamingClientAndPhase) {
  Manual r;
  r.Start();
  AdvertiseKeysMessage stranger{.round = 7, .from = 200, .c_pk = {}, .s_pk = {}};
  Status s = r.server->OnAdvertiseKeys(stranger);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_CONTAINS(s.message(), "client 200");
  EXPECT_CONTAINS(s.message(), "phase AdvertiseKeys");
  EXPECT_CONTAINS(s.message(), "not a participant");

  // Keys X25519 would refuse (a small-order point) are refused before anyone uses them.
  AdvertiseKeysMessage weak{.round = 7, .from = 4, .c_pk = {}, .s_pk = {}};
  weak.c_pk[0] = 9;  // the base point: a valid key
  Status w = r.server->OnAdvertiseKeys(weak);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.code(), StatusCode::kInvalidArgument);
  EXPECT_CONTAINS(w.message(), "client 4");
  EXPECT_CONTAINS(w.message(), "s_pk");

  // A client that did not advertise keys may not share keys.
  Manual q;
  q.Start();
  for (ClientId id = 1; id <= 9; ++id) {
    q.advertised[id] = *q.clients.at(id).AdvertiseKeys(q.rngs.at(id));
    ASSERT_TRUE(q.server->OnAdvertiseKeys(q.advertised[id]).ok());
  }
  auto keys = q.server->FinishAdvertiseKeys();
  ASSERT_TRUE(keys.ok());
  Status late = q.server->OnShareKeys({.round = 7, .from = 10, .shares = {}});
  ASSERT_FALSE(late.ok());
  EXPECT_EQ(late.code(), StatusCode::kNotFound);
  EXPECT_CONTAINS(late.message(), "client 10");
  EXPECT_CONTAINS(late.message(), "phase ShareKeys");

  // Nor is a client that is not a participant created.
  auto c = SecAggClient::Create(r.config, 11);
  ASSERT_FALSE(c.ok());
  EXPECT_CONTAINS(c.status().message(), "client 11");
}

TEST(SecAggRefusals, DuplicateMessagesAreRefused) {
  // Within its phase a repeated message is a duplicate; after the phase closed, out of phase.
  Manual d;
  d.Start();
  auto a = d.clients.at(3).AdvertiseKeys(d.rngs.at(3));
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(d.server->OnAdvertiseKeys(*a).ok());
  Status dup = d.server->OnAdvertiseKeys(*a);
  ASSERT_FALSE(dup.ok());
  EXPECT_EQ(dup.code(), StatusCode::kFailedPrecondition);
  EXPECT_CONTAINS(dup.message(), "client 3");
  EXPECT_CONTAINS(dup.message(), "duplicate AdvertiseKeys");

  Manual r;
  r.Start();
  ASSERT_NO_FATAL_FAILURE(r.Advertise());
  ASSERT_NO_FATAL_FAILURE(r.ShareKeys());
  ASSERT_NO_FATAL_FAILURE(r.MaskInputs({}, /*finish=*/false));
  Status dup_y = r.server->OnMaskedInput(r.masked.at(4));
  ASSERT_FALSE(dup_y.ok());
  EXPECT_EQ(dup_y.code(), StatusCode::kFailedPrecondition);
  EXPECT_CONTAINS(dup_y.message(), "client 4");
  EXPECT_CONTAINS(dup_y.message(), "duplicate MaskedInput");
  auto q = r.server->FinishMaskedInput();
  ASSERT_TRUE(q.ok());
  r.request = *q;
  Status late_y = r.server->OnMaskedInput(r.masked.at(4));
  ASSERT_FALSE(late_y.ok());
  EXPECT_CONTAINS(late_y.message(), "client 4");
  EXPECT_CONTAINS(late_y.message(), "out of phase");

  auto resp = r.clients.at(5).Unmask(*r.request);
  ASSERT_TRUE(resp.ok()) << resp.status().ToString();
  ASSERT_TRUE(r.server->OnUnmaskResponse(*resp).ok());
  Status dup_r = r.server->OnUnmaskResponse(*resp);
  ASSERT_FALSE(dup_r.ok());
  EXPECT_CONTAINS(dup_r.message(), "client 5");
  EXPECT_CONTAINS(dup_r.message(), "duplicate UnmaskResponse");
  // The client answers the unmasking once.
  auto again = r.clients.at(5).Unmask(*r.request);
  ASSERT_FALSE(again.ok());
  EXPECT_CONTAINS(again.status().message(), "out of phase");
}

TEST(SecAggRefusals, MessagesOfAnotherRoundAreRefusedAsReplays) {
  Manual r7;
  r7.Start();
  ASSERT_NO_FATAL_FAILURE(r7.Advertise());
  ASSERT_NO_FATAL_FAILURE(r7.ShareKeys());
  ASSERT_NO_FATAL_FAILURE(r7.MaskInputs());

  Manual r8;
  r8.config.round_id = 8;
  r8.Start();
  // Round 7's AdvertiseKeys of client 3, replayed as bytes into round 8.
  auto replayed = ParseAdvertiseKeys(Serialize(r7.advertised.at(3)));
  ASSERT_TRUE(replayed.ok());
  Status s = r8.server->OnAdvertiseKeys(*replayed);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_CONTAINS(s.message(), "round 7");
  EXPECT_CONTAINS(s.message(), "client 3");
  EXPECT_CONTAINS(s.message(), "phase AdvertiseKeys");

  ASSERT_NO_FATAL_FAILURE(r8.Advertise());
  ASSERT_NO_FATAL_FAILURE(r8.ShareKeys());
  Status y = r8.server->OnMaskedInput(r7.masked.at(2));
  ASSERT_FALSE(y.ok());
  EXPECT_CONTAINS(y.message(), "round 7");
  EXPECT_CONTAINS(y.message(), "client 2");
  // A client refuses the server's messages of another round too.
  auto wrong = r8.clients.at(1).MaskInput(r7.routed.at(1), r8.inputs.at(1));
  ASSERT_FALSE(wrong.ok());
  EXPECT_CONTAINS(wrong.status().message(), "round 7");
  EXPECT_EQ(r8.clients.at(1).phase(), Phase::kMaskedInputCollection);
}

TEST(SecAggRefusals, OutOfPhaseMessagesAreRefused) {
  Manual r;
  r.Start();
  MaskedInputMessage early{.round = 7, .from = 1, .ring_bits = r.config.ring_bits,
                           .y = std::vector<uint64_t>(r.config.vector_length, 0)};
  Status s = r.server->OnMaskedInput(early);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_CONTAINS(s.message(), "client 1");
  EXPECT_CONTAINS(s.message(), "phase AdvertiseKeys");
  EXPECT_CONTAINS(s.message(), "out of phase");
  EXPECT_FALSE(r.server->FinishMaskedInput().ok());  // the driver's mistake, not an abort
  EXPECT_EQ(r.server->phase(), Phase::kAdvertiseKeys);

  // A client asked to mask before it shared keys.
  auto c = r.clients.at(2).MaskInput({.round = 7, .to = 2, .shares = {}}, r.inputs.at(2));
  ASSERT_FALSE(c.ok());
  EXPECT_CONTAINS(c.status().message(), "client 2");
  EXPECT_CONTAINS(c.status().message(), "phase MaskedInputCollection");
  EXPECT_CONTAINS(c.status().message(), "out of phase");

  ASSERT_NO_FATAL_FAILURE(r.Advertise());
  Status late = r.server->OnAdvertiseKeys(r.advertised.at(1));
  ASSERT_FALSE(late.ok());
  EXPECT_CONTAINS(late.message(), "phase ShareKeys");
}

TEST(SecAggRefusals, ServerRefusesMessagesThatDoNotFitTheRound) {
  Manual r;
  r.Start();
  ASSERT_NO_FATAL_FAILURE(r.Advertise());
  // ShareKeys missing a recipient, and with two ciphertexts for one.
  auto s = r.clients.at(1).ShareKeys(*r.keys, r.rngs.at(1));
  ASSERT_TRUE(s.ok());
  ShareKeysMessage missing = *s;
  missing.shares.pop_back();
  Status m1 = r.server->OnShareKeys(missing);
  ASSERT_FALSE(m1.ok());
  EXPECT_CONTAINS(m1.message(), "8 ciphertexts");
  ShareKeysMessage twice = *s;
  twice.shares.back().to = twice.shares.front().to;
  EXPECT_FALSE(r.server->OnShareKeys(twice).ok());
  ASSERT_TRUE(r.server->OnShareKeys(*s).ok());  // the genuine one is still accepted
  for (ClientId id = 2; id <= 10; ++id) {
    auto sk = r.clients.at(id).ShareKeys(*r.keys, r.rngs.at(id));
    ASSERT_TRUE(sk.ok());
    ASSERT_TRUE(r.server->OnShareKeys(*sk).ok());
  }
  auto routed = r.server->FinishShareKeys();
  ASSERT_TRUE(routed.ok());
  // A masked input of the wrong length.
  MaskedInputMessage short_y{.round = 7, .from = 1, .ring_bits = r.config.ring_bits, .y = {1, 2, 3}};
  Status m2 = r.server->OnMaskedInput(short_y);
  ASSERT_FALSE(m2.ok());
  EXPECT_CONTAINS(m2.message(), "3 elements");
}

TEST(SecAggRefusals, TamperedShareCiphertextIsRefusedAndChangesNothing) {
  Manual r;
  r.Start();
  ASSERT_NO_FATAL_FAILURE(r.Advertise());
  ASSERT_NO_FATAL_FAILURE(r.ShareKeys());
  RoutedSharesMessage tampered = r.routed.at(4);
  ASSERT_FALSE(tampered.shares.empty());
  const ClientId sender = tampered.shares[2].from;
  tampered.shares[2].bytes[5] ^= 0x01;
  auto y = r.clients.at(4).MaskInput(tampered, r.inputs.at(4));
  ASSERT_FALSE(y.ok());
  EXPECT_EQ(y.status().code(), StatusCode::kDataLoss);
  EXPECT_CONTAINS(y.status().message(), "from client " + std::to_string(sender));
  EXPECT_EQ(r.clients.at(4).phase(), Phase::kMaskedInputCollection);
  // A ciphertext relabelled as coming from another client fails too (the key and ad differ).
  RoutedSharesMessage relabelled = r.routed.at(4);
  std::swap(relabelled.shares[0].bytes, relabelled.shares[1].bytes);
  EXPECT_EQ(r.clients.at(4).MaskInput(relabelled, r.inputs.at(4)).status().code(), StatusCode::kDataLoss);
  // The genuine message still works.
  EXPECT_TRUE(r.clients.at(4).MaskInput(r.routed.at(4), r.inputs.at(4)).ok());
}

TEST(SecAggRefusals, ClientRefusesToRevealBothSharesOfAPeer) {
  Manual r;
  r.Start();
  ASSERT_NO_FATAL_FAILURE(r.Advertise());
  ASSERT_NO_FATAL_FAILURE(r.ShareKeys());
  ASSERT_NO_FATAL_FAILURE(r.MaskInputs());
  // A server that claims client 6 both survived and dropped would get b_6 and s_sk_6.
  UnmaskRequestMessage both = *r.request;
  both.dropped.push_back(6);
  auto resp = r.clients.at(1).Unmask(both);
  ASSERT_FALSE(resp.ok());
  EXPECT_EQ(resp.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_CONTAINS(resp.status().message(), "both");
  EXPECT_CONTAINS(resp.status().message(), "client 6");
  EXPECT_CONTAINS(resp.status().message(), "client 1");
  EXPECT_EQ(r.clients.at(1).phase(), Phase::kUnmasking);  // nothing revealed

  // Fewer than t survivors: the round must abort, the client reveals nothing.
  UnmaskRequestMessage fewer = *r.request;
  fewer.survivors.erase(fewer.survivors.begin(), fewer.survivors.begin() + 5);  // 5 survivors < t
  for (ClientId v = 1; v <= 5; ++v) fewer.dropped.push_back(v);
  std::sort(fewer.dropped.begin(), fewer.dropped.end());
  auto below = r.clients.at(7).Unmask(fewer);
  ASSERT_FALSE(below.ok());
  EXPECT_EQ(below.status().code(), StatusCode::kUnavailable);
  EXPECT_CONTAINS(below.status().message(), "threshold needs 6");

  UnmaskRequestMessage self_dropped = *r.request;
  self_dropped.survivors.erase(self_dropped.survivors.begin());  // client 1
  self_dropped.dropped.push_back(1);
  EXPECT_FALSE(r.clients.at(1).Unmask(self_dropped).ok());

  // The genuine request is answered: one b share per survivor, no s_sk share.
  auto ok = r.clients.at(1).Unmask(*r.request);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->b_shares.size(), 10u);
  EXPECT_TRUE(ok->s_shares.empty());
}

TEST(SecAggRefusals, SharesThatDoNotReconstructTheAdvertisedKeyAbortTheRound) {
  Manual r;
  r.Start();
  ASSERT_NO_FATAL_FAILURE(r.Advertise());
  ASSERT_NO_FATAL_FAILURE(r.ShareKeys());
  ASSERT_NO_FATAL_FAILURE(r.MaskInputs(/*skip=*/{8}));  // client 8 drops: its s_sk is recovered
  ASSERT_EQ(r.request->dropped, std::vector<ClientId>{8});
  for (ClientId id : r.request->survivors) {
    auto resp = r.clients.at(id).Unmask(*r.request);
    ASSERT_TRUE(resp.ok()) << resp.status().ToString();
    if (id == 1) resp->s_shares[0].y[0] ^= 0x10;  // client 1 is among the first t responders
    ASSERT_TRUE(r.server->OnUnmaskResponse(*resp).ok());
  }
  auto sum = r.server->FinishUnmasking();
  ASSERT_FALSE(sum.ok());
  EXPECT_EQ(sum.status().code(), StatusCode::kDataLoss);
  EXPECT_CONTAINS(sum.status().message(), "client 8");
  EXPECT_CONTAINS(sum.status().message(), "advertised");
  EXPECT_EQ(r.server->phase(), Phase::kAborted);
}

TEST(SecAggRefusals, ServerRefusesAnUnmaskResponseThatDoesNotMatchTheRequest) {
  Manual r;
  r.Start();
  ASSERT_NO_FATAL_FAILURE(r.Advertise());
  ASSERT_NO_FATAL_FAILURE(r.ShareKeys());
  ASSERT_NO_FATAL_FAILURE(r.MaskInputs(/*skip=*/{8}));
  auto resp = r.clients.at(2).Unmask(*r.request);
  ASSERT_TRUE(resp.ok());
  UnmaskResponseMessage extra = *resp;
  extra.s_shares.push_back(extra.s_shares[0]);
  Status s = r.server->OnUnmaskResponse(extra);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_CONTAINS(s.message(), "client 2");
  EXPECT_CONTAINS(s.message(), "phase Unmasking");
  UnmaskResponseMessage stranger = *resp;
  stranger.from = 8;  // dropped: it sent no masked input
  EXPECT_EQ(r.server->OnUnmaskResponse(stranger).code(), StatusCode::kNotFound);
  EXPECT_TRUE(r.server->OnUnmaskResponse(*resp).ok());
}

TEST(SecAggRefusals, ClientChecksTheKeyList) {
  Manual r;
  r.Start();
  ASSERT_NO_FATAL_FAILURE(r.Advertise());
  KeyListMessage few = *r.keys;
  few.clients.resize(5);
  auto s = r.clients.at(1).ShareKeys(few, r.rngs.at(1));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kUnavailable);
  EXPECT_CONTAINS(s.status().message(), "5 clients advertised keys, the threshold needs 6");

  KeyListMessage swapped = *r.keys;
  swapped.clients[0].s_pk = swapped.clients[1].s_pk;  // client 1's key replaced
  auto k = r.clients.at(1).ShareKeys(swapped, r.rngs.at(1));
  ASSERT_FALSE(k.ok());
  EXPECT_CONTAINS(k.status().message(), "other keys for this client");
  EXPECT_EQ(r.clients.at(1).phase(), Phase::kShareKeys);
  EXPECT_TRUE(r.clients.at(1).ShareKeys(*r.keys, r.rngs.at(1)).ok());
}

TEST(SecAggRefusals, RoundConfigIsValidated) {
  RoundConfig c = TenClients();
  c.participants.clear();
  for (ClientId id = 1; id <= 255; ++id) c.participants.push_back(id);
  EXPECT_TRUE(ValidateRoundConfig(c).ok());
  c.participants.push_back(256);
  Status big = ValidateRoundConfig(c);
  ASSERT_FALSE(big.ok());
  EXPECT_CONTAINS(big.message(), "256 participants; at most 255");

  RoundConfig t1 = TenClients();
  t1.threshold = 1;
  EXPECT_CONTAINS(ValidateRoundConfig(t1).message(), "threshold t = 1");
  RoundConfig t11 = TenClients();
  t11.threshold = 11;
  EXPECT_CONTAINS(ValidateRoundConfig(t11).message(), "threshold t = 11");
  RoundConfig unsorted = TenClients();
  std::swap(unsorted.participants[0], unsorted.participants[1]);
  EXPECT_FALSE(ValidateRoundConfig(unsorted).ok());
  RoundConfig zero_id = TenClients();
  zero_id.participants[0] = 0;
  EXPECT_CONTAINS(ValidateRoundConfig(zero_id).message(), "client id 0");
  RoundConfig no_ring = TenClients();
  no_ring.ring_bits = 65;
  EXPECT_FALSE(SecAggServer::Create(no_ring).ok());
}

// Every parser refuses every truncation, trailing bytes, a wrong magic or type, out-of-range ids,
// and counts that the remaining bytes cannot hold (without allocating for them).
template <typename T>
void ExpectStrictParsing(const std::vector<uint8_t>& good, Result<T> (*parse)(std::span<const uint8_t>),
                         const char* name) {
  SCOPED_TRACE(name);
  ASSERT_TRUE(parse(good).ok()) << parse(good).status().ToString();
  const size_t step = good.size() > 400 ? good.size() / 200 : 1;
  for (size_t n = 0; n < good.size(); n += step) {
    auto r = parse(std::span(good).first(n));
    ASSERT_FALSE(r.ok()) << "prefix of " << n << " bytes accepted";
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
    EXPECT_CONTAINS(r.status().message(), name);
  }
  std::vector<uint8_t> longer = good;
  longer.push_back(0);
  EXPECT_EQ(parse(longer).status().code(), StatusCode::kDataLoss);  // "trailing bytes", or a packed size
  std::vector<uint8_t> magic = good;
  magic[0] = 'X';
  EXPECT_CONTAINS(parse(magic).status().message(), "magic");
  std::vector<uint8_t> type = good;
  type[4] = type[4] == 1 ? 2 : 1;
  EXPECT_EQ(parse(type).status().code(), StatusCode::kDataLoss);
}

TEST(SecAggMessages, RoundTripAndStrictParsing) {
  Manual r;
  r.Start();
  ASSERT_NO_FATAL_FAILURE(r.Advertise());
  ASSERT_NO_FATAL_FAILURE(r.ShareKeys());
  ASSERT_NO_FATAL_FAILURE(r.MaskInputs());
  auto resp = r.clients.at(3).Unmask(*r.request);
  ASSERT_TRUE(resp.ok());

  // The documented sizes.
  EXPECT_EQ(Serialize(r.advertised.at(1)).size(), 81u);
  EXPECT_EQ(Serialize(*r.keys).size(), 17u + 68u * 10u);
  EXPECT_EQ(Serialize(r.shared.at(1)).size(), kHeaderBytes + 8u + 9u * (4u + 80u));
  EXPECT_EQ(Serialize(r.routed.at(1)).size(), kHeaderBytes + 8u + 9u * (4u + 80u));
  EXPECT_EQ(Serialize(r.masked.at(1)).size(), kHeaderBytes + 13u + (64u * 20u + 7u) / 8u);
  EXPECT_EQ(Serialize(*r.request).size(), kHeaderBytes + 8u + 4u * 10u);
  EXPECT_EQ(Serialize(*resp).size(), kHeaderBytes + 12u + 36u * 10u);

  // Round trips keep every field.
  auto a = ParseAdvertiseKeys(Serialize(r.advertised.at(1)));
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->from, 1u);
  EXPECT_EQ(a->c_pk, r.advertised.at(1).c_pk);
  EXPECT_EQ(a->s_pk, r.advertised.at(1).s_pk);
  auto routed = ParseRoutedShares(Serialize(r.routed.at(2)));
  ASSERT_TRUE(routed.ok());
  ASSERT_EQ(routed->shares.size(), r.routed.at(2).shares.size());
  for (size_t i = 0; i < routed->shares.size(); ++i) {
    EXPECT_EQ(routed->shares[i].from, r.routed.at(2).shares[i].from);
    EXPECT_EQ(routed->shares[i].to, 2u);
    EXPECT_EQ(routed->shares[i].bytes, r.routed.at(2).shares[i].bytes);
  }
  auto y = ParseMaskedInput(Serialize(r.masked.at(5)));
  ASSERT_TRUE(y.ok());
  EXPECT_EQ(y->y, r.masked.at(5).y);
  EXPECT_EQ(y->ring_bits, r.config.ring_bits);
  auto back = ParseUnmaskResponse(Serialize(*resp));
  ASSERT_TRUE(back.ok());
  ASSERT_EQ(back->b_shares.size(), resp->b_shares.size());
  EXPECT_EQ(back->b_shares[9].y, resp->b_shares[9].y);
  auto type = PeekMessageType(Serialize(*r.request));
  ASSERT_TRUE(type.ok());
  EXPECT_EQ(*type, MessageType::kUnmaskRequest);
  EXPECT_FALSE(PeekMessageType(std::vector<uint8_t>(13, 0)).ok());

  ExpectStrictParsing(Serialize(r.advertised.at(1)), ParseAdvertiseKeys, "AdvertiseKeys");
  ExpectStrictParsing(Serialize(*r.keys), ParseKeyList, "KeyList");
  ExpectStrictParsing(Serialize(r.shared.at(1)), ParseShareKeys, "ShareKeys");
  ExpectStrictParsing(Serialize(r.routed.at(1)), ParseRoutedShares, "RoutedShares");
  ExpectStrictParsing(Serialize(r.masked.at(1)), ParseMaskedInput, "MaskedInput");
  ExpectStrictParsing(Serialize(*r.request), ParseUnmaskRequest, "UnmaskRequest");
  ExpectStrictParsing(Serialize(*resp), ParseUnmaskResponse, "UnmaskResponse");
}

void Put32At(std::vector<uint8_t>& b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
}

TEST(SecAggMessages, HostileCountsLengthsAndIdsAreRefused) {
  // A KeyList announcing 255 entries but carrying one, and one announcing 2^32 - 1.
  KeyListMessage one{.round = 1, .clients = {{.id = 1, .c_pk = {}, .s_pk = {}}}};
  std::vector<uint8_t> b = Serialize(one);
  Put32At(b, kHeaderBytes, 255);
  auto r1 = ParseKeyList(b);
  ASSERT_FALSE(r1.ok());
  EXPECT_CONTAINS(r1.status().message(), "255 key entries need 17340 bytes");
  Put32At(b, kHeaderBytes, 0xffffffffu);
  auto r2 = ParseKeyList(b);
  ASSERT_FALSE(r2.ok());
  EXPECT_CONTAINS(r2.status().message(), "exceed the limit of 255");

  // Client ids outside [1, 255].
  std::vector<uint8_t> adv = Serialize(AdvertiseKeysMessage{.round = 1, .from = 1, .c_pk = {}, .s_pk = {}});
  Put32At(adv, kHeaderBytes, 0);
  EXPECT_CONTAINS(ParseAdvertiseKeys(adv).status().message(), "sender 0 is outside");
  Put32At(adv, kHeaderBytes, 256);
  EXPECT_CONTAINS(ParseAdvertiseKeys(adv).status().message(), "sender 256 is outside");

  // A MaskedInput claiming 2^40 elements (no allocation: the size check comes first), a bad ring
  // width, and non-zero padding.
  MaskedInputMessage y{.round = 1, .from = 2, .ring_bits = 20, .y = {1, 2, 3}};
  std::vector<uint8_t> mb = Serialize(y);
  const size_t length_at = kHeaderBytes + 4 + 1;
  std::vector<uint8_t> huge = mb;
  for (int i = 0; i < 8; ++i) huge[length_at + i] = static_cast<uint8_t>((uint64_t{1} << 40) >> (8 * i));
  EXPECT_CONTAINS(ParseMaskedInput(huge).status().message(), "outside [1,");
  std::vector<uint8_t> wrong_len = mb;
  wrong_len[length_at] = 4;
  EXPECT_CONTAINS(ParseMaskedInput(wrong_len).status().message(), "take 10 bytes, got 8");
  std::vector<uint8_t> ring0 = mb;
  ring0[kHeaderBytes + 4] = 0;
  EXPECT_CONTAINS(ParseMaskedInput(ring0).status().message(), "ring width m = 0");
  std::vector<uint8_t> ring65 = mb;
  ring65[kHeaderBytes + 4] = 65;
  EXPECT_FALSE(ParseMaskedInput(ring65).ok());
  std::vector<uint8_t> padding = mb;
  padding.back() |= 0x80;  // 3 x 20 bits = 60 bits: the top 4 bits of the last byte are padding
  EXPECT_CONTAINS(ParseMaskedInput(padding).status().message(), "padding");

  // An UnmaskResponse whose second list claims more shares than it carries.
  UnmaskResponseMessage resp{.round = 1, .from = 3, .b_shares = {{.owner = 1, .y = {}}}, .s_shares = {}};
  std::vector<uint8_t> rb = Serialize(resp);
  Put32At(rb, rb.size() - 4, 2);
  EXPECT_CONTAINS(ParseUnmaskResponse(rb).status().message(), "s_sk shares need");
  EXPECT_FALSE(PeekMessageType(std::vector<uint8_t>{'S', 'P', 'S', 'G', 10, 0, 0, 0, 0, 0, 0, 0, 0}).ok());
}

}  // namespace
}  // namespace shardps::secagg
