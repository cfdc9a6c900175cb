#include "shardps/core/tcp_transport.h"

#include <boost/asio.hpp>
#include <cstring>
#include <deque>
#include <unordered_map>
#include <vector>

namespace shardps {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Deadline = Clock::time_point;

constexpr size_t kEnvelopeBytes = 16;

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

Status ReadExact(asio::io_context& io, tcp::socket& s, void* buf, size_t n, Deadline deadline, const std::string& what) {
  bool done = false;
  boost::system::error_code err;
  asio::async_read(s, asio::buffer(buf, n), [&](const boost::system::error_code& e, size_t) {
    err = e;
    done = true;
  });
  Status st = RunUntil(io, &done, deadline, what);
  if (!st.ok()) {
    boost::system::error_code ignored;
    s.close(ignored);
    io.restart();
    io.poll();
    return st;
  }
  if (err) return Unavailable(what + ": " + err.message());
  return Status::Ok();
}

Status WriteExact(asio::io_context& io, tcp::socket& s, const void* buf, size_t n, Deadline deadline, const std::string& what) {
  bool done = false;
  boost::system::error_code err;
  asio::async_write(s, asio::buffer(buf, n), [&](const boost::system::error_code& e, size_t) {
    err = e;
    done = true;
  });
  Status st = RunUntil(io, &done, deadline, what);
  if (!st.ok()) return st;
  if (err) return Unavailable(what + ": " + err.message());
  return Status::Ok();
}

// Connects, retrying while the peer is not listening yet.
Status Connect(asio::io_context& io, tcp::socket& s, const tcp::endpoint& ep, Deadline deadline, const std::string& what) {
  for (;;) {
    bool done = false;
    boost::system::error_code err;
    s.async_connect(ep, [&](const boost::system::error_code& e) {
      err = e;
      done = true;
    });
    SHARDPS_RETURN_IF_ERROR(RunUntil(io, &done, deadline, what));
    if (!err) {
      s.set_option(tcp::no_delay(true));
      return Status::Ok();
    }
    boost::system::error_code ignored;
    s.close(ignored);
    if (Clock::now() + std::chrono::milliseconds(50) >= deadline) return Unavailable(what + ": " + err.message());
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

Status Accept(asio::io_context& io, tcp::acceptor& a, tcp::socket& s, Deadline deadline) {
  bool done = false;
  boost::system::error_code err;
  a.async_accept(s, [&](const boost::system::error_code& e) {
    err = e;
    done = true;
  });
  Status st = RunUntil(io, &done, deadline, "waiting for peers to connect");
  if (!st.ok()) {
    a.cancel();
    io.restart();
    io.poll();
    return st;
  }
  if (err) return Unavailable("accept: " + err.message());
  s.set_option(tcp::no_delay(true));
  return Status::Ok();
}

// Authenticates the connection and learns the peer's rank.
Result<int> Authenticate(asio::io_context& io, tcp::socket& s, const TcpOptions& o, bool initiator, Deadline deadline) {
  if (o.insecure) {
    uint8_t mine[4], theirs[4];
    std::memcpy(mine, &o.rank, 4);
    SHARDPS_RETURN_IF_ERROR(WriteExact(io, s, mine, 4, deadline, "hello"));
    SHARDPS_RETURN_IF_ERROR(ReadExact(io, s, theirs, 4, deadline, "hello"));
    int peer;
    std::memcpy(&peer, theirs, 4);
    return peer;
  }
  Handshake h(o.secret, o.rank, initiator ? Handshake::kInitiator : Handshake::kAcceptor);
  if (initiator) {
    auto m = h.Start();
    SHARDPS_RETURN_IF_ERROR(WriteExact(io, s, m.data(), m.size(), deadline, "authentication"));
  }
  while (!h.done()) {
    std::vector<uint8_t> in(h.expected_bytes());
    if (in.empty()) return Unavailable("authentication failed");
    SHARDPS_RETURN_IF_ERROR(ReadExact(io, s, in.data(), in.size(), deadline, "authentication"));
    SHARDPS_ASSIGN_OR_RETURN(auto reply, h.OnMessage(in));
    if (reply) SHARDPS_RETURN_IF_ERROR(WriteExact(io, s, reply->data(), reply->size(), deadline, "authentication"));
  }
  return h.peer_rank();
}

class TcpTransport final : public Transport {
 public:
  TcpTransport(const TcpOptions& o) : o_(o), peers_(o.size) {}

  Status Setup();

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
        in.token = next_token_++;
        self_payloads_[in.token] = SelfPayload{payload, std::move(on_sent)};
      } else if (on_sent) {
        local_done_.push_back([cb = std::move(on_sent)] { cb(Status::Ok()); });
      }
      ready_.push_back(std::move(in));
      return Status::Ok();
    }
    Peer& p = peers_[dest];
    if (!p.sock) return Unavailable("no connection to rank " + std::to_string(dest));
    Outgoing out;
    out.envelope.resize(kEnvelopeBytes + frame.size());
    const uint64_t pb = payload.size();
    const uint32_t fb = static_cast<uint32_t>(frame.size());
    std::memcpy(out.envelope.data(), &pb, 8);
    std::memcpy(out.envelope.data() + 8, &fb, 4);
    std::memset(out.envelope.data() + 12, 0, 4);
    std::memcpy(out.envelope.data() + kEnvelopeBytes, frame.data(), frame.size());
    out.payload = payload;
    out.done = std::move(on_sent);
    p.queue.push_back(std::move(out));
    ++in_flight_;
    if (!p.writing) StartWrite(dest);
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
    Peer& p = peers_[in.source];
    if (p.token != in.token) return Internal("payload token " + std::to_string(in.token) + " is not the pending one");
    if (p.side_done) {  // already read aside: copy
      std::memcpy(dest.data(), p.side.data(), dest.size());
      p.side.clear();
      p.side_done = false;
      p.token = 0;
      local_done_.push_back([done = std::move(done)] { if (done) done(Status::Ok()); });
      StartRead(in.source);
      return Status::Ok();
    }
    if (p.side_reading) {  // being read aside: copy when complete
      p.claim_dest = dest;
      p.claim_done = std::move(done);
      p.claimed = true;
      return Status::Ok();
    }
    // Straight into the caller's buffer.
    const int src = in.source;
    p.token = 0;
    asio::async_read(*p.sock, asio::buffer(dest.data(), dest.size()),
                     [this, src, done = std::move(done)](const boost::system::error_code& e, size_t) {
                       if (done) done(e ? Unavailable("payload from rank " + std::to_string(src) + ": " + e.message()) : Status::Ok());
                       if (!e) StartRead(src);
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
    Peer& p = peers_[in.source];
    if (p.token != in.token) return Internal("payload token is not the pending one");
    p.discard = true;
    if (p.side_done) {
      p.side.clear();
      p.side_done = false;
      p.discard = false;
      p.token = 0;
      StartRead(in.source);
    } else if (!p.side_reading) {
      StartSideRead(in.source);
    }
    return Status::Ok();
  }

  Status Poll(std::vector<IncomingFrame>* frames, Deadline deadline) override {
    // Payloads left unclaimed through a whole dispatch are read aside, so the stream goes on.
    for (int r = 0; r < o_.size; ++r) {
      Peer& p = peers_[r];
      if (p.token != 0 && p.dispatched && !p.side_reading && !p.side_done) StartSideRead(r);
    }
    RunLocal();
    io_.restart();
    if (ready_.empty() && local_done_.empty()) io_.run_one_until(deadline);
    io_.restart();
    io_.poll();
    RunLocal();
    for (auto& f : ready_) {
      if (f.source >= 0 && f.source != o_.rank && f.payload_bytes > 0) peers_[f.source].dispatched = true;
      frames->push_back(std::move(f));
    }
    ready_.clear();
    return Status::Ok();
  }

  void Wake() override { asio::post(io_, [] {}); }
  bool Idle() const override { return in_flight_ == 0; }

 private:
  struct Outgoing {
    std::vector<uint8_t> envelope;  // envelope + frame
    std::span<const uint8_t> payload;
    Completion done;
  };
  struct SelfPayload {
    std::span<const uint8_t> payload;
    Completion sent;
  };
  struct Peer {
    std::unique_ptr<tcp::socket> sock;
    bool writing = false;
    std::deque<Outgoing> queue;
    uint8_t env[kEnvelopeBytes];
    std::vector<uint8_t> frame;
    uint64_t payload_bytes = 0;
    uint64_t token = 0;          // the payload waiting in the stream, 0 if none
    bool dispatched = false;     // its frame has been handed to the receiver
    bool side_reading = false, side_done = false, discard = false, claimed = false;
    std::vector<uint8_t> side;
    std::span<uint8_t> claim_dest;
    Completion claim_done;
    bool dead = false;
  };

  void RunLocal() {
    while (!local_done_.empty()) {
      auto batch = std::move(local_done_);
      local_done_.clear();
      for (auto& f : batch) f();
    }
  }

  void Lost(int r, const std::string& why) {
    Peer& p = peers_[r];
    if (p.dead) return;
    p.dead = true;
    IncomingFrame in;
    in.source = r;
    in.error = Unavailable("connection to rank " + std::to_string(r) + " lost: " + why);
    ready_.push_back(std::move(in));
  }

  void StartWrite(int r) {
    Peer& p = peers_[r];
    if (p.queue.empty() || p.dead) {
      p.writing = false;
      return;
    }
    p.writing = true;
    Outgoing& out = p.queue.front();
    std::vector<asio::const_buffer> bufs{asio::buffer(out.envelope)};
    if (!out.payload.empty()) bufs.push_back(asio::buffer(out.payload.data(), out.payload.size()));
    asio::async_write(*p.sock, bufs, [this, r](const boost::system::error_code& e, size_t) {
      Peer& p = peers_[r];
      Outgoing out = std::move(p.queue.front());
      p.queue.pop_front();
      --in_flight_;
      if (out.done) out.done(e ? Unavailable("send to rank " + std::to_string(r) + ": " + e.message()) : Status::Ok());
      if (e) Lost(r, e.message());
      StartWrite(r);
    });
  }

  void StartRead(int r) {
    Peer& p = peers_[r];
    if (p.dead) return;
    p.dispatched = false;
    asio::async_read(*p.sock, asio::buffer(p.env, kEnvelopeBytes), [this, r](const boost::system::error_code& e, size_t) {
      if (e) return Lost(r, e.message());
      Peer& p = peers_[r];
      uint32_t fb;
      std::memcpy(&p.payload_bytes, p.env, 8);
      std::memcpy(&fb, p.env + 8, 4);
      if (fb > o_.max_frame_bytes || p.payload_bytes > o_.max_payload_bytes) {
        // The stream cannot be resynchronised: report and drop the connection.
        boost::system::error_code ignored;
        p.sock->close(ignored);
        return Lost(r, "frame of " + std::to_string(fb) + " bytes or payload of " + std::to_string(p.payload_bytes) +
                           " bytes exceeds the limits");
      }
      p.frame.resize(fb);
      asio::async_read(*p.sock, asio::buffer(p.frame), [this, r](const boost::system::error_code& e, size_t) {
        if (e) return Lost(r, e.message());
        Peer& p = peers_[r];
        IncomingFrame in;
        in.source = r;
        in.frame = std::move(p.frame);
        in.payload_bytes = p.payload_bytes;
        if (p.payload_bytes > 0) {
          in.token = next_token_++;
          p.token = in.token;
          ready_.push_back(std::move(in));
          return;  // the stream waits for the receiver to claim or discard the payload
        }
        ready_.push_back(std::move(in));
        StartRead(r);
      });
    });
  }

  void StartSideRead(int r) {
    Peer& p = peers_[r];
    p.side_reading = true;
    p.side.resize(p.payload_bytes);
    asio::async_read(*p.sock, asio::buffer(p.side), [this, r](const boost::system::error_code& e, size_t) {
      Peer& p = peers_[r];
      p.side_reading = false;
      if (e) return Lost(r, e.message());
      if (p.discard || p.claimed) {
        if (p.claimed) std::memcpy(p.claim_dest.data(), p.side.data(), p.claim_dest.size());
        Completion done = std::move(p.claim_done);
        p.side.clear();
        p.discard = p.claimed = false;
        p.token = 0;
        if (done) done(Status::Ok());
        StartRead(r);
        return;
      }
      p.side_done = true;
    });
  }

  TcpOptions o_;
  asio::io_context io_;
  std::vector<Peer> peers_;
  std::vector<IncomingFrame> ready_;
  std::vector<std::function<void()>> local_done_;
  std::unordered_map<uint64_t, SelfPayload> self_payloads_;
  uint64_t next_token_ = 1;
  int64_t in_flight_ = 0;
};

Status TcpTransport::Setup() {
  const Deadline deadline = Clock::now() + o_.setup_timeout;
  boost::system::error_code ec;
  const auto addr = asio::ip::make_address(o_.host, ec);
  if (ec) return InvalidArgument("bad address '" + o_.host + "': " + ec.message());
  auto accept_one = [&](tcp::acceptor& a) -> Result<std::pair<int, std::unique_ptr<tcp::socket>>> {
    auto s = std::make_unique<tcp::socket>(io_);
    SHARDPS_RETURN_IF_ERROR(Accept(io_, a, *s, deadline));
    SHARDPS_ASSIGN_OR_RETURN(int peer, Authenticate(io_, *s, o_, /*initiator=*/false, deadline));
    if (peer < 0 || peer >= o_.size || peer == o_.rank) return Unavailable("a peer claimed rank " + std::to_string(peer));
    return std::make_pair(peer, std::move(s));
  };
  std::vector<uint16_t> ports(o_.size, 0);
  if (o_.rank == 0) {
    tcp::acceptor a(io_);
    a.open(addr.is_v6() ? tcp::v6() : tcp::v4());
    a.set_option(tcp::acceptor::reuse_address(true));
    a.bind(tcp::endpoint(addr, o_.port), ec);
    if (ec) return Unavailable("cannot listen on " + o_.host + ":" + std::to_string(o_.port) + ": " + ec.message());
    a.listen();
    ports[0] = o_.port;
    for (int i = 1; i < o_.size; ++i) {
      SHARDPS_ASSIGN_OR_RETURN(auto peer, accept_one(a));
      if (peers_[peer.first].sock) return Unavailable("rank " + std::to_string(peer.first) + " registered twice");
      uint16_t port;
      SHARDPS_RETURN_IF_ERROR(ReadExact(io_, *peer.second, &port, 2, deadline, "registration"));
      ports[peer.first] = port;
      peers_[peer.first].sock = std::move(peer.second);
    }
    for (int i = 1; i < o_.size; ++i) {
      SHARDPS_RETURN_IF_ERROR(WriteExact(io_, *peers_[i].sock, ports.data(), ports.size() * 2, deadline, "address table"));
    }
  } else {
    tcp::acceptor mine(io_);
    mine.open(addr.is_v6() ? tcp::v6() : tcp::v4());
    mine.bind(tcp::endpoint(addr, 0), ec);
    if (ec) return Unavailable("cannot listen on " + o_.host + ": " + ec.message());
    mine.listen();
    const uint16_t my_port = mine.local_endpoint().port();
    auto s = std::make_unique<tcp::socket>(io_);
    SHARDPS_RETURN_IF_ERROR(Connect(io_, *s, tcp::endpoint(addr, o_.port), deadline, "connecting to the coordinator"));
    SHARDPS_ASSIGN_OR_RETURN(int peer, Authenticate(io_, *s, o_, /*initiator=*/true, deadline));
    if (peer != 0) return Unavailable("the coordinator answered as rank " + std::to_string(peer));
    SHARDPS_RETURN_IF_ERROR(WriteExact(io_, *s, &my_port, 2, deadline, "registration"));
    SHARDPS_RETURN_IF_ERROR(ReadExact(io_, *s, ports.data(), ports.size() * 2, deadline, "address table"));
    peers_[0].sock = std::move(s);
    for (int j = 1; j < o_.rank; ++j) {  // dial every lower rank
      auto d = std::make_unique<tcp::socket>(io_);
      SHARDPS_RETURN_IF_ERROR(Connect(io_, *d, tcp::endpoint(addr, ports[j]), deadline, "connecting to rank " + std::to_string(j)));
      SHARDPS_ASSIGN_OR_RETURN(int got, Authenticate(io_, *d, o_, /*initiator=*/true, deadline));
      if (got != j) return Unavailable("rank " + std::to_string(j) + "'s port answered as rank " + std::to_string(got));
      peers_[j].sock = std::move(d);
    }
    for (int k = o_.rank + 1; k < o_.size; ++k) {  // accept every higher rank
      SHARDPS_ASSIGN_OR_RETURN(auto peer, accept_one(mine));
      if (peer.first <= o_.rank || peers_[peer.first].sock) return Unavailable("unexpected connection from rank " + std::to_string(peer.first));
      peers_[peer.first].sock = std::move(peer.second);
    }
  }
  for (int r = 0; r < o_.size; ++r) if (r != o_.rank) StartRead(r);
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<Transport>> CreateTcpTransport(const TcpOptions& options) {
  if (options.size < 1 || options.rank < 0 || options.rank >= options.size) {
    return InvalidArgument("rank " + std::to_string(options.rank) + " outside world of " + std::to_string(options.size));
  }
  if (!options.insecure && options.secret.size() < kMinSecretBytes) {
    return InvalidArgument("a shared secret of at least 32 bytes is required (or choose insecure explicitly)");
  }
  auto t = std::make_unique<TcpTransport>(options);
  SHARDPS_RETURN_IF_ERROR(t->Setup());
  return std::unique_ptr<Transport>(std::move(t));
}

}  // namespace shardps
