// One round of secure aggregation: what client and server agree on beforehand (RoundConfig), the
// phases, and the protocol itself. The server learns the sum of the surviving clients' vectors and
// nothing else about any one of them.
//
//   RoundConfig config{.round_id = 7, .threshold = 6, .participants = {1, 2, ..., 10},
//                      .vector_length = x.size(), .ring_bits = RingBits(10, 16)};
//   SHARDPS_ASSIGN_OR_RETURN(SecAggServer server, SecAggServer::Create(config));
//   SHARDPS_ASSIGN_OR_RETURN(SecAggClient client, SecAggClient::Create(config, /*id=*/3));
//   // then the four phases below, through client.h and server.h; messages.h turns each message
//   // into bytes and back.
//
// The protocol (Bonawitz, Ivanov, Kreuter, Marcedone, McMahan, Patel, Ramage, Segal, Seth,
// "Practical Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017, figure 4, the
// honest-but-curious variant, i.e. without the ConsistencyCheck round and the signatures). Client
// u holds x_u, a vector of `vector_length` elements of Z_{2^m} (fixed_point.h makes them from
// floats). All arithmetic is mod 2^m. Sets of client ids: U1 ⊇ U2 ⊇ U3 ⊇ U4.
//
//   (0) AdvertiseKeys. Each client draws two X25519 key pairs, (c_sk, c_pk) to encrypt shares and
//       (s_sk, s_pk) to agree pairwise masks, and sends (c_pk, s_pk). U1 = those who did.
//       The server broadcasts the keys of U1 (KeyList).
//   (1) ShareKeys. Client u draws a 32-byte self-mask seed b_u, Shamir-shares s_sk_u and b_u t-of-|U1|
//       at x = the ids of U1 (shamir.h), and sends each v in U1 \ {u} the pair (s_sk share, b share)
//       encrypted with ChaCha20-Poly1305 under HKDF(X25519(c_sk_u, c_pk_v)), the associated data
//       binding (round, from, to). The server routes the ciphertexts: U2 = the clients whose
//       ShareKeys arrived; each v in U2 gets the ciphertexts addressed to it from U2 (RoutedShares).
//   (2) MaskedInputCollection. Client u decrypts its shares and sends
//         y_u = x_u + PRG(b_u) + sum_{v in U2, v > u} PRG(s_uv) - sum_{v in U2, v < u} PRG(s_uv)
//       where s_uv = HKDF(X25519(s_sk_u, s_pk_v)) (the same for u and v) and PRG is the ChaCha20
//       keystream read as elements of Z_{2^m} (masks.h). U3 = the clients whose y_u arrived.
//   (3) Unmasking. The server sends U3 and U2 \ U3 (UnmaskRequest). Each client u in U3 returns,
//       for each v in U2, its share of b_v if v is in U3 and its share of s_sk_v if v is not; a
//       client never reveals both for the same v (it refuses such a request) and answers once.
//       With t responses (U4) the server recovers b_v for v in U3 and s_sk_v for v in U2 \ U3, and
//         sum_{u in U3} x_u = sum_{u in U3} y_u - sum_{u in U3} PRG(b_u)
//                             - sum_{v in U2\U3} sum_{u in U3} (+-)PRG(s_uv)
//       (the pairwise masks between two members of U3 cancel in the sum; those with a client that
//       dropped after sharing keys are recomputed from its recovered s_sk).
// Whenever fewer than t clients remain (|U1|, |U2|, |U3| or |U4| < t) the round aborts: the server
// reports UNAVAILABLE with how many were needed and how many remained, and outputs nothing.
//
// Threat model. The server is honest but curious: it follows the protocol and routes every message,
// and tries to learn from what it sees. Clients are honest but curious too; the server may pool
// its view with fewer than t clients. Such a coalition learns the sum over U3 and which clients
// dropped, nothing else: every y_u it sees is hidden by PRG(b_u), whose seed only t clients can
// reconstruct and which is revealed only for clients whose y_u is in the sum; the server never
// holds an unmasked x_u (it adds the y_u into one running sum and unmasks only that sum).
// What a dropout reveals: for a client that dropped after ShareKeys, s_sk of this round (hence all
// of its pairwise masks of this round) but not b_u, so a y_u that arrives late is still hidden by
// its self mask; keys are drawn afresh every round (one SecAggClient per round), so nothing carries
// over. A client that dropped before ShareKeys reveals nothing but its public keys.
// Not covered: an actively malicious server (it could claim that u dropped to some clients and
// survived to others and so obtain both b_u and s_sk_u; the paper's ConsistencyCheck round with
// signatures against that is not implemented), a server that drops honest clients on purpose to
// shrink U3 (the sum of a small U3 is what it is; pair secure aggregation with differential
// privacy and choose t large, e.g. t > n/2), and inferences from sums of several rounds.
//
// Shamir sharing is over GF(2^8), byte-wise, with the client id as x-coordinate: at most 255
// participants per round (kMaxClients), ids in [1, 255].
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "shardps/base/status.h"

namespace shardps::secagg {

// A client's id in a round: its Shamir x-coordinate, in [1, kMaxClientId].
using ClientId = uint32_t;
inline constexpr ClientId kMaxClientId = 255;
inline constexpr size_t kMaxClients = 255;
// The longest vector a round aggregates (bounds every allocation made for a MaskedInput).
inline constexpr uint64_t kMaxVectorLength = uint64_t{1} << 28;

// A round's phases, in order, and its two ends. Errors name them with PhaseName.
enum class Phase : uint8_t {
  kAdvertiseKeys = 0,
  kShareKeys = 1,
  kMaskedInputCollection = 2,
  kUnmasking = 3,
  kDone = 4,
  kAborted = 5,
};
std::string_view PhaseName(Phase phase);

// What every client and the server of one round agree on before it starts (out of band, e.g. in
// the task that starts the round). A value; thread safety: none needed.
struct RoundConfig {
  // Distinguishes rounds: bound into every message, key derivation and associated data, so a
  // message of another round is refused and masks of two rounds are independent.
  uint64_t round_id = 0;
  // t: the number of clients that must remain at every phase, and the Shamir threshold. At least 2
  // (with t = 1 every share would be the secret itself) and at most participants.size().
  uint32_t threshold = 0;
  // The ids that may take part (U0), strictly ascending, each in [1, kMaxClientId].
  std::vector<ClientId> participants;
  // Elements of Z_{2^m} per client, in [1, kMaxVectorLength].
  uint64_t vector_length = 0;
  // m, in [1, 64]. For quantized floats use RingBits(participants.size(), bits) (fixed_point.h),
  // so the sum of every participant's vector cannot wrap.
  int ring_bits = 0;
};

// INVALID_ARGUMENT naming the field and the numbers when `config` is not usable.
Status ValidateRoundConfig(const RoundConfig& config);

}  // namespace shardps::secagg
