// The client side of secure aggregation for a host: a process that relays the messages of the
// clients it hosts to an Aggregator (aggregator.h) and back, one bundle per phase. RunHostedRound
// drives every hosted client's SecAggClient through the four phases of one round; the transport
// is the caller's `exchange`, which sends this host's bundle of a phase and returns the
// aggregator's answer (over the job's transport: the worker's KVClient::SecAgg).
//
//   std::vector<HostedClient> mine = {{.id = 3, .input = q3}, {.id = 7, .input = q7}};
//   SHARDPS_ASSIGN_OR_RETURN(OutcomeMessage out, RunHostedRound(config, mine, rng, exchange));
//   if (!out.aborted) ... out.sum is the sum over out.survivors of their inputs mod 2^m ...
//
// Simulated dropouts: a client whose drop_before is a phase sends nothing from that phase on (it
// stays silent; the aggregator's survivors and the recovery of its masks do the rest).
// kDone: it stays to the end. Every host sends a bundle in every phase, empty when none of its
// clients has anything to send, so the aggregator can close each phase once every host answered.
// Errors: a refused exchange, or an answer that is not what the phase expects (DATA_LOSS naming
// the phase); an aborted round is not an error (OutcomeMessage::aborted, with the reason).
// Thread safety: none; one thread runs a round.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "shardps/base/status.h"
#include "shardps/secagg/messages.h"
#include "shardps/secagg/random_source.h"
#include "shardps/secagg/round.h"

namespace shardps::secagg {

struct HostedClient {
  ClientId id = 0;
  std::vector<uint64_t> input;      // vector_length elements of Z_{2^m}
  Phase drop_before = Phase::kDone;  // simulated dropout: silent from this phase on
};

// Sends this host's bundle of `phase` and returns the aggregator's answer (a bundle).
using Exchange = std::function<Result<std::vector<uint8_t>>(Phase phase, std::vector<uint8_t> bundle)>;

Result<OutcomeMessage> RunHostedRound(const RoundConfig& config, const std::vector<HostedClient>& clients,
                                      RandomSource& rng, const Exchange& exchange);

}  // namespace shardps::secagg
