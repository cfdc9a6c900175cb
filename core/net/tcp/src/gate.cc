#include "gate.h"

#include <algorithm>
#include <array>
#include <cstring>

#include "shardps/net/auth.h"

namespace shardps::tcp_internal {

namespace {
constexpr int kLoggedRefusals = 50;
}  // namespace

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

Gate::Gate(asio::io_context& io, tcp::acceptor& acceptor, const TcpOptions& o, int want, OnPeer on_peer)
    : io_(io), acceptor_(acceptor), o_(o), want_(want), on_peer_(std::move(on_peer)) {}

Gate::~Gate() = default;

void Gate::Close() {
  closed_ = true;
  boost::system::error_code ignored;
  acceptor_.close(ignored);
  auto live = live_;  // Finish() removes from live_
  for (auto& a : live) a->Finish(Cancelled("rendezvous is over"));
}

void Gate::AcceptNext() {
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

void Gate::Arrived(std::shared_ptr<Arrival> a, Status s) {
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

}  // namespace shardps::tcp_internal
