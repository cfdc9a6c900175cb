#include "shardps/secagg/round.h"

#include <string>

namespace shardps::secagg {

std::string_view PhaseName(Phase phase) {
  switch (phase) {
    case Phase::kAdvertiseKeys: return "AdvertiseKeys";
    case Phase::kShareKeys: return "ShareKeys";
    case Phase::kMaskedInputCollection: return "MaskedInputCollection";
    case Phase::kUnmasking: return "Unmasking";
    case Phase::kDone: return "Done";
    case Phase::kAborted: return "Aborted";
  }
  return "unknown phase";
}

Status ValidateRoundConfig(const RoundConfig& c) {
  const std::string where = "secagg round " + std::to_string(c.round_id) + " config: ";
  const size_t n = c.participants.size();
  if (n > kMaxClients) {
    return InvalidArgument(where + std::to_string(n) + " participants; at most " + std::to_string(kMaxClients) +
                           " take part in a round (client ids are the GF(2^8) Shamir x-coordinates 1..255)");
  }
  for (size_t i = 0; i < n; ++i) {
    const ClientId id = c.participants[i];
    if (id < 1 || id > kMaxClientId) {
      return InvalidArgument(where + "client id " + std::to_string(id) + " is outside [1, " +
                             std::to_string(kMaxClientId) + "]");
    }
    if (i > 0 && id <= c.participants[i - 1]) {
      return InvalidArgument(where + "participants must be strictly ascending; " + std::to_string(id) + " follows " +
                             std::to_string(c.participants[i - 1]));
    }
  }
  if (c.threshold < 2 || c.threshold > n) {
    return InvalidArgument(where + "threshold t = " + std::to_string(c.threshold) + " must be in [2, " +
                           std::to_string(n) + " participants]");
  }
  if (c.vector_length < 1 || c.vector_length > kMaxVectorLength) {
    return InvalidArgument(where + "vector length " + std::to_string(c.vector_length) + " must be in [1, " +
                           std::to_string(kMaxVectorLength) + "]");
  }
  if (c.ring_bits < 1 || c.ring_bits > 64) {
    return InvalidArgument(where + "ring width m = " + std::to_string(c.ring_bits) + " must be in [1, 64]");
  }
  return Status::Ok();
}

}  // namespace shardps::secagg
