// The messages of a secure-aggregation round (round.h) as plain structs, and their bytes. The
// library moves no bytes itself: the caller's transport carries what Serialize returns and hands
// what arrives to the matching Parse, then to SecAggClient / SecAggServer.
//
//   std::vector<uint8_t> bytes = Serialize(advertise);                  // client -> server
//   SHARDPS_ASSIGN_OR_RETURN(MessageType type, PeekMessageType(bytes));
//   if (type == MessageType::kAdvertiseKeys) {
//     SHARDPS_ASSIGN_OR_RETURN(AdvertiseKeysMessage m, ParseAdvertiseKeys(bytes));
//     SHARDPS_RETURN_IF_ERROR(server.OnAdvertiseKeys(m));
//   }
//
// Wire format. Integers little-endian; ids are u32 in [1, 255]; counts are u32 and at most 255
// (u64 and at most kMaxVectorLength for a vector's length). Every message starts with a 13-byte
// header: "SPSG" (4 bytes), type (u8), round id (u64).
//   1 AdvertiseKeys  c->s  header | from u32 | c_pk [32] | s_pk [32]                       81 bytes
//   2 KeyList        s->c  header | count u32 | count x (id u32 | c_pk [32] | s_pk [32])    17 + 68 count
//   3 ShareKeys      c->s  header | from u32 | count u32 | count x (to u32 | ciphertext [80])
//   4 RoutedShares   s->c  header | to u32 | count u32 | count x (from u32 | ciphertext [80])
//   5 MaskedInput    c->s  header | from u32 | m u8 | length u64 | y: PackRing(y, m)
//                          (ceil(length * m / 8) bytes, fixed_point.h)
//   6 UnmaskRequest  s->c  header | count u32 | count x survivor id u32 | count u32 | count x dropped id u32
//   7 UnmaskResponse c->s  header | from u32 | count u32 | count x (owner u32 | b share [32])
//                                 | count u32 | count x (owner u32 | s_sk share [32])
// Two more carry a round between a host of clients and an aggregator (aggregator.h):
//   8 RoundConfig    h->a  header (round = round_id) | t u32 | m u8 | length u64 | count u32 | count x id u32
//   9 Outcome        a->h  header | 0 u8 | count u32 | count x survivor id u32 | m u8 | length u64 | PackRing(sum, m)
//                          header | 1 u8 | length u32 (<= 4096) | the reason the round aborted (text)
// and a bundle holds the messages one host sends or receives in one phase:
//   bundle                 "SPSB" | count u32 (<= kMaxBundleMessages) | count x (length u32 | message)
// A ciphertext is ChaCha20-Poly1305 of (share of s_sk_from [32] | share of b_from [32]) followed by
// its 16-byte tag; the share's x-coordinate is the recipient's id, so it is not sent. The key is
// AgreeKey(c_sk_from, c_pk_to, round, from, to, kShareEncryption) (masks.h), the nonce
// from u32 | to u32 | 4 zero bytes (the two directions of a pair share a key, never a nonce, and a
// round's keys encrypt once per direction), the associated data round u64 | from u32 | to u32.
// In an UnmaskResponse the shares' x-coordinate is `from`.
//
// Parsing checks everything a message's syntax can say (magic, type, exact length, counts against
// their bounds before anything is allocated, ids in range, m in [1, 64], zero padding) and returns
// DATA_LOSS naming the message type and what is wrong; membership, duplicates, the round and the
// phase are the state machines' checks. Serialize asserts what its caller controls (counts, ranges).
// Thread safety: values and pure functions.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shardps/base/status.h"
#include "shardps/secagg/masks.h"
#include "shardps/secagg/round.h"

