#include "shardps/net/channel.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace shardps {
namespace {

constexpr uint8_t kMagic[4] = {'S', 'P', 'F', 'C'};
constexpr size_t kPrefixBytes = 9;

int MsUntil(Channel::Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Channel::Clock::now()).count();
  if (left <= 0) return 0;
  return static_cast<int>(std::min<int64_t>(left, 1000));  // re-check Close() at least every second
}

std::string Describe(const sockaddr_storage& a) {
  char host[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (a.ss_family == AF_INET) {
    const auto* v4 = reinterpret_cast<const sockaddr_in*>(&a);
    inet_ntop(AF_INET, &v4->sin_addr, host, sizeof(host));
    port = ntohs(v4->sin_port);
  } else if (a.ss_family == AF_INET6) {
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&a);
    inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof(host));
    port = ntohs(v6->sin6_port);
  }
  return std::string(host) + ":" + std::to_string(port);
}

Status Errno(const std::string& what) { return Unavailable(what + ": " + std::strerror(errno)); }

void SetNonBlocking(int fd) {
  const int flags = fcntl(fd, F_GETFL, 0);
  fcntl(fd, F_SETFL, flags | O_NONBLOCK);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

}  // namespace

Channel::Channel(int fd, std::string peer, uint32_t max_payload) : fd_(fd), peer_(std::move(peer)), max_payload_(max_payload) {}

Channel::~Channel() {
  if (fd_ >= 0) ::close(fd_);
}

Channel::Channel(Channel&& o) noexcept
    : fd_(std::exchange(o.fd_, -1)), peer_(std::move(o.peer_)), max_payload_(o.max_payload_), closed_(std::move(o.closed_)) {}

Channel& Channel::operator=(Channel&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(o.fd_, -1);
    peer_ = std::move(o.peer_);
    max_payload_ = o.max_payload_;
    closed_ = std::move(o.closed_);
  }
  return *this;
}

void Channel::Close() {
  if (closed_) closed_->store(true);
  if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
}

