// Where the secure-aggregation library draws its secret randomness: X25519 private keys, the
// self-mask seeds, Shamir coefficients. Always passed in, never a global, so a test can inject a
// reproducible source and a whole round is repeatable bit for bit.
//
//   SystemRandomSource rng;                           // production: OpenSSL's RAND_bytes
//   std::array<uint8_t, 32> seed;
//   SHARDPS_RETURN_IF_ERROR(rng.Fill(seed));
//
//   ChaCha20RandomSource test_rng = ChaCha20RandomSource::FromSeed(7);   // tests only
//
// Thread safety: a RandomSource is not thread-safe; give each thread (each client) its own.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>

#include "shardps/base/status.h"

namespace shardps::secagg {

namespace internal {
class ChaCha20Stream;  // src/crypto.h
}  // namespace internal

class RandomSource {
 public:
  virtual ~RandomSource() = default;
  // Fills `out` with random bytes; INTERNAL when the source fails (then `out` must not be used).
  virtual Status Fill(std::span<uint8_t> out) = 0;
};

// The operating system's CSPRNG through OpenSSL's RAND_bytes. Stateless.
class SystemRandomSource final : public RandomSource {
 public:
  Status Fill(std::span<uint8_t> out) override;
};

// The ChaCha20 keystream of a fixed key (nonce 0, block counter from 0), handed out in order: the
// same key gives the same bytes on every run and machine. Deterministic, hence for tests and
// reproducible simulations only: never use it where secrets must be secret.
class ChaCha20RandomSource final : public RandomSource {
 public:
  explicit ChaCha20RandomSource(const std::array<uint8_t, 32>& key);
  // The key is the seed's 8 little-endian bytes followed by 24 zero bytes.
  static ChaCha20RandomSource FromSeed(uint64_t seed);
  ~ChaCha20RandomSource() override;
  ChaCha20RandomSource(ChaCha20RandomSource&&) noexcept;
  ChaCha20RandomSource& operator=(ChaCha20RandomSource&&) noexcept;

  Status Fill(std::span<uint8_t> out) override;

 private:
  std::array<uint8_t, 32> key_;
  std::unique_ptr<internal::ChaCha20Stream> stream_;  // made by the first Fill
};

}  // namespace shardps::secagg
