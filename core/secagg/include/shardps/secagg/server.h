// The server side of one secure-aggregation round (the protocol and its threat model: round.h), a
// state machine without I/O and without clocks: the caller feeds it the clients' messages as they
// arrive and decides when a phase is over (its deadline passed, or every expected client answered),
// then calls the phase's Finish to get the messages to send next.
//
//   SHARDPS_ASSIGN_OR_RETURN(SecAggServer s, SecAggServer::Create(config));
//   for (each AdvertiseKeys that arrives in time) SHARDPS_RETURN_IF_ERROR(s.OnAdvertiseKeys(m));
//   SHARDPS_ASSIGN_OR_RETURN(KeyListMessage keys, s.FinishAdvertiseKeys());       // to all of U1
//   for (each ShareKeys) s.OnShareKeys(m);
//   SHARDPS_ASSIGN_OR_RETURN(std::vector<RoutedSharesMessage> r, s.FinishShareKeys()); // r[i] to r[i].to
//   for (each MaskedInput) s.OnMaskedInput(m);
//   SHARDPS_ASSIGN_OR_RETURN(UnmaskRequestMessage q, s.FinishMaskedInput());      // to all of U3
//   for (each UnmaskResponse) s.OnUnmaskResponse(m);
//   SHARDPS_ASSIGN_OR_RETURN(std::vector<uint64_t> sum, s.FinishUnmasking());     // sum over U3 mod 2^m
//
// The On* calls refuse, without changing anything, a message for another round (a replay), out of
// phase, from a client that is not (or no longer) in the round, a duplicate, or one whose contents
// do not match the round (wrong recipients, lengths, ring width); the error names the client and
// the phase. A refused message does not end the round. A Finish with fewer than t clients left
// aborts the round: it returns UNAVAILABLE saying how many were needed and how many remained, and
// from then on every call returns that status. So does a Finish whose recovery fails (shares that
// do not reconstruct an advertised key: DATA_LOSS).
// The server adds each masked input into one running sum as it arrives and removes the masks only
// from that sum, so it never holds a client's unmasked vector.
// Thread safety: none; one thread drives a server.
#pragma once

#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "shardps/base/status.h"
#include "shardps/secagg/messages.h"
#include "shardps/secagg/round.h"

namespace shardps::secagg {

struct ServerOptions {
  // Test only: keep a copy of every masked input received (masked_inputs_for_testing()), so a
  // test can check that none equals its client's clear vector. Off: the server keeps only the sum.
  bool retain_masked_inputs_for_testing = false;
};

class SecAggServer {
 public:
  // INVALID_ARGUMENT when the config is not valid (ValidateRoundConfig).
  static Result<SecAggServer> Create(RoundConfig config, ServerOptions options = {});

  SecAggServer(SecAggServer&&) noexcept = default;
  SecAggServer& operator=(SecAggServer&&) noexcept = default;
  SecAggServer(const SecAggServer&) = delete;
  SecAggServer& operator=(const SecAggServer&) = delete;

  // (0) A client's keys (refused: keys X25519 rejects, i.e. small-order points); U1 is the set of
  // clients accepted here.
  Status OnAdvertiseKeys(const AdvertiseKeysMessage& m);
  // Closes phase 0: the keys of U1 (aborts when |U1| < t).
  Result<KeyListMessage> FinishAdvertiseKeys();

  // (1) A client of U1's ciphertexts: exactly one for every other client of U1.
  Status OnShareKeys(const ShareKeysMessage& m);
  // Closes phase 1 (aborts when |U2| < t): for each client of U2, ascending, the ciphertexts
  // addressed to it by the other clients of U2.
  Result<std::vector<RoutedSharesMessage>> FinishShareKeys();

  // (2) A client of U2's masked input (vector_length elements, ring_bits wide); added to the sum.
  Status OnMaskedInput(const MaskedInputMessage& m);
  // Closes phase 2 (aborts when |U3| < t): the request to every client of U3.
  Result<UnmaskRequestMessage> FinishMaskedInput();

  // (3) A client of U3's shares: one b share per survivor and one s_sk share per dropped client.
  Status OnUnmaskResponse(const UnmaskResponseMessage& m);
  // Closes the round (aborts when fewer than t responded): sum_{u in U3} x_u mod 2^m.
  Result<std::vector<uint64_t>> FinishUnmasking();

  Phase phase() const { return phase_; }
  // The status the round aborted with (OK while it has not).
  const Status& abort_status() const { return abort_status_; }
  // U3 once phase 2 is closed (the clients whose inputs the sum holds), ascending.
  const std::vector<ClientId>& survivors() const { return request_.survivors; }

  // Test only (ServerOptions::retain_masked_inputs_for_testing): the masked inputs received, by
  // client; empty when the option is off.
  const std::map<ClientId, std::vector<uint64_t>>& masked_inputs_for_testing() const { return retained_; }

 private:
  SecAggServer(RoundConfig config, ServerOptions options);

  Status Refuse(StatusCode code, Phase phase, ClientId client, const std::string& what) const;
  // OK when a message of `type` from `from` for `round` belongs to phase `expected` now.
  Status CheckMessage(Phase expected, std::string_view type, uint64_t round, ClientId from) const;
  // Aborts when `remaining` < t; `what` names the set ("clients advertised keys").
  Status CheckThreshold(size_t remaining, const char* what);
  Status Abort(Status s);

  // Constant after construction.
  RoundConfig config_;
  ServerOptions options_;
  std::set<ClientId> participants_;

  Phase phase_ = Phase::kAdvertiseKeys;
  Status abort_status_;
  std::map<ClientId, AdvertiseKeysMessage> u1_;                 // phase 0: keys, by client
  std::map<ClientId, std::vector<ShareCiphertext>> u2_;          // phase 1: ciphertexts, by sender
  std::set<ClientId> u3_;                                       // phase 2: who sent y_u
  std::vector<uint64_t> sum_;                                   // phase 2: sum of y_u mod 2^m
  std::map<ClientId, std::vector<uint64_t>> retained_;          // test only
  UnmaskRequestMessage request_;                                // phase 3: survivors, dropped
  std::map<ClientId, UnmaskResponseMessage> responses_;         // phase 3: by responder
};

}  // namespace shardps::secagg
