// Differential privacy for federated averaging (core/privacy): L2 clipping (unchanged below S bit
// for bit, scaled to S above it and never above, bad S and non-finite updates refused); the
// deterministic Gaussian noise (same key same bits, another round/seed/stream other bits, the
// inverse normal CDF on known quantiles, mean, standard deviation and tail mass of 10^6 draws);
// the RDP accountant (q = 1 is the Gaussian mechanism, one-round RDP and epsilons against the
// independent arbitrary-precision reference of scripts/rdp_reference.py, composition, monotonicity
// in z and in rounds, the DP-SGD MNIST figure of TF Privacy's tutorial, refusals, z = 0).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "shardps/base/random.h"
#include "shardps/privacy/clip.h"
#include "shardps/privacy/gaussian.h"
#include "shardps/privacy/rdp_accountant.h"

namespace shardps::privacy {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Deterministic test vectors: uniform in [-1, 1) from SplitMix64, scaled.
std::vector<float> TestVector(size_t n, uint64_t seed, float scale) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) {
    const double u = static_cast<double>(SplitMix64(seed * 1000003 + i) >> 11) * 0x1p-53;
    v[i] = static_cast<float>((2.0 * u - 1.0) * scale);
  }
  return v;
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// |actual - expected| <= rel x |expected|, with a message naming both.
::testing::AssertionResult NearRel(double actual, double expected, double rel) {
  if (std::fabs(actual - expected) <= rel * std::fabs(expected)) return ::testing::AssertionSuccess();
  char buf[160];
  std::snprintf(buf, sizeof(buf), "actual %.17g, expected %.17g, relative error %.3g > %.3g", actual, expected,
                std::fabs(actual - expected) / std::fabs(expected), rel);
  return ::testing::AssertionFailure() << buf;
}

// ---------------------------------------------------------------------------------------------
// Clipping

TEST(ClipL2, BelowBoundIsUnchangedBitForBit) {
  std::vector<float> update = TestVector(1000, 1, 0.01f);
  const std::vector<float> before = update;
  const double norm = L2Norm(update);
  ASSERT_LT(norm, 1.0);
  auto clipped = ClipL2(update, 1.0f);
  ASSERT_TRUE(clipped.ok()) << clipped.status().ToString();
  EXPECT_EQ(*clipped, norm);
  EXPECT_TRUE(SameBits(update, before));
}

TEST(ClipL2, JustBelowBoundIsUnchangedBitForBit) {
  std::vector<float> update = TestVector(500, 7, 1.0f);
  const std::vector<float> before = update;
  const double norm = L2Norm(update);
  const float bound = static_cast<float>(norm * (1.0 + 1e-6));  // S barely above the norm
  ASSERT_GT(static_cast<double>(bound), norm);
  auto clipped = ClipL2(update, bound);
  ASSERT_TRUE(clipped.ok()) << clipped.status().ToString();
  EXPECT_EQ(*clipped, norm);
  EXPECT_TRUE(SameBits(update, before));
}

TEST(ClipL2, ExactlyAtBoundIsUnchanged) {
  std::vector<float> update = {3.0f, 4.0f};  // norm 5 exactly
  auto clipped = ClipL2(update, 5.0f);
  ASSERT_TRUE(clipped.ok()) << clipped.status().ToString();
  EXPECT_EQ(*clipped, 5.0);
  EXPECT_EQ(update[0], 3.0f);
  EXPECT_EQ(update[1], 4.0f);
}

TEST(ClipL2, AboveBoundIsScaledToBound) {
  for (uint64_t seed = 1; seed <= 50; ++seed) {
    const float bound = 0.1f * static_cast<float>(seed);
    std::vector<float> update = TestVector(1 + seed * 97, seed, 3.0f);
    const std::vector<float> before = update;
    const double norm = L2Norm(before);
    ASSERT_GT(norm, bound);
    auto clipped = ClipL2(update, bound);
    ASSERT_TRUE(clipped.ok()) << clipped.status().ToString();
    EXPECT_EQ(*clipped, norm) << "returns the norm before clipping";
    const double after = L2Norm(update);
    EXPECT_TRUE(NearRel(after, bound, 1e-6)) << "seed " << seed;
    EXPECT_LE(after, static_cast<double>(bound)) << "seed " << seed << ": the sensitivity bound holds exactly";
    // Same direction: every value is the original times S / norm.
    const double scale = bound / norm;
    for (size_t i = 0; i < update.size(); ++i) {
      ASSERT_NEAR(update[i], before[i] * scale, 1e-6 * std::fabs(before[i] * scale) + 1e-30) << i;
    }
  }
}

