#include "shardps/secagg/masks.h"

#include <algorithm>
#include <cassert>
#include <string_view>
#include <vector>

#include "crypto.h"
#include "shardps/secagg/fixed_point.h"

namespace shardps::secagg {
namespace {

constexpr std::string_view kSalt = "shardps-secagg-v1";

void Put32(std::vector<uint8_t>& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void Put64(std::vector<uint8_t>& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

// label || round || min(a, b) || max(a, b)
std::vector<uint8_t> Info(std::string_view label, uint64_t round, ClientId a, ClientId b) {
  std::vector<uint8_t> info(label.begin(), label.end());
  Put64(info, round);
  Put32(info, std::min(a, b));
  Put32(info, std::max(a, b));
  return info;
}

std::span<const uint8_t> SaltBytes() {
  return {reinterpret_cast<const uint8_t*>(kSalt.data()), kSalt.size()};
}

}  // namespace

Result<KeyPair> GenerateKeyPair(RandomSource& rng) {
  KeyPair kp;
  SHARDPS_RETURN_IF_ERROR(rng.Fill(kp.private_key));
  auto pub = internal::X25519PublicKey(kp.private_key);
  if (!pub.ok()) {
    internal::Wipe(kp.private_key.data(), kp.private_key.size());
    return pub.status();
  }
  kp.public_key = *pub;
  return kp;
}

Result<PublicKey> DerivePublicKey(const PrivateKey& private_key) { return internal::X25519PublicKey(private_key); }

Result<SymmetricKey> AgreeKey(const PrivateKey& mine, const PublicKey& theirs, uint64_t round, ClientId a,
                              ClientId b, KeyPurpose purpose) {
  SHARDPS_ASSIGN_OR_RETURN(internal::Key32 shared, internal::X25519Agree(mine, theirs));
  const std::string_view label = purpose == KeyPurpose::kPairwiseMask ? "pairwise-mask" : "share-encryption";
  const std::vector<uint8_t> info = Info(label, round, a, b);
  auto key = internal::HkdfSha256(shared, SaltBytes(), info);
  internal::Wipe(shared.data(), shared.size());
  return key;
}

Result<SymmetricKey> SelfMaskKey(const Seed& seed, uint64_t round, ClientId owner) {
  return internal::HkdfSha256(seed, SaltBytes(), Info("self-mask", round, owner, owner));
}

Status ApplyMask(std::span<uint64_t> y, const SymmetricKey& key, int m, MaskSign sign) {
  assert(m >= 1 && m <= 64 && y.size() <= kMaxVectorLength);
  SHARDPS_ASSIGN_OR_RETURN(auto stream, internal::ChaCha20Stream::Create(key, internal::Nonce12{}, 0));
  const uint64_t mask = RingMask(m);
  const size_t word = static_cast<size_t>((m + 7) / 8);  // keystream bytes per element
  // The keystream in blocks of 4096 elements, so memory stays small for any vector length.
  constexpr size_t kElements = 4096;
  std::vector<uint8_t> ks(kElements * word);
  for (size_t at = 0; at < y.size(); at += kElements) {
    const size_t n = std::min(kElements, y.size() - at);
    SHARDPS_RETURN_IF_ERROR(stream->Next(std::span<uint8_t>(ks.data(), n * word)));
    const uint8_t* p = ks.data();
    for (size_t i = 0; i < n; ++i, p += word) {
      uint64_t r = 0;
      for (size_t b = 0; b < word; ++b) r |= static_cast<uint64_t>(p[b]) << (8 * b);
      r &= mask;
      uint64_t& v = y[at + i];
      v = (sign == MaskSign::kAdd ? v + r : v - r) & mask;
    }
  }
  internal::Wipe(ks.data(), ks.size());
  return Status::Ok();
}

}  // namespace shardps::secagg
