#include "shardps/net/tcp_transport.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio.hpp>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <future>
#include <iostream>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "shardps/base/thread_annotations.h"

namespace shardps {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Deadline = Clock::time_point;

constexpr size_t kEnvelopeBytes = 16;
constexpr int kSpinPolls = 200;
constexpr int kIoSpinPolls = 200;
// Payloads up to kEagerBytes are read with their frame into a pooled buffer (one copy, like MPI's
// eager protocol), while at most kEagerBudget bytes of them wait for the receiver: a small message
// then costs no extra round of hand-offs between the I/O and the owning thread. Larger payloads
// are read straight into the receiver's buffer.
constexpr uint64_t kEagerBytes = 256 * 1024;
constexpr uint64_t kEagerBudget = 16 * 1024 * 1024;
constexpr uint64_t kEagerToken = uint64_t{1} << 63;
enum Kind : uint32_t { kMessage = 0, kHeartbeat = 1, kGoodbye = 2, kAbort = 3 };
constexpr size_t kMaxAddressBytes = 64;
constexpr int kLoggedRefusals = 50;
constexpr uint8_t kRejected[4] = {'S', 'P', 'S', 'X'};  // the acceptor's answer to a wrong proof
// In place of the address table's byte count: the coordinator ends the rendezvous, and a u32 LE
// length and the reason (at most kMaxReasonBytes) follow.
constexpr uint32_t kRendezvousRefused = 0xFFFFFFFF;
constexpr size_t kMaxReasonBytes = 4000;

std::vector<uint8_t> Envelope(uint64_t payload_bytes, uint32_t frame_bytes, Kind kind) {
  std::vector<uint8_t> e(kEnvelopeBytes);
  const uint32_t k = kind;
  std::memcpy(e.data(), &payload_bytes, 8);
  std::memcpy(e.data() + 8, &frame_bytes, 4);
  std::memcpy(e.data() + 12, &k, 4);
  return e;
}

// ---- Synchronous helpers for the dialing side of the rendezvous (caller's thread) ----

// Runs `io` until `*done` or `deadline`.
Status RunUntil(asio::io_context& io, const bool* done, Deadline deadline, const std::string& what) {
  io.restart();
  while (!*done) {
    if (Clock::now() >= deadline) return DeadlineExceeded(what + ": timed out");
    io.run_one_until(deadline);
    io.restart();
  }
  return Status::Ok();
}

template <typename Op>
Status RunOp(asio::io_context& io, tcp::socket& s, Deadline deadline, const std::string& what, Op op) {
  // `state` outlives an abandoned operation: closing the socket completes it later.
  auto state = std::make_shared<std::pair<bool, boost::system::error_code>>(false, boost::system::error_code{});
  op([state](const boost::system::error_code& e, size_t) {
    state->second = e;
    state->first = true;
  });
  Status st = RunUntil(io, &state->first, deadline, what);
  if (!st.ok()) {
    boost::system::error_code ignored;
    s.close(ignored);
    return st;
  }
  if (state->second) return Unavailable(what + ": " + state->second.message());
  return Status::Ok();
}

Status ReadExact(asio::io_context& io, tcp::socket& s, void* buf, size_t n, Deadline deadline, const std::string& what) {
  return RunOp(io, s, deadline, what, [&](auto cb) { asio::async_read(s, asio::buffer(buf, n), cb); });
}

Status WriteExact(asio::io_context& io, tcp::socket& s, const void* buf, size_t n, Deadline deadline, const std::string& what) {
  return RunOp(io, s, deadline, what, [&](auto cb) { asio::async_write(s, asio::buffer(buf, n), cb); });
}

// Connects, retrying while the peer is not listening yet.
Status Connect(asio::io_context& io, tcp::socket& s, const tcp::endpoint& ep, Deadline deadline, const std::string& what) {
  for (;;) {
    Status st = RunOp(io, s, deadline, what, [&](auto cb) {
      s.async_connect(ep, [cb](const boost::system::error_code& e) { cb(e, 0); });
    });
    if (st.ok()) {
      s.set_option(tcp::no_delay(true));
      return st;
    }
    if (st.code() == StatusCode::kDeadlineExceeded) return st;
    boost::system::error_code ignored;
    s.close(ignored);
    if (Clock::now() + std::chrono::milliseconds(50) >= deadline) return st;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// `*busy` is set when the peer closed the connection before answering at all (it had too many
// connections pending): worth dialling again. A close after its HELLO means it refused our proof.
Result<int> Introduce(asio::io_context& io, tcp::socket& s, const TcpOptions& o, const std::string& my_addr,
                      uint16_t my_port, Deadline deadline, bool* busy) {
  *busy = false;
  int peer = -1;
  if (o.insecure) {
    SHARDPS_RETURN_IF_ERROR(WriteExact(io, s, &o.rank, 4, deadline, "hello"));
    Status st = ReadExact(io, s, &peer, 4, deadline, "hello");
    if (!st.ok()) {
      *busy = st.code() == StatusCode::kUnavailable;
      return st;
    }
  } else {
    Handshake h(o.secret, o.rank, Handshake::kInitiator, o.job_tag);
    auto m = h.Start();
    Status st = WriteExact(io, s, m.data(), m.size(), deadline, "authentication");
    while (st.ok() && !h.done()) {
      std::vector<uint8_t> in(h.expected_bytes());
      if (in.empty()) return Unavailable("authentication failed");
      // The first 4 bytes: a magic, or the acceptor's rejection of our proof.
      st = ReadExact(io, s, in.data(), 4, deadline, "authentication");
      if (st.ok() && std::memcmp(in.data(), kRejected, 4) == 0) {
        return Unavailable("authentication failed: the peer rejected our proof (do both sides use the same secret file?)");
      }
      if (st.ok()) st = ReadExact(io, s, in.data() + 4, in.size() - 4, deadline, "authentication");
      if (!st.ok()) {
        *busy = st.code() == StatusCode::kUnavailable;  // closed without a word: dropped, not refused
        break;
      }
      SHARDPS_ASSIGN_OR_RETURN(auto reply, h.OnMessage(in));
      if (reply) st = WriteExact(io, s, reply->data(), reply->size(), deadline, "authentication");
    }
    SHARDPS_RETURN_IF_ERROR(st);
    peer = h.peer_rank();
  }
  std::vector<uint8_t> reg{static_cast<uint8_t>(my_addr.size())};
  reg.insert(reg.end(), my_addr.begin(), my_addr.end());
  reg.push_back(static_cast<uint8_t>(my_port & 0xff));
  reg.push_back(static_cast<uint8_t>(my_port >> 8));
  // The world size this process was started for: the coordinator refuses a mismatch at once.
  const uint32_t world = static_cast<uint32_t>(o.size);
  for (int i = 0; i < 4; ++i) reg.push_back(static_cast<uint8_t>(world >> (8 * i)));
  SHARDPS_RETURN_IF_ERROR(WriteExact(io, s, reg.data(), reg.size(), deadline, "registration"));
  return peer;
}

// Connects and introduces itself, dialling again while the peer is not listening yet or too
// busy to answer, until `deadline`.
Result<int> Dial(asio::io_context& io, tcp::socket& s, const tcp::endpoint& ep, const TcpOptions& o,
                 const std::string& my_addr, uint16_t my_port, Deadline deadline, const std::string& what) {
  for (int attempt = 1;; ++attempt) {
    SHARDPS_RETURN_IF_ERROR(Connect(io, s, ep, deadline, what));
    bool busy = false;
    Result<int> peer = Introduce(io, s, o, my_addr, my_port, deadline, &busy);
    if (peer.ok() || !busy) return peer.ok() ? peer : Result<int>(peer.status().WithContext(what));
    boost::system::error_code ignored;
    s.close(ignored);
    const auto backoff = std::chrono::milliseconds(std::min(50 * attempt, 500));
    if (Clock::now() + backoff >= deadline) return Unavailable(what + ": the peer keeps closing the connection before answering (" + peer.status().message() + ")");
    std::this_thread::sleep_for(backoff);
  }
}

struct PeerAddress {
  std::string host;
  uint16_t port = 0;
};

// The coordinator's answer, in place of the address table, when the rendezvous fails: the
// marker, then the reason, so the peer can say why instead of seeing the connection close.
void TellRefused(tcp::socket& s, const std::string& reason) {
  const std::string r = reason.substr(0, kMaxReasonBytes);
  std::vector<uint8_t> m;
  for (uint32_t v : {kRendezvousRefused, static_cast<uint32_t>(r.size())}) {
    for (int i = 0; i < 4; ++i) m.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  m.insert(m.end(), r.begin(), r.end());
  boost::system::error_code ignored;
  s.non_blocking(false, ignored);
  asio::write(s, asio::buffer(m), ignored);  // a few bytes into an idle socket's send buffer
}

// ---- Accepting side: authenticates many connections at once, each under its own deadline ----

// One connection being authenticated. Everything runs on the io_context's thread.
struct Arrival : std::enable_shared_from_this<Arrival> {
  Arrival(asio::io_context& io, const TcpOptions& o) : sock(io), timer(io), options(o) {}
  tcp::socket sock;
  asio::steady_timer timer;
  const TcpOptions& options;
  std::unique_ptr<Handshake> handshake;
  std::vector<uint8_t> buf;
  std::string from;
  int peer = -1;
  int claimed = -1;          // the rank a HELLO claimed, for a refused proof
  bool wrong_proof = false;  // refused: its proof of the secret did not verify
  bool same_job = false;     // ... and its HELLO carried our job tag
  uint32_t world = 0;        // the world size it registered with
  bool authenticated = false;
  bool finished = false;
  std::function<void(std::shared_ptr<Arrival>, Status)> done;

  void Begin(std::chrono::milliseconds timeout) {
    boost::system::error_code ec;
    auto remote = sock.remote_endpoint(ec);
    from = ec ? std::string("an unknown address") : remote.address().to_string() + ":" + std::to_string(remote.port());
    sock.set_option(tcp::no_delay(true), ec);
    timer.expires_after(timeout);
    timer.async_wait([self = shared_from_this(), timeout](const boost::system::error_code& e) {
      if (e) return;
      self->Finish(DeadlineExceeded(self->authenticated ? "authenticated as rank " + std::to_string(self->peer) +
                                                              " but did not register within " + std::to_string(timeout.count()) + " ms"
                                                        : "did not complete the handshake within " + std::to_string(timeout.count()) + " ms"));
    });
    if (options.insecure) {
      buf.resize(4);
      asio::async_read(sock, asio::buffer(buf), [self = shared_from_this()](const boost::system::error_code& e, size_t) {
        if (e) return self->Finish(Unavailable("hello: " + e.message()));
        std::memcpy(&self->peer, self->buf.data(), 4);
        self->Write(std::vector<uint8_t>(reinterpret_cast<const uint8_t*>(&self->options.rank),
                                         reinterpret_cast<const uint8_t*>(&self->options.rank) + 4));
        self->ReadRegistration();
      });
      return;
    }
    handshake = std::make_unique<Handshake>(options.secret, options.rank, Handshake::kAcceptor, options.job_tag);
    ReadHandshake();
  }

  void Write(std::vector<uint8_t> bytes) {
    auto data = std::make_shared<std::vector<uint8_t>>(std::move(bytes));
    asio::async_write(sock, asio::buffer(*data), [self = shared_from_this(), data](const boost::system::error_code& e, size_t) {
      if (e) self->Finish(Unavailable("write: " + e.message()));
    });
  }

  void ReadHandshake() {
    buf.resize(handshake->expected_bytes());
    asio::async_read(sock, asio::buffer(buf), [self = shared_from_this()](const boost::system::error_code& e, size_t) {
      if (e) return self->Finish(Unavailable("authentication: " + e.message()));
      const bool was_proof = self->buf.size() == Handshake::kProofBytes;
      auto reply = self->handshake->OnMessage(self->buf);
      if (!reply.ok()) {
        if (!was_proof) return self->Finish(reply.status());
        // A wrong proof: say so before closing, so a misconfigured peer stops dialling at once
        // (a close without it means "busy, dial again").
        auto notice = std::make_shared<std::vector<uint8_t>>(kRejected, kRejected + 4);
        Status why = reply.status();
        self->wrong_proof = true;
        self->claimed = self->handshake->peer_rank();
        self->same_job = self->handshake->peer_in_same_job();
        asio::async_write(self->sock, asio::buffer(*notice), [self, notice, why](const boost::system::error_code&, size_t) {
          self->Finish(why);
        });
        return;
      }
      if (*reply) self->Write(std::move(**reply));
      if (self->handshake->done()) {
        self->peer = self->handshake->peer_rank();
        return self->ReadRegistration();
      }
      self->ReadHandshake();
    });
  }

  // [u8 address length][address][u16 port][u32 world size], the address at most kMaxAddressBytes.
  // The claimed rank is checked before the world size is read.
  void ReadRegistration() {
    authenticated = true;
    buf.resize(1);
    asio::async_read(sock, asio::buffer(buf), [self = shared_from_this()](const boost::system::error_code& e, size_t) {
      if (e) return self->Finish(Unavailable("registration: " + e.message()));
      const size_t len = self->buf[0];
      if (len == 0 || len > kMaxAddressBytes) {
        return self->Finish(InvalidArgument("registration of rank " + std::to_string(self->peer) + ": address length " +
                                            std::to_string(len) + " outside 1.." + std::to_string(kMaxAddressBytes)));
      }
      self->buf.resize(len + 2);
      asio::async_read(self->sock, asio::buffer(self->buf), [self](const boost::system::error_code& e, size_t) {
        if (e) return self->Finish(Unavailable("registration: " + e.message()));
        if (self->peer < 0 || self->peer >= self->options.size || self->peer == self->options.rank) {
          return self->Finish(InvalidArgument("claimed rank " + std::to_string(self->peer) + " in a world of " +
                                              std::to_string(self->options.size)));
        }
        auto size = std::make_shared<std::array<uint8_t, 4>>();
        asio::async_read(self->sock, asio::buffer(*size), [self, size](const boost::system::error_code& e, size_t) {
          if (e) return self->Finish(Unavailable("registration of rank " + std::to_string(self->peer) + ": " + e.message()));
          self->world = static_cast<uint32_t>((*size)[0]) | (static_cast<uint32_t>((*size)[1]) << 8) |
                        (static_cast<uint32_t>((*size)[2]) << 16) | (static_cast<uint32_t>((*size)[3]) << 24);
          self->Finish(Status::Ok());
        });
      });
    });
  }

  PeerAddress Registered() const {
    PeerAddress a;
    a.host.assign(buf.begin(), buf.end() - 2);
    a.port = static_cast<uint16_t>(buf[buf.size() - 2] | (buf[buf.size() - 1] << 8));
    return a;
  }

  void Finish(Status s) {
    if (finished) return;
    finished = true;
    timer.cancel();
    if (!s.ok()) {
      boost::system::error_code ignored;
      sock.close(ignored);
    }
    done(shared_from_this(), std::move(s));
  }
};

// A warning of this rank's transport: to TcpOptions::on_warning if set, else to stderr.
void Warn(const TcpOptions& o, const std::string& m) {
  if (o.on_warning) o.on_warning(m);
  else std::cerr << "[shardps rank " << o.rank << "] warning: " << m << std::endl;
}

// Accepts connections on `acceptor` until `want` peers have authenticated (or it is closed).
class Gate {
 public:
  Gate(asio::io_context& io, tcp::acceptor& acceptor, const TcpOptions& o, int want,
       std::function<Status(int peer, PeerAddress, std::unique_ptr<tcp::socket>)> on_peer)
      : io_(io), acceptor_(acceptor), o_(o), want_(want), on_peer_(std::move(on_peer)) {}

  void Open() {
    if (want_ > 0) AcceptNext();
  }
  bool complete() const { return got_ >= want_ || !error_.ok(); }
  const Status& error() const { return error_; }
  int refused() const { return refused_; }
  // Connections refused for a wrong proof of the secret, by the rank they claimed (the latest).
  struct Refusal {
    Clock::time_point at;
    std::string from;
  };
  const std::unordered_map<int, Refusal>& wrong_proofs() const { return wrong_proofs_; }
  // Ranks that were told why they cannot join (and have stopped) without joining.
  const std::vector<int>& told() const { return told_; }
  // After a failed rendezvous: every later arrival that authenticates goes to `on_peer` (which
  // tells it why), and the gate stays open until closed.
  void Reroute(std::function<Status(int peer, PeerAddress, std::unique_ptr<tcp::socket>)> on_peer) {
    on_peer_ = std::move(on_peer);
    error_ = Status::Ok();
    want_ = std::numeric_limits<int>::max();
  }
  void Close() {
    closed_ = true;
    boost::system::error_code ignored;
    acceptor_.close(ignored);
    auto live = live_;  // Finish() removes from live_
    for (auto& a : live) a->Finish(Cancelled("rendezvous is over"));
  }

 private:
  void AcceptNext() {
    auto sock = std::make_shared<tcp::socket>(io_);
    acceptor_.async_accept(*sock, [this, sock](const boost::system::error_code& e) {
      if (e == asio::error::operation_aborted || closed_) return;  // the gate may be gone when aborted
      if (e) {
        Warn(o_, "accept failed: " + e.message());
        return AcceptNext();
      }
      if (static_cast<int>(live_.size()) >= o_.max_pending_connections) {
        // Full: the oldest connection that has not proved the secret goes (one that has is a
        // real peer a round trip from registering). A real peer completes its handshake in
        // about a millisecond, so idle connections cannot hold the door shut against it.
        auto victim = std::find_if(live_.begin(), live_.end(), [](const auto& a) { return !a->authenticated; });
        if (victim == live_.end()) {  // every slot holds an authenticated peer: refuse the newcomer
          boost::system::error_code ignored;
          sock->close(ignored);
          return AcceptNext();
        }
        (*victim)->Finish(ResourceExhausted("evicted: " + std::to_string(live_.size()) +
                                            " connections pending, this one the oldest unauthenticated"));
      }
      auto a = std::make_shared<Arrival>(io_, o_);
      a->sock = std::move(*sock);
      a->done = [this](std::shared_ptr<Arrival> a, Status s) { Arrived(std::move(a), std::move(s)); };
      live_.push_back(a);
      a->Begin(o_.handshake_timeout);
      AcceptNext();
    });
  }

  void Arrived(std::shared_ptr<Arrival> a, Status s) {
    std::erase(live_, a);
    if (closed_) return;
    if (s.ok() && (a->peer < 0 || a->peer >= o_.size || a->peer == o_.rank)) {
      s = InvalidArgument("claimed rank " + std::to_string(a->peer) + " in a world of " + std::to_string(o_.size));
    }
    if (!s.ok() && a->wrong_proof && a->claimed >= 0 && a->claimed < o_.size && a->claimed != o_.rank) {
      if (a->same_job) {
        // Started with this job's configuration but another secret: it was told and has
        // stopped, so the rendezvous cannot succeed; it ends now for everyone.
        error_ = FailedPrecondition("rank " + std::to_string(a->claimed) + " cannot join: a connection from " + a->from +
                                    " claiming rank " + std::to_string(a->claimed) +
                                    " was refused because its proof of the shared secret did not verify, although it was "
                                    "started with this job's configuration (is that process using another --secret-file?); "
                                    "the rendezvous ends now");
        Warn(o_, "refused a connection from " + a->from + ": " + s.message());
        told_.push_back(a->claimed);
        return;
      }
      wrong_proofs_[a->claimed] = {Clock::now(), a->from};
    }
    if (s.ok() && a->world != static_cast<uint32_t>(o_.size)) {
      // It knows the secret, so it is one of this job's processes, started for another job size:
      // the rendezvous cannot succeed; it ends now for everyone (the peer is told why).
      error_ = FailedPrecondition("rank " + std::to_string(a->peer) + " (connecting from " + a->from +
                                  ") was started for a job of " + std::to_string(a->world) + " processes, rank " +
                                  std::to_string(o_.rank) + " for " + std::to_string(o_.size) +
                                  " (do --num-servers and --num-workers agree on every process?)");
      TellRefused(a->sock, error_.message());
      told_.push_back(a->peer);
      boost::system::error_code ignored;
      a->sock.close(ignored);
      return;
    }
    if (!s.ok()) {
      // Logged, but not without bound: a flood must not fill the log.
      if (++refused_ <= kLoggedRefusals || refused_ % 1000 == 0) {
        Warn(o_, "refused a connection from " + a->from + ": " + s.message() +
                 (refused_ == kLoggedRefusals ? " (further refusals are logged once per 1000)"
                                              : refused_ > kLoggedRefusals ? " (" + std::to_string(refused_) + " refused so far)" : ""));
      }
      return;
    }
    auto sock = std::make_unique<tcp::socket>(std::move(a->sock));
    Status st = on_peer_(a->peer, a->Registered(), std::move(sock));
    if (!st.ok()) {
      error_ = st;
      return;
    }
    ++got_;
  }

  asio::io_context& io_;
  tcp::acceptor& acceptor_;
  const TcpOptions& o_;
  int want_;
  std::function<Status(int, PeerAddress, std::unique_ptr<tcp::socket>)> on_peer_;
  std::vector<std::shared_ptr<Arrival>> live_;
  int got_ = 0;
  int refused_ = 0;
  bool closed_ = false;
  Status error_;
  std::unordered_map<int, Refusal> wrong_proofs_;
  std::vector<int> told_;
};

Result<tcp::endpoint> Resolve(const std::string& host, uint16_t port) {
  boost::system::error_code ec;
  const auto addr = asio::ip::make_address(host, ec);
  if (ec) return InvalidArgument("bad address '" + host + "' (give a numeric IPv4 or IPv6 address): " + ec.message());
  return tcp::endpoint(addr, port);
}

Status Listen(tcp::acceptor& a, const tcp::endpoint& ep) {
  boost::system::error_code ec;
  a.open(ep.protocol(), ec);
  if (!ec) a.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) a.bind(ep, ec);
  if (!ec) a.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Unavailable("cannot listen on " + ep.address().to_string() + ":" + std::to_string(ep.port()) + ": " + ec.message());
  return Status::Ok();
}

// ---- The transport ----

class TcpTransport final : public Transport {
 public:
  explicit TcpTransport(const TcpOptions& o) : o_(o), peers_(o.size), heartbeat_(io_) {}
  ~TcpTransport() override { Shutdown(); }

  // Stops the I/O thread: every connection is shut down for sending (what was written goes out,
  // then FIN), what peers sent meanwhile is drained so the close does not reset the connection,
  // and no handler touches a receiver's buffer afterwards.
  void Shutdown() override {
    if (!thread_.joinable()) return;
    auto closed = std::make_shared<std::promise<void>>();
    auto done = closed->get_future();
    asio::post(io_, [this, closed] {
      stopping_ = true;
      heartbeat_.cancel();
      for (auto& p : peers_) {
        if (!p.sock) continue;
        boost::system::error_code ignored;
        p.sock->shutdown(tcp::socket::shutdown_send, ignored);
        p.sock->cancel(ignored);
      }
      closed->set_value();
    });
    done.wait_for(std::chrono::milliseconds(500));
    work_.reset();
    io_.stop();
    thread_.join();
    for (auto& p : peers_) {
      if (!p.sock || !p.sock->is_open()) continue;
      boost::system::error_code ignored;
      p.sock->non_blocking(true, ignored);
      uint8_t sink[4096];
      for (int i = 0; i < 256 && p.sock->read_some(asio::buffer(sink), ignored) > 0;) ++i;
      p.sock->close(ignored);
    }
  }

  Status Setup();
  // After a failed rendezvous (coordinator only): accepts connections until `until` or until
  // every rank has been told, answering each that proves the secret with `why`.
  void TellLatecomers(Gate& gate, const std::string& why, Deadline until);

  int rank() const override { return o_.rank; }
  int size() const override { return o_.size; }
  std::string name() const override { return "tcp"; }

  Status Send(int dest, std::vector<uint8_t> frame, std::span<const uint8_t> payload, Completion on_sent) override {
    if (dest < 0 || dest >= o_.size) return InvalidArgument("send to rank " + std::to_string(dest) + " outside world of " + std::to_string(o_.size));
    if (dest == o_.rank) {  // to ourselves (colocated): handed over in memory
      IncomingFrame in;
      in.source = o_.rank;
      in.frame = std::move(frame);
      in.payload_bytes = payload.size();
      if (!payload.empty()) {
        in.token = next_self_token_++;
        self_payloads_[in.token] = SelfPayload{payload, {}, std::move(on_sent)};
      } else if (on_sent) {
        local_done_.push_back([cb = std::move(on_sent)] { cb(Status::Ok()); });
      }
      self_ready_.push_back(std::move(in));
      return Status::Ok();
    }
    if (frame.size() > o_.max_frame_bytes) return InvalidArgument("frame of " + std::to_string(frame.size()) + " bytes is over the limit");
    Outgoing out;
    out.envelope = Envelope(payload.size(), static_cast<uint32_t>(frame.size()), kMessage);
    out.envelope.insert(out.envelope.end(), frame.begin(), frame.end());
    out.payload = payload;
    out.done = std::move(on_sent);
    out.counted = true;
    ++in_flight_;
    asio::post(io_, [this, dest, out = std::move(out)]() mutable { Enqueue(dest, std::move(out)); });
    return Status::Ok();
  }

  Status ReceivePayload(const IncomingFrame& in, std::span<uint8_t> dest, Completion done) override {
    if (dest.size() != in.payload_bytes) return InvalidArgument("payload destination size mismatch");
    if (in.source == o_.rank) {
      auto it = self_payloads_.find(in.token);
      if (it == self_payloads_.end()) return Internal("unknown payload token");
      std::memcpy(dest.data(), it->second.payload.data(), dest.size());
      auto sent = std::move(it->second.sent);
      self_payloads_.erase(it);
      local_done_.push_back([sent = std::move(sent), done = std::move(done)] {
        if (sent) sent(Status::Ok());
        if (done) done(Status::Ok());
      });
      return Status::Ok();
    }
    if (in.source < 0 || in.source >= o_.size) return InvalidArgument("payload from an unknown rank");
    if (in.token & kEagerToken) {  // already here: one copy, completion on this thread
      auto it = eager_.find(in.token);
      if (it == eager_.end()) return Internal("unknown eager payload token");
      std::memcpy(dest.data(), it->second.data.get(), dest.size());
      ReleaseEager(std::move(it->second));
      eager_.erase(it);
      local_done_.push_back([done = std::move(done)] { if (done) done(Status::Ok()); });
      return Status::Ok();
    }
    asio::post(io_, [this, src = in.source, token = in.token, dest, done = std::move(done)]() mutable {
      Claim(src, token, dest, std::move(done));
    });
    return Status::Ok();
  }

  Status DiscardPayload(const IncomingFrame& in) override {
    if (in.source == o_.rank) {
      auto it = self_payloads_.find(in.token);
      if (it == self_payloads_.end()) return Internal("unknown payload token");
      auto sent = std::move(it->second.sent);
      self_payloads_.erase(it);
      local_done_.push_back([sent = std::move(sent)] { if (sent) sent(Status::Ok()); });
      return Status::Ok();
    }
    if (in.source < 0 || in.source >= o_.size) return InvalidArgument("payload from an unknown rank");
    if (in.token & kEagerToken) {
      auto it = eager_.find(in.token);
      if (it == eager_.end()) return Internal("unknown eager payload token");
      ReleaseEager(std::move(it->second));
      eager_.erase(it);
      return Status::Ok();
    }
    asio::post(io_, [this, src = in.source, token = in.token] { Discard(src, token); });
    return Status::Ok();
  }

  Status Release(std::span<const uint8_t> region, Deadline deadline) override {
    for (auto& [token, sp] : self_payloads_) {  // colocated sends not yet received
      if (sp.own.empty() && Overlaps(sp.payload, region)) {
        sp.own.assign(sp.payload.begin(), sp.payload.end());
        sp.payload = sp.own;
      }
    }
    if (!thread_.joinable()) return Status::Ok();  // no I/O thread: nothing of the caller's is in flight
    // Posted after every Send/ReceivePayload this thread made before (the I/O thread runs its
    // handlers in order), so it sees each of them queued or under way.
    auto released = std::make_shared<std::promise<void>>();
    auto done = released->get_future();
    asio::post(io_, [this, region, released] {
      ReleaseOnIoThread(region);
      released->set_value();
    });
    if (done.wait_until(deadline) != std::future_status::ready) {
      return DeadlineExceeded("the TCP transport's I/O thread did not let go of a buffer in time");
    }
    return Status::Ok();
  }

  Status Poll(std::vector<IncomingFrame>* frames, Deadline deadline) override {
    // Payloads handed out by the previous Poll and still not claimed are read aside, so the
    // stream behind them goes on (posted after the claims made during that dispatch).
    if (!handed_out_.empty()) {
      asio::post(io_, [this, list = std::move(handed_out_)] {
        for (auto [src, token] : list) ReadAsideIfParked(src, token);
      });
      handed_out_.clear();
    }
    RunLocal();
    std::vector<IncomingFrame> arrived;
    std::vector<std::function<void()>> completions;
    // While traffic flows, a reply usually arrives within microseconds: spin briefly (yielding)
    // before sleeping on the condition variable, which costs a scheduler wake-up per message.
    if (self_ready_.empty() && local_done_.empty()) {
      for (int i = 0; i < kSpinPolls && !ready_flag_.load(std::memory_order_acquire) && Clock::now() < deadline; ++i) {
        std::this_thread::yield();
      }
    }
    {
      MutexLock lock(mu_);
      if (self_ready_.empty() && local_done_.empty()) {
        while (inbox_.empty() && completions_.empty() && !woken_) {
          if (cv_.wait_until(lock.native(), deadline) == std::cv_status::timeout) break;
        }
      }
      ready_flag_.store(false, std::memory_order_relaxed);
      woken_ = false;
      arrived.swap(inbox_);
      completions.swap(completions_);
      for (auto& [token, buf] : eager_arrived_) eager_.emplace(token, std::move(buf));
      eager_arrived_.clear();
    }
    for (auto& c : completions) c();
    RunLocal();
    for (auto& f : self_ready_) frames->push_back(std::move(f));
    self_ready_.clear();
    for (auto& f : arrived) {
      if (f.payload_bytes > 0 && f.error.ok() && !(f.token & kEagerToken)) handed_out_.push_back({f.source, f.token});
      frames->push_back(std::move(f));
    }
    return Status::Ok();
  }

  void Wake() override {
    {
      MutexLock lock(mu_);
      woken_ = true;
      ready_flag_.store(true, std::memory_order_release);
    }
    cv_.notify_all();
  }

  bool Idle() const override { return in_flight_.load() == 0; }

  void Abort(const std::string& reason) override {
    std::string r = reason.substr(0, std::min<size_t>(reason.size(), 4000));
    in_flight_ += o_.size - 1;
    asio::post(io_, [this, r] {
      for (int p = 0; p < o_.size; ++p) {
        if (p == o_.rank) continue;
        Outgoing out;
        out.envelope = Envelope(0, static_cast<uint32_t>(r.size()), kAbort);
        out.envelope.insert(out.envelope.end(), r.begin(), r.end());
        out.counted = true;
        Enqueue(p, std::move(out));
      }
    });
  }

  void Goodbye() override {
    in_flight_ += o_.size - 1;  // counted here, so Idle() cannot report true before they are queued
    asio::post(io_, [this] {
      for (int r = 0; r < o_.size; ++r) {
        if (r == o_.rank) continue;
        Outgoing out;
        out.envelope = Envelope(0, 0, kGoodbye);
        out.counted = true;
        Enqueue(r, std::move(out));  // a lost peer completes it at once
      }
    });
  }

 private:
  struct Outgoing {
    std::vector<uint8_t> envelope;  // envelope + frame
    std::span<const uint8_t> payload;  // the caller's memory, or `own` once released
    std::vector<uint8_t> own;
    size_t sent = 0;                   // bytes of envelope + payload written so far
    Completion done;
    bool counted = false;  // in in_flight_ (heartbeats are not)
  };
  struct SelfPayload {
    std::span<const uint8_t> payload;  // the caller's memory, or `own` once released
    std::vector<uint8_t> own;
    Completion sent;
  };
  struct EagerPayload {
    std::unique_ptr<uint8_t[]> data;  // kEagerBytes capacity, from the pool
    uint64_t size = 0;
  };
  struct Peer {
    std::unique_ptr<tcp::socket> sock;
    bool writing = false;
    std::deque<Outgoing> queue;
    uint8_t env[kEnvelopeBytes];
    std::vector<uint8_t> frame;
    uint64_t payload_bytes = 0;
    uint64_t token = 0;  // the payload waiting in the stream, 0 if none
    bool side_reading = false, side_done = false, discard = false, claimed = false;
    std::vector<uint8_t> side;
    std::span<uint8_t> claim_dest;
    Completion claim_done;
    // A payload read straight into the receiver's buffer (ReadDirect): how far it got; once the
    // receiver releases the buffer, the rest is read into scratch memory and dropped.
    bool direct = false, direct_dropped = false;
    std::span<uint8_t> direct_dest;
    size_t direct_got = 0;
    Completion direct_done;
    Clock::time_point last_heard;
    bool heard = false;     // an envelope has arrived since the mesh came up
    bool dead = false;      // lost: reported once
    bool departed = false;  // said goodbye: its closing is not a failure
  };

  // ---- eager buffers (either thread) ----
  EagerPayload TakeEagerBuffer() {
    {
      MutexLock lock(pool_mu_);
      if (!pool_.empty()) {
        EagerPayload b{std::move(pool_.back()), 0};
        pool_.pop_back();
        return b;
      }
    }
    return EagerPayload{std::make_unique<uint8_t[]>(kEagerBytes), 0};
  }
  void ReleaseEager(EagerPayload b) {
    eager_bytes_ -= kEagerBytes;
    MutexLock lock(pool_mu_);
    if (pool_.size() < 64) pool_.push_back(std::move(b.data));
  }

  // ---- owner thread ----
  void RunLocal() {
    while (!local_done_.empty()) {
      auto batch = std::move(local_done_);
      local_done_.clear();
      for (auto& f : batch) f();
    }
  }

  // ---- I/O thread ----
  void Deliver(std::function<void()> completion) {
    {
      MutexLock lock(mu_);
      completions_.push_back(std::move(completion));
      ready_flag_.store(true, std::memory_order_release);
    }
    cv_.notify_all();
  }
  void Complete(Completion done, Status s) {
    if (done) Deliver([done = std::move(done), s = std::move(s)] { done(s); });
  }
  void Arrive(IncomingFrame in) {
    {
      MutexLock lock(mu_);
      inbox_.push_back(std::move(in));
      ready_flag_.store(true, std::memory_order_release);
    }
    cv_.notify_all();
  }

  void Close(Peer& p) {
    if (!p.sock) return;
    boost::system::error_code ignored;
    p.sock->shutdown(tcp::socket::shutdown_both, ignored);
    p.sock->close(ignored);
  }

  void Lost(int r, const std::string& why) {
    Peer& p = peers_[r];
    if (p.dead) return;
    p.dead = true;
    Close(p);
    if (p.departed || stopping_) return;  // an orderly exit
    IncomingFrame in;
    in.source = r;
    in.error = Unavailable(why);  // the endpoint names the rank and its role
    Arrive(std::move(in));
  }

  void Enqueue(int r, Outgoing out) {
    Peer& p = peers_[r];
    if (!p.sock || p.dead) {
      if (out.counted) --in_flight_;
      Complete(std::move(out.done), Unavailable("send to rank " + std::to_string(r) + ": the connection is lost"));
      return;
    }
    p.queue.push_back(std::move(out));
    if (!p.writing) StartWrite(r);
  }

  void StartWrite(int r) {
    Peer& p = peers_[r];
    if (p.dead) {  // fail what is left
      for (auto& out : p.queue) {
        if (out.counted) --in_flight_;
        Complete(std::move(out.done), Unavailable("send to rank " + std::to_string(r) + ": the connection is lost"));
      }
      p.queue.clear();
      p.writing = false;
      return;
    }
    if (p.queue.empty()) {
      p.writing = false;
      return;
    }
    p.writing = true;
    WriteSome(r);
  }

  // Writes the queue's messages until the socket would block, then waits for it to be writable.
  // The caller's payload is read only inside write_some, on this thread; no asynchronous
  // operation holds a pointer to it, so Release can move its unsent bytes aside between calls.
  void WriteSome(int r) {
    Peer& p = peers_[r];
    boost::system::error_code e;
    if (!p.sock->non_blocking()) p.sock->non_blocking(true, e);
    while (!p.queue.empty()) {
      Outgoing& out = p.queue.front();
      const size_t env = out.envelope.size();
      const size_t total = env + out.payload.size();
      std::array<asio::const_buffer, 2> bufs;
      if (out.sent < env) bufs[0] = asio::buffer(out.envelope.data() + out.sent, env - out.sent);
      const size_t from = out.sent > env ? out.sent - env : 0;
      bufs[1] = asio::buffer(out.payload.data() + from, out.payload.size() - from);
      const size_t n = p.sock->write_some(bufs, e);
      if (e == asio::error::would_block || e == asio::error::try_again) {
        p.sock->async_wait(tcp::socket::wait_write, [this, r](const boost::system::error_code& e) {
          if (e) return WriteFailed(r, e);
          WriteSome(r);
        });
        return;
      }
      if (e) return WriteFailed(r, e);
      out.sent += n;
      if (out.sent < total) continue;
      Outgoing done = std::move(out);
      p.queue.pop_front();
      if (done.counted) --in_flight_;
      Complete(std::move(done.done), Status::Ok());
    }
    p.writing = false;
  }

  void WriteFailed(int r, const boost::system::error_code& e) {
    Peer& p = peers_[r];
    Outgoing out = std::move(p.queue.front());
    p.queue.pop_front();
    if (out.counted) --in_flight_;
    Complete(std::move(out.done), Unavailable("send to rank " + std::to_string(r) + ": " + e.message()));
    Lost(r, "send failed: " + e.message());
    StartWrite(r);  // fails what is left
  }

  // Called on the I/O thread by Release: nothing queued or under way keeps pointing into `region`.
  void ReleaseOnIoThread(std::span<const uint8_t> region) {
    for (auto& p : peers_) {
      for (auto& out : p.queue) {
        if (out.own.empty() && Overlaps(out.payload, region)) {
          out.own.assign(out.payload.begin(), out.payload.end());
          out.payload = out.own;
        }
      }
      if (p.claimed && Overlaps(p.claim_dest, region)) {  // being read aside: drop it there
        p.claimed = false;
        p.discard = true;
        p.claim_dest = {};
        Complete(std::move(p.claim_done), Cancelled("payload receive cancelled"));
      }
      if (p.direct && !p.direct_dropped && Overlaps(p.direct_dest, region)) {
        p.direct_dropped = true;  // the rest goes to scratch memory
        Complete(std::move(p.direct_done), Cancelled("payload receive cancelled"));
      }
    }
  }

  void StartRead(int r) {
    Peer& p = peers_[r];
    if (p.dead) return;
    asio::async_read(*p.sock, asio::buffer(p.env, kEnvelopeBytes), [this, r](const boost::system::error_code& e, size_t) {
      if (e) return Lost(r, ReadError(e));
      Peer& p = peers_[r];
      p.last_heard = Clock::now();
      p.heard = true;
      uint32_t fb, kind;
      std::memcpy(&p.payload_bytes, p.env, 8);
      std::memcpy(&fb, p.env + 8, 4);
      std::memcpy(&kind, p.env + 12, 4);
      if (kind == kHeartbeat || kind == kGoodbye) {
        if (fb != 0 || p.payload_bytes != 0) return Lost(r, "malformed control envelope");
        if (kind == kGoodbye) p.departed = true;
        return StartRead(r);
      }
      if (kind == kAbort) {  // the peer is ending the job: its reason names the root cause
        if (fb == 0 || fb > o_.max_frame_bytes || p.payload_bytes != 0) return Lost(r, "malformed abort envelope");
        p.frame.resize(fb);
        asio::async_read(*p.sock, asio::buffer(p.frame), [this, r](const boost::system::error_code& e, size_t) {
          if (e) return Lost(r, ReadError(e));
          Peer& p = peers_[r];
          std::string why(p.frame.begin(), p.frame.end());
          for (char& c : why) if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e) c = '?';
          Lost(r, "it ended the job: " + why);
        });
        return;
      }
      if (kind != kMessage || fb == 0 || fb > o_.max_frame_bytes || p.payload_bytes > o_.max_payload_bytes) {
        // The stream cannot be resynchronised: report and drop the connection.
        return Lost(r, "envelope of kind " + std::to_string(kind) + " with a frame of " + std::to_string(fb) +
                           " bytes and a payload of " + std::to_string(p.payload_bytes) + " bytes is outside the limits");
      }
      p.frame.resize(fb);
      asio::async_read(*p.sock, asio::buffer(p.frame), [this, r](const boost::system::error_code& e, size_t) {
        if (e) return Lost(r, ReadError(e));
        Peer& p = peers_[r];
        p.last_heard = Clock::now();
        IncomingFrame in;
        in.source = r;
        in.frame = std::move(p.frame);
        in.payload_bytes = p.payload_bytes;
        if (p.payload_bytes > 0 && p.payload_bytes <= kEagerBytes && eager_bytes_.load() + kEagerBytes <= kEagerBudget) {
          eager_bytes_ += kEagerBytes;  // a whole pooled buffer, whatever the payload's size
          auto buf = std::make_shared<EagerPayload>(TakeEagerBuffer());
          buf->size = p.payload_bytes;
          auto frame = std::make_shared<IncomingFrame>(std::move(in));
          asio::async_read(*p.sock, asio::buffer(buf->data.get(), buf->size), Heard(r),
                           [this, r, buf, frame](const boost::system::error_code& e, size_t) {
                             if (e) {
                               ReleaseEager(std::move(*buf));
                               return Lost(r, ReadError(e));
                             }
                             peers_[r].last_heard = Clock::now();
                             frame->token = next_token_++ | kEagerToken;
                             {
                               MutexLock lock(mu_);
                               eager_arrived_.emplace(frame->token, std::move(*buf));
                             }
                             Arrive(std::move(*frame));
                             StartRead(r);
                           });
          return;
        }
        if (p.payload_bytes > 0) {
          in.token = next_token_++;
          p.token = in.token;
          Arrive(std::move(in));
          return;  // the stream waits for the receiver to claim or discard the payload
        }
        Arrive(std::move(in));
        StartRead(r);
      });
    });
  }

  // A completion condition for long reads: every partial read counts as hearing from the peer,
  // so a payload that takes longer than the peer timeout to arrive is not taken for silence.
  std::function<size_t(const boost::system::error_code&, size_t)> Heard(int r) {
    return [this, r](const boost::system::error_code& e, size_t) -> size_t {
      peers_[r].last_heard = Clock::now();
      return e ? 0 : 65536;
    };
  }

  std::string ReadError(const boost::system::error_code& e) const {
    if (e == asio::error::eof || e == asio::error::connection_reset) return "its connection closed without a goodbye (the process exited or was killed)";
    return e.message();
  }

  void Claim(int src, uint64_t token, std::span<uint8_t> dest, Completion done) {
    Peer& p = peers_[src];
    if (p.dead) return Complete(std::move(done), Unavailable("payload from rank " + std::to_string(src) + ": the connection is lost"));
    if (p.token != token) return Complete(std::move(done), Internal("payload token " + std::to_string(token) + " is not the pending one"));
    if (p.side_done) {  // already read aside: copy
      std::memcpy(dest.data(), p.side.data(), dest.size());
      std::vector<uint8_t>().swap(p.side);
      p.side_done = false;
      p.token = 0;
      Complete(std::move(done), Status::Ok());
      return StartRead(src);
    }
    if (p.side_reading) {  // being read aside: copy when complete
      p.claim_dest = dest;
      p.claim_done = std::move(done);
      p.claimed = true;
      return;
    }
    p.token = 0;  // straight into the caller's buffer
    p.direct = true;
    p.direct_dropped = false;
    p.direct_dest = dest;
    p.direct_got = 0;
    p.direct_done = std::move(done);
    ReadDirect(src);
  }

  // Reads a claimed payload into the receiver's buffer until the socket has nothing more, then
  // waits for it to be readable. Like WriteSome, only read_some on this thread touches the buffer,
  // so Release can redirect the rest into scratch memory between calls. Every read counts as
  // hearing from the peer, so a payload that takes longer than the peer timeout is not silence.
  void ReadDirect(int src) {
    Peer& p = peers_[src];
    boost::system::error_code e;
    if (!p.sock->non_blocking()) p.sock->non_blocking(true, e);
    while (p.direct_got < p.direct_dest.size()) {
      const size_t left = p.direct_dest.size() - p.direct_got;
      if (scratch_.empty()) scratch_.resize(64 * 1024);
      const auto into = p.direct_dropped ? asio::buffer(scratch_.data(), std::min(left, scratch_.size()))
                                         : asio::buffer(p.direct_dest.data() + p.direct_got, left);
      const size_t n = p.sock->read_some(into, e);
      if (e == asio::error::would_block || e == asio::error::try_again) {
        p.sock->async_wait(tcp::socket::wait_read, [this, src](const boost::system::error_code& e) {
          if (e) return DirectFailed(src, e);
          ReadDirect(src);
        });
        return;
      }
      if (e) return DirectFailed(src, e);
      p.direct_got += n;
      p.last_heard = Clock::now();
    }
    p.direct = false;
    p.direct_dest = {};
    if (!p.direct_dropped) Complete(std::move(p.direct_done), Status::Ok());
    StartRead(src);
  }

  void DirectFailed(int src, const boost::system::error_code& e) {
    Peer& p = peers_[src];
    p.direct = false;
    p.direct_dest = {};
    if (!p.direct_dropped) Complete(std::move(p.direct_done), Unavailable("payload from rank " + std::to_string(src) + ": " + e.message()));
    Lost(src, ReadError(e));
  }

  // Reads and drops `left` payload bytes through a small scratch buffer, then goes on reading.
  void Drain(int r, uint64_t left) {
    Peer& p = peers_[r];
    if (left == 0) {
      p.side_reading = false;
      p.discard = false;
      p.token = 0;
      return StartRead(r);
    }
    p.side.resize(std::min<uint64_t>(left, 64 * 1024));
    asio::async_read(*p.sock, asio::buffer(p.side), [this, r, left](const boost::system::error_code& e, size_t n) {
      Peer& p = peers_[r];
      if (e) {
        p.side_reading = false;
        return Lost(r, ReadError(e));
      }
      p.last_heard = Clock::now();
      Drain(r, left - n);
    });
  }

  void Discard(int src, uint64_t token) {
    Peer& p = peers_[src];
    if (p.dead || p.token != token) return;
    p.discard = true;
    if (p.side_done) {
      std::vector<uint8_t>().swap(p.side);
      p.side_done = false;
      p.discard = false;
      p.token = 0;
      StartRead(src);
    } else if (!p.side_reading) {
      StartSideRead(src);
    }
  }

  void ReadAsideIfParked(int src, uint64_t token) {
    Peer& p = peers_[src];
    if (!p.dead && p.token == token && !p.side_reading && !p.side_done) StartSideRead(src);
  }

  void StartSideRead(int r) {
    Peer& p = peers_[r];
    p.side_reading = true;
    if (p.discard) return Drain(r, p.payload_bytes);  // nobody wants the bytes: no buffer for them
    p.side.resize(p.payload_bytes);
    asio::async_read(*p.sock, asio::buffer(p.side), Heard(r), [this, r](const boost::system::error_code& e, size_t) {
      Peer& p = peers_[r];
      p.side_reading = false;
      if (e) {
        if (p.claimed) Complete(std::move(p.claim_done), Unavailable("payload from rank " + std::to_string(r) + ": " + e.message()));
        p.claimed = false;
        return Lost(r, ReadError(e));
      }
      p.last_heard = Clock::now();
      if (p.discard || p.claimed) {
        if (p.claimed) std::memcpy(p.claim_dest.data(), p.side.data(), p.claim_dest.size());
        Completion done = std::move(p.claim_done);
        const bool claimed = p.claimed;
        std::vector<uint8_t>().swap(p.side);
        p.discard = p.claimed = false;
        p.token = 0;
        if (claimed) Complete(std::move(done), Status::Ok());
        StartRead(r);
        return;
      }
      p.side_done = true;
    });
  }

  // Every peer_timeout / 4: a heartbeat to every idle connection, and a check that every peer
  // was heard from within peer_timeout.
  void Beat() {
    const auto interval = std::max<std::chrono::milliseconds>(std::chrono::milliseconds(10), o_.peer_timeout / 4);
    heartbeat_.expires_after(interval);
    heartbeat_.async_wait([this](const boost::system::error_code& e) {
      if (e || stopping_) return;
      const auto now = Clock::now();
      for (int r = 0; r < o_.size; ++r) {
        Peer& p = peers_[r];
        if (r == o_.rank || !p.sock || p.dead || p.departed) continue;
        // While this side holds the stream (a payload parked, unclaimed), nothing can arrive
        // from the peer: that is not its silence.
        if (p.token != 0 && !p.side_reading) {
          p.last_heard = now;
        }
        // Until a peer's first envelope, allow it the setup time (it may still be dialling the
        // ranks below it).
        const auto allowed = p.heard ? o_.peer_timeout : std::max(o_.peer_timeout, o_.setup_timeout);
        if (now - p.last_heard > allowed) {
          Lost(r, "nothing heard from it, not even a heartbeat, for " +
                      std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(now - p.last_heard).count()) +
                      " ms (peer timeout " + std::to_string(allowed.count()) +
                      " ms): the process is stopped or hung, or the network is down");
          continue;
        }
        if (!p.writing) {
          Outgoing hb;
          hb.envelope = Envelope(0, 0, kHeartbeat);
          Enqueue(r, std::move(hb));
        }
      }
      Beat();
    });
  }

  TcpOptions o_;
  asio::io_context io_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::thread thread_;
  // I/O thread only (after Setup).
  std::vector<Peer> peers_;
  asio::steady_timer heartbeat_;
  uint64_t next_token_ = 1;
  bool stopping_ = false;
  std::vector<uint8_t> scratch_;  // where released payload bytes are read and dropped
  // Shared between the threads.
  Mutex mu_;
  std::condition_variable cv_;
  std::vector<IncomingFrame> inbox_ SHARDPS_GUARDED_BY(mu_);
  std::vector<std::function<void()>> completions_ SHARDPS_GUARDED_BY(mu_);
  bool woken_ SHARDPS_GUARDED_BY(mu_) = false;
  std::atomic<bool> ready_flag_{false};             // something for Poll (set under mu_)
  std::unordered_map<uint64_t, EagerPayload> eager_arrived_ SHARDPS_GUARDED_BY(mu_);
  std::atomic<uint64_t> eager_bytes_{0};            // eager payloads not yet claimed or discarded
  Mutex pool_mu_;
  std::vector<std::unique_ptr<uint8_t[]>> pool_ SHARDPS_GUARDED_BY(pool_mu_);
  std::atomic<int64_t> in_flight_{0};
  // Owner thread only.
  std::vector<IncomingFrame> self_ready_;
  std::vector<std::function<void()>> local_done_;
  std::unordered_map<uint64_t, SelfPayload> self_payloads_;
  std::vector<std::pair<int, uint64_t>> handed_out_;
  std::unordered_map<uint64_t, EagerPayload> eager_;  // arrived with their frames, by token
  uint64_t next_self_token_ = 1;
};

void TcpTransport::TellLatecomers(Gate& gate, const std::string& why, Deadline until) {
  std::vector<bool> told(o_.size, false);
  told[o_.rank] = true;
  for (int r : gate.told()) told[r] = true;
  for (int r = 0; r < o_.size; ++r) {
    if (peers_[r].sock) told[r] = true;
  }
  auto everyone_told = [&] { return std::all_of(told.begin(), told.end(), [](bool t) { return t; }); };
  if (everyone_told()) return;
  std::string waiting;
  for (int r = 0; r < o_.size; ++r) {
    if (!told[r]) waiting += (waiting.empty() ? "" : ",") + std::to_string(r);
  }
  const auto wait_ms = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()).count();
  const std::string note = "the rendezvous failed (" + why + "); staying up to " + std::to_string(std::max<int64_t>(0, wait_ms)) +
                           " ms to tell ranks " + waiting + ", which have not joined, why";
  Warn(o_, note);
  // Connections still authenticating stay open: they are told when they complete.
  gate.Reroute([&](int peer, PeerAddress, std::unique_ptr<tcp::socket> s) -> Status {
    TellRefused(*s, why);
    told[peer] = true;
    return Status::Ok();
  });
  io_.restart();
  while (!everyone_told() && Clock::now() < until) {
    for (int r : gate.told()) told[r] = true;
    io_.run_one_until(std::min(until, Clock::now() + std::chrono::milliseconds(100)));
    io_.restart();
  }
}

