// The server side of secure aggregation when clients reach the server through hosts: the worker
// processes of a job, each relaying the messages of the simulated clients it hosts. One
// SecAggServer (server.h) per round; the aggregator collects one bundle (messages.h) per host and
// phase, closes the phase once every host has sent its bundle, and answers each host with the
// messages for its clients. Transport-free and clock-free, like the state machines: the parameter
// server's rank 0 drives it from its communication thread (ps/src/server_secagg.cc) and decides
// what a host that never answers means (a deadline).
//
//   Aggregator agg(/*hosts=*/2);
//   SHARDPS_RETURN_IF_ERROR(agg.Submit(host, round_id, Phase::kAdvertiseKeys, bundle));
//   if (agg.Ready()) {
//     std::vector<std::vector<uint8_t>> replies = agg.Finish();   // replies[h] to host h
//   }
//
// What each phase's bundles hold (h: the host, its clients: those whose messages it relays):
//   phase 0  h -> a  RoundConfig (the same from every host), then AdvertiseKeys of h's clients
//            a -> h  KeyList
//   phase 1  h -> a  ShareKeys of h's clients        a -> h  RoutedShares for h's clients in U2
//   phase 2  h -> a  MaskedInput of h's clients      a -> h  UnmaskRequest
//   phase 3  h -> a  UnmaskResponse of h's clients   a -> h  Outcome: the sum over U3
// A client that drops simply has no message in its host's bundle; a host whose clients all dropped
// sends an empty bundle. When the round aborts (fewer than t clients left at a phase, or recovery
// fails) every host gets an Outcome saying why, and the round is over: nothing about any client's
// input is revealed. A client's messages must keep coming from the host that advertised its keys.
//
// Refusals. Submit refuses (INVALID_ARGUMENT / FAILED_PRECONDITION / DATA_LOSS naming the host,
// the round and the phase): a bundle for another round or phase, a second bundle from one host in
// a phase, a malformed bundle or message, a config that differs from the round's, a message from
// a client another host relays, and whatever the state machine refuses. A refused bundle still
// counts as the host's bundle of that phase (the messages before the refused one were accepted),
// so one bad host cannot stall the others; its clients then drop out of the round.
// Thread safety: none; one thread drives an aggregator.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <vector>

#include "shardps/base/status.h"
#include "shardps/secagg/messages.h"
#include "shardps/secagg/round.h"
#include "shardps/secagg/server.h"

namespace shardps::secagg {

class Aggregator {
 public:
  explicit Aggregator(int hosts, ServerOptions options = {});

  // Host `host`'s bundle of `phase` (AdvertiseKeys .. Unmasking) of round `round`. A bundle of
  // phase 0 when no round is open opens round `round` with the config it carries.
  Status Submit(int host, uint64_t round, Phase phase, std::span<const uint8_t> bundle);
  // True when every host has sent its bundle of the open phase.
  bool Ready() const;
  // Closes the open phase (Ready() must hold): the bundle for each host. After the last phase or
  // an abort, the round is closed.
  std::vector<std::vector<uint8_t>> Finish();
  // Abandons the open round (e.g. a host missed its deadline); the next phase-0 bundle opens a new one.
  void Reset();
  // Restricts host `host` to relaying these clients (e.g. a real client's process may speak only
  // for itself): its AdvertiseKeys for any other id is refused. Unrestricted by default.
  void RestrictHost(int host, std::set<ClientId> clients);
  // Host `host` is gone for the rest of the open round (its connection closed, or it missed a
  // phase's deadline): its clients drop out, and phases close without its bundles. A bundle it
  // sends later is refused. The next round counts it again.
  void Drop(int host);

  bool open() const { return server_.has_value(); }
  uint64_t round() const { return round_; }
  Phase phase() const { return phase_; }
  int hosts() const { return hosts_; }
  // The hosts whose bundle of the open phase has not arrived.
  std::vector<int> Missing() const;
  // Closed rounds so far, and those that aborted.
  uint64_t rounds_completed() const { return completed_; }
  uint64_t rounds_aborted() const { return aborted_; }
  // Test only: the open or last round's server (its masked_inputs_for_testing()).
  const SecAggServer* server_for_testing() const { return server_ ? &*server_ : last_.get(); }

 private:
  Status Refuse(StatusCode code, int host, const std::string& what) const;
  Status Accept(int host, std::span<const uint8_t> message);  // one message of the open phase
  std::vector<std::vector<uint8_t>> Close(std::vector<uint8_t> outcome);

  // Constant after construction.
  const int hosts_;
  const ServerOptions options_;

  std::optional<SecAggServer> server_;
  std::unique_ptr<SecAggServer> last_;  // test only: kept after the round closes
  RoundConfig config_;
  uint64_t round_ = 0;
  Phase phase_ = Phase::kAdvertiseKeys;
  std::vector<bool> submitted_;            // by host, the open phase
  std::vector<bool> gone_;                 // by host, the open round (Drop)
  std::map<ClientId, int> host_of_;        // phase 0: which host relays each client
  std::map<int, std::set<ClientId>> allowed_;  // RestrictHost
  uint64_t completed_ = 0;
  uint64_t aborted_ = 0;
};

}  // namespace shardps::secagg
