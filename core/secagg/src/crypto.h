// Thin wrappers over the OpenSSL 3 EVP calls the secure-aggregation library uses: X25519,
// HKDF-SHA256, the ChaCha20 keystream and ChaCha20-Poly1305. Internal to core/secagg: no public
// header names an OpenSSL type. Each failure comes back as a Status; the callers add who and what.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "shardps/base/status.h"

namespace shardps::secagg::internal {

using Key32 = std::array<uint8_t, 32>;
using Nonce12 = std::array<uint8_t, 12>;
inline constexpr size_t kAeadTagBytes = 16;

// X25519 (RFC 7748) through EVP_PKEY_X25519.
Result<Key32> X25519PublicKey(const Key32& private_key);
// INVALID_ARGUMENT when OpenSSL refuses the peer's key (its output would be all zero).
Result<Key32> X25519Agree(const Key32& private_key, const Key32& peer_public_key);

// HKDF-SHA256 (RFC 5869) through EVP_KDF "HKDF": 32 bytes of output.
Result<Key32> HkdfSha256(std::span<const uint8_t> ikm, std::span<const uint8_t> salt, std::span<const uint8_t> info);

// The ChaCha20 keystream (RFC 8439) of (key, nonce) from block `counter` on, handed out in order
// across calls. Move-only; owns its EVP_CIPHER_CTX.
class ChaCha20Stream {
 public:
  static Result<std::unique_ptr<ChaCha20Stream>> Create(const Key32& key, const Nonce12& nonce, uint32_t counter);
  ~ChaCha20Stream();
  ChaCha20Stream(const ChaCha20Stream&) = delete;
  ChaCha20Stream& operator=(const ChaCha20Stream&) = delete;

  // Overwrites `out` with the next out.size() keystream bytes.
  Status Next(std::span<uint8_t> out);

 private:
  explicit ChaCha20Stream(void* ctx) : ctx_(ctx) {}
  void* ctx_;  // EVP_CIPHER_CTX*
};

// ChaCha20-Poly1305 (RFC 8439): ciphertext followed by the 16-byte tag.
Result<std::vector<uint8_t>> AeadSeal(const Key32& key, const Nonce12& nonce, std::span<const uint8_t> ad,
                                      std::span<const uint8_t> plaintext);
// DATA_LOSS when the tag does not authenticate (ciphertext, key, nonce or ad differ).
Result<std::vector<uint8_t>> AeadOpen(const Key32& key, const Nonce12& nonce, std::span<const uint8_t> ad,
                                      std::span<const uint8_t> sealed);

// Overwrites secrets before their memory is released (OPENSSL_cleanse, which the compiler keeps).
void Wipe(void* p, size_t n);

}  // namespace shardps::secagg::internal
