// Deterministic Gaussian noise (gaussian.h).
#include "shardps/privacy/gaussian.h"

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

#include "shardps/base/random.h"

namespace shardps::privacy {
namespace {

// Separates the noise from other streams drawn from the same seed (client sampling, data order):
// "DPNOISE1" in ASCII.
constexpr uint64_t kNoiseDomain = 0x44504E4F49534531ull;
constexpr uint64_t kGoldenGamma = 0x9E3779B97F4A7C15ull;

uint64_t StreamKey(const NoiseKey& key) {
  return SplitMix64(SplitMix64(SplitMix64(SplitMix64(key.seed) ^ kNoiseDomain) ^ key.round) ^ key.stream);
}

// The draw of one value from its 64 random bits (see the header): the top bit chooses the tail,
// the next 52 bits p = (2j + 1) / 2^54 in (0, 1/2), exactly representable (2j + 1 < 2^53).
double NormalFromBits(uint64_t x) {
  const bool upper = (x >> 63) != 0;
  const uint64_t j = (x >> 11) & ((uint64_t{1} << 52) - 1);
  const double p = static_cast<double>(2 * j + 1) * 0x1p-54;
  const double lower = InverseNormalCdf(p);  // < 0
  return upper ? -lower : lower;
}

// Acklam's coefficients (P. J. Acklam, "An algorithm for computing the inverse normal cumulative
// distribution function", 2003): a rational function of p - 1/2 in the central region and of
// sqrt(-2 log p) in the tails; relative error below 1.15e-9 before refinement.
constexpr double kA[6] = {-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
                          1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
constexpr double kB[5] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                          6.680131188771972e+01,  -1.328068155288572e+01};
constexpr double kC[6] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                          -2.549732539343734e+00, 4.374664141464968e+00,  2.938163982698783e+00};
constexpr double kD[4] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                          3.754408661907416e+00};
constexpr double kTailStart = 0.02425;

double AcklamLowerHalf(double p) {  // p in (0, 1/2]
  if (p < kTailStart) {
    const double t = std::sqrt(-2.0 * std::log(p));
    return (((((kC[0] * t + kC[1]) * t + kC[2]) * t + kC[3]) * t + kC[4]) * t + kC[5]) /
           ((((kD[0] * t + kD[1]) * t + kD[2]) * t + kD[3]) * t + 1.0);
  }
  const double q = p - 0.5;
  const double r = q * q;
  return (((((kA[0] * r + kA[1]) * r + kA[2]) * r + kA[3]) * r + kA[4]) * r + kA[5]) * q /
         (((((kB[0] * r + kB[1]) * r + kB[2]) * r + kB[3]) * r + kB[4]) * r + 1.0);
}

}  // namespace

double InverseNormalCdf(double p) {
  if (!(p > 0.0 && p < 1.0)) return std::numeric_limits<double>::quiet_NaN();
  // Work in the lower half, where p itself carries full relative precision; the upper half is the
  // mirror image (1 - p is exact for p >= 1/2).
  if (p > 0.5) return -InverseNormalCdf(1.0 - p);
  const double x = AcklamLowerHalf(p);
  // One Halley step on f(x) = Phi(x) - p. The error e = Phi(x) - p is formed without cancellation:
  // in the tail through erfc (Phi(x) = erfc(-x / sqrt 2) / 2, small and accurate), near the centre
  // through erf and the exact difference p - 1/2 (Sterbenz: exact for p in [1/4, 1/2]).
  constexpr double kInvSqrt2 = 0.70710678118654752440;
  constexpr double kSqrt2Pi = 2.50662827463100050242;
  const double e = p < 0.25 ? 0.5 * std::erfc(-x * kInvSqrt2) - p : 0.5 * std::erf(x * kInvSqrt2) - (p - 0.5);
  const double u = e * kSqrt2Pi * std::exp(0.5 * x * x);  // e / phi(x)
  return x - u / (1.0 + 0.5 * x * u);
}

double StandardNormal(const NoiseKey& key, uint64_t index) {
  return NormalFromBits(SplitMix64(StreamKey(key) + index * kGoldenGamma));
}

Status AddGaussianNoise(std::span<float> values, double stddev, const NoiseKey& key) {
  if (!std::isfinite(stddev) || stddev < 0.0) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.9g", stddev);
    return InvalidArgument(std::string("noise standard deviation must be finite and >= 0, got ") + buf);
  }
  if (stddev == 0.0) return Status::Ok();
  const uint64_t k = StreamKey(key);
  for (size_t i = 0; i < values.size(); ++i) {
    const double n = NormalFromBits(SplitMix64(k + static_cast<uint64_t>(i) * kGoldenGamma));
    values[i] = static_cast<float>(static_cast<double>(values[i]) + stddev * n);
  }
  return Status::Ok();
}

}  // namespace shardps::privacy
