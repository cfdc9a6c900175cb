#include "shardps/secagg/server.h"

#include <algorithm>
#include <string>

#include "crypto.h"
#include "shardps/secagg/fixed_point.h"
#include "shardps/secagg/masks.h"
#include "shardps/secagg/shamir.h"

namespace shardps::secagg {
namespace {

std::string Id(ClientId id) { return std::to_string(id); }

// OK when X25519 accepts `key` as a peer key. A small-order point gives the all-zero output for
// every (clamped) scalar, so one trial agreement with a fixed scalar finds it; refusing it here
// keeps one client from making every other client's ShareKeys fail.
Status CheckPublicKey(const PublicKey& key) {
  internal::Key32 probe{};
  probe.fill(0x5a);
  auto shared = internal::X25519Agree(probe, key);
  if (!shared.ok()) return shared.status();
  internal::Wipe(shared->data(), shared->size());
  return Status::Ok();
}

}  // namespace

SecAggServer::SecAggServer(RoundConfig config, ServerOptions options)
    : config_(std::move(config)),
      options_(options),
      participants_(config_.participants.begin(), config_.participants.end()) {}

Result<SecAggServer> SecAggServer::Create(RoundConfig config, ServerOptions options) {
  SHARDPS_RETURN_IF_ERROR(ValidateRoundConfig(config));
  return SecAggServer(std::move(config), options);
}

Status SecAggServer::Refuse(StatusCode code, Phase phase, ClientId client, const std::string& what) const {
  return Status(code, "secagg round " + std::to_string(config_.round_id) + ", phase " + std::string(PhaseName(phase)) +
                          ", client " + Id(client) + ": " + what);
}

Status SecAggServer::CheckMessage(Phase expected, std::string_view type, uint64_t round, ClientId from) const {
  if (phase_ == Phase::kAborted) return abort_status_;
  if (round != config_.round_id) {
    return Refuse(StatusCode::kFailedPrecondition, phase_, from,
                  std::string(type) + " message for round " + std::to_string(round) + " refused (a replay?)");
  }
  if (phase_ != expected) {
    return Refuse(StatusCode::kFailedPrecondition, phase_, from,
                  std::string(type) + " message out of phase (it belongs to phase " +
                      std::string(PhaseName(expected)) + ")");
  }
  if (participants_.count(from) == 0) {
    return Refuse(StatusCode::kNotFound, phase_, from, std::string(type) + " message from a client that is not a "
                                                       "participant of the round");
  }
  return Status::Ok();
}

Status SecAggServer::Abort(Status s) {
  abort_status_ = s;
  phase_ = Phase::kAborted;
  // Nothing of the round is needed any more; drop what could help reconstruct anything.
  for (auto& [id, r] : responses_) {
    for (auto* list : {&r.b_shares, &r.s_shares}) {
      for (RevealedShare& share : *list) internal::Wipe(share.y.data(), share.y.size());
    }
  }
  responses_.clear();
  sum_.clear();
  return s;
}

Status SecAggServer::CheckThreshold(size_t remaining, const char* what) {
  if (remaining >= config_.threshold) return Status::Ok();
  return Abort(Unavailable("secagg round " + std::to_string(config_.round_id) + " aborted in phase " +
                           std::string(PhaseName(phase_)) + ": " + std::to_string(remaining) + " " + what +
                           ", the threshold needs " + std::to_string(config_.threshold) + " (of " +
                           std::to_string(config_.participants.size()) + " participants)"));
}

// ---- (0) AdvertiseKeys ----

Status SecAggServer::OnAdvertiseKeys(const AdvertiseKeysMessage& m) {
  SHARDPS_RETURN_IF_ERROR(CheckMessage(Phase::kAdvertiseKeys, "AdvertiseKeys", m.round, m.from));
  if (u1_.count(m.from) != 0) {
    return Refuse(StatusCode::kFailedPrecondition, phase_, m.from, "duplicate AdvertiseKeys message");
  }
  for (const auto& [name, key] : {std::pair{"c_pk", &m.c_pk}, std::pair{"s_pk", &m.s_pk}}) {
    Status s = CheckPublicKey(*key);
    if (!s.ok()) return Refuse(StatusCode::kInvalidArgument, phase_, m.from, std::string(name) + ": " + s.message());
  }
  u1_.emplace(m.from, m);
  return Status::Ok();
}

Result<KeyListMessage> SecAggServer::FinishAdvertiseKeys() {
  if (phase_ == Phase::kAborted) return abort_status_;
  if (phase_ != Phase::kAdvertiseKeys) {
    return FailedPrecondition("secagg round " + std::to_string(config_.round_id) +
                              ": FinishAdvertiseKeys called in phase " + std::string(PhaseName(phase_)));
  }
  SHARDPS_RETURN_IF_ERROR(CheckThreshold(u1_.size(), "clients advertised keys"));
  KeyListMessage out{.round = config_.round_id, .clients = {}};
  for (const auto& [id, m] : u1_) out.clients.push_back({.id = id, .c_pk = m.c_pk, .s_pk = m.s_pk});
  phase_ = Phase::kShareKeys;
  return out;
}

// ---- (1) ShareKeys ----

Status SecAggServer::OnShareKeys(const ShareKeysMessage& m) {
  SHARDPS_RETURN_IF_ERROR(CheckMessage(Phase::kShareKeys, "ShareKeys", m.round, m.from));
  if (u1_.count(m.from) == 0) {
    return Refuse(StatusCode::kNotFound, phase_, m.from, "ShareKeys from a client that did not advertise keys");
  }
  if (u2_.count(m.from) != 0) return Refuse(StatusCode::kFailedPrecondition, phase_, m.from, "duplicate ShareKeys message");
  // Exactly one ciphertext for every other client of U1.
  std::set<ClientId> recipients;
  for (const ShareCiphertext& c : m.shares) {
    if (c.from != m.from) {
      return Refuse(StatusCode::kInvalidArgument, phase_, m.from, "a ciphertext claims sender " + Id(c.from));
    }
    if (c.to == m.from || u1_.count(c.to) == 0) {
      return Refuse(StatusCode::kInvalidArgument, phase_, m.from,
                    "a ciphertext for client " + Id(c.to) + ", which is not another client that advertised keys");
    }
    if (!recipients.insert(c.to).second) {
      return Refuse(StatusCode::kInvalidArgument, phase_, m.from, "two ciphertexts for client " + Id(c.to));
    }
  }
  if (recipients.size() != u1_.size() - 1) {
    return Refuse(StatusCode::kInvalidArgument, phase_, m.from,
                  std::to_string(recipients.size()) + " ciphertexts, one for each of the " +
                      std::to_string(u1_.size() - 1) + " other clients that advertised keys is needed");
  }
  u2_.emplace(m.from, m.shares);
  return Status::Ok();
}

Result<std::vector<RoutedSharesMessage>> SecAggServer::FinishShareKeys() {
  if (phase_ == Phase::kAborted) return abort_status_;
  if (phase_ != Phase::kShareKeys) {
    return FailedPrecondition("secagg round " + std::to_string(config_.round_id) + ": FinishShareKeys called in phase " +
                              std::string(PhaseName(phase_)));
  }
  SHARDPS_RETURN_IF_ERROR(CheckThreshold(u2_.size(), "clients shared keys"));
  std::vector<RoutedSharesMessage> out;
  for (const auto& [v, unused] : u2_) {
    RoutedSharesMessage r{.round = config_.round_id, .to = v, .shares = {}};
    for (const auto& [u, ciphertexts] : u2_) {
      if (u == v) continue;
      for (const ShareCiphertext& c : ciphertexts) {
        if (c.to == v) r.shares.push_back(c);
      }
    }
    out.push_back(std::move(r));
  }
  // The ciphertexts are delivered; U2 is what remains to be known.
  for (auto& [u, ciphertexts] : u2_) ciphertexts.clear();
  sum_.assign(config_.vector_length, 0);
  phase_ = Phase::kMaskedInputCollection;
  return out;
}

// ---- (2) MaskedInputCollection ----

Status SecAggServer::OnMaskedInput(const MaskedInputMessage& m) {
  SHARDPS_RETURN_IF_ERROR(CheckMessage(Phase::kMaskedInputCollection, "MaskedInput", m.round, m.from));
  if (u2_.count(m.from) == 0) {
    return Refuse(StatusCode::kNotFound, phase_, m.from, "MaskedInput from a client that did not share keys");
  }
  if (u3_.count(m.from) != 0) return Refuse(StatusCode::kFailedPrecondition, phase_, m.from, "duplicate MaskedInput message");
  if (m.ring_bits != config_.ring_bits || m.y.size() != config_.vector_length) {
    return Refuse(StatusCode::kInvalidArgument, phase_, m.from,
                  "masked input of " + std::to_string(m.y.size()) + " elements of " + std::to_string(m.ring_bits) +
                      " bits; the round aggregates " + std::to_string(config_.vector_length) + " elements of " +
                      std::to_string(config_.ring_bits) + " bits");
  }
  const uint64_t mask = RingMask(config_.ring_bits);
  for (uint64_t v : m.y) {
    if ((v & ~mask) != 0) return Refuse(StatusCode::kInvalidArgument, phase_, m.from, "masked input element out of the ring");
  }
  // Into the running sum at once: the server keeps no per-client vector (unless a test asks).
  for (size_t i = 0; i < m.y.size(); ++i) sum_[i] = (sum_[i] + m.y[i]) & mask;
  if (options_.retain_masked_inputs_for_testing) retained_[m.from] = m.y;
  u3_.insert(m.from);
  return Status::Ok();
}

Result<UnmaskRequestMessage> SecAggServer::FinishMaskedInput() {
  if (phase_ == Phase::kAborted) return abort_status_;
  if (phase_ != Phase::kMaskedInputCollection) {
    return FailedPrecondition("secagg round " + std::to_string(config_.round_id) +
                              ": FinishMaskedInput called in phase " + std::string(PhaseName(phase_)));
  }
  SHARDPS_RETURN_IF_ERROR(CheckThreshold(u3_.size(), "clients sent masked inputs"));
  request_ = UnmaskRequestMessage{.round = config_.round_id, .survivors = {}, .dropped = {}};
  for (const auto& [v, unused] : u2_) (u3_.count(v) != 0 ? request_.survivors : request_.dropped).push_back(v);
  phase_ = Phase::kUnmasking;
  return request_;
}

// ---- (3) Unmasking ----

Status SecAggServer::OnUnmaskResponse(const UnmaskResponseMessage& m) {
  SHARDPS_RETURN_IF_ERROR(CheckMessage(Phase::kUnmasking, "UnmaskResponse", m.round, m.from));
  if (u3_.count(m.from) == 0) {
    return Refuse(StatusCode::kNotFound, phase_, m.from, "UnmaskResponse from a client that sent no masked input");
  }
  if (responses_.count(m.from) != 0) {
    return Refuse(StatusCode::kFailedPrecondition, phase_, m.from, "duplicate UnmaskResponse message");
  }
  auto matches = [](const std::vector<RevealedShare>& shares, const std::vector<ClientId>& owners) {
    if (shares.size() != owners.size()) return false;
    for (size_t i = 0; i < shares.size(); ++i) {
      if (shares[i].owner != owners[i]) return false;
    }
    return true;
  };
  if (!matches(m.b_shares, request_.survivors) || !matches(m.s_shares, request_.dropped)) {
    return Refuse(StatusCode::kInvalidArgument, phase_, m.from,
                  "the response must hold one b share per survivor (" + std::to_string(request_.survivors.size()) +
                      ") and one s_sk share per dropped client (" + std::to_string(request_.dropped.size()) +
                      "), in the request's order; it holds " + std::to_string(m.b_shares.size()) + " and " +
                      std::to_string(m.s_shares.size()));
  }
  responses_.emplace(m.from, m);
  return Status::Ok();
}

Result<std::vector<uint64_t>> SecAggServer::FinishUnmasking() {
  if (phase_ == Phase::kAborted) return abort_status_;
  if (phase_ != Phase::kUnmasking) {
    return FailedPrecondition("secagg round " + std::to_string(config_.round_id) + ": FinishUnmasking called in phase " +
                              std::string(PhaseName(phase_)));
  }
  SHARDPS_RETURN_IF_ERROR(CheckThreshold(responses_.size(), "clients answered the unmasking request"));
  const int t = static_cast<int>(config_.threshold);
  const int m = config_.ring_bits;
  // Interpolation through the first t responders (ascending ids); more shares add nothing in the
  // honest-but-curious model, and a recovered s_sk is checked against its advertised key.
  std::vector<const UnmaskResponseMessage*> holders;
  for (const auto& [id, r] : responses_) {
    if (holders.size() == static_cast<size_t>(t)) break;
    holders.push_back(&r);
  }
  // Owner number `index` of the request's survivors (b) or dropped clients (s_sk).
  auto recover = [&](size_t index, bool b) -> Result<std::array<uint8_t, kShareBytes>> {
    std::vector<Share> shares;
    for (const UnmaskResponseMessage* r : holders) {
      const RevealedShare& s = (b ? r->b_shares : r->s_shares)[index];
      shares.push_back({.x = static_cast<uint8_t>(r->from), .y = std::vector<uint8_t>(s.y.begin(), s.y.end())});
    }
    auto secret = Recover(shares, t);
    for (Share& s : shares) internal::Wipe(s.y.data(), s.y.size());
    if (!secret.ok()) return secret.status();
    std::array<uint8_t, kShareBytes> out{};
    std::copy(secret->begin(), secret->end(), out.begin());
    internal::Wipe(secret->data(), secret->size());
    return out;
  };

  Status status = [&]() -> Status {
    // Self masks of the survivors: sum -= PRG(b_u).
    for (size_t i = 0; i < request_.survivors.size(); ++i) {
      const ClientId u = request_.survivors[i];
      auto b = recover(i, /*b=*/true);
      if (!b.ok()) return b.status().WithContext("recovering the self-mask seed of client " + Id(u));
      auto key = SelfMaskKey(*b, config_.round_id, u);
      internal::Wipe(b->data(), b->size());
      if (!key.ok()) return key.status();
      Status s = ApplyMask(sum_, *key, m, MaskSign::kSubtract);
      internal::Wipe(key->data(), key->size());
      SHARDPS_RETURN_IF_ERROR(s);
    }
    // Pairwise masks between a dropped client v and each survivor u: the sum holds
    // PairwiseSign(u, v) * PRG(s_uv) from y_u, with no partner term from v.
    for (size_t j = 0; j < request_.dropped.size(); ++j) {
      const ClientId v = request_.dropped[j];
      auto s_sk = recover(j, /*b=*/false);
      if (!s_sk.ok()) return s_sk.status().WithContext("recovering the mask key of client " + Id(v));
      auto pub = DerivePublicKey(*s_sk);
      if (!pub.ok() || *pub != u1_.at(v).s_pk) {
        internal::Wipe(s_sk->data(), s_sk->size());
        return DataLoss("the shares of client " + Id(v) + "'s mask key do not reconstruct the key it advertised");
      }
      for (ClientId u : request_.survivors) {
        auto key = AgreeKey(*s_sk, u1_.at(u).s_pk, config_.round_id, v, u, KeyPurpose::kPairwiseMask);
        if (!key.ok()) {
          internal::Wipe(s_sk->data(), s_sk->size());
          return key.status().WithContext("the pairwise mask of clients " + Id(u) + " and " + Id(v));
        }
        Status s = ApplyMask(sum_, *key, m, Opposite(PairwiseSign(u, v)));
        internal::Wipe(key->data(), key->size());
        if (!s.ok()) {
          internal::Wipe(s_sk->data(), s_sk->size());
          return s;
        }
      }
      internal::Wipe(s_sk->data(), s_sk->size());
    }
    return Status::Ok();
  }();
  if (!status.ok()) {
    return Abort(Status(status.code(), "secagg round " + std::to_string(config_.round_id) +
                                           " aborted in phase Unmasking: " + status.message()));
  }
  phase_ = Phase::kDone;
  for (auto& [id, r] : responses_) {
    for (auto* list : {&r.b_shares, &r.s_shares}) {
      for (RevealedShare& share : *list) internal::Wipe(share.y.data(), share.y.size());
    }
  }
  responses_.clear();
  std::vector<uint64_t> out = std::move(sum_);
  sum_.clear();
  return out;
}

}  // namespace shardps::secagg
