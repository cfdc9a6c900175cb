// The masks of secure aggregation: X25519 key agreement, HKDF-SHA256 key derivation, and ChaCha20
// keystreams read as elements of Z_{2^m}. All primitives are OpenSSL 3's (EVP); nothing here is a
// hand-written cipher.
//
//   SHARDPS_ASSIGN_OR_RETURN(KeyPair mine, GenerateKeyPair(rng));
//   // after exchanging public keys with peer v:
//   SHARDPS_ASSIGN_OR_RETURN(SymmetricKey k,
//       AgreeKey(mine.private_key, their_public, round, me, v, KeyPurpose::kPairwiseMask));
//   SHARDPS_RETURN_IF_ERROR(ApplyMask(y, k, m, PairwiseSign(me, v)));   // v does the same: the two cancel
//
// Key derivation: AgreeKey = HKDF-SHA256(ikm = X25519(private, peer public),
//   salt = "shardps-secagg-v1", info = label || round (u64 LE) || min(a, b) (u32 LE) || max(a, b)
//   (u32 LE)), 32 bytes, with label "pairwise-mask" or "share-encryption". The sorted pair makes
// the key the same on both sides; round and label make every use's key independent.
// SelfMaskKey = HKDF-SHA256(ikm = b_u, same salt, info = "self-mask" || round || u || u).
// Mask expansion: the ChaCha20 keystream of the key (RFC 8439 block function; nonce 0, counter 0)
// is cut into ceil(m/8)-byte little-endian words, each taken mod 2^m: element i of the mask. Since
// 2^m divides 2^(8*ceil(m/8)), every element is uniform in Z_{2^m}.
// Thread safety: pure functions.
#pragma once

#include <array>
#include <cstdint>
#include <span>

#include "shardps/base/status.h"
#include "shardps/secagg/random_source.h"
#include "shardps/secagg/round.h"

namespace shardps::secagg {

using PublicKey = std::array<uint8_t, 32>;     // X25519 u-coordinate, RFC 7748 encoding
using PrivateKey = std::array<uint8_t, 32>;    // X25519 scalar (clamped by X25519 itself)
using SymmetricKey = std::array<uint8_t, 32>;  // a ChaCha20 or ChaCha20-Poly1305 key
using Seed = std::array<uint8_t, 32>;          // a self-mask seed b_u

struct KeyPair {
  PrivateKey private_key{};
  PublicKey public_key{};
};

// A key pair whose private key is 32 bytes of `rng`.
Result<KeyPair> GenerateKeyPair(RandomSource& rng);
// The public key of `private_key` (the server checks a recovered s_sk against the advertised s_pk).
Result<PublicKey> DerivePublicKey(const PrivateKey& private_key);

enum class KeyPurpose : uint8_t { kPairwiseMask, kShareEncryption };

// The key clients a and b share for `purpose` in round `round`; the same for (a, b) and (b, a).
// INVALID_ARGUMENT when X25519 refuses the peer's key (a small-order point: all-zero output).
Result<SymmetricKey> AgreeKey(const PrivateKey& mine, const PublicKey& theirs, uint64_t round, ClientId a,
                              ClientId b, KeyPurpose purpose);
// The key of client `owner`'s self mask PRG(b_u) in round `round`.
Result<SymmetricKey> SelfMaskKey(const Seed& seed, uint64_t round, ClientId owner);

enum class MaskSign : uint8_t { kAdd, kSubtract };
// The rule that makes pairwise masks cancel: of a pair, the lower id adds and the higher subtracts.
inline MaskSign PairwiseSign(ClientId self, ClientId peer) { return self < peer ? MaskSign::kAdd : MaskSign::kSubtract; }
inline MaskSign Opposite(MaskSign s) { return s == MaskSign::kAdd ? MaskSign::kSubtract : MaskSign::kAdd; }

// y[i] = y[i] +- PRG(key)[i] mod 2^m for every i; elements of y must be in Z_{2^m}.
// y.size() <= kMaxVectorLength, m in [1, 64] (asserted).
Status ApplyMask(std::span<uint64_t> y, const SymmetricKey& key, int m, MaskSign sign);

}  // namespace shardps::secagg