Status Channel::WriteAll(std::span<const uint8_t> bytes, Clock::time_point deadline) {
  if (fd_ < 0 || !closed_) return Unavailable("the channel is not connected");
  size_t done = 0;
  while (done < bytes.size()) {
    if (closed_->load()) return Unavailable("connection to " + peer_ + " is closed");
    const ssize_t n = ::send(fd_, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
    if (n > 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      return Errno("sending to " + peer_);
    }
    if (Clock::now() >= deadline) {
      return DeadlineExceeded("sending to " + peer_ + ": " + std::to_string(bytes.size() - done) + " of " +
                              std::to_string(bytes.size()) + " bytes still unsent at the deadline");
    }
    pollfd p{fd_, POLLOUT, 0};
    ::poll(&p, 1, MsUntil(deadline));
  }
  return Status::Ok();
}

Status Channel::ReadAll(std::span<uint8_t> bytes, Clock::time_point deadline, const char* what) {
  if (fd_ < 0 || !closed_) return Unavailable("the channel is not connected");
  size_t done = 0;
  while (done < bytes.size()) {
    if (closed_->load()) return Unavailable("connection to " + peer_ + " is closed");
    const ssize_t n = ::recv(fd_, bytes.data() + done, bytes.size() - done, 0);
    if (n > 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (n == 0) {
      return Unavailable(peer_ + " closed the connection" +
                         (done > 0 ? " in the middle of " + std::string(what) : std::string()));
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return Errno(std::string("receiving ") + what + " from " + peer_);
    if (Clock::now() >= deadline) {
      return DeadlineExceeded("no " + std::string(what) + " from " + peer_ + " by the deadline (" + std::to_string(done) +
                              " of " + std::to_string(bytes.size()) + " bytes arrived)");
    }
    pollfd p{fd_, POLLIN, 0};
    ::poll(&p, 1, MsUntil(deadline));
  }
  return Status::Ok();
}

Status Channel::Send(uint8_t type, std::span<const uint8_t> payload, Clock::time_point deadline) {
  if (payload.size() > max_payload_) {
    return InvalidArgument("a message of " + std::to_string(payload.size()) + " bytes exceeds the channel's limit of " +
                           std::to_string(max_payload_));
  }
  uint8_t prefix[kPrefixBytes];
  std::memcpy(prefix, kMagic, 4);
  prefix[4] = type;
  const auto n = static_cast<uint32_t>(payload.size());
  for (int i = 0; i < 4; ++i) prefix[5 + i] = static_cast<uint8_t>(n >> (8 * i));
  SHARDPS_RETURN_IF_ERROR(WriteAll(prefix, deadline));
  return WriteAll(payload, deadline);
}

Result<Channel::Message> Channel::Receive(Clock::time_point deadline) {
  uint8_t prefix[kPrefixBytes];
  SHARDPS_RETURN_IF_ERROR(ReadAll(prefix, deadline, "message"));
  if (std::memcmp(prefix, kMagic, 4) != 0) {
    Close();
    return DataLoss("a frame from " + peer_ + " does not start with the channel's magic");
  }
  uint32_t n = 0;
  for (int i = 0; i < 4; ++i) n |= static_cast<uint32_t>(prefix[5 + i]) << (8 * i);
  if (n > max_payload_) {
    Close();
    return DataLoss("a frame from " + peer_ + " announces " + std::to_string(n) + " bytes, more than the limit of " +
                    std::to_string(max_payload_));
  }
  Message m;
  m.type = prefix[4];
  m.payload.resize(n);
  SHARDPS_RETURN_IF_ERROR(ReadAll(m.payload, deadline, "message body"));
  return m;
}

Status Channel::Handshake(const Secret& secret, bool initiator, Clock::time_point deadline) {
  Status s = RunHandshake(secret, initiator, deadline);
  if (!s.ok()) {
    Close();
    // Not UNAVAILABLE: trying again with the same secret cannot help.
    return FailedPrecondition("authenticating with " + peer_ + " failed (the shared-secret handshake; do both sides use the same "
                              "secret file?): " + s.message());
  }
  return s;
}

Status Channel::RunHandshake(const Secret& secret, bool initiator, Clock::time_point deadline) {
  shardps::Handshake h(secret, initiator ? 1 : 0, initiator ? shardps::Handshake::kInitiator : shardps::Handshake::kAcceptor);
  if (initiator) SHARDPS_RETURN_IF_ERROR(WriteAll(h.Start(), deadline));
  while (!h.done()) {
    std::vector<uint8_t> in(h.expected_bytes());
    if (in.empty()) return FailedPrecondition("handshake with " + peer_ + " failed");
    SHARDPS_RETURN_IF_ERROR(ReadAll(in, deadline, "handshake message"));
    auto reply = h.OnMessage(in);
    if (!reply.ok()) return reply.status().WithContext("handshake with " + peer_);
    if (*reply) SHARDPS_RETURN_IF_ERROR(WriteAll(**reply, deadline));
  }
  return Status::Ok();
}

Result<Channel> Channel::Connect(const std::string& host, uint16_t port, const Secret& secret, Clock::time_point deadline,
                                 uint32_t max_payload) {
  const std::string where = host + ":" + std::to_string(port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res); rc != 0) {
    return InvalidArgument("cannot resolve '" + host + "': " + gai_strerror(rc));
  }
  Status last = Unavailable("no address for " + where);
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;
    SetNonBlocking(fd);
    int rc = ::connect(fd, a->ai_addr, a->ai_addrlen);
    if (rc < 0 && errno == EINPROGRESS) {
      while (true) {
        pollfd p{fd, POLLOUT, 0};
        const int r = ::poll(&p, 1, MsUntil(deadline));
        if (r > 0) {
          int err = 0;
          socklen_t len = sizeof(err);
          getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
          rc = err == 0 ? 0 : -1;
          errno = err;
          break;
        }
        if (Clock::now() >= deadline) {
          rc = -1;
          errno = ETIMEDOUT;
          break;
        }
      }
    }
    if (rc != 0) {
      last = Errno("connecting to " + where);
      ::close(fd);
      continue;
    }
    freeaddrinfo(res);
    Channel c(fd, where, max_payload);
    SHARDPS_RETURN_IF_ERROR(c.Handshake(secret, /*initiator=*/true, deadline));
    return c;
  }
  freeaddrinfo(res);
  return last;
}

Result<Listener> Listener::Bind(const std::string& host, uint16_t port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res); rc != 0) {
    return InvalidArgument("cannot resolve '" + host + "': " + gai_strerror(rc));
  }
  const int fd = ::socket(res->ai_family, res->ai_socktype, res->ai_protocol);
  if (fd < 0) {
    freeaddrinfo(res);
    return Errno("socket");
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(fd, res->ai_addr, res->ai_addrlen) != 0 || ::listen(fd, 256) != 0) {
    Status s = Errno("binding " + host + ":" + std::to_string(port));
    ::close(fd);
    freeaddrinfo(res);
    return s;
  }
  freeaddrinfo(res);
  SetNonBlocking(fd);
  sockaddr_storage a{};
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  const uint16_t bound = a.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&a)->sin6_port)
                                                 : ntohs(reinterpret_cast<sockaddr_in*>(&a)->sin_port);
  return Listener(fd, bound);
}

Listener::~Listener() {
  if (fd_ >= 0) ::close(fd_);
}

Listener::Listener(Listener&& o) noexcept : fd_(std::exchange(o.fd_, -1)), port_(o.port_) {}

Listener& Listener::operator=(Listener&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(o.fd_, -1);
    port_ = o.port_;
  }
  return *this;
}

Result<Channel> Listener::Accept(const Secret& secret, Channel::Clock::time_point deadline, uint32_t max_payload) {
  while (true) {
    sockaddr_storage a{};
    socklen_t len = sizeof(a);
    const int fd = ::accept(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    if (fd >= 0) {
      SetNonBlocking(fd);
      Channel c(fd, Describe(a), max_payload);
      // The deadline bounds the wait for a connection; the handshake of one that came gets its own
      // 10 s (a peer that never proves itself holds the acceptor no longer than that).
      const auto hs_deadline = Channel::Clock::now() + std::chrono::seconds(10);
      SHARDPS_RETURN_IF_ERROR(c.Handshake(secret, /*initiator=*/false, hs_deadline));
      return c;
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) return Errno("accept");
    if (Channel::Clock::now() >= deadline) return DeadlineExceeded("no connection by the deadline");
    pollfd p{fd_, POLLIN, 0};
    ::poll(&p, 1, MsUntil(deadline));
  }
}

}  // namespace shardps