TEST(ClipL2, EmptyUpdateHasNormZero) {
  std::vector<float> update;
  auto clipped = ClipL2(update, 1.0f);
  ASSERT_TRUE(clipped.ok()) << clipped.status().ToString();
  EXPECT_EQ(*clipped, 0.0);
}

TEST(ClipL2, RefusesBadBound) {
  for (float bound : {0.0f, -1.0f, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    std::vector<float> update = TestVector(10, 2, 5.0f);
    const std::vector<float> before = update;
    auto clipped = ClipL2(update, bound);
    ASSERT_FALSE(clipped.ok()) << "S = " << bound;
    EXPECT_EQ(clipped.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(clipped.status().message().find("clip norm S"), std::string::npos) << clipped.status().ToString();
    EXPECT_TRUE(SameBits(update, before));
  }
}

TEST(ClipL2, RefusesNonFiniteUpdate) {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    std::vector<float> update = TestVector(10, 3, 5.0f);
    update[7] = bad;
    const std::vector<float> before = update;
    auto clipped = ClipL2(update, 1.0f);
    ASSERT_FALSE(clipped.ok());
    EXPECT_EQ(clipped.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(clipped.status().message().find("index 7"), std::string::npos) << clipped.status().ToString();
    EXPECT_TRUE(SameBits(update, before));
  }
}

// ---------------------------------------------------------------------------------------------
// Gaussian noise

TEST(GaussianNoise, SameKeyGivesSameBits) {
  const NoiseKey key{.seed = 42, .round = 7, .stream = 3};
  std::vector<float> a = TestVector(10000, 4, 1.0f);
  std::vector<float> b = a;
  ASSERT_TRUE(AddGaussianNoise(a, 0.75, key).ok());
  ASSERT_TRUE(AddGaussianNoise(b, 0.75, key).ok());
  EXPECT_TRUE(SameBits(a, b));
  // What was added is StandardNormal(key, i) x stddev, rounded once.
  const std::vector<float> base = TestVector(10000, 4, 1.0f);
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i], static_cast<float>(static_cast<double>(base[i]) + 0.75 * StandardNormal(key, i))) << i;
  }
}

TEST(GaussianNoise, OtherRoundSeedOrStreamGivesOtherValues) {
  const NoiseKey key{.seed = 42, .round = 7, .stream = 3};
  for (NoiseKey other : {NoiseKey{43, 7, 3}, NoiseKey{42, 8, 3}, NoiseKey{42, 7, 4}}) {
    std::vector<float> a(10000, 0.0f);
    std::vector<float> b(10000, 0.0f);
    ASSERT_TRUE(AddGaussianNoise(a, 1.0, key).ok());
    ASSERT_TRUE(AddGaussianNoise(b, 1.0, other).ok());
    int equal = 0;
    for (size_t i = 0; i < a.size(); ++i) equal += a[i] == b[i];
    EXPECT_LE(equal, 2) << "seed " << other.seed << " round " << other.round << " stream " << other.stream;
  }
}

TEST(GaussianNoise, PinnedValues) {
  // The stream's definition (gaussian.h) must not change silently: runs are meant to be
  // reproducible across versions. Values from this implementation (they depend on libm only in
  // the last bits, hence the tolerance).
  const NoiseKey key{.seed = 1, .round = 2, .stream = 3};
  const double v0 = StandardNormal(key, 0);
  const double v1 = StandardNormal(key, 1);
  const double v999 = StandardNormal(key, 999);
  EXPECT_TRUE(NearRel(v0, 1.6146127358664968, 1e-12));
  EXPECT_TRUE(NearRel(v1, 1.528987623346906, 1e-12));
  EXPECT_TRUE(NearRel(v999, -1.1941479237457939, 1e-12));
}

