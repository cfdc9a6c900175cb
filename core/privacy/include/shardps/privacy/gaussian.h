// Deterministic Gaussian noise for DP-FedAvg (McMahan, Ramage, Talwar, Zhang 2018): the server adds
// N(0, (z x S)^2) to each coordinate of the sum of the sampled clients' clipped updates (clip.h),
// then divides by the expected number of clients m = q x N, so the noise on the average has
// standard deviation z x S / m. The privacy this buys is what rdp_accountant.h computes.
//
//   // round r, table t: stream t keeps tables' noise independent of each other.
//   SHARDPS_RETURN_IF_ERROR(privacy::AddGaussianNoise(sum, z * S, {.seed = seed, .round = r, .stream = t}));
//   for (float& v : sum) v /= expected_clients;
//
// How the numbers are drawn. Value i of key (seed, round, stream) is a pure function of those four
// numbers, so a run is bit-identical whatever the order, the chunking or the thread that draws it:
//   k     = SplitMix64(SplitMix64(SplitMix64(SplitMix64(seed) ^ kNoiseDomain) ^ round) ^ stream)
//   x_i   = SplitMix64(k + i x 0x9E3779B97F4A7C15)   (the SplitMix64 stream of state k; random.h)
//   sign  = the top bit of x_i; j = the next 52 bits; p = (2j + 1) / 2^54, in (0, 1/2)
//   n_i   = -Phi^-1(p) if sign is set, else Phi^-1(p)
// Together the sign and p are one uniform u in (0, 1) with 53 random bits (u = p or 1 - p; neither
// 0 nor 1 can come out), and p is exactly representable, so the lower tail is computed without the
// cancellation of 1 - u. Phi^-1 is Acklam's rational approximation (relative error below 1.2e-9)
// refined by one Halley step on Phi, computed with erfc in the tail and erf near the centre, which
// brings it to about double precision. The result matches the library's own erf/erfc/log/exp: runs
// are bit-identical on the same build and C library; another libm may differ in the last bits.
//
// SECURITY. SplitMix64 is a counter-based generator that is not cryptographic: anyone who knows
// the seed can recompute every noise value and subtract it, which removes the privacy entirely.
// That is fine for reproducible research runs (the guarantee is then about what the released model
// reveals to someone who does not know the seed). A deployment that needs the formal DP guarantee
// against an adversary who may learn or guess the seed must use a secret, unpredictable seed drawn
// per job (a caller can take 8 bytes from OpenSSL's RAND_bytes and pass them as `seed`) and keep it
// away from the released artefacts; this library never chooses the seed itself. Note also that
// floating-point noise has known side channels (Mironov 2012, "On significance of the least
// significant bits for differential privacy"); this implementation does not defend against them.
// Thread safety: pure functions; the caller owns the span.
#pragma once

#include <cstdint>
#include <span>

#include "shardps/base/status.h"

namespace shardps::privacy {

// Which noise: the same key always gives the same values; a different seed, round or stream gives
// independent ones. `stream` separates the draws of one round (a table, a chunk, a layer).
struct NoiseKey {
  uint64_t seed = 0;
  uint64_t round = 0;
  uint64_t stream = 0;
};

// The standard normal value number `index` of `key` (mean 0, variance 1). Finite, |n| < 8.3.
double StandardNormal(const NoiseKey& key, uint64_t index);

// The inverse of the standard normal CDF at p, for p in (0, 1) (Acklam + one Halley step). NaN
// outside (0, 1). Exposed for tests.
double InverseNormalCdf(double p);

// values[i] += stddev x StandardNormal(key, i), the sum formed in double and rounded to float once.
// stddev = 0 leaves the values unchanged. INVALID_ARGUMENT (values untouched) when stddev is
// negative or not finite.
Status AddGaussianNoise(std::span<float> values, double stddev, const NoiseKey& key);

}  // namespace shardps::privacy