Status TcpTransport::Setup() {
  const Deadline deadline = Clock::now() + o_.setup_timeout;
  SHARDPS_ASSIGN_OR_RETURN(tcp::endpoint coordinator, Resolve(o_.host, o_.port));
  std::vector<PeerAddress> table(o_.size);
  // A connection refused for a wrong proof of the secret that carried our job tag ends the
  // rendezvous at once (Gate::Arrived). One without the tag may be a stranger, or one of this
  // job's processes started with another secret and another configuration: it has stopped (it
  // was told), and its rank would be missed only at the setup timeout. So once a rank refused
  // that way is still missing a grace period later, the rendezvous ends for everyone, naming the
  // refused address. A stranger can claim a rank too, so the grace period is long enough for the
  // real process to join: counted from the first registration of a process that knows the
  // secret (short), or half the setup timeout while none has (docs/deployment.md).
  std::optional<Clock::time_point> first_registered;
  const auto short_grace = std::min<std::chrono::milliseconds>(
      o_.setup_timeout, std::max<std::chrono::milliseconds>(std::chrono::seconds(10), o_.setup_timeout / 10));
  const auto long_grace = std::max(short_grace, std::chrono::milliseconds(o_.setup_timeout / 2));
  auto refused_rank_missing = [&](const Gate& gate, Clock::time_point now) -> Status {
    for (const auto& [rank, refusal] : gate.wrong_proofs()) {
      if (peers_[rank].sock) continue;  // the real process joined
      const auto since = first_registered ? std::max(refusal.at, *first_registered) : refusal.at;
      const auto grace = first_registered ? short_grace : long_grace;
      if (now < since + grace) continue;
      return FailedPrecondition(
          "rank " + std::to_string(rank) + " did not join: a connection from " + refusal.from + " claiming rank " +
          std::to_string(rank) + " was refused " +
          std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(now - refusal.at).count()) +
          " ms ago because its proof of the shared secret did not verify (is that process using another --secret-file?); "
          "the rendezvous ends now instead of at the setup timeout of " + std::to_string(o_.setup_timeout.count()) + " ms");
    }
    return Status::Ok();
  };
  auto wait_for = [&](Gate& gate, const std::string& what) -> Status {
    io_.restart();
    while (!gate.complete()) {
      if (Status r = refused_rank_missing(gate, Clock::now()); !r.ok()) {
        return r.WithContext(what);  // the caller closes the gate (the coordinator first tells latecomers)
      }
      if (Clock::now() >= deadline) {
        std::string missing;
        for (int r = 0; r < o_.size; ++r) {
          if (r != o_.rank && !peers_[r].sock) missing += (missing.empty() ? "" : ",") + std::to_string(r);
        }
        gate.Close();
        io_.restart();
        io_.poll();
        return DeadlineExceeded(what + ": ranks " + missing + " did not connect within " +
                                std::to_string(o_.setup_timeout.count()) + " ms (" + std::to_string(gate.refused()) +
                                " connections refused)");
      }
      io_.run_one_until(std::min(deadline, Clock::now() + std::chrono::milliseconds(100)));
      io_.restart();
    }
    return gate.error();  // on an error the caller closes the gate, as above
  };
  auto adopt = [&](int peer, std::unique_ptr<tcp::socket> s) -> Status {
    if (peers_[peer].sock) return FailedPrecondition("rank " + std::to_string(peer) + " connected twice (two processes started with the same rank?)");
    peers_[peer].sock = std::move(s);
    if (!first_registered) first_registered = Clock::now();
    return Status::Ok();
  };
  if (o_.rank == 0) {
    tcp::acceptor a(io_);
    SHARDPS_RETURN_IF_ERROR(Listen(a, coordinator));
    table[0] = {o_.host, o_.port};
    Gate gate(io_, a, o_, o_.size - 1, [&](int peer, PeerAddress addr, std::unique_ptr<tcp::socket> s) -> Status {
      if (addr.host == "0.0.0.0" || addr.host == "::") {  // listening everywhere: reachable where it came from
        boost::system::error_code ec;
        addr.host = s->remote_endpoint(ec).address().to_string();
      }
      table[peer] = addr;
      return adopt(peer, std::move(s));
    });
    gate.Open();
    Status st = wait_for(gate, "rendezvous at " + o_.host + ":" + std::to_string(o_.port));
    if (!st.ok()) {
      // Every process that joined learns why the job will not start, and stops now.
      for (int r = 1; r < o_.size; ++r) {
        if (peers_[r].sock) TellRefused(*peers_[r].sock, st.message());
      }
      // One that has not joined yet (or is still authenticating) would dial a coordinator that
      // has gone, which it cannot tell from one not started yet, and wait out its own setup
      // timeout. So unless the setup timeout itself passed, the coordinator keeps the gate open a
      // little longer (the short grace period, or until every rank was told) and tells each
      // process that proves the secret why.
      if (st.code() != StatusCode::kDeadlineExceeded) {
        TellLatecomers(gate, st.message(), std::min(deadline, Clock::now() + short_grace));
      }
    }
    gate.Close();
    io_.restart();
    io_.poll();
    if (!st.ok()) return st;
    std::vector<uint8_t> bytes;
    for (const auto& e : table) {
      bytes.push_back(static_cast<uint8_t>(e.host.size()));
      bytes.insert(bytes.end(), e.host.begin(), e.host.end());
      bytes.push_back(static_cast<uint8_t>(e.port & 0xff));
      bytes.push_back(static_cast<uint8_t>(e.port >> 8));
    }
    const uint32_t n = static_cast<uint32_t>(bytes.size());
    for (int i = 1; i < o_.size; ++i) {
      SHARDPS_RETURN_IF_ERROR(WriteExact(io_, *peers_[i].sock, &n, 4, deadline, "address table"));
      SHARDPS_RETURN_IF_ERROR(WriteExact(io_, *peers_[i].sock, bytes.data(), bytes.size(), deadline, "address table"));
    }
  } else {
    if (o_.listen.size() > kMaxAddressBytes) return InvalidArgument("listen address too long");
    SHARDPS_ASSIGN_OR_RETURN(tcp::endpoint mine_ep, Resolve(o_.listen, 0));
    tcp::acceptor mine(io_);
    SHARDPS_RETURN_IF_ERROR(Listen(mine, mine_ep));
    const uint16_t my_port = mine.local_endpoint().port();
    // Higher ranks may dial in while we dial lower ones: accept them concurrently.
    Gate gate(io_, mine, o_, o_.size - 1 - o_.rank, [&](int peer, PeerAddress, std::unique_ptr<tcp::socket> s) -> Status {
      if (peer <= o_.rank) return InvalidArgument("rank " + std::to_string(peer) + " dialed rank " + std::to_string(o_.rank) + "; lower ranks are dialed, not dialing");
      return adopt(peer, std::move(s));
    });
    gate.Open();
    auto s = std::make_unique<tcp::socket>(io_);
    Status st;
    Result<int> peer = Dial(io_, *s, coordinator, o_, o_.listen, my_port, deadline,
                            "joining through the coordinator " + o_.host + ":" + std::to_string(o_.port));
    if (peer.ok() && *peer != 0) peer = Unavailable("the coordinator answered as rank " + std::to_string(*peer));
    uint32_t n = 0;
    if (peer.ok()) st = ReadExact(io_, *s, &n, 4, deadline, "address table from the coordinator");
    else st = peer.status();
    if (st.ok() && n == kRendezvousRefused) {
      uint32_t len = 0;
      st = ReadExact(io_, *s, &len, 4, deadline, "the coordinator's refusal");
      if (st.ok() && (len == 0 || len > kMaxReasonBytes)) st = DataLoss("refusal of " + std::to_string(len) + " bytes from the coordinator");
      std::string why(st.ok() ? len : 0, '\0');
      if (st.ok()) st = ReadExact(io_, *s, why.data(), len, deadline, "the coordinator's refusal");
      if (st.ok()) st = FailedPrecondition("the coordinator " + o_.host + ":" + std::to_string(o_.port) + " ended the rendezvous: " + why);
    }
    if (st.ok() && n > o_.size * (kMaxAddressBytes + 3)) st = DataLoss("address table of " + std::to_string(n) + " bytes");
    std::vector<uint8_t> bytes(st.ok() ? n : 0);
    if (st.ok()) st = ReadExact(io_, *s, bytes.data(), n, deadline, "address table from the coordinator");
    size_t at = 0;
    for (int r = 0; st.ok() && r < o_.size; ++r) {
      if (at >= bytes.size() || at + 1 + bytes[at] + 2 > bytes.size()) {
        st = DataLoss("truncated address table from the coordinator");
        break;
      }
      const size_t len = bytes[at];
      table[r].host.assign(bytes.begin() + at + 1, bytes.begin() + at + 1 + len);
      table[r].port = static_cast<uint16_t>(bytes[at + 1 + len] | (bytes[at + 2 + len] << 8));
      at += 3 + len;
    }
    if (st.ok()) st = adopt(0, std::move(s));
    for (int j = 1; st.ok() && j < o_.rank; ++j) {  // dial every lower rank
      auto d = std::make_unique<tcp::socket>(io_);
      Result<tcp::endpoint> ep = Resolve(table[j].host, table[j].port);
      st = ep.status();
      Result<int> got = st.ok() ? Dial(io_, *d, *ep, o_, o_.listen, my_port, deadline,
                                       "connecting to rank " + std::to_string(j) + " at " + table[j].host + ":" + std::to_string(table[j].port))
                                : Result<int>(st);
      if (got.ok() && *got != j) got = Unavailable("rank " + std::to_string(j) + "'s address answered as rank " + std::to_string(*got));
      st = got.ok() ? adopt(j, std::move(d)) : got.status();
    }
    if (st.ok()) st = wait_for(gate, "waiting for higher ranks to connect");
    gate.Close();
    io_.restart();
    io_.poll();
    SHARDPS_RETURN_IF_ERROR(st);
  }
  // The mesh is up: the I/O thread takes over every socket.
  io_.restart();
  const auto now = Clock::now();
  for (int r = 0; r < o_.size; ++r) {
    if (r == o_.rank) continue;
    peers_[r].last_heard = now;
    StartRead(r);
  }
  Beat();
  work_.emplace(io_.get_executor());
  thread_ = std::thread([this] {
    // Spin (yielding) for a while after each burst of work before blocking in epoll: a post from
    // the owning thread then needs no wake-up of this one.
    int idle = 0;
    while (!io_.stopped()) {
      if (io_.poll() > 0) {
        idle = 0;
      } else if (++idle < kIoSpinPolls) {
        std::this_thread::yield();
      } else {
        io_.run_one();
        idle = 0;
      }
    }
  });
  return Status::Ok();
}

}  // namespace