TEST(GaussianNoise, InverseNormalCdfMatchesKnownQuantiles) {
  // Quantiles computed with mpmath (sqrt(2) erfinv(2p - 1), 40 digits) at the exact doubles p.
  EXPECT_TRUE(NearRel(InverseNormalCdf(0.975), 1.9599639845400538556, 2e-15));
  EXPECT_TRUE(NearRel(InverseNormalCdf(0.3), -0.52440051270804081597, 2e-15));
  EXPECT_TRUE(NearRel(InverseNormalCdf(1e-10), -6.3613409024040561991, 2e-15));
  EXPECT_TRUE(NearRel(InverseNormalCdf(0x1p-54), -8.2923610758135955382, 2e-15));
  EXPECT_TRUE(NearRel(InverseNormalCdf(0.5 - 0x1p-30), -2.3344794983332981399e-9, 1e-12));
  EXPECT_EQ(InverseNormalCdf(0.5), 0.0);
  EXPECT_EQ(InverseNormalCdf(0.25), -InverseNormalCdf(0.75));  // both exact doubles, 1 - 0.75 = 0.25
  EXPECT_EQ(InverseNormalCdf(0.0625), -InverseNormalCdf(0.9375));
  EXPECT_TRUE(std::isnan(InverseNormalCdf(0.0)));
  EXPECT_TRUE(std::isnan(InverseNormalCdf(1.0)));
}

TEST(GaussianNoise, MillionDrawsHaveRequestedMeanAndStddev) {
  // Statistical, not timing: a fixed key, so the outcome is the same on every run. With n = 10^6
  // the sampling error of the standard deviation is about 0.07% (1/sqrt(2n)), of the mean 0.1% of
  // sigma, of the mass within one sigma 0.05%: the bounds below are 5 to 7 standard errors.
  constexpr size_t kN = 1'000'000;
  constexpr double kStddev = 2.5;
  std::vector<float> values(kN, 0.0f);
  ASSERT_TRUE(AddGaussianNoise(values, kStddev, {.seed = 20240611, .round = 1, .stream = 0}).ok());
  double sum = 0.0;
  for (float v : values) sum += v;
  const double mean = sum / kN;
  double sq = 0.0;
  size_t within_one = 0, beyond_three = 0;
  for (float v : values) {
    sq += (v - mean) * (v - mean);
    within_one += std::fabs(v) < kStddev;
    beyond_three += std::fabs(v) > 3.0 * kStddev;
  }
  const double stddev = std::sqrt(sq / (kN - 1));
  EXPECT_LT(std::fabs(stddev - kStddev) / kStddev, 0.005) << "stddev " << stddev;
  EXPECT_LT(std::fabs(mean), 5.0 * kStddev / std::sqrt(static_cast<double>(kN))) << "mean " << mean;
  EXPECT_NEAR(static_cast<double>(within_one) / kN, 0.682689492137086, 0.0025);
  EXPECT_NEAR(static_cast<double>(beyond_three) / kN, 0.002699796063260, 0.0003);
}

TEST(GaussianNoise, ZeroStddevLeavesValuesUnchanged) {
  std::vector<float> values = TestVector(100, 5, 1.0f);
  const std::vector<float> before = values;
  ASSERT_TRUE(AddGaussianNoise(values, 0.0, {}).ok());
  EXPECT_TRUE(SameBits(values, before));
}

TEST(GaussianNoise, RefusesBadStddev) {
  for (double bad : {-1.0, kNaN, kInf}) {
    std::vector<float> values = TestVector(100, 6, 1.0f);
    const std::vector<float> before = values;
    Status s = AddGaussianNoise(values, bad, {});
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_TRUE(SameBits(values, before));
  }
}

// ---------------------------------------------------------------------------------------------
// RDP accountant

