#include "rendezvous.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <thread>

#include "gate.h"
#include "shardps/net/auth.h"

namespace shardps::tcp_internal {
namespace {

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

// After a failed rendezvous (coordinator only): accepts connections until `until` or until
// every rank has been told, answering each that proves the secret with `why`.
void TellLatecomers(asio::io_context& io, const TcpOptions& o, Gate& gate, const std::vector<std::unique_ptr<tcp::socket>>& socks,
                    const std::string& why, Deadline until) {
  std::vector<bool> told(o.size, false);
  told[o.rank] = true;
  for (int r : gate.told()) told[r] = true;
  for (int r = 0; r < o.size; ++r) {
    if (socks[r]) told[r] = true;
  }
  auto everyone_told = [&] { return std::all_of(told.begin(), told.end(), [](bool t) { return t; }); };
  if (everyone_told()) return;
  std::string waiting;
  for (int r = 0; r < o.size; ++r) {
    if (!told[r]) waiting += (waiting.empty() ? "" : ",") + std::to_string(r);
  }
  const auto wait_ms = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()).count();
  const std::string note = "the rendezvous failed (" + why + "); staying up to " + std::to_string(std::max<int64_t>(0, wait_ms)) +
                           " ms to tell ranks " + waiting + ", which have not joined, why";
  Warn(o, note);
  // Connections still authenticating stay open: they are told when they complete.
  gate.Reroute([&](int peer, PeerAddress, std::unique_ptr<tcp::socket> s) -> Status {
    TellRefused(*s, why);
    told[peer] = true;
    return Status::Ok();
  });
  io.restart();
  while (!everyone_told() && Clock::now() < until) {
    for (int r : gate.told()) told[r] = true;
    io.run_one_until(std::min(until, Clock::now() + std::chrono::milliseconds(100)));
    io.restart();
  }
}

}  // namespace