Status ParseHostPort(const std::string& text, std::string* host, uint16_t* port) {
  const size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 >= text.size()) {
    return InvalidArgument("'" + text + "' is not HOST:PORT");
  }
  std::string h = text.substr(0, colon);
  if (h.size() > 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  const std::string p = text.substr(colon + 1);
  if (p.size() > 5 || p.find_first_not_of("0123456789") != std::string::npos || std::stoul(p) == 0 || std::stoul(p) > 65535) {
    return InvalidArgument("'" + text + "': port must be 1..65535");
  }
  boost::system::error_code ec;
  asio::ip::make_address(h, ec);
  if (ec) return InvalidArgument("'" + text + "': '" + h + "' is not a numeric IP address");
  *host = h;
  *port = static_cast<uint16_t>(std::stoul(p));
  return Status::Ok();
}

Result<std::unique_ptr<Transport>> CreateTcpTransport(const TcpOptions& options) {
  if (options.size < 1 || options.rank < 0 || options.rank >= options.size) {
    return InvalidArgument("rank " + std::to_string(options.rank) + " outside world of " + std::to_string(options.size));
  }
  if (!options.insecure && options.secret.size() < kMinSecretBytes) {
    return InvalidArgument("a shared secret of at least 32 bytes is required (or choose insecure explicitly)");
  }
  if (options.peer_timeout.count() <= 0 || options.handshake_timeout.count() <= 0 || options.max_pending_connections < 1) {
    return InvalidArgument("peer and handshake timeouts must be positive and at least one pending connection allowed");
  }
  auto t = std::make_unique<TcpTransport>(options);
  SHARDPS_RETURN_IF_ERROR(t->Setup());
  return std::unique_ptr<Transport>(std::move(t));
}

}  // namespace shardps
