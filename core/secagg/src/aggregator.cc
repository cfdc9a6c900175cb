#include "shardps/secagg/aggregator.h"

#include <algorithm>
#include <cassert>
#include <string>

namespace shardps::secagg {

Aggregator::Aggregator(int hosts, ServerOptions options)
    : hosts_(hosts),
      options_(options),
      submitted_(static_cast<size_t>(std::max(hosts, 0)), false),
      gone_(static_cast<size_t>(std::max(hosts, 0)), false) {
  assert(hosts >= 1);
}

Status Aggregator::Refuse(StatusCode code, int host, const std::string& what) const {
  return Status(code, "secagg round " + std::to_string(round_) + ", phase " + std::string(PhaseName(phase_)) +
                          ", host " + std::to_string(host) + ": " + what);
}

std::vector<int> Aggregator::Missing() const {
  std::vector<int> out;
  for (int h = 0; h < hosts_; ++h) {
    if (!submitted_[static_cast<size_t>(h)] && !gone_[static_cast<size_t>(h)]) out.push_back(h);
  }
  return out;
}

bool Aggregator::Ready() const { return server_.has_value() && Missing().empty(); }

void Aggregator::RestrictHost(int host, std::set<ClientId> clients) { allowed_[host] = std::move(clients); }

void Aggregator::Drop(int host) {
  if (host >= 0 && host < hosts_) gone_[static_cast<size_t>(host)] = true;
}

void Aggregator::Reset() {
  if (server_) last_ = std::make_unique<SecAggServer>(std::move(*server_));
  server_.reset();
  phase_ = Phase::kAdvertiseKeys;
  std::fill(submitted_.begin(), submitted_.end(), false);
  std::fill(gone_.begin(), gone_.end(), false);
  host_of_.clear();
}

Status Aggregator::Submit(int host, uint64_t round, Phase phase, std::span<const uint8_t> bundle) {
  if (host < 0 || host >= hosts_) {
    return InvalidArgument("secagg: host " + std::to_string(host) + " is not one of the " + std::to_string(hosts_) + " hosts");
  }
  if (phase > Phase::kUnmasking) {
    return InvalidArgument("secagg: host " + std::to_string(host) + " sent a bundle for phase " +
                           std::to_string(static_cast<int>(phase)) + "; hosts send phases 0 to 3");
  }
  SHARDPS_ASSIGN_OR_RETURN(const std::vector<std::span<const uint8_t>> messages, ParseBundle(bundle));
  if (!server_) {
    if (phase != Phase::kAdvertiseKeys) {
      return FailedPrecondition("secagg round " + std::to_string(round) + ": host " + std::to_string(host) +
                                " sent a bundle of phase " + std::string(PhaseName(phase)) +
                                ", but no round is open (a round opens with phase AdvertiseKeys)");
    }
    if (messages.empty()) {
      return InvalidArgument("secagg round " + std::to_string(round) + ": host " + std::to_string(host) +
                             "'s first bundle is empty; it must start with the RoundConfig");
    }
    SHARDPS_ASSIGN_OR_RETURN(RoundConfigMessage cm, ParseRoundConfig(messages[0]));
    if (cm.config.round_id != round) {
      return InvalidArgument("secagg: host " + std::to_string(host) + " opens round " + std::to_string(round) +
                             " with the config of round " + std::to_string(cm.config.round_id));
    }
    SHARDPS_ASSIGN_OR_RETURN(SecAggServer s, SecAggServer::Create(cm.config, options_));
    server_.emplace(std::move(s));
    config_ = std::move(cm.config);
    round_ = round;
    phase_ = Phase::kAdvertiseKeys;
    std::fill(submitted_.begin(), submitted_.end(), false);
    host_of_.clear();
  } else if (round != round_ || phase != phase_) {
    return Refuse(StatusCode::kFailedPrecondition, host,
                  "a bundle for round " + std::to_string(round) + ", phase " + std::string(PhaseName(phase)) +
                      " is out of step with the open round");
  }
  if (gone_[static_cast<size_t>(host)]) {
    return Refuse(StatusCode::kFailedPrecondition, host, "the host was dropped from this round");
  }
  if (submitted_[static_cast<size_t>(host)]) {
    return Refuse(StatusCode::kFailedPrecondition, host, "a second bundle in one phase");
  }
  submitted_[static_cast<size_t>(host)] = true;
  size_t first = 0;
  if (phase_ == Phase::kAdvertiseKeys) {
    if (messages.empty()) return Refuse(StatusCode::kInvalidArgument, host, "the bundle lacks the RoundConfig");
    SHARDPS_ASSIGN_OR_RETURN(const RoundConfigMessage cm, ParseRoundConfig(messages[0]));
    const RoundConfig& c = cm.config;
    if (c.round_id != config_.round_id || c.threshold != config_.threshold || c.participants != config_.participants ||
        c.vector_length != config_.vector_length || c.ring_bits != config_.ring_bits) {
      return Refuse(StatusCode::kInvalidArgument, host,
                    "its RoundConfig (t " + std::to_string(c.threshold) + ", " + std::to_string(c.participants.size()) +
                        " participants, length " + std::to_string(c.vector_length) + ", m " + std::to_string(c.ring_bits) +
                        ") differs from the round's (t " + std::to_string(config_.threshold) + ", " +
                        std::to_string(config_.participants.size()) + " participants, length " +
                        std::to_string(config_.vector_length) + ", m " + std::to_string(config_.ring_bits) + ")");
    }
    first = 1;
  }
  for (size_t i = first; i < messages.size(); ++i) SHARDPS_RETURN_IF_ERROR(Accept(host, messages[i]));
  return Status::Ok();
}

Status Aggregator::Accept(int host, std::span<const uint8_t> bytes) {
  SHARDPS_ASSIGN_OR_RETURN(const MessageType type, PeekMessageType(bytes));
  auto relayed_by_host = [&](ClientId from) -> Status {
    auto it = host_of_.find(from);
    if (it == host_of_.end() || it->second != host) {
      return Refuse(StatusCode::kFailedPrecondition, host,
                    "client " + std::to_string(from) + " did not advertise its keys through this host");
    }
    return Status::Ok();
  };
  switch (phase_) {
    case Phase::kAdvertiseKeys: {
      if (type != MessageType::kAdvertiseKeys) break;
      SHARDPS_ASSIGN_OR_RETURN(const AdvertiseKeysMessage m, ParseAdvertiseKeys(bytes));
      if (host_of_.count(m.from)) {
        return Refuse(StatusCode::kFailedPrecondition, host, "client " + std::to_string(m.from) + " advertised keys twice");
      }
      if (auto a = allowed_.find(host); a != allowed_.end() && !a->second.count(m.from)) {
        return Refuse(StatusCode::kFailedPrecondition, host, "this host may not speak for client " + std::to_string(m.from));
      }
      SHARDPS_RETURN_IF_ERROR(server_->OnAdvertiseKeys(m));
      host_of_[m.from] = host;
      return Status::Ok();
    }
    case Phase::kShareKeys: {
      if (type != MessageType::kShareKeys) break;
      SHARDPS_ASSIGN_OR_RETURN(const ShareKeysMessage m, ParseShareKeys(bytes));
      SHARDPS_RETURN_IF_ERROR(relayed_by_host(m.from));
      return server_->OnShareKeys(m);
    }
    case Phase::kMaskedInputCollection: {
      if (type != MessageType::kMaskedInput) break;
      SHARDPS_ASSIGN_OR_RETURN(const MaskedInputMessage m, ParseMaskedInput(bytes));
      SHARDPS_RETURN_IF_ERROR(relayed_by_host(m.from));
      return server_->OnMaskedInput(m);
    }
    case Phase::kUnmasking: {
      if (type != MessageType::kUnmaskResponse) break;
      SHARDPS_ASSIGN_OR_RETURN(const UnmaskResponseMessage m, ParseUnmaskResponse(bytes));
      SHARDPS_RETURN_IF_ERROR(relayed_by_host(m.from));
      return server_->OnUnmaskResponse(m);
    }
    default: break;
  }
  return Refuse(StatusCode::kInvalidArgument, host,
                "a " + std::string(MessageTypeName(type)) + " message does not belong to this phase");
}

std::vector<std::vector<uint8_t>> Aggregator::Close(std::vector<uint8_t> outcome) {
  std::vector<std::vector<uint8_t>> replies(static_cast<size_t>(hosts_), SerializeBundle({outcome}));
  Reset();
  ++completed_;
  return replies;
}

std::vector<std::vector<uint8_t>> Aggregator::Finish() {
  assert(Ready());
  std::fill(submitted_.begin(), submitted_.end(), false);
  auto aborted = [&](const Status& why) {
    ++aborted_;
    return Close(Serialize(OutcomeMessage{.round = round_, .aborted = true, .reason = why.message()}));
  };
  auto to_all = [&](std::vector<uint8_t> message) {
    return std::vector<std::vector<uint8_t>>(static_cast<size_t>(hosts_), SerializeBundle({message}));
  };
  switch (phase_) {
    case Phase::kAdvertiseKeys: {
      auto keys = server_->FinishAdvertiseKeys();
      if (!keys.ok()) return aborted(keys.status());
      phase_ = Phase::kShareKeys;
      return to_all(Serialize(*keys));
    }
    case Phase::kShareKeys: {
      auto routed = server_->FinishShareKeys();
      if (!routed.ok()) return aborted(routed.status());
      std::vector<std::vector<std::vector<uint8_t>>> per_host(static_cast<size_t>(hosts_));
      for (const RoutedSharesMessage& r : *routed) per_host[static_cast<size_t>(host_of_.at(r.to))].push_back(Serialize(r));
      phase_ = Phase::kMaskedInputCollection;
      std::vector<std::vector<uint8_t>> replies;
      for (const auto& msgs : per_host) replies.push_back(SerializeBundle(msgs));
      return replies;
    }
    case Phase::kMaskedInputCollection: {
      auto request = server_->FinishMaskedInput();
      if (!request.ok()) return aborted(request.status());
      phase_ = Phase::kUnmasking;
      return to_all(Serialize(*request));
    }
    case Phase::kUnmasking: {
      std::vector<ClientId> survivors = server_->survivors();
      auto sum = server_->FinishUnmasking();
      if (!sum.ok()) return aborted(sum.status());
      return Close(Serialize(OutcomeMessage{.round = round_,
                                            .aborted = false,
                                            .reason = {},
                                            .survivors = std::move(survivors),
                                            .ring_bits = config_.ring_bits,
                                            .sum = std::move(sum).value()}));
    }
    default: break;
  }
  assert(false && "Finish in a closed phase");
  return {};
}

}  // namespace shardps::secagg
