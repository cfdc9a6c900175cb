#include "shardps/secagg/messages.h"

#include <cassert>
#include <cstring>
#include <string>

#include "shardps/secagg/fixed_point.h"

namespace shardps::secagg {
namespace {

constexpr uint8_t kMagic[4] = {'S', 'P', 'S', 'G'};

class Writer {
 public:
  Writer(MessageType type, uint64_t round, size_t size_hint) {
    out_.reserve(size_hint);
    Bytes(kMagic, 4);
    U8(static_cast<uint8_t>(type));
    U64(round);
  }
  void U8(uint8_t v) { out_.push_back(v); }
  void U32(uint32_t v) {
    for (int i = 0; i < 4; ++i) out_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  void U64(uint64_t v) {
    for (int i = 0; i < 8; ++i) out_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  void Bytes(const uint8_t* p, size_t n) {
    const size_t at = out_.size();
    out_.resize(at + n);
    if (n > 0) std::memcpy(out_.data() + at, p, n);
  }
  template <size_t N>
  void Bytes(const std::array<uint8_t, N>& a) { Bytes(a.data(), N); }
  void Id(ClientId id) {
    assert(id >= 1 && id <= kMaxClientId);
    U32(id);
  }
  void Count(size_t n) {
    assert(n <= kMaxClients);
    U32(static_cast<uint32_t>(n));
  }
  std::vector<uint8_t> Take() { return std::move(out_); }

 private:
  std::vector<uint8_t> out_;
};

// Reads a message front to back; the first failure is kept and every later read fails too, so a
// parser checks once at the end of each step. Errors: DATA_LOSS "secagg <Type> message: <what>".
class Reader {
 public:
  Reader(std::span<const uint8_t> bytes, MessageType type) : bytes_(bytes), type_(type) {}

  // The header: magic, this reader's type, and the round id into *round.
  bool Header(uint64_t* round) {
    if (bytes_.size() < kHeaderBytes) {
      return Fail("the message has " + std::to_string(bytes_.size()) + " bytes, fewer than the " +
                  std::to_string(kHeaderBytes) + "-byte header");
    }
    if (std::memcmp(bytes_.data(), kMagic, 4) != 0) return Fail("bad magic (not a secagg message)");
    pos_ = 4;
    uint8_t type = 0;
    U8(&type);
    if (type != static_cast<uint8_t>(type_)) return Fail("the header says type " + std::to_string(type));
    return U64(round);
  }
  bool U8(uint8_t* v) {
    if (!Need(1)) return false;
    *v = bytes_[pos_++];
    return true;
  }
  bool U32(uint32_t* v) {
    if (!Need(4)) return false;
    *v = 0;
    for (int i = 0; i < 4; ++i) *v |= static_cast<uint32_t>(bytes_[pos_++]) << (8 * i);
    return true;
  }
  bool U64(uint64_t* v) {
    if (!Need(8)) return false;
    *v = 0;
    for (int i = 0; i < 8; ++i) *v |= static_cast<uint64_t>(bytes_[pos_++]) << (8 * i);
    return true;
  }
  template <size_t N>
  bool Bytes(std::array<uint8_t, N>* a) {
    if (!Need(N)) return false;
    std::memcpy(a->data(), bytes_.data() + pos_, N);
    pos_ += N;
    return true;
  }
  std::span<const uint8_t> Rest() {
    auto r = bytes_.subspan(pos_);
    pos_ = bytes_.size();
    return r;
  }
  bool Id(ClientId* id, const char* what) {
    if (!U32(id)) return false;
    if (*id < 1 || *id > kMaxClientId) {
      return Fail(std::string(what) + " " + std::to_string(*id) + " is outside [1, " + std::to_string(kMaxClientId) + "]");
    }
    return true;
  }
  // A count of entries of `entry_bytes` each: at most kMaxClients, and no more than the bytes left
  // can hold, so nothing is allocated by an untrusted size.
  bool Count(uint32_t* n, size_t entry_bytes, const char* what) {
    if (!U32(n)) return false;
    if (*n > kMaxClients) {
      return Fail(std::to_string(*n) + " " + what + " exceed the limit of " + std::to_string(kMaxClients));
    }
    if (static_cast<size_t>(*n) * entry_bytes > bytes_.size() - pos_) {
      return Fail(std::to_string(*n) + " " + what + " need " + std::to_string(*n * entry_bytes) + " bytes, " +
                  std::to_string(bytes_.size() - pos_) + " are left");
    }
    return true;
  }
  bool Fail(const std::string& what) {
    if (error_.empty()) error_ = what;
    return false;
  }
  // OK when every read succeeded and every byte was read.
  Status Finish() {
    if (error_.empty() && pos_ != bytes_.size()) {
      error_ = std::to_string(bytes_.size() - pos_) + " trailing bytes after the message";
    }
    if (error_.empty()) return Status::Ok();
    return DataLoss("secagg " + std::string(MessageTypeName(type_)) + " message: " + error_);
  }

 private:
  bool Need(size_t n) {
    if (!error_.empty()) return false;
    if (bytes_.size() - pos_ < n) {
      return Fail("truncated at byte " + std::to_string(pos_) + " (" + std::to_string(n) + " more needed, " +
                  std::to_string(bytes_.size() - pos_) + " left)");
    }
    return true;
  }

  std::span<const uint8_t> bytes_;
  MessageType type_;
  size_t pos_ = 0;
  std::string error_;
};

std::vector<uint8_t> SerializeCiphertexts(MessageType type, uint64_t round, ClientId self,
                                          const std::vector<ShareCiphertext>& shares, bool self_is_sender) {
  Writer w(type, round, kHeaderBytes + 8 + shares.size() * (4 + kShareCiphertextBytes));
  w.Id(self);
  w.Count(shares.size());
  for (const ShareCiphertext& s : shares) {
    assert((self_is_sender ? s.from : s.to) == self);
    w.Id(self_is_sender ? s.to : s.from);
    w.Bytes(s.bytes);
  }
  return w.Take();
}

// Fills *self and *shares; the peer id of each entry is the recipient when self is the sender.
Status ParseCiphertexts(std::span<const uint8_t> bytes, MessageType type, uint64_t* round, ClientId* self,
                        std::vector<ShareCiphertext>* shares, bool self_is_sender) {
  Reader r(bytes, type);
  uint32_t n = 0;
  if (r.Header(round) && r.Id(self, self_is_sender ? "sender" : "recipient") &&
      r.Count(&n, 4 + kShareCiphertextBytes, "ciphertexts")) {
    shares->resize(n);
    for (ShareCiphertext& s : *shares) {
      ClientId peer = 0;
      if (!r.Id(&peer, self_is_sender ? "recipient" : "sender") || !r.Bytes(&s.bytes)) break;
      s.from = self_is_sender ? *self : peer;
      s.to = self_is_sender ? peer : *self;
    }
  }
  return r.Finish();
}

bool ReadIds(Reader& r, std::vector<ClientId>* ids, const char* what) {
  uint32_t n = 0;
  if (!r.Count(&n, 4, what)) return false;
  ids->resize(n);
  for (ClientId& id : *ids) {
    if (!r.Id(&id, "client id")) return false;
  }
  return true;
}

bool ReadRevealed(Reader& r, std::vector<RevealedShare>* shares, const char* what) {
  uint32_t n = 0;
  if (!r.Count(&n, 4 + kShareBytes, what)) return false;
  shares->resize(n);
  for (RevealedShare& s : *shares) {
    if (!r.Id(&s.owner, "share owner") || !r.Bytes(&s.y)) return false;
  }
  return true;
}

}  // namespace

std::string_view MessageTypeName(MessageType type) {
  switch (type) {
    case MessageType::kAdvertiseKeys: return "AdvertiseKeys";
    case MessageType::kKeyList: return "KeyList";
    case MessageType::kShareKeys: return "ShareKeys";
    case MessageType::kRoutedShares: return "RoutedShares";
    case MessageType::kMaskedInput: return "MaskedInput";
    case MessageType::kUnmaskRequest: return "UnmaskRequest";
    case MessageType::kUnmaskResponse: return "UnmaskResponse";
    case MessageType::kRoundConfig: return "RoundConfig";
    case MessageType::kOutcome: return "Outcome";
  }
  return "unknown";
}

std::vector<uint8_t> Serialize(const AdvertiseKeysMessage& m) {
  Writer w(MessageType::kAdvertiseKeys, m.round, kHeaderBytes + 4 + 64);
  w.Id(m.from);
  w.Bytes(m.c_pk);
  w.Bytes(m.s_pk);
  return w.Take();
}

std::vector<uint8_t> Serialize(const KeyListMessage& m) {
  Writer w(MessageType::kKeyList, m.round, kHeaderBytes + 4 + m.clients.size() * 68);
  w.Count(m.clients.size());
  for (const auto& e : m.clients) {
    w.Id(e.id);
    w.Bytes(e.c_pk);
    w.Bytes(e.s_pk);
  }
  return w.Take();
}

std::vector<uint8_t> Serialize(const ShareKeysMessage& m) {
  return SerializeCiphertexts(MessageType::kShareKeys, m.round, m.from, m.shares, /*self_is_sender=*/true);
}

std::vector<uint8_t> Serialize(const RoutedSharesMessage& m) {
  return SerializeCiphertexts(MessageType::kRoutedShares, m.round, m.to, m.shares, /*self_is_sender=*/false);
}

std::vector<uint8_t> Serialize(const MaskedInputMessage& m) {
  assert(m.ring_bits >= 1 && m.ring_bits <= 64 && m.y.size() <= kMaxVectorLength);
  std::vector<uint8_t> packed = PackRing(m.y, m.ring_bits);
  Writer w(MessageType::kMaskedInput, m.round, kHeaderBytes + 4 + 1 + 8 + packed.size());
  w.Id(m.from);
  w.U8(static_cast<uint8_t>(m.ring_bits));
  w.U64(m.y.size());
  w.Bytes(packed.data(), packed.size());
  return w.Take();
}

std::vector<uint8_t> Serialize(const UnmaskRequestMessage& m) {
  Writer w(MessageType::kUnmaskRequest, m.round, kHeaderBytes + 8 + 4 * (m.survivors.size() + m.dropped.size()));
  w.Count(m.survivors.size());
  for (ClientId id : m.survivors) w.Id(id);
  w.Count(m.dropped.size());
  for (ClientId id : m.dropped) w.Id(id);
  return w.Take();
}

std::vector<uint8_t> Serialize(const UnmaskResponseMessage& m) {
  Writer w(MessageType::kUnmaskResponse, m.round,
           kHeaderBytes + 12 + (4 + kShareBytes) * (m.b_shares.size() + m.s_shares.size()));
  w.Id(m.from);
  for (const auto* list : {&m.b_shares, &m.s_shares}) {
    w.Count(list->size());
    for (const RevealedShare& s : *list) {
      w.Id(s.owner);
      w.Bytes(s.y);
    }
  }
  return w.Take();
}

Result<MessageType> PeekMessageType(std::span<const uint8_t> bytes) {
  if (bytes.size() < kHeaderBytes) {
    return DataLoss("secagg message: " + std::to_string(bytes.size()) + " bytes, fewer than the " +
                    std::to_string(kHeaderBytes) + "-byte header");
  }
  if (std::memcmp(bytes.data(), kMagic, 4) != 0) return DataLoss("secagg message: bad magic (not a secagg message)");
  const uint8_t type = bytes[4];
  if (type < static_cast<uint8_t>(MessageType::kAdvertiseKeys) ||
      type > static_cast<uint8_t>(MessageType::kOutcome)) {
    return DataLoss("secagg message: unknown type " + std::to_string(type));
  }
  return static_cast<MessageType>(type);
}

Result<AdvertiseKeysMessage> ParseAdvertiseKeys(std::span<const uint8_t> bytes) {
  AdvertiseKeysMessage m;
  Reader r(bytes, MessageType::kAdvertiseKeys);
  if (r.Header(&m.round) && r.Id(&m.from, "sender")) {
    r.Bytes(&m.c_pk);
    r.Bytes(&m.s_pk);
  }
  SHARDPS_RETURN_IF_ERROR(r.Finish());
  return m;
}

Result<KeyListMessage> ParseKeyList(std::span<const uint8_t> bytes) {
  KeyListMessage m;
  Reader r(bytes, MessageType::kKeyList);
  uint32_t n = 0;
  if (r.Header(&m.round) && r.Count(&n, 68, "key entries")) {
    m.clients.resize(n);
    for (auto& e : m.clients) {
      if (!r.Id(&e.id, "client id") || !r.Bytes(&e.c_pk) || !r.Bytes(&e.s_pk)) break;
    }
  }
  SHARDPS_RETURN_IF_ERROR(r.Finish());
  return m;
}

Result<ShareKeysMessage> ParseShareKeys(std::span<const uint8_t> bytes) {
  ShareKeysMessage m;
  SHARDPS_RETURN_IF_ERROR(ParseCiphertexts(bytes, MessageType::kShareKeys, &m.round, &m.from, &m.shares, true));
  return m;
}

Result<RoutedSharesMessage> ParseRoutedShares(std::span<const uint8_t> bytes) {
  RoutedSharesMessage m;
  SHARDPS_RETURN_IF_ERROR(ParseCiphertexts(bytes, MessageType::kRoutedShares, &m.round, &m.to, &m.shares, false));
  return m;
}

Result<MaskedInputMessage> ParseMaskedInput(std::span<const uint8_t> bytes) {
  MaskedInputMessage m;
  Reader r(bytes, MessageType::kMaskedInput);
  uint8_t ring_bits = 0;
  uint64_t length = 0;
  if (r.Header(&m.round) && r.Id(&m.from, "sender") && r.U8(&ring_bits) && r.U64(&length)) {
    if (ring_bits < 1 || ring_bits > 64) {
      r.Fail("ring width m = " + std::to_string(ring_bits) + " is outside [1, 64]");
    } else if (length < 1 || length > kMaxVectorLength) {
      r.Fail("vector length " + std::to_string(length) + " is outside [1, " + std::to_string(kMaxVectorLength) + "]");
    } else {
      // UnpackRing checks the exact size before it allocates.
      auto y = UnpackRing(r.Rest(), length, ring_bits);
      if (!y.ok()) {
        r.Fail(y.status().message());
      } else {
        m.ring_bits = ring_bits;
        m.y = std::move(y).value();
      }
    }
  }
  SHARDPS_RETURN_IF_ERROR(r.Finish());
  return m;
}

Result<UnmaskRequestMessage> ParseUnmaskRequest(std::span<const uint8_t> bytes) {
  UnmaskRequestMessage m;
  Reader r(bytes, MessageType::kUnmaskRequest);
  if (r.Header(&m.round) && ReadIds(r, &m.survivors, "survivors")) ReadIds(r, &m.dropped, "dropped clients");
  SHARDPS_RETURN_IF_ERROR(r.Finish());
  return m;
}

Result<UnmaskResponseMessage> ParseUnmaskResponse(std::span<const uint8_t> bytes) {
  UnmaskResponseMessage m;
  Reader r(bytes, MessageType::kUnmaskResponse);
  if (r.Header(&m.round) && r.Id(&m.from, "sender") && ReadRevealed(r, &m.b_shares, "b shares")) {
    ReadRevealed(r, &m.s_shares, "s_sk shares");
  }
  SHARDPS_RETURN_IF_ERROR(r.Finish());
  return m;
}

std::vector<uint8_t> Serialize(const RoundConfigMessage& m) {
  const RoundConfig& c = m.config;
  assert(c.ring_bits >= 1 && c.ring_bits <= 64);
  Writer w(MessageType::kRoundConfig, c.round_id, kHeaderBytes + 4 + 1 + 8 + 4 + 4 * c.participants.size());
  w.U32(c.threshold);
  w.U8(static_cast<uint8_t>(c.ring_bits));
  w.U64(c.vector_length);
  w.Count(c.participants.size());
  for (ClientId id : c.participants) w.Id(id);
  return w.Take();
}

Result<RoundConfigMessage> ParseRoundConfig(std::span<const uint8_t> bytes) {
  RoundConfigMessage m;
  RoundConfig& c = m.config;
  Reader r(bytes, MessageType::kRoundConfig);
  uint8_t ring_bits = 0;
  if (r.Header(&c.round_id) && r.U32(&c.threshold) && r.U8(&ring_bits) && r.U64(&c.vector_length)) {
    c.ring_bits = ring_bits;
    ReadIds(r, &c.participants, "participants");
  }
  SHARDPS_RETURN_IF_ERROR(r.Finish());
  SHARDPS_RETURN_IF_ERROR(ValidateRoundConfig(c));
  return m;
}

std::vector<uint8_t> Serialize(const OutcomeMessage& m) {
  if (m.aborted) {
    const std::string reason = m.reason.substr(0, kMaxOutcomeReason);
    Writer w(MessageType::kOutcome, m.round, kHeaderBytes + 1 + 4 + reason.size());
    w.U8(1);
    w.U32(static_cast<uint32_t>(reason.size()));
    w.Bytes(reinterpret_cast<const uint8_t*>(reason.data()), reason.size());
    return w.Take();
  }
  assert(m.ring_bits >= 1 && m.ring_bits <= 64 && m.sum.size() <= kMaxVectorLength);
  std::vector<uint8_t> packed = PackRing(m.sum, m.ring_bits);
  Writer w(MessageType::kOutcome, m.round, kHeaderBytes + 1 + 4 + 4 * m.survivors.size() + 9 + packed.size());
  w.U8(0);
  w.Count(m.survivors.size());
  for (ClientId id : m.survivors) w.Id(id);
  w.U8(static_cast<uint8_t>(m.ring_bits));
  w.U64(m.sum.size());
  w.Bytes(packed.data(), packed.size());
  return w.Take();
}

Result<OutcomeMessage> ParseOutcome(std::span<const uint8_t> bytes) {
  OutcomeMessage m;
  Reader r(bytes, MessageType::kOutcome);
  uint8_t aborted = 0;
  if (r.Header(&m.round) && r.U8(&aborted)) {
    if (aborted > 1) {
      r.Fail("the aborted flag is " + std::to_string(aborted) + ", not 0 or 1");
    } else if (aborted == 1) {
      m.aborted = true;
      uint32_t n = 0;
      if (r.U32(&n)) {
        if (n > kMaxOutcomeReason) {
          r.Fail("a reason of " + std::to_string(n) + " bytes exceeds " + std::to_string(kMaxOutcomeReason));
        } else {
          std::span<const uint8_t> rest = r.Rest();
          if (rest.size() != n) {
            r.Fail("the reason says " + std::to_string(n) + " bytes, " + std::to_string(rest.size()) + " follow");
          } else {
            m.reason.assign(rest.begin(), rest.end());
          }
        }
      }
    } else {
      uint8_t ring_bits = 0;
      uint64_t length = 0;
      if (ReadIds(r, &m.survivors, "survivors") && r.U8(&ring_bits) && r.U64(&length)) {
        if (ring_bits < 1 || ring_bits > 64) {
          r.Fail("ring width m = " + std::to_string(ring_bits) + " is outside [1, 64]");
        } else if (length < 1 || length > kMaxVectorLength) {
          r.Fail("vector length " + std::to_string(length) + " is outside [1, " + std::to_string(kMaxVectorLength) + "]");
        } else {
          auto sum = UnpackRing(r.Rest(), length, ring_bits);
          if (!sum.ok()) {
            r.Fail(sum.status().message());
          } else {
            m.ring_bits = ring_bits;
            m.sum = std::move(sum).value();
          }
        }
      }
    }
  }
  SHARDPS_RETURN_IF_ERROR(r.Finish());
  return m;
}

namespace {
constexpr uint8_t kBundleMagic[4] = {'S', 'P', 'S', 'B'};
}  // namespace

std::vector<uint8_t> SerializeBundle(const std::vector<std::vector<uint8_t>>& messages) {
  assert(messages.size() <= kMaxBundleMessages);
  size_t total = 8;
  for (const auto& m : messages) total += 4 + m.size();
  std::vector<uint8_t> out(total);
  size_t pos = 0;
  auto u32 = [&](uint32_t v) {
    for (int i = 0; i < 4; ++i) out[pos++] = static_cast<uint8_t>(v >> (8 * i));
  };
  std::memcpy(out.data(), kBundleMagic, 4);
  pos = 4;
  u32(static_cast<uint32_t>(messages.size()));
  for (const auto& m : messages) {
    assert(m.size() <= UINT32_MAX);
    u32(static_cast<uint32_t>(m.size()));
    if (!m.empty()) std::memcpy(out.data() + pos, m.data(), m.size());
    pos += m.size();
  }
  return out;
}

Result<std::vector<std::span<const uint8_t>>> ParseBundle(std::span<const uint8_t> bytes) {
  auto fail = [](const std::string& what) { return DataLoss("secagg bundle: " + what); };
  auto u32 = [&](size_t at) {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(bytes[at + i]) << (8 * i);
    return v;
  };
  if (bytes.size() < 8) return fail(std::to_string(bytes.size()) + " bytes, fewer than its 8-byte header");
  if (std::memcmp(bytes.data(), kBundleMagic, 4) != 0) return fail("bad magic (not a bundle)");
  const uint32_t n = u32(4);
  if (n > kMaxBundleMessages) {
    return fail(std::to_string(n) + " messages exceed the limit of " + std::to_string(kMaxBundleMessages));
  }
  std::vector<std::span<const uint8_t>> out;
  out.reserve(n);
  size_t pos = 8;
  for (uint32_t i = 0; i < n; ++i) {
    if (bytes.size() - pos < 4) return fail("truncated before the length of message " + std::to_string(i));
    const uint32_t len = u32(pos);
    pos += 4;
    if (bytes.size() - pos < len) {
      return fail("message " + std::to_string(i) + " says " + std::to_string(len) + " bytes, " +
                  std::to_string(bytes.size() - pos) + " are left");
    }
    out.push_back(bytes.subspan(pos, len));
    pos += len;
  }
  if (pos != bytes.size()) return fail(std::to_string(bytes.size() - pos) + " trailing bytes after " + std::to_string(n) + " messages");
  return out;
}

}  // namespace shardps::secagg