TEST(RdpAccountant, FullParticipationIsTheGaussianMechanism) {
  for (double z : {0.5, 1.1, 3.0}) {
    for (double order : {1.5, 2.0, 7.0, 32.5, 256.0}) {
      auto rdp = SampledGaussianRdp(1.0, z, order);
      ASSERT_TRUE(rdp.ok()) << rdp.status().ToString();
      EXPECT_TRUE(NearRel(*rdp, order / (2.0 * z * z), 1e-12)) << "z " << z << " order " << order;
    }
  }
}

TEST(RdpAccountant, NearlyFullParticipationApproachesTheGaussianMechanism) {
  // The general formulas (not the q = 1 shortcut) at q just below 1.
  for (double order : {2.0, 7.0, 2.5, 7.5}) {
    auto rdp = SampledGaussianRdp(1.0 - 1e-9, 1.1, order);
    ASSERT_TRUE(rdp.ok()) << rdp.status().ToString();
    EXPECT_TRUE(NearRel(*rdp, order / (2.0 * 1.1 * 1.1), 1e-8)) << "order " << order;
  }
}

struct RdpReference {
  double q, z, order, rdp;
};

// scripts/rdp_reference.py: integer orders from the binomial sum, fractional ones from numerical
// integration of A_alpha's definition, both in 50-digit arithmetic.
constexpr RdpReference kIntegerReference[] = {
    {0.01, 1.1, 2, 0.0001285100816051618},      {0.01, 1.1, 3, 0.00019627788991499546},
    {0.01, 1.1, 4, 0.00026671831462706143},     {0.01, 1.1, 8, 0.00058407033552025108},
    {0.01, 1.1, 16, 1.6998267277531741},        {0.01, 1.1, 32, 8.4694164336759256},
    {0.01, 1.1, 64, 21.768012866287313},        {0.1, 1.0, 8, 1.3783614113481266},
    {0.1, 0.5, 32, 61.623137968522275},         {0.5, 2.0, 2, 0.068598724381658406},
    {0.5, 2.0, 5, 0.21160515122263299},         {0.999, 0.8, 3, 2.3423152303645769},
    {0.0001, 1.0, 2, 1.7182818136965834e-8},    {0.0001, 1.0, 256, 118.75354064617293},
};
constexpr RdpReference kFractionalReference[] = {
    {0.01, 1.1, 1.25, 7.9280055348681651e-5},   {0.01, 1.1, 1.5, 9.5545285718748299e-5},
    {0.01, 1.1, 2.5, 0.00016207740937000371},   {0.01, 1.1, 10.5, 0.00096727130522959932},
    {0.1, 1.0, 1.5, 0.011734592196685237},      {0.1, 1.0, 3.5, 0.042724490803053054},
    {0.1, 0.5, 1.75, 0.24370315045670955},
};

TEST(RdpAccountant, IntegerOrdersMatchReference) {
  for (const RdpReference& r : kIntegerReference) {
    auto rdp = SampledGaussianRdp(r.q, r.z, r.order);
    ASSERT_TRUE(rdp.ok()) << rdp.status().ToString();
    EXPECT_TRUE(NearRel(*rdp, r.rdp, 1e-9)) << "q " << r.q << " z " << r.z << " order " << r.order;
  }
}

TEST(RdpAccountant, FractionalOrdersMatchReference) {
  for (const RdpReference& r : kFractionalReference) {
    auto rdp = SampledGaussianRdp(r.q, r.z, r.order);
    ASSERT_TRUE(rdp.ok()) << rdp.status().ToString();
    EXPECT_TRUE(NearRel(*rdp, r.rdp, 1e-9)) << "q " << r.q << " z " << r.z << " order " << r.order;
  }
}

TEST(RdpAccountant, RdpGrowsWithOrder) {
  // D_alpha is non-decreasing in alpha; a check that the integer and fractional paths agree where
  // they meet.
  auto acc = RdpAccountant::Create(0.05, 0.9);
  ASSERT_TRUE(acc.ok()) << acc.status().ToString();
  const std::vector<double>& rdp = acc->RdpPerRound();
  for (size_t i = 1; i < rdp.size(); ++i) {
    EXPECT_GE(rdp[i], rdp[i - 1]) << "orders " << acc->orders()[i - 1] << " and " << acc->orders()[i];
  }
}

