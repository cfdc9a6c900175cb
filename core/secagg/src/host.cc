#include "shardps/secagg/host.h"

#include <algorithm>
#include <map>
#include <optional>
#include <string>

#include "shardps/secagg/client.h"

namespace shardps::secagg {
namespace {

// The aggregator's answer to a bundle of `phase`: an Outcome (the round ended) or the messages
// the next phase needs.
struct Answer {
  std::optional<OutcomeMessage> outcome;
  std::vector<uint8_t> bytes;                      // the bundle `messages` point into
  std::vector<std::span<const uint8_t>> messages;
};

Result<Answer> Read(std::vector<uint8_t> bytes, Phase phase) {
  Answer a;
  a.bytes = std::move(bytes);
  SHARDPS_ASSIGN_OR_RETURN(std::vector<std::span<const uint8_t>> messages, ParseBundle(a.bytes));
  if (messages.size() == 1) {
    SHARDPS_ASSIGN_OR_RETURN(const MessageType type, PeekMessageType(messages[0]));
    if (type == MessageType::kOutcome) {
      SHARDPS_ASSIGN_OR_RETURN(OutcomeMessage o, ParseOutcome(messages[0]));
      a.outcome = std::move(o);
      return a;
    }
  }
  if (phase == Phase::kUnmasking) {
    return DataLoss("secagg: the aggregator's answer to phase Unmasking is not one Outcome message");
  }
  a.messages = std::move(messages);
  return a;
}

}  // namespace

Result<OutcomeMessage> RunHostedRound(const RoundConfig& config, const std::vector<HostedClient>& clients,
                                      RandomSource& rng, const Exchange& exchange) {
  SHARDPS_RETURN_IF_ERROR(ValidateRoundConfig(config));
  const std::string where = "secagg round " + std::to_string(config.round_id) + ": ";
  std::map<ClientId, SecAggClient> live;
  std::map<ClientId, const HostedClient*> hosted;
  for (const HostedClient& c : clients) {
    if (c.input.size() != config.vector_length) {
      return InvalidArgument(where + "client " + std::to_string(c.id) + "'s input has " + std::to_string(c.input.size()) +
                             " elements, the round aggregates " + std::to_string(config.vector_length));
    }
    SHARDPS_ASSIGN_OR_RETURN(SecAggClient sc, SecAggClient::Create(config, c.id));
    if (!hosted.emplace(c.id, &c).second) return InvalidArgument(where + "client " + std::to_string(c.id) + " is hosted twice");
    live.emplace(c.id, std::move(sc));
  }
  auto stays = [&](ClientId id, Phase phase) { return hosted.at(id)->drop_before > phase; };
  auto exchange_phase = [&](Phase phase, const std::vector<std::vector<uint8_t>>& out) -> Result<Answer> {
    SHARDPS_ASSIGN_OR_RETURN(std::vector<uint8_t> reply, exchange(phase, SerializeBundle(out)));
    auto a = Read(std::move(reply), phase);
    if (!a.ok()) return a.status().WithContext(where + "the answer to phase " + std::string(PhaseName(phase)));
    return a;
  };

  // (0) AdvertiseKeys, after the config.
  std::vector<std::vector<uint8_t>> out{Serialize(RoundConfigMessage{config})};
  for (auto it = live.begin(); it != live.end();) {
    if (!stays(it->first, Phase::kAdvertiseKeys)) {
      it = live.erase(it);
      continue;
    }
    SHARDPS_ASSIGN_OR_RETURN(AdvertiseKeysMessage m, it->second.AdvertiseKeys(rng));
    out.push_back(Serialize(m));
    ++it;
  }
  SHARDPS_ASSIGN_OR_RETURN(Answer a, exchange_phase(Phase::kAdvertiseKeys, out));
  if (a.outcome) return std::move(*a.outcome);
  if (a.messages.size() != 1) return DataLoss(where + "the answer to phase AdvertiseKeys is not one KeyList");
  SHARDPS_ASSIGN_OR_RETURN(const KeyListMessage keys, ParseKeyList(a.messages[0]));

  // (1) ShareKeys.
  out.clear();
  for (auto it = live.begin(); it != live.end();) {
    if (!stays(it->first, Phase::kShareKeys)) {
      it = live.erase(it);
      continue;
    }
    SHARDPS_ASSIGN_OR_RETURN(ShareKeysMessage m, it->second.ShareKeys(keys, rng));
    out.push_back(Serialize(m));
    ++it;
  }
  SHARDPS_ASSIGN_OR_RETURN(a, exchange_phase(Phase::kShareKeys, out));
  if (a.outcome) return std::move(*a.outcome);
  std::map<ClientId, RoutedSharesMessage> routed;
  for (std::span<const uint8_t> bytes : a.messages) {
    SHARDPS_ASSIGN_OR_RETURN(RoutedSharesMessage r, ParseRoutedShares(bytes));
    if (!live.count(r.to)) {
      return DataLoss(where + "the aggregator routed shares to client " + std::to_string(r.to) +
                      ", which this host does not have in the round");
    }
    const ClientId to = r.to;
    if (!routed.emplace(to, std::move(r)).second) {
      return DataLoss(where + "the aggregator routed shares to client " + std::to_string(to) + " twice");
    }
  }

  // (2) MaskedInputCollection: the clients in U2 (those the aggregator routed shares to).
  out.clear();
  for (auto it = live.begin(); it != live.end();) {
    auto r = routed.find(it->first);
    if (r == routed.end() || !stays(it->first, Phase::kMaskedInputCollection)) {
      it = live.erase(it);
      continue;
    }
    SHARDPS_ASSIGN_OR_RETURN(MaskedInputMessage m, it->second.MaskInput(r->second, hosted.at(it->first)->input));
    out.push_back(Serialize(m));
    ++it;
  }
  SHARDPS_ASSIGN_OR_RETURN(a, exchange_phase(Phase::kMaskedInputCollection, out));
  if (a.outcome) return std::move(*a.outcome);
  if (a.messages.size() != 1) return DataLoss(where + "the answer to phase MaskedInputCollection is not one UnmaskRequest");
  SHARDPS_ASSIGN_OR_RETURN(const UnmaskRequestMessage request, ParseUnmaskRequest(a.messages[0]));

  // (3) Unmasking: the clients among the survivors.
  out.clear();
  for (auto& [id, client] : live) {
    if (!stays(id, Phase::kUnmasking)) continue;
    if (std::find(request.survivors.begin(), request.survivors.end(), id) == request.survivors.end()) continue;
    SHARDPS_ASSIGN_OR_RETURN(UnmaskResponseMessage m, client.Unmask(request));
    out.push_back(Serialize(m));
  }
  SHARDPS_ASSIGN_OR_RETURN(a, exchange_phase(Phase::kUnmasking, out));
  return std::move(*a.outcome);  // Read checked it is there
}

}  // namespace shardps::secagg
