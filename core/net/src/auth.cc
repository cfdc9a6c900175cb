#include "shardps/net/auth.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

namespace shardps {
namespace {

constexpr uint8_t kHelloMagic[4] = {'S', 'P', 'S', 'A'};
constexpr uint8_t kProofMagic[4] = {'S', 'P', 'S', 'P'};

void Put32(uint8_t* p, uint32_t v) { for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i)); }
uint32_t Get32(const uint8_t* p) { return p[0] | (p[1] << 8) | (p[2] << 16) | (uint32_t{p[3]} << 24); }

}  // namespace

Result<std::string> ReadPrivateFile(const std::string& path, std::string_view what, size_t max_bytes) {
  const std::string name = std::string(what) + " '" + path + "'";
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return NotFound(name + ": " + std::strerror(errno));
  if (st.st_mode & (S_IRWXG | S_IRWXO)) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%o", static_cast<unsigned>(st.st_mode & 0777));
    return FailedPrecondition(name + " may be read by other users (mode " + mode + "); chmod 600 it");
  }
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    return InvalidArgument(name + " is larger than " + std::to_string(max_bytes) + " bytes");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound(name + ": cannot be opened for reading");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return IoError(name + ": read failed");
  return bytes;
}

Result<Secret> LoadSecret(const std::string& path) {
  SHARDPS_ASSIGN_OR_RETURN(std::string bytes, ReadPrivateFile(path, "secret file"));
  Secret s(bytes.begin(), bytes.end());
  OPENSSL_cleanse(bytes.data(), bytes.size());
  if (s.size() < kMinSecretBytes) {
    return InvalidArgument("secret file '" + path + "' holds " + std::to_string(s.size()) + " bytes; at least " +
                           std::to_string(kMinSecretBytes) + " random bytes are needed (shardps keygen writes one)");
  }
  return s;
}

Status WriteNewSecret(const std::string& path) {
  uint8_t key[kMinSecretBytes];
  if (RAND_bytes(key, sizeof(key)) != 1) return Internal("RAND_bytes failed");
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd < 0) return IoError("cannot create '" + tmp + "': " + std::strerror(errno));
  const bool ok = ::write(fd, key, sizeof(key)) == static_cast<ssize_t>(sizeof(key)) && ::fsync(fd) == 0;
  ::close(fd);
  OPENSSL_cleanse(key, sizeof(key));
  if (!ok) {
    ::unlink(tmp.c_str());
    return IoError("writing '" + tmp + "' failed");
  }
  // link() refuses to replace an existing file, unlike rename().
  if (::link(tmp.c_str(), path.c_str()) != 0) {
    Status s = IoError("cannot create '" + path + "': " + std::strerror(errno));
    ::unlink(tmp.c_str());
    return s;
  }
  ::unlink(tmp.c_str());
  return Status::Ok();
}

Handshake::Handshake(Secret secret, int32_t my_rank, Role role, JobTag job_tag)
    : secret_(std::move(secret)), my_rank_(my_rank), role_(role), state_(role == kAcceptor ? kWaitHello : kIdle), job_tag_(job_tag) {
  if (RAND_bytes(my_nonce_.data(), static_cast<int>(my_nonce_.size())) != 1) state_ = kFailed;
}

std::vector<uint8_t> Handshake::Start() {
  std::vector<uint8_t> m(kHelloBytes);
  std::memcpy(m.data(), kHelloMagic, 4);
  Put32(m.data() + 4, static_cast<uint32_t>(my_rank_));
  std::memcpy(m.data() + 8, my_nonce_.data(), 32);
  std::memcpy(m.data() + 40, job_tag_.data(), job_tag_.size());
  if (role_ == kInitiator && state_ == kIdle) state_ = kWaitHello;
  return m;
}

size_t Handshake::expected_bytes() const {
  return state_ == kWaitHello ? kHelloBytes : state_ == kWaitProof ? kProofBytes : 0;
}

