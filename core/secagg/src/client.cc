#include "shardps/secagg/client.h"

#include <algorithm>
#include <string>

#include "crypto.h"
#include "shardps/secagg/fixed_point.h"
#include "shardps/secagg/shamir.h"

namespace shardps::secagg {

namespace {

// The associated data and nonce of the ciphertext `from` sends `to` (messages.h).

std::array<uint8_t, 16> ShareAd(uint64_t round, ClientId from, ClientId to) {
  std::array<uint8_t, 16> ad{};
  for (int i = 0; i < 8; ++i) ad[i] = static_cast<uint8_t>(round >> (8 * i));
  for (int i = 0; i < 4; ++i) ad[8 + i] = static_cast<uint8_t>(from >> (8 * i));
  for (int i = 0; i < 4; ++i) ad[12 + i] = static_cast<uint8_t>(to >> (8 * i));
  return ad;
}

internal::Nonce12 ShareNonce(ClientId from, ClientId to) {
  internal::Nonce12 nonce{};
  for (int i = 0; i < 4; ++i) nonce[i] = static_cast<uint8_t>(from >> (8 * i));
  for (int i = 0; i < 4; ++i) nonce[4 + i] = static_cast<uint8_t>(to >> (8 * i));
  return nonce;
}

std::string Id(ClientId id) { return std::to_string(id); }

}  // namespace

Result<SecAggClient> SecAggClient::Create(RoundConfig config, ClientId id) {
  SHARDPS_RETURN_IF_ERROR(ValidateRoundConfig(config));
  if (!std::binary_search(config.participants.begin(), config.participants.end(), id)) {
    return InvalidArgument("secagg round " + std::to_string(config.round_id) + ": client " + Id(id) +
                           " is not one of the round's participants");
  }
  return SecAggClient(std::move(config), id);
}

SecAggClient::~SecAggClient() {
  internal::Wipe(c_keys_.private_key.data(), c_keys_.private_key.size());
  internal::Wipe(s_keys_.private_key.data(), s_keys_.private_key.size());
  internal::Wipe(b_.data(), b_.size());
  for (auto& [owner, h] : held_) internal::Wipe(&h, sizeof(h));
}

Status SecAggClient::Refuse(StatusCode code, Phase phase, const std::string& what) const {
  return Status(code, "secagg round " + std::to_string(config_.round_id) + ", client " + Id(id_) + ", phase " +
                          std::string(PhaseName(phase)) + ": " + what);
}

Status SecAggClient::CheckPhase(Phase expected, uint64_t message_round) const {
  if (phase_ != expected) {
    return Refuse(StatusCode::kFailedPrecondition, expected,
                  "out of phase: the client is in phase " + std::string(PhaseName(phase_)));
  }
  if (message_round != config_.round_id) {
    return Refuse(StatusCode::kFailedPrecondition, expected,
                  "the server's message is for round " + std::to_string(message_round) + " (a replay?)");
  }
  return Status::Ok();
}

Result<AdvertiseKeysMessage> SecAggClient::AdvertiseKeys(RandomSource& rng) {
  SHARDPS_RETURN_IF_ERROR(CheckPhase(Phase::kAdvertiseKeys, config_.round_id));
  SHARDPS_ASSIGN_OR_RETURN(KeyPair c, GenerateKeyPair(rng));
  auto s = GenerateKeyPair(rng);
  if (!s.ok()) {
    internal::Wipe(c.private_key.data(), c.private_key.size());
    return s.status();
  }
  c_keys_ = c;
  s_keys_ = *s;
  internal::Wipe(c.private_key.data(), c.private_key.size());
  internal::Wipe(s->private_key.data(), s->private_key.size());
  phase_ = Phase::kShareKeys;
  return AdvertiseKeysMessage{.round = config_.round_id, .from = id_, .c_pk = c_keys_.public_key,
                              .s_pk = s_keys_.public_key};
}

Result<ShareKeysMessage> SecAggClient::ShareKeys(const KeyListMessage& keys, RandomSource& rng) {
  constexpr Phase kPhase = Phase::kShareKeys;
  static_assert(sizeof(HeldShares) == 2 * kShareBytes, "HeldShares is encrypted as its bytes");
  SHARDPS_RETURN_IF_ERROR(CheckPhase(kPhase, keys.round));
  // U1 as the server announces it: ascending participants, this client's own keys unchanged.
  std::map<ClientId, KeyListMessage::Entry> u1;
  for (size_t i = 0; i < keys.clients.size(); ++i) {
    const auto& e = keys.clients[i];
    if (!std::binary_search(config_.participants.begin(), config_.participants.end(), e.id)) {
      return Refuse(StatusCode::kInvalidArgument, kPhase, "the key list names client " + Id(e.id) +
                                                             ", not a participant of the round");
    }
    if (i > 0 && e.id <= keys.clients[i - 1].id) {
      return Refuse(StatusCode::kInvalidArgument, kPhase,
                    "the key list is not strictly ascending (" + Id(e.id) + " after " + Id(keys.clients[i - 1].id) + ")");
    }
    u1.emplace(e.id, e);
  }
  auto self = u1.find(id_);
  if (self == u1.end()) {
    return Refuse(StatusCode::kInvalidArgument, kPhase, "the key list does not include this client");
  }
  if (self->second.c_pk != c_keys_.public_key || self->second.s_pk != s_keys_.public_key) {
    return Refuse(StatusCode::kInvalidArgument, kPhase, "the key list carries other keys for this client");
  }
  if (u1.size() < config_.threshold) {
    return Refuse(StatusCode::kUnavailable, kPhase,
                  "round aborted: " + std::to_string(u1.size()) + " clients advertised keys, the threshold needs " +
                      std::to_string(config_.threshold));
  }

  // Shamir-share s_sk and b_u at x = the ids of U1, t-of-|U1|.
  Seed b{};
  SHARDPS_RETURN_IF_ERROR(rng.Fill(b));
  std::vector<uint8_t> xs;
  for (const auto& [id, e] : u1) xs.push_back(static_cast<uint8_t>(id));
  const int t = static_cast<int>(config_.threshold);
  auto s_shares = SplitAt(s_keys_.private_key, t, xs, rng);
  auto b_shares = SplitAt(b, t, xs, rng);
  auto wipe_shares = [&] {
    for (auto* shares : {&s_shares, &b_shares}) {
      if (!shares->ok()) continue;
      for (Share& s : shares->value()) internal::Wipe(s.y.data(), s.y.size());
    }
  };
  if (!s_shares.ok() || !b_shares.ok()) {
    wipe_shares();
    internal::Wipe(b.data(), b.size());
    return (!s_shares.ok() ? s_shares.status() : b_shares.status()).WithContext("sharing this client's secrets");
  }

  ShareKeysMessage out{.round = config_.round_id, .from = id_, .shares = {}};
  std::map<ClientId, HeldShares> held;
  for (size_t i = 0; i < xs.size(); ++i) {
    const ClientId v = xs[i];
    HeldShares h;
    std::copy_n((*s_shares)[i].y.begin(), kShareBytes, h.s_sk.begin());
    std::copy_n((*b_shares)[i].y.begin(), kShareBytes, h.b.begin());
    if (v == id_) {
      held[id_] = h;  // this client's own shares stay here
      internal::Wipe(&h, sizeof(h));
      continue;
    }
    auto sealed = [&]() -> Result<std::vector<uint8_t>> {
      SHARDPS_ASSIGN_OR_RETURN(SymmetricKey key, AgreeKey(c_keys_.private_key, u1[v].c_pk, config_.round_id, id_, v,
                                                          KeyPurpose::kShareEncryption));
      auto r = internal::AeadSeal(key, ShareNonce(id_, v), ShareAd(config_.round_id, id_, v),
                                  std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(&h), sizeof(h)));
      internal::Wipe(key.data(), key.size());
      return r;
    }();
    internal::Wipe(&h, sizeof(h));
    if (!sealed.ok()) {
      wipe_shares();
      internal::Wipe(b.data(), b.size());
      for (auto& [owner, hs] : held) internal::Wipe(&hs, sizeof(hs));
      return Refuse(sealed.status().code(), kPhase, "encrypting the shares for client " + Id(v) + ": " +
                                                        sealed.status().message());
    }
    ShareCiphertext c{.from = id_, .to = v, .bytes = {}};
    std::copy(sealed->begin(), sealed->end(), c.bytes.begin());
    out.shares.push_back(c);
  }
  wipe_shares();
  b_ = b;
  internal::Wipe(b.data(), b.size());
  held_ = std::move(held);
  u1_ = std::move(u1);
  phase_ = Phase::kMaskedInputCollection;
  return out;
}

