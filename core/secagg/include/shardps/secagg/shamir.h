// Shamir secret sharing (Shamir 1979), t-of-n: any t shares give the secret back, fewer than t
// say nothing about it (every secret is equally likely given t - 1 shares).
//
//   SHARDPS_ASSIGN_OR_RETURN(std::vector<Share> shares, Split(secret, /*t=*/3, /*n=*/5, rng));
//   // ... hand shares[i] to holder i + 1; later, with any 3 of them:
//   SHARDPS_ASSIGN_OR_RETURN(std::vector<uint8_t> back, Recover(some_three, /*t=*/3));
//
// The field: GF(2^8) (the AES field, reduction polynomial x^8 + x^4 + x^3 + x + 1), byte by byte,
// as HashiCorp Vault's shamir package does. Each byte of the secret is the constant term of its
// own random polynomial of degree t - 1, so a share is as long as the secret and needs no encoding
// or bignum arithmetic; the price is at most 255 shares (x-coordinates 1..255; x = 0 is the
// secret). The secure-aggregation protocol uses the client id as x (round.h), so a round has at
// most 255 participants. Multiplication and inversion run in constant time (no log/exp tables
// indexed by secret bytes).
//
// Errors: INVALID_ARGUMENT for bad arguments (t < 1, t > n, n > 255, x = 0, duplicate x, shares of
// different lengths), FAILED_PRECONDITION for fewer than t shares, DATA_LOSS when more than t
// shares are given and they do not lie on one polynomial. Each message names the numbers.
// Thread safety: pure functions (the RandomSource is the caller's).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "shardps/base/status.h"
#include "shardps/secagg/random_source.h"

namespace shardps::secagg {

inline constexpr int kMaxShares = 255;

struct Share {
  uint8_t x = 0;           // the evaluation point, 1..255
  std::vector<uint8_t> y;  // the polynomials' values at x, one byte per byte of the secret
};

// n shares with x = 1..n; 1 <= t <= n <= 255. Draws (t - 1) * secret.size() bytes from `rng`.
Result<std::vector<Share>> Split(std::span<const uint8_t> secret, int t, int n, RandomSource& rng);

// One share at each of `xs` (distinct, non-zero), in that order; 1 <= t <= xs.size() <= 255.
Result<std::vector<Share>> SplitAt(std::span<const uint8_t> secret, int t, std::span<const uint8_t> xs,
                                   RandomSource& rng);

// The secret from at least t shares: interpolation at 0 through the first t; any further shares
// must lie on the same polynomials (DATA_LOSS names the first that does not).
Result<std::vector<uint8_t>> Recover(std::span<const Share> shares, int t);

}  // namespace shardps::secagg