std::array<uint8_t, 32> Handshake::Proof(bool mine) const {
  // label | prover's nonce | verifier's nonce | prover's rank | verifier's rank
  const bool initiator_proves = (role_ == kInitiator) == mine;
  uint8_t msg[1 + 32 + 32 + 4 + 4];
  msg[0] = initiator_proves ? 'I' : 'A';
  const auto& prover_nonce = mine ? my_nonce_ : peer_nonce_;
  const auto& verifier_nonce = mine ? peer_nonce_ : my_nonce_;
  std::memcpy(msg + 1, prover_nonce.data(), 32);
  std::memcpy(msg + 33, verifier_nonce.data(), 32);
  Put32(msg + 65, static_cast<uint32_t>(mine ? my_rank_ : peer_rank_));
  Put32(msg + 69, static_cast<uint32_t>(mine ? peer_rank_ : my_rank_));
  std::array<uint8_t, 32> out{};
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret_.data(), static_cast<int>(secret_.size()), msg, sizeof(msg), out.data(), &len);
  return out;
}

bool Handshake::peer_in_same_job() const {
  return job_tag_ != JobTag{} && CRYPTO_memcmp(peer_job_tag_.data(), job_tag_.data(), job_tag_.size()) == 0;
}

Status Handshake::Fail(Status s) {
  state_ = kFailed;
  return s;
}

Result<std::optional<std::vector<uint8_t>>> Handshake::OnMessage(std::span<const uint8_t> m) {
  using Reply = std::optional<std::vector<uint8_t>>;
  switch (state_) {
    case kWaitHello: {
      if (m.size() != kHelloBytes) {
        return Fail(Unavailable("authentication: expected a " + std::to_string(kHelloBytes) + "-byte HELLO, got " +
                                std::to_string(m.size()) + " bytes"));
      }
      if (std::memcmp(m.data(), kHelloMagic, 4) != 0) {
        return Fail(Unavailable("authentication: expected a HELLO (magic \"SPSA\"), got other bytes (not a shardps peer?)"));
      }
      peer_rank_ = static_cast<int32_t>(Get32(m.data() + 4));
      std::memcpy(peer_nonce_.data(), m.data() + 8, 32);
      std::memcpy(peer_job_tag_.data(), m.data() + 40, peer_job_tag_.size());
      if (peer_nonce_ == my_nonce_) return Fail(Unavailable("authentication: the peer echoed our nonce (a reflection)"));
      state_ = kWaitProof;
      if (role_ == kAcceptor) return Reply(Start());  // our HELLO
      // Initiator: prove first.
      std::vector<uint8_t> proof(kProofBytes);
      std::memcpy(proof.data(), kProofMagic, 4);
      const auto p = Proof(true);
      std::memcpy(proof.data() + 4, p.data(), 32);
      return Reply(std::move(proof));
    }
    case kWaitProof: {
      if (m.size() != kProofBytes) {
        return Fail(Unavailable("authentication: expected a " + std::to_string(kProofBytes) + "-byte proof, got " +
                                std::to_string(m.size()) + " bytes"));
      }
      if (std::memcmp(m.data(), kProofMagic, 4) != 0) {
        return Fail(Unavailable("authentication: expected a proof (magic \"SPSP\"), got other bytes"));
      }
      const auto want = Proof(false);
      if (CRYPTO_memcmp(want.data(), m.data() + 4, 32) != 0) {
        return Fail(Unavailable("authentication failed: rank " + std::to_string(peer_rank_) +
                                " does not know the shared secret (or replayed an old handshake)"));
      }
      state_ = kDone;
      if (role_ == kInitiator) return Reply();
      std::vector<uint8_t> proof(kProofBytes);
      std::memcpy(proof.data(), kProofMagic, 4);
      const auto p = Proof(true);
      std::memcpy(proof.data() + 4, p.data(), 32);
      return Reply(std::move(proof));
    }
    case kIdle:
      return Fail(FailedPrecondition("authentication: the initiator must Start() first"));
    case kDone:
      return Fail(FailedPrecondition("authentication: message after the handshake completed"));
    case kFailed:
      break;
  }
  return Unavailable("authentication: the handshake already failed");
}

}  // namespace shardps