TEST(RdpAccountant, CompositionIsAdditive) {
  auto a = RdpAccountant::Create(0.01, 1.1);
  auto b = RdpAccountant::Create(0.01, 1.1);
  auto c = RdpAccountant::Create(0.01, 1.1);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  a->Step(3);
  a->Step(5);
  b->Step(3);
  c->Step(5);
  EXPECT_EQ(a->rounds(), 8u);
  const std::vector<double> ra = a->Rdp(), rb = b->Rdp(), rc = c->Rdp();
  const std::vector<double>& orders = a->orders();
  for (size_t i = 0; i < ra.size(); ++i) {
    EXPECT_TRUE(NearRel(ra[i], rb[i] + rc[i], 1e-14)) << "order " << orders[i];
    auto one = SampledGaussianRdp(0.01, 1.1, orders[i]);
    ASSERT_TRUE(one.ok());
    EXPECT_TRUE(NearRel(ra[i], 8.0 * *one, 1e-14)) << "order " << orders[i];
  }
  auto direct = EpsilonFromRdp(orders, ra, 1e-5);
  auto via_accountant = a->Epsilon(1e-5);
  ASSERT_TRUE(direct.ok() && via_accountant.ok());
  EXPECT_EQ(direct->epsilon, via_accountant->epsilon);
  EXPECT_EQ(direct->order, via_accountant->order);
}

TEST(RdpAccountant, EpsilonDecreasesWithNoise) {
  double previous = kInf;
  for (double z : {0.6, 0.8, 1.0, 1.5, 2.0, 4.0}) {
    auto acc = RdpAccountant::Create(0.01, z);
    ASSERT_TRUE(acc.ok()) << acc.status().ToString();
    acc->Step(1000);
    auto spent = acc->Epsilon(1e-5);
    ASSERT_TRUE(spent.ok()) << spent.status().ToString();
    EXPECT_LT(spent->epsilon, previous) << "z " << z;
    EXPECT_GT(spent->epsilon, 0.0);
    previous = spent->epsilon;
  }
}

TEST(RdpAccountant, EpsilonIncreasesWithRounds) {
  auto acc = RdpAccountant::Create(0.01, 1.1);
  ASSERT_TRUE(acc.ok()) << acc.status().ToString();
  double previous = 0.0;
  uint64_t done = 0;
  for (uint64_t rounds : {1, 10, 100, 1000, 10000}) {
    acc->Step(rounds - done);
    done = rounds;
    auto spent = acc->Epsilon(1e-5);
    ASSERT_TRUE(spent.ok()) << spent.status().ToString();
    EXPECT_GT(spent->epsilon, previous) << rounds << " rounds";
    previous = spent->epsilon;
  }
}

TEST(RdpAccountant, ImprovedConversionIsNeverWorseThanClassic) {
  for (double z : {0.7, 1.1, 2.0}) {
    auto acc = RdpAccountant::Create(0.02, z);
    ASSERT_TRUE(acc.ok());
    acc->Step(500);
    auto improved = acc->Epsilon(1e-6);
    auto classic = acc->EpsilonClassic(1e-6);
    ASSERT_TRUE(improved.ok() && classic.ok());
    EXPECT_LT(improved->epsilon, classic->epsilon) << "z " << z;
  }
}

struct EpsilonReference {
  double q, z;
  uint64_t rounds;
  double delta, epsilon, order, epsilon_classic, order_classic;
};

// scripts/rdp_reference.py, over DefaultRdpOrders().
constexpr EpsilonReference kEpsilonReference[] = {
    {0.01, 1.1, 1000, 1e-05, 1.7252908180449548, 9, 2.0867961135743039, 10},
    {0.1, 1.0, 100, 1e-06, 8.9610758794716549, 3.5, 9.798653303491015, 3.5},
};