Result<MaskedInputMessage> SecAggClient::MaskInput(const RoutedSharesMessage& routed, std::span<const uint64_t> x) {
  constexpr Phase kPhase = Phase::kMaskedInputCollection;
  SHARDPS_RETURN_IF_ERROR(CheckPhase(kPhase, routed.round));
  if (routed.to != id_) {
    return Refuse(StatusCode::kInvalidArgument, kPhase, "the routed shares are addressed to client " + Id(routed.to));
  }
  if (x.size() != config_.vector_length) {
    return Refuse(StatusCode::kInvalidArgument, kPhase, "the input has " + std::to_string(x.size()) +
                                                            " elements, the round aggregates " +
                                                            std::to_string(config_.vector_length));
  }
  const uint64_t mask = RingMask(config_.ring_bits);
  for (size_t i = 0; i < x.size(); ++i) {
    if ((x[i] & ~mask) != 0) {
      return Refuse(StatusCode::kInvalidArgument, kPhase, "input element " + std::to_string(i) + " = " +
                                                              std::to_string(x[i]) + " is not in Z_2^" +
                                                              std::to_string(config_.ring_bits));
    }
  }
  // U2 = this client and the senders, each a member of U1 other than this client, once.
  std::vector<ClientId> u2{id_};
  for (const ShareCiphertext& c : routed.shares) {
    if (c.to != id_) {
      return Refuse(StatusCode::kInvalidArgument, kPhase, "a routed ciphertext is addressed to client " + Id(c.to));
    }
    if (c.from == id_ || u1_.count(c.from) == 0) {
      return Refuse(StatusCode::kInvalidArgument, kPhase,
                    "shares from client " + Id(c.from) + ", which is not another client of the key list");
    }
    if (std::find(u2.begin(), u2.end(), c.from) != u2.end()) {
      return Refuse(StatusCode::kInvalidArgument, kPhase, "shares from client " + Id(c.from) + " arrive twice");
    }
    u2.push_back(c.from);
  }
  std::sort(u2.begin(), u2.end());
  if (u2.size() < config_.threshold) {
    return Refuse(StatusCode::kUnavailable, kPhase,
                  "round aborted: " + std::to_string(u2.size()) + " clients shared keys, the threshold needs " +
                      std::to_string(config_.threshold));
  }

  // Decrypt every ciphertext before keeping any share, so a refusal changes nothing.
  std::map<ClientId, HeldShares> received;
  auto wipe_received = [&] {
    for (auto& [owner, h] : received) internal::Wipe(&h, sizeof(h));
  };
  for (const ShareCiphertext& c : routed.shares) {
    auto plain = [&]() -> Result<std::vector<uint8_t>> {
      SHARDPS_ASSIGN_OR_RETURN(SymmetricKey key, AgreeKey(c_keys_.private_key, u1_.at(c.from).c_pk, config_.round_id,
                                                          id_, c.from, KeyPurpose::kShareEncryption));
      auto r = internal::AeadOpen(key, ShareNonce(c.from, id_), ShareAd(config_.round_id, c.from, id_), c.bytes);
      internal::Wipe(key.data(), key.size());
      return r;
    }();
    if (!plain.ok()) {
      wipe_received();
      return Refuse(plain.status().code(), kPhase, "the shares from client " + Id(c.from) + ": " +
                                                       plain.status().message());
    }
    HeldShares& h = received[c.from];
    std::copy_n(plain->begin(), kShareBytes, h.s_sk.begin());
    std::copy_n(plain->begin() + kShareBytes, kShareBytes, h.b.begin());
    internal::Wipe(plain->data(), plain->size());
  }

  // y_u = x_u + PRG(b_u) + sum_{v in U2, v != u} (+-) PRG(s_uv).
  MaskedInputMessage out{.round = config_.round_id, .from = id_, .ring_bits = config_.ring_bits,
                         .y = std::vector<uint64_t>(x.begin(), x.end())};
  Status s = [&]() -> Status {
    SHARDPS_ASSIGN_OR_RETURN(SymmetricKey self_key, SelfMaskKey(b_, config_.round_id, id_));
    Status st = ApplyMask(out.y, self_key, config_.ring_bits, MaskSign::kAdd);
    internal::Wipe(self_key.data(), self_key.size());
    SHARDPS_RETURN_IF_ERROR(st);
    for (ClientId v : u2) {
      if (v == id_) continue;
      auto key = AgreeKey(s_keys_.private_key, u1_.at(v).s_pk, config_.round_id, id_, v, KeyPurpose::kPairwiseMask);
      if (!key.ok()) return key.status().WithContext("the pairwise mask with client " + Id(v));
      st = ApplyMask(out.y, *key, config_.ring_bits, PairwiseSign(id_, v));
      internal::Wipe(key->data(), key->size());
      SHARDPS_RETURN_IF_ERROR(st);
    }
    return Status::Ok();
  }();
  if (!s.ok()) {
    wipe_received();
    return Refuse(s.code(), kPhase, s.message());
  }
  for (auto& [owner, h] : received) held_[owner] = h;
  wipe_received();
  u2_ = std::move(u2);
  phase_ = Phase::kUnmasking;
  return out;
}

