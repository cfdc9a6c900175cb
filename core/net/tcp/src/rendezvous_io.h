// Internal to the TCP transport: what both sides of the rendezvous share. The blocking helpers
// run the rendezvous' io_context on the caller's thread until an operation completes or its
// deadline passes; the constants are the rendezvous' wire format.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include <boost/asio.hpp>

#include "shardps/base/status.h"
#include "shardps/net/tcp_transport.h"

namespace shardps::tcp_internal {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Deadline = Clock::time_point;

constexpr size_t kMaxAddressBytes = 64;
constexpr uint8_t kRejected[4] = {'S', 'P', 'S', 'X'};  // the acceptor's answer to a wrong proof
// In place of the address table's byte count: the coordinator ends the rendezvous, and a u32 LE
// length and the reason (at most kMaxReasonBytes) follow.
constexpr uint32_t kRendezvousRefused = 0xFFFFFFFF;
constexpr size_t kMaxReasonBytes = 4000;

// Where a rank listens for the ranks above it, as it registered with the coordinator.
struct PeerAddress {
  std::string host;
  uint16_t port = 0;
};

// Runs `io` until `*done` or `deadline`.
Status RunUntil(asio::io_context& io, const bool* done, Deadline deadline, const std::string& what);

// Starts `op` (given a completion handler) and runs `io` until it completes or `deadline`; on
// expiry the socket is closed.
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

Status ReadExact(asio::io_context& io, tcp::socket& s, void* buf, size_t n, Deadline deadline, const std::string& what);
Status WriteExact(asio::io_context& io, tcp::socket& s, const void* buf, size_t n, Deadline deadline, const std::string& what);
// Connects, retrying while the peer is not listening yet.
Status Connect(asio::io_context& io, tcp::socket& s, const tcp::endpoint& ep, Deadline deadline, const std::string& what);

// The coordinator's answer, in place of the address table, when the rendezvous fails: the
// marker, then the reason, so the peer can say why instead of seeing the connection close.
void TellRefused(tcp::socket& s, const std::string& reason);

// A warning of this rank's transport: to TcpOptions::on_warning if set, else to stderr.
void Warn(const TcpOptions& o, const std::string& m);

Result<tcp::endpoint> Resolve(const std::string& host, uint16_t port);
Status Listen(tcp::acceptor& a, const tcp::endpoint& ep);

}  // namespace shardps::tcp_internal