TEST(RdpAccountant, EpsilonMatchesReference) {
  for (const EpsilonReference& r : kEpsilonReference) {
    auto acc = RdpAccountant::Create(r.q, r.z);
    ASSERT_TRUE(acc.ok()) << acc.status().ToString();
    acc->Step(r.rounds);
    auto improved = acc->Epsilon(r.delta);
    auto classic = acc->EpsilonClassic(r.delta);
    ASSERT_TRUE(improved.ok() && classic.ok());
    EXPECT_TRUE(NearRel(improved->epsilon, r.epsilon, 1e-9)) << "q " << r.q << " z " << r.z;
    EXPECT_EQ(improved->order, r.order);
    EXPECT_TRUE(NearRel(classic->epsilon, r.epsilon_classic, 1e-9)) << "q " << r.q << " z " << r.z;
    EXPECT_EQ(classic->order, r.order_classic);
  }
}

TEST(RdpAccountant, DpSgdMnistMatchesPublishedFigure) {
  // TF Privacy's MNIST DP-SGD tutorial (tensorflow/privacy tutorials/README.md and
  // mnist_dpsgd_tutorial.py, January 2019): q = 256/60000, noise multiplier 1.12, 60 epochs of
  // 60000 // 256 = 234 steps, its order grid and the classic conversion give epsilon 2.92 at
  // delta = 1e-5; compute_dp_sgd_privacy.py of the same commit (ceil(60 x 60000/256) = 14063 steps,
  // another grid) states 2.92 too. The exact values are scripts/rdp_reference.py --dpsgd.
  const double q = 256.0 / 60000.0;
  std::vector<double> tutorial_orders;
  for (int x = 1; x < 100; ++x) tutorial_orders.push_back(1.0 + x / 10.0);
  for (int a = 12; a < 64; ++a) tutorial_orders.push_back(a);
  std::vector<double> cli_orders = {1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 4.5};
  for (int a = 5; a < 64; ++a) cli_orders.push_back(a);
  for (double a : {128.0, 256.0, 512.0}) cli_orders.push_back(a);

  struct Case {
    double z;
    uint64_t steps;
    const std::vector<double>* orders;
    double classic, classic_order, improved, improved_order;
  };
  const Case cases[] = {
      {1.12, 60 * 234, &tutorial_orders, 2.9198905202779209, 9.1, 2.51646244372167, 8.3},
      {1.12, 14063, &cli_orders, 2.9223548504728568, 9, 2.5215588618058658, 8},
      {1.1, 60 * 234, &tutorial_orders, 3.0058748679163245, 8.8, 2.5943633549456726, 8.1},
      {1.1, 14063, &cli_orders, 3.0092111729975722, 9, 2.5970795196566328, 8},
  };
  for (const Case& c : cases) {
    auto acc = RdpAccountant::Create(q, c.z, *c.orders);
    ASSERT_TRUE(acc.ok()) << acc.status().ToString();
    acc->Step(c.steps);
    auto classic = acc->EpsilonClassic(1e-5);
    auto improved = acc->Epsilon(1e-5);
    ASSERT_TRUE(classic.ok() && improved.ok());
    EXPECT_TRUE(NearRel(classic->epsilon, c.classic, 1e-9)) << "z " << c.z << " steps " << c.steps;
    EXPECT_EQ(classic->order, c.classic_order) << "z " << c.z << " steps " << c.steps;
    EXPECT_TRUE(NearRel(improved->epsilon, c.improved, 1e-9)) << "z " << c.z << " steps " << c.steps;
    EXPECT_EQ(improved->order, c.improved_order) << "z " << c.z << " steps " << c.steps;
    if (c.z == 1.12) {
      EXPECT_NEAR(classic->epsilon, 2.92, 0.005) << "the published figure, to its 3 digits";
    }
  }
}

TEST(RdpAccountant, ZeroRoundsSpendNothing) {
  auto acc = RdpAccountant::Create(0.01, 1.1);
  ASSERT_TRUE(acc.ok());
  auto spent = acc->Epsilon(1e-5);
  ASSERT_TRUE(spent.ok());
  EXPECT_EQ(spent->epsilon, 0.0);
}