Result<UnmaskResponseMessage> SecAggClient::Unmask(const UnmaskRequestMessage& request) {
  constexpr Phase kPhase = Phase::kUnmasking;
  SHARDPS_RETURN_IF_ERROR(CheckPhase(kPhase, request.round));
  // Never both shares of one peer: with b_v and s_sk_v the server could unmask v's input alone.
  for (ClientId v : request.survivors) {
    if (std::find(request.dropped.begin(), request.dropped.end(), v) != request.dropped.end()) {
      return Refuse(StatusCode::kFailedPrecondition, kPhase,
                    "refusing to reveal both the b share and the s_sk share of client " + Id(v) +
                        " (it is listed as a survivor and as dropped)");
    }
  }
  auto check_list = [&](const std::vector<ClientId>& ids, const char* what) -> Status {
    for (size_t i = 0; i < ids.size(); ++i) {
      if (i > 0 && ids[i] <= ids[i - 1]) {
        return Refuse(StatusCode::kInvalidArgument, kPhase,
                      std::string("the ") + what + " are not strictly ascending (" + Id(ids[i]) + " after " +
                          Id(ids[i - 1]) + ")");
      }
      if (!std::binary_search(u2_.begin(), u2_.end(), ids[i])) {
        return Refuse(StatusCode::kInvalidArgument, kPhase,
                      std::string("the ") + what + " include client " + Id(ids[i]) +
                          ", which did not share keys with this client");
      }
    }
    return Status::Ok();
  };
  SHARDPS_RETURN_IF_ERROR(check_list(request.survivors, "survivors"));
  SHARDPS_RETURN_IF_ERROR(check_list(request.dropped, "dropped clients"));
  if (!std::binary_search(request.survivors.begin(), request.survivors.end(), id_)) {
    return Refuse(StatusCode::kInvalidArgument, kPhase, "this client sent its masked input but is not a survivor");
  }
  if (request.survivors.size() + request.dropped.size() != u2_.size()) {
    return Refuse(StatusCode::kInvalidArgument, kPhase,
                  "survivors and dropped clients number " +
                      std::to_string(request.survivors.size() + request.dropped.size()) + ", but " +
                      std::to_string(u2_.size()) + " clients shared keys");
  }
  if (request.survivors.size() < config_.threshold) {
    return Refuse(StatusCode::kUnavailable, kPhase,
                  "round aborted: " + std::to_string(request.survivors.size()) +
                      " clients sent masked inputs, the threshold needs " + std::to_string(config_.threshold));
  }
  UnmaskResponseMessage out{.round = config_.round_id, .from = id_, .b_shares = {}, .s_shares = {}};
  for (ClientId v : request.survivors) out.b_shares.push_back({.owner = v, .y = held_.at(v).b});
  for (ClientId v : request.dropped) out.s_shares.push_back({.owner = v, .y = held_.at(v).s_sk});
  phase_ = Phase::kDone;
  return out;
}

}  // namespace shardps::secagg