Result<std::vector<std::unique_ptr<tcp::socket>>> Rendezvous(asio::io_context& io, const TcpOptions& o) {
  std::vector<std::unique_ptr<tcp::socket>> socks(o.size);
  const Deadline deadline = Clock::now() + o.setup_timeout;
  SHARDPS_ASSIGN_OR_RETURN(tcp::endpoint coordinator, Resolve(o.host, o.port));
  std::vector<PeerAddress> table(o.size);
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
      o.setup_timeout, std::max<std::chrono::milliseconds>(std::chrono::seconds(10), o.setup_timeout / 10));
  const auto long_grace = std::max(short_grace, std::chrono::milliseconds(o.setup_timeout / 2));
  auto refused_rank_missing = [&](const Gate& gate, Clock::time_point now) -> Status {
    for (const auto& [rank, refusal] : gate.wrong_proofs()) {
      if (socks[rank]) continue;  // the real process joined
      const auto since = first_registered ? std::max(refusal.at, *first_registered) : refusal.at;
      const auto grace = first_registered ? short_grace : long_grace;
      // A grace period that would end at or after the setup timeout changes nothing: the
      // deadline ends the rendezvous first. Without this, which of the two errors a late wakeup
      // past both saw first depended on scheduling.
      if (since + grace >= deadline) continue;
      if (now < since + grace) continue;
      return FailedPrecondition(
          "rank " + std::to_string(rank) + " did not join: a connection from " + refusal.from + " claiming rank " +
          std::to_string(rank) + " was refused " +
          std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(now - refusal.at).count()) +
          " ms ago because its proof of the shared secret did not verify (is that process using another --secret-file?); "
          "the rendezvous ends now instead of at the setup timeout of " + std::to_string(o.setup_timeout.count()) + " ms");
    }
    return Status::Ok();
  };
  auto wait_for = [&](Gate& gate, const std::string& what) -> Status {
    io.restart();
    while (!gate.complete()) {
      if (Status r = refused_rank_missing(gate, Clock::now()); !r.ok()) {
        return r.WithContext(what);  // the caller closes the gate (the coordinator first tells latecomers)
      }
      if (Clock::now() >= deadline) {
        std::string missing;
        for (int r = 0; r < o.size; ++r) {
          if (r != o.rank && !socks[r]) missing += (missing.empty() ? "" : ",") + std::to_string(r);
        }
        gate.Close();
        io.restart();
        io.poll();
        return DeadlineExceeded(what + ": ranks " + missing + " did not connect within " +
                                std::to_string(o.setup_timeout.count()) + " ms (" + std::to_string(gate.refused()) +
                                " connections refused)");
      }
      io.run_one_until(std::min(deadline, Clock::now() + std::chrono::milliseconds(100)));
      io.restart();
    }
    return gate.error();  // on an error the caller closes the gate, as above
  };
  auto adopt = [&](int peer, std::unique_ptr<tcp::socket> s) -> Status {
    if (socks[peer]) return FailedPrecondition("rank " + std::to_string(peer) + " connected twice (two processes started with the same rank?)");
    socks[peer] = std::move(s);
    if (!first_registered) first_registered = Clock::now();
    return Status::Ok();
  };
  if (o.rank == 0) {
    tcp::acceptor a(io);
    SHARDPS_RETURN_IF_ERROR(Listen(a, coordinator));
    table[0] = {o.host, o.port};
    Gate gate(io, a, o, o.size - 1, [&](int peer, PeerAddress addr, std::unique_ptr<tcp::socket> s) -> Status {
      if (addr.host == "0.0.0.0" || addr.host == "::") {  // listening everywhere: reachable where it came from
        boost::system::error_code ec;
        addr.host = s->remote_endpoint(ec).address().to_string();
      }
      table[peer] = addr;
      return adopt(peer, std::move(s));
    });
    gate.Open();
    Status st = wait_for(gate, "rendezvous at " + o.host + ":" + std::to_string(o.port));
    if (!st.ok()) {
      // Every process that joined learns why the job will not start, and stops now.
      for (int r = 1; r < o.size; ++r) {
        if (socks[r]) TellRefused(*socks[r], st.message());
      }
      // One that has not joined yet (or is still authenticating) would dial a coordinator that
      // has gone, which it cannot tell from one not started yet, and wait out its own setup
      // timeout. So unless the setup timeout itself passed, the coordinator keeps the gate open a
      // little longer (the short grace period, or until every rank was told) and tells each
      // process that proves the secret why.
      if (st.code() != StatusCode::kDeadlineExceeded) {
        TellLatecomers(io, o, gate, socks, st.message(), std::min(deadline, Clock::now() + short_grace));
      }
    }
    gate.Close();
    io.restart();
    io.poll();
    if (!st.ok()) return st;
    std::vector<uint8_t> bytes;
    for (const auto& e : table) {
      bytes.push_back(static_cast<uint8_t>(e.host.size()));
      bytes.insert(bytes.end(), e.host.begin(), e.host.end());
      bytes.push_back(static_cast<uint8_t>(e.port & 0xff));
      bytes.push_back(static_cast<uint8_t>(e.port >> 8));
    }
    const uint32_t n = static_cast<uint32_t>(bytes.size());
    for (int i = 1; i < o.size; ++i) {
      SHARDPS_RETURN_IF_ERROR(WriteExact(io, *socks[i], &n, 4, deadline, "address table"));
      SHARDPS_RETURN_IF_ERROR(WriteExact(io, *socks[i], bytes.data(), bytes.size(), deadline, "address table"));
    }
  } else {
    if (o.listen.size() > kMaxAddressBytes) return InvalidArgument("listen address too long");
    SHARDPS_ASSIGN_OR_RETURN(tcp::endpoint mine_ep, Resolve(o.listen, 0));
    tcp::acceptor mine(io);
    SHARDPS_RETURN_IF_ERROR(Listen(mine, mine_ep));
    const uint16_t my_port = mine.local_endpoint().port();
    // Higher ranks may dial in while we dial lower ones: accept them concurrently.
    Gate gate(io, mine, o, o.size - 1 - o.rank, [&](int peer, PeerAddress, std::unique_ptr<tcp::socket> s) -> Status {
      if (peer <= o.rank) return InvalidArgument("rank " + std::to_string(peer) + " dialed rank " + std::to_string(o.rank) + "; lower ranks are dialed, not dialing");
      return adopt(peer, std::move(s));
    });
    gate.Open();
    auto s = std::make_unique<tcp::socket>(io);
    Status st;
    Result<int> peer = Dial(io, *s, coordinator, o, o.listen, my_port, deadline,
                            "joining through the coordinator " + o.host + ":" + std::to_string(o.port));
    if (peer.ok() && *peer != 0) peer = Unavailable("the coordinator answered as rank " + std::to_string(*peer));
    uint32_t n = 0;
    if (peer.ok()) st = ReadExact(io, *s, &n, 4, deadline, "address table from the coordinator");
    else st = peer.status();
    if (st.ok() && n == kRendezvousRefused) {
      uint32_t len = 0;
      st = ReadExact(io, *s, &len, 4, deadline, "the coordinator's refusal");
      if (st.ok() && (len == 0 || len > kMaxReasonBytes)) st = DataLoss("refusal of " + std::to_string(len) + " bytes from the coordinator");
      std::string why(st.ok() ? len : 0, '\0');
      if (st.ok()) st = ReadExact(io, *s, why.data(), len, deadline, "the coordinator's refusal");
      if (st.ok()) st = FailedPrecondition("the coordinator " + o.host + ":" + std::to_string(o.port) + " ended the rendezvous: " + why);
    }
    if (st.ok() && n > o.size * (kMaxAddressBytes + 3)) st = DataLoss("address table of " + std::to_string(n) + " bytes");
    std::vector<uint8_t> bytes(st.ok() ? n : 0);
    if (st.ok()) st = ReadExact(io, *s, bytes.data(), n, deadline, "address table from the coordinator");
    size_t at = 0;
    for (int r = 0; st.ok() && r < o.size; ++r) {
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
    for (int j = 1; st.ok() && j < o.rank; ++j) {  // dial every lower rank
      auto d = std::make_unique<tcp::socket>(io);
      Result<tcp::endpoint> ep = Resolve(table[j].host, table[j].port);
      st = ep.status();
      Result<int> got = st.ok() ? Dial(io, *d, *ep, o, o.listen, my_port, deadline,
                                       "connecting to rank " + std::to_string(j) + " at " + table[j].host + ":" + std::to_string(table[j].port))
                                : Result<int>(st);
      if (got.ok() && *got != j) got = Unavailable("rank " + std::to_string(j) + "'s address answered as rank " + std::to_string(*got));
      st = got.ok() ? adopt(j, std::move(d)) : got.status();
    }
    if (st.ok()) st = wait_for(gate, "waiting for higher ranks to connect");
    gate.Close();
    io.restart();
    io.poll();
    SHARDPS_RETURN_IF_ERROR(st);
  }
  return socks;
}

}  // namespace shardps::tcp_internal