namespace shardps::secagg {

enum class MessageType : uint8_t {
  kAdvertiseKeys = 1,
  kKeyList = 2,
  kShareKeys = 3,
  kRoutedShares = 4,
  kMaskedInput = 5,
  kUnmaskRequest = 6,
  kUnmaskResponse = 7,
  kRoundConfig = 8,
  kOutcome = 9,
};
std::string_view MessageTypeName(MessageType type);

inline constexpr size_t kHeaderBytes = 13;
inline constexpr size_t kShareBytes = 32;                         // one share of a 32-byte secret
inline constexpr size_t kShareCiphertextBytes = 2 * kShareBytes + 16;  // + Poly1305 tag

// (0) client -> server.
struct AdvertiseKeysMessage {
  uint64_t round = 0;
  ClientId from = 0;
  PublicKey c_pk{};  // to encrypt the shares sent to this client
  PublicKey s_pk{};  // to agree pairwise masks with this client
};

// (0 -> 1) server -> every client of U1: U1's keys, ids ascending.
struct KeyListMessage {
  struct Entry {
    ClientId id = 0;
    PublicKey c_pk{};
    PublicKey s_pk{};
  };
  uint64_t round = 0;
  std::vector<Entry> clients;
};

// One client's encrypted shares for another.
struct ShareCiphertext {
  ClientId from = 0;
  ClientId to = 0;
  std::array<uint8_t, kShareCiphertextBytes> bytes{};
};

// (1) client -> server: one ciphertext for every other client of U1 (each `from` is `from`).
struct ShareKeysMessage {
  uint64_t round = 0;
  ClientId from = 0;
  std::vector<ShareCiphertext> shares;
};

// (1 -> 2) server -> one client of U2: the ciphertexts addressed to it from U2 (each `to` is `to`).
struct RoutedSharesMessage {
  uint64_t round = 0;
  ClientId to = 0;
  std::vector<ShareCiphertext> shares;
};

// (2) client -> server: y_u, elements of Z_{2^m}.
struct MaskedInputMessage {
  uint64_t round = 0;
  ClientId from = 0;
  int ring_bits = 0;
  std::vector<uint64_t> y;
};

// (2 -> 3) server -> every client of U3.
struct UnmaskRequestMessage {
  uint64_t round = 0;
  std::vector<ClientId> survivors;  // U3, ascending: reveal shares of their b
  std::vector<ClientId> dropped;    // U2 \ U3, ascending: reveal shares of their s_sk
};

// A share of client `owner`'s secret held by the responding client (x-coordinate: its id).
struct RevealedShare {
  ClientId owner = 0;
  std::array<uint8_t, kShareBytes> y{};
};

// (3) client -> server.
struct UnmaskResponseMessage {
  uint64_t round = 0;
  ClientId from = 0;
  std::vector<RevealedShare> b_shares;  // one per survivor
  std::vector<RevealedShare> s_shares;  // one per dropped client
};

// (host -> aggregator, first in a host's bundle of phase 0) the round's configuration.
struct RoundConfigMessage {
  RoundConfig config;
};

// (aggregator -> every host, after phase 3 or an abort) the round's result.
struct OutcomeMessage {
  uint64_t round = 0;
  bool aborted = false;
  std::string reason;                // aborted: why (the server's status message)
  std::vector<ClientId> survivors;   // U3, ascending: whose inputs `sum` holds
  int ring_bits = 0;
  std::vector<uint64_t> sum;         // sum over U3 of x_u mod 2^m
};
inline constexpr size_t kMaxOutcomeReason = 4096;
// A bundle: a host's messages of one phase (its clients' and, in phase 0, the RoundConfig first).
inline constexpr size_t kMaxBundleMessages = 2 * kMaxClients + 2;

std::vector<uint8_t> Serialize(const AdvertiseKeysMessage& m);
std::vector<uint8_t> Serialize(const RoundConfigMessage& m);
std::vector<uint8_t> Serialize(const OutcomeMessage& m);
std::vector<uint8_t> SerializeBundle(const std::vector<std::vector<uint8_t>>& messages);
// The messages of a bundle, as views into `bytes`; DATA_LOSS naming what is wrong.
Result<std::vector<std::span<const uint8_t>>> ParseBundle(std::span<const uint8_t> bytes);
std::vector<uint8_t> Serialize(const KeyListMessage& m);
std::vector<uint8_t> Serialize(const ShareKeysMessage& m);
std::vector<uint8_t> Serialize(const RoutedSharesMessage& m);
std::vector<uint8_t> Serialize(const MaskedInputMessage& m);
std::vector<uint8_t> Serialize(const UnmaskRequestMessage& m);
std::vector<uint8_t> Serialize(const UnmaskResponseMessage& m);

// The type of a message whose header is well formed (DATA_LOSS otherwise).
Result<MessageType> PeekMessageType(std::span<const uint8_t> bytes);

Result<AdvertiseKeysMessage> ParseAdvertiseKeys(std::span<const uint8_t> bytes);
Result<KeyListMessage> ParseKeyList(std::span<const uint8_t> bytes);
Result<ShareKeysMessage> ParseShareKeys(std::span<const uint8_t> bytes);
Result<RoutedSharesMessage> ParseRoutedShares(std::span<const uint8_t> bytes);
Result<MaskedInputMessage> ParseMaskedInput(std::span<const uint8_t> bytes);
Result<UnmaskRequestMessage> ParseUnmaskRequest(std::span<const uint8_t> bytes);
Result<UnmaskResponseMessage> ParseUnmaskResponse(std::span<const uint8_t> bytes);
// Also checks the config (ValidateRoundConfig; INVALID_ARGUMENT).
Result<RoundConfigMessage> ParseRoundConfig(std::span<const uint8_t> bytes);
Result<OutcomeMessage> ParseOutcome(std::span<const uint8_t> bytes);

}  // namespace shardps::secagg
