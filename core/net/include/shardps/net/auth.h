// Mutual authentication of two processes that share a secret: an HMAC-SHA256 challenge-response
// with fresh nonces from both sides, for transports that accept connections from the network.
//
//   SHARDPS_ASSIGN_OR_RETURN(Secret key, LoadSecret("/etc/shardps/job.key"));   // >= 32 bytes
//   Handshake a(key, /*my_rank=*/3, Handshake::kInitiator), b(key, 0, Handshake::kAcceptor);
//   auto m1 = a.Start();                 // HELLO(nonce_a)           a -> b
//   auto m2 = b.OnMessage(m1);           // HELLO(nonce_b)           b -> a
//   auto m3 = a.OnMessage(*m2);          // PROOF_a                  a -> b
//   auto m4 = b.OnMessage(*m3);          // PROOF_b (b is done)      b -> a
//   a.OnMessage(*m4);                    // a is done; a.peer_rank() == 0
//
// Each proof is HMAC-SHA256(secret, label | own nonce | peer nonce | own rank | peer rank), so
// it is bound to this connection's two nonces: a proof recorded from another connection (a
// replay) does not verify, and neither side's proof can be reflected back as the other's. Proofs
// are compared in constant time. Each HELLO also carries the sender's job tag in the clear: a
// digest of the job's configuration, the same on every process of one job and not guessable
// by a stranger. It is not part of the proof; it only lets an acceptor tell one of its own job's
// processes that holds another secret (a misconfiguration that ends the job) from a stranger
// (ignored). Messages have fixed sizes; anything else is an error. A side
// that saw an error stays failed.
// Thread safety: a Handshake belongs to one connection and one thread.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shardps/base/status.h"

namespace shardps {

using Secret = std::vector<uint8_t>;
using JobTag = std::array<uint8_t, 16>;  // all zero: no tag (never matches)
inline constexpr size_t kMinSecretBytes = 32;

// Reads a secret file (at least 32 bytes; refused if other users may read it).
Result<Secret> LoadSecret(const std::string& path);
// Reads a file holding a credential (`what` names it in errors: "secret file", "token file"):
// NOT_FOUND if it cannot be opened, FAILED_PRECONDITION if group or others have any access (the
// message says to chmod 600 it), INVALID_ARGUMENT if larger than `max_bytes`. Every error names
// the path.
Result<std::string> ReadPrivateFile(const std::string& path, std::string_view what, size_t max_bytes = 4096);
// Writes 32 fresh random bytes (OpenSSL RAND_bytes) to `path`, mode 0600, atomically; refuses to
// overwrite an existing file.
Status WriteNewSecret(const std::string& path);

class Handshake {
 public:
  enum Role { kInitiator, kAcceptor };
  static constexpr size_t kHelloBytes = 4 + 4 + 32 + 16;  // magic "SPSA", rank, nonce, job tag
  static constexpr size_t kProofBytes = 4 + 32;       // magic "SPSP", HMAC

  Handshake(Secret secret, int32_t my_rank, Role role, JobTag job_tag = {});

  // The initiator's first message (HELLO); the acceptor starts by waiting.
  std::vector<uint8_t> Start();
  // Consumes the peer's next message; returns the reply to send (if any).
  Result<std::optional<std::vector<uint8_t>>> OnMessage(std::span<const uint8_t> message);

  bool done() const { return state_ == kDone; }
  int32_t peer_rank() const { return peer_rank_; }
  // After the peer's HELLO: it carries our (non-zero) job tag, so it was started with this
  // job's configuration, whether or not its proof verifies.
  bool peer_in_same_job() const;
  // Bytes the next message from the peer must have (0 when done or failed).
  size_t expected_bytes() const;

 private:
  enum State { kIdle, kWaitHello, kWaitProof, kDone, kFailed };
  std::array<uint8_t, 32> Proof(bool mine) const;
  Status Fail(Status s);

  Secret secret_;
  int32_t my_rank_;
  Role role_;
  State state_;
  int32_t peer_rank_ = -1;
  std::array<uint8_t, 32> my_nonce_{};
  std::array<uint8_t, 32> peer_nonce_{};
  JobTag job_tag_{};
  JobTag peer_job_tag_{};
};

}  // namespace shardps