TEST(RdpAccountant, ZeroNoiseIsInfiniteEpsilon) {
  auto acc = RdpAccountant::Create(0.01, 0.0);
  ASSERT_TRUE(acc.ok()) << acc.status().ToString();
  auto before = acc->Epsilon(1e-5);
  ASSERT_TRUE(before.ok());
  EXPECT_EQ(before->epsilon, 0.0);
  acc->Step();
  auto improved = acc->Epsilon(1e-5);
  auto classic = acc->EpsilonClassic(1e-5);
  ASSERT_TRUE(improved.ok() && classic.ok());
  EXPECT_EQ(improved->epsilon, kInf);
  EXPECT_EQ(classic->epsilon, kInf);
  EXPECT_EQ(improved->order, acc->orders().front());
}

TEST(RdpAccountant, RefusesBadParametersNamingTheValue) {
  struct Bad {
    double q, z;
    const char* mentions;
  };
  for (const Bad& b : {Bad{0.0, 1.0, "q must be in (0, 1], got 0"}, Bad{-0.5, 1.0, "got -0.5"},
                       Bad{1.5, 1.0, "got 1.5"}, Bad{kNaN, 1.0, "got nan"}, Bad{0.1, -1.0, "z must be"},
                       Bad{0.1, -1.0, "got -1"}, Bad{0.1, kInf, "got inf"}, Bad{0.1, kNaN, "got nan"}}) {
    auto acc = RdpAccountant::Create(b.q, b.z);
    ASSERT_FALSE(acc.ok()) << "q " << b.q << " z " << b.z;
    EXPECT_EQ(acc.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(acc.status().message().find(b.mentions), std::string::npos) << acc.status().ToString();
  }
  for (double order : {1.0, 0.5, -3.0, 10001.0, kInf, kNaN}) {
    auto acc = RdpAccountant::Create(0.1, 1.0, {2.0, order});
    ASSERT_FALSE(acc.ok()) << "order " << order;
    EXPECT_EQ(acc.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(acc.status().message().find("order"), std::string::npos) << acc.status().ToString();
  }
  EXPECT_FALSE(RdpAccountant::Create(0.1, 1.0, {}).ok());

  auto acc = RdpAccountant::Create(0.1, 1.0);
  ASSERT_TRUE(acc.ok());
  acc->Step(10);
  for (double delta : {0.0, 1.0, -1e-5, 2.0, kNaN}) {
    auto spent = acc->Epsilon(delta);
    ASSERT_FALSE(spent.ok()) << "delta " << delta;
    EXPECT_EQ(spent.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(spent.status().message().find("delta must be in (0, 1)"), std::string::npos);
    EXPECT_FALSE(acc->EpsilonClassic(delta).ok());
  }
}

TEST(RdpAccountant, ConversionRefusesMalformedInput) {
  const std::vector<double> orders = {2.0, 4.0};
  EXPECT_FALSE(EpsilonFromRdp(orders, std::vector<double>{0.1}, 1e-5).ok());          // lengths differ
  EXPECT_FALSE(EpsilonFromRdp(orders, std::vector<double>{0.1, -0.2}, 1e-5).ok());    // negative RDP
  EXPECT_FALSE(EpsilonFromRdp(orders, std::vector<double>{0.1, kNaN}, 1e-5).ok());    // NaN RDP
  EXPECT_FALSE(EpsilonFromRdp(std::vector<double>{1.0, 4.0}, std::vector<double>{0.1, 0.2}, 1e-5).ok());
  EXPECT_FALSE(EpsilonFromRdpClassic({}, {}, 1e-5).ok());
  auto ok = EpsilonFromRdp(orders, std::vector<double>{0.1, 0.2}, 1e-5);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  // Hand-computed: order 4 gives 0.2 - (log(1e-5) + log 4)/3 + log(3/4) = 3.7074...; order 2 gives
  // 0.1 - (log(1e-5) + log 2) + log(1/2) = 9.4198...: order 4 wins.
  EXPECT_EQ(ok->order, 4.0);
  EXPECT_TRUE(NearRel(ok->epsilon, 0.2 - (std::log(1e-5) + std::log(4.0)) / 3.0 + std::log(0.75), 1e-15));
}

}  // namespace
}  // namespace shardps::privacy
