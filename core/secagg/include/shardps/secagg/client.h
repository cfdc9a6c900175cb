// The client side of one secure-aggregation round (the protocol and its threat model: round.h), a
// state machine without I/O: each call takes the server's message of one phase and returns this
// client's answer.
//
//   SHARDPS_ASSIGN_OR_RETURN(SecAggClient c, SecAggClient::Create(config, my_id));
//   SystemRandomSource rng;
//   SHARDPS_ASSIGN_OR_RETURN(AdvertiseKeysMessage a, c.AdvertiseKeys(rng));       // (0) send a
//   SHARDPS_ASSIGN_OR_RETURN(ShareKeysMessage s, c.ShareKeys(key_list, rng));      // (1) send s
//   SHARDPS_ASSIGN_OR_RETURN(MaskedInputMessage y, c.MaskInput(routed, x));        // (2) send y
//   SHARDPS_ASSIGN_OR_RETURN(UnmaskResponseMessage r, c.Unmask(request));          // (3) send r
//
// Each phase is answered once, in order. A refused message (wrong round, out of phase, malformed
// for this client's view, a ciphertext that does not authenticate, fewer than t clients left, a
// request to reveal both shares of one peer) returns an error naming the client, the phase and the
// problem and leaves the client as it was: nothing is revealed by a refused call. The client's
// secrets (c_sk, s_sk, b_u, the shares it holds) are wiped when it is destroyed. Keys are drawn
// afresh by AdvertiseKeys: use a new SecAggClient for every round.
// Thread safety: none; one thread drives a client.
#pragma once

#include <array>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "shardps/base/status.h"
#include "shardps/secagg/masks.h"
#include "shardps/secagg/messages.h"
#include "shardps/secagg/random_source.h"
#include "shardps/secagg/round.h"

namespace shardps::secagg {

class SecAggClient {
 public:
  // INVALID_ARGUMENT when the config is not valid (ValidateRoundConfig) or `id` is not one of its
  // participants.
  static Result<SecAggClient> Create(RoundConfig config, ClientId id);

  ~SecAggClient();
  SecAggClient(SecAggClient&&) noexcept = default;
  SecAggClient& operator=(SecAggClient&&) noexcept = default;
  SecAggClient(const SecAggClient&) = delete;
  SecAggClient& operator=(const SecAggClient&) = delete;

  // (0) Draws (c_sk, c_pk) and (s_sk, s_pk) from `rng`.
  Result<AdvertiseKeysMessage> AdvertiseKeys(RandomSource& rng);

  // (1) Checks the key list (this round, ids ascending and among the participants, at least t of
  // them, this client's own keys unchanged), draws b_u, Shamir-shares s_sk and b_u t-of-|U1| and
  // encrypts each other client's pair of shares for it.
  Result<ShareKeysMessage> ShareKeys(const KeyListMessage& keys, RandomSource& rng);

  // (2) Decrypts the shares routed to this client (senders: U2 \ {u}, at least t - 1 of them, all
  // in U1) and masks `x` (vector_length elements of Z_{2^m}): y_u = x_u + PRG(b_u) +- PRG(s_uv).
  Result<MaskedInputMessage> MaskInput(const RoutedSharesMessage& shares, std::span<const uint64_t> x);

  // (3) The shares the server asks for: survivors and dropped must be disjoint (FAILED_PRECONDITION
  // naming the peer asked for both), together exactly this client's U2, with this client among the
  // survivors and at least t survivors.
  Result<UnmaskResponseMessage> Unmask(const UnmaskRequestMessage& request);

  ClientId id() const { return id_; }
  // The phase whose server message this client expects next (kAdvertiseKeys before the first
  // call; kDone after Unmask).
  Phase phase() const { return phase_; }

 private:
  SecAggClient(RoundConfig config, ClientId id) : config_(std::move(config)), id_(id) {}

  // An error about a message of `phase` prefixed "secagg round R, client C, phase P: ".
  Status Refuse(StatusCode code, Phase phase, const std::string& what) const;
  Status CheckPhase(Phase expected, uint64_t message_round) const;

  // The shares of client `owner`'s secrets this client holds (x = id_).
  struct HeldShares {
    std::array<uint8_t, kShareBytes> s_sk{};
    std::array<uint8_t, kShareBytes> b{};
  };

  // Constant after construction.
  RoundConfig config_;
  ClientId id_ = 0;

  Phase phase_ = Phase::kAdvertiseKeys;
  KeyPair c_keys_;                              // encryption of shares
  KeyPair s_keys_;                              // pairwise masks
  Seed b_{};                                    // self-mask seed
  std::map<ClientId, KeyListMessage::Entry> u1_;  // from the key list, this client included
  std::vector<ClientId> u2_;                    // ascending, this client included
  std::map<ClientId, HeldShares> held_;         // by owner, this client's own included
};

}  // namespace shardps::secagg
