// Channel: one authenticated TCP connection carrying framed messages, for processes that are not
// ranks of a job and may come and go: federated clients and their coordinator
// (docs/federated.md#real-clients). Blocking calls, each bounded by a deadline.
//
//   SHARDPS_ASSIGN_OR_RETURN(Listener l, Listener::Bind("127.0.0.1", 0));        // coordinator
//   SHARDPS_ASSIGN_OR_RETURN(Channel c, l.Accept(secret, deadline));
//   SHARDPS_ASSIGN_OR_RETURN(Channel c, Channel::Connect("127.0.0.1", port, secret, deadline));  // client
//   SHARDPS_RETURN_IF_ERROR(c.Send(kJoin, payload, deadline));
//   SHARDPS_ASSIGN_OR_RETURN(Channel::Message m, c.Receive(deadline));
//
// Authentication: the shared-secret handshake of auth.h (HMAC-SHA256 challenge-response, both
// sides prove they hold the secret), before any message. The acceptor's rank in the handshake is
// 0, the connecting side's 1.
// Frames: "SPFC" | type u8 | length u32 | payload (length <= max_payload, checked before anything
// is allocated). A peer that closes, sends a bad frame or misses the deadline gives an error
// naming the peer and what went wrong (UNAVAILABLE for a closed connection, DEADLINE_EXCEEDED,
// DATA_LOSS); the channel is then closed for good.
// Thread safety: one thread may Send while another Receives; Close() from any thread makes both
// return. Otherwise one thread per direction.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "shardps/base/status.h"
#include "shardps/net/auth.h"

namespace shardps {

inline constexpr uint32_t kDefaultChannelMaxPayload = 64u << 20;

class Channel {
 public:
  using Clock = std::chrono::steady_clock;
  struct Message {
    uint8_t type = 0;
    std::vector<uint8_t> payload;
  };

  Channel() = default;  // not connected: every call fails
  static Result<Channel> Connect(const std::string& host, uint16_t port, const Secret& secret, Clock::time_point deadline,
                                 uint32_t max_payload = kDefaultChannelMaxPayload);
  ~Channel();
  Channel(Channel&& other) noexcept;
  Channel& operator=(Channel&& other) noexcept;
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  Status Send(uint8_t type, std::span<const uint8_t> payload, Clock::time_point deadline);
  Result<Message> Receive(Clock::time_point deadline);
  // Shuts the connection down: blocked and later calls return UNAVAILABLE.
  void Close();
  // "127.0.0.1:40312": the peer, for errors.
  const std::string& peer() const { return peer_; }

 private:
  friend class Listener;
  Channel(int fd, std::string peer, uint32_t max_payload);
  Status Handshake(const Secret& secret, bool initiator, Clock::time_point deadline);
  Status RunHandshake(const Secret& secret, bool initiator, Clock::time_point deadline);
  Status WriteAll(std::span<const uint8_t> bytes, Clock::time_point deadline);
  Status ReadAll(std::span<uint8_t> bytes, Clock::time_point deadline, const char* what);

  int fd_ = -1;
  std::string peer_;
  uint32_t max_payload_ = kDefaultChannelMaxPayload;
  std::unique_ptr<std::atomic<bool>> closed_ = std::make_unique<std::atomic<bool>>(false);
};

class Listener {
 public:
  // Binds host:port (port 0: any free port) and listens.
  static Result<Listener> Bind(const std::string& host, uint16_t port);
  ~Listener();
  Listener(Listener&& other) noexcept;
  Listener& operator=(Listener&& other) noexcept;
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  // The next connection, by `deadline` (DEADLINE_EXCEEDED when none came), once it completed the
  // handshake (given 10 s of its own). A connection that fails it is closed and reported as an
  // error naming its address.
  Result<Channel> Accept(const Secret& secret, Channel::Clock::time_point deadline,
                         uint32_t max_payload = kDefaultChannelMaxPayload);
  uint16_t port() const { return port_; }

 private:
  Listener(int fd, uint16_t port) : fd_(fd), port_(port) {}
  int fd_ = -1;
  uint16_t port_ = 0;
};

}  // namespace shardps
