// TCP transport (Boost.Asio) for processes started without MPI: every rank knows the coordinator
// address (rank 0 listens there), its rank and the world size. Rendezvous: each other rank opens
// its own listener, connects to rank 0, authenticates and registers its address; rank 0 answers
// with the table of every rank's address; then every pair connects directly (the higher rank
// dials). Every connection starts with the shared-secret handshake of auth.h (or a bare rank
// exchange with `insecure`). Listeners close once the mesh is up.
//
//   TcpOptions o{.host = "127.0.0.1", .port = 29500, .rank = r, .size = n, .secret = key};
//   SHARDPS_ASSIGN_OR_RETURN(auto transport, CreateTcpTransport(o));   // blocks until the mesh is up
//
// Wire: per message a 16-byte envelope (payload length u64, frame length u32, kind u32: message,
// heartbeat or goodbye), the frame, then the payload, written from the caller's buffer. A payload
// the receiver claims during the dispatch of its frame is read straight into its buffer; one it
// leaves parked is read into a side buffer at the next Poll, so it never blocks the frames behind.
//
// Sockets are served by the transport's own I/O thread, so heartbeats flow even while the owning
// thread is busy (loading data, restoring a checkpoint). A peer from which nothing (not even a
// heartbeat) arrived for `peer_timeout`, or whose connection closed without a goodbye, is
// reported once as an IncomingFrame whose `error` is UNAVAILABLE and names it; its socket is
// closed, so every send and receive waiting on it completes with an error.
//
// Accepting: at most `max_pending_connections` connections are pending at a time (a newer one
// evicts the oldest that has not authenticated), each given `handshake_timeout` to authenticate
// and register; a failed one is reported to `on_warning` and dropped without disturbing the
// rendezvous. A dialler closed before any answer dials again until the setup deadline.
// Thread safety: as Transport (one owning thread; Wake() from any thread).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "shardps/net/auth.h"
#include "shardps/net/transport.h"

namespace shardps {

struct TcpOptions {
  std::string host = "127.0.0.1";    // the coordinator: rank 0 listens here
  uint16_t port = 0;
  std::string listen = "127.0.0.1";  // where ranks other than 0 listen (0.0.0.0 only if asked)
  int rank = 0;
  int size = 1;
  Secret secret;          // required unless `insecure`
  bool insecure = false;  // no authentication: only on a trusted network
  // A digest of the job's configuration (auth.h): a process that carries it but fails to prove
  // the secret is one of this job's processes started with another secret file, and the
  // rendezvous ends at once for everyone; one without it is a stranger, and is ignored unless
  // the rank it claimed stays missing. All zero: every wrong proof counts as a stranger's.
  JobTag job_tag{};
  std::chrono::milliseconds setup_timeout{60000};
  std::chrono::milliseconds handshake_timeout{10000};
  std::chrono::milliseconds peer_timeout{60000};  // heartbeats go out every peer_timeout / 4
  int max_pending_connections = 16;
  uint64_t max_frame_bytes = 64 * 1024;
  uint64_t max_payload_bytes = uint64_t{1} << 31;
  // Refused connections and other non-fatal events; default stderr.
  std::function<void(const std::string&)> on_warning;
};

Result<std::unique_ptr<Transport>> CreateTcpTransport(const TcpOptions& options);

// Parses "HOST:PORT" (IPv4, or [IPv6]:PORT).
Status ParseHostPort(const std::string& text, std::string* host, uint16_t* port);

}  // namespace shardps
