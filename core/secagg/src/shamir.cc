// Shamir sharing over GF(2^8) = GF(2)[x] / (x^8 + x^4 + x^3 + x + 1). Addition is XOR; the
// multiplication below is a fixed 8-step shift-and-add whose branches and memory accesses do not
// depend on the bytes, and the inverse is a^254 (a^255 = 1 for a != 0).
#include "shardps/secagg/shamir.h"

#include <string>

#include "crypto.h"

namespace shardps::secagg {
namespace {

uint8_t GfMul(uint8_t a, uint8_t b) {
  uint8_t r = 0;
  for (int i = 0; i < 8; ++i) {
    r ^= static_cast<uint8_t>(-(b & 1) & a);                    // add a when b's low bit is set
    const uint8_t carry = static_cast<uint8_t>(-(a >> 7));      // 0xff when a * x overflows
    a = static_cast<uint8_t>((a << 1) ^ (carry & 0x1b));         // a *= x mod the polynomial
    b >>= 1;
  }
  return r;
}

// a^254 = a^-1 for a != 0 (assert: the callers never invert 0).
uint8_t GfInv(uint8_t a) {
  // 254 = 0b11111110: square-and-multiply over a fixed exponent.
  uint8_t result = 1;
  uint8_t power = a;  // a^(2^i)
  for (int i = 0; i < 8; ++i) {
    if ((254 >> i) & 1) result = GfMul(result, power);
    power = GfMul(power, power);
  }
  return result;
}

std::string Num(long long v) { return std::to_string(v); }

Status CheckThreshold(int t, size_t n) {
  if (t < 1) return InvalidArgument("Shamir threshold t = " + Num(t) + " must be at least 1");
  if (n > static_cast<size_t>(kMaxShares)) {
    return InvalidArgument("Shamir over GF(2^8) has at most " + Num(kMaxShares) + " shares (x = 1..255); " +
                           Num(static_cast<long long>(n)) + " were asked for");
  }
  if (static_cast<size_t>(t) > n) {
    return InvalidArgument("Shamir threshold t = " + Num(t) + " exceeds the number of shares n = " +
                           Num(static_cast<long long>(n)));
  }
  return Status::Ok();
}

// The Lagrange weights at `at` of the points xs: w_i = prod_{j != i} (at - x_j) / (x_i - x_j).
std::vector<uint8_t> LagrangeWeights(std::span<const uint8_t> xs, uint8_t at) {
  std::vector<uint8_t> w(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) {
    uint8_t num = 1, den = 1;
    for (size_t j = 0; j < xs.size(); ++j) {
      if (j == i) continue;
      num = GfMul(num, static_cast<uint8_t>(at ^ xs[j]));
      den = GfMul(den, static_cast<uint8_t>(xs[i] ^ xs[j]));
    }
    w[i] = GfMul(num, GfInv(den));
  }
  return w;
}

}  // namespace

Result<std::vector<Share>> SplitAt(std::span<const uint8_t> secret, int t, std::span<const uint8_t> xs,
                                   RandomSource& rng) {
  SHARDPS_RETURN_IF_ERROR(CheckThreshold(t, xs.size()));
  bool seen[256] = {};
  for (uint8_t x : xs) {
    if (x == 0) return InvalidArgument("Shamir x-coordinate 0 is the secret itself; shares need x in 1..255");
    if (seen[x]) return InvalidArgument("Shamir x-coordinate " + Num(x) + " appears twice");
    seen[x] = true;
  }
  // Coefficients 1..t-1 of each byte's polynomial (coefficient 0 is the secret byte), uniform in
  // GF(2^8): coeffs[k * L + i] is the coefficient of x^(k+1) for byte i.
  const size_t len = secret.size();
  std::vector<uint8_t> coeffs((static_cast<size_t>(t) - 1) * len);
  SHARDPS_RETURN_IF_ERROR(rng.Fill(coeffs));
  std::vector<Share> shares(xs.size());
  for (size_t s = 0; s < xs.size(); ++s) {
    shares[s].x = xs[s];
    shares[s].y.resize(len);
    for (size_t i = 0; i < len; ++i) {
      // Horner: ((c_{t-1} x + c_{t-2}) x + ...) x + secret.
      uint8_t acc = 0;
      for (int k = t - 2; k >= 0; --k) acc = static_cast<uint8_t>(GfMul(acc, xs[s]) ^ coeffs[k * len + i]);
      shares[s].y[i] = static_cast<uint8_t>(GfMul(acc, xs[s]) ^ secret[i]);
    }
  }
  internal::Wipe(coeffs.data(), coeffs.size());
  return shares;
}

Result<std::vector<Share>> Split(std::span<const uint8_t> secret, int t, int n, RandomSource& rng) {
  if (n < 1 || n > kMaxShares) {
    return InvalidArgument("Shamir share count n = " + Num(n) + " must be in [1, " + Num(kMaxShares) + "]");
  }
  SHARDPS_RETURN_IF_ERROR(CheckThreshold(t, static_cast<size_t>(n)));
  std::vector<uint8_t> xs(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) xs[i] = static_cast<uint8_t>(i + 1);
  return SplitAt(secret, t, xs, rng);
}

Result<std::vector<uint8_t>> Recover(std::span<const Share> shares, int t) {
  if (t < 1 || t > kMaxShares) {
    return InvalidArgument("Shamir threshold t = " + Num(t) + " must be in [1, " + Num(kMaxShares) + "]");
  }
  if (shares.size() < static_cast<size_t>(t)) {
    return FailedPrecondition("Shamir recovery needs t = " + Num(t) + " shares, got " +
                              Num(static_cast<long long>(shares.size())));
  }
  bool seen[256] = {};
  const size_t len = shares[0].y.size();
  for (const Share& s : shares) {
    if (s.x == 0) return InvalidArgument("a Shamir share has x-coordinate 0 (valid ones are 1..255)");
    if (seen[s.x]) return InvalidArgument("two Shamir shares have x-coordinate " + Num(s.x));
    seen[s.x] = true;
    if (s.y.size() != len) {
      return InvalidArgument("Shamir shares of different lengths: x = " + Num(shares[0].x) + " has " +
                             Num(static_cast<long long>(len)) + " bytes, x = " + Num(s.x) + " has " +
                             Num(static_cast<long long>(s.y.size())));
    }
  }
  std::vector<uint8_t> xs(static_cast<size_t>(t));
  for (int i = 0; i < t; ++i) xs[i] = shares[i].x;
  auto interpolate = [&](uint8_t at, std::vector<uint8_t>& out) {
    const std::vector<uint8_t> w = LagrangeWeights(xs, at);
    out.assign(len, 0);
    for (int i = 0; i < t; ++i) {
      for (size_t b = 0; b < len; ++b) out[b] ^= GfMul(w[i], shares[i].y[b]);
    }
  };
  std::vector<uint8_t> secret;
  interpolate(0, secret);
  // Shares beyond the first t must lie on the same polynomials.
  std::vector<uint8_t> expected;
  for (size_t k = static_cast<size_t>(t); k < shares.size(); ++k) {
    interpolate(shares[k].x, expected);
    uint8_t diff = 0;
    for (size_t b = 0; b < len; ++b) diff |= static_cast<uint8_t>(expected[b] ^ shares[k].y[b]);
    if (diff != 0) {
      internal::Wipe(secret.data(), secret.size());
      return DataLoss("the Shamir share at x = " + Num(shares[k].x) + " is inconsistent with the first t = " +
                      Num(t) + " shares");
    }
  }
  return secret;
}

}  // namespace shardps::secagg
