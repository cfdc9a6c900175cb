// TCP transport (Boost.Asio) for processes started without MPI: every rank knows the coordinator
// address (rank 0 listens there), its rank and the world size. Rendezvous: each other rank opens
// its own listener, connects to rank 0, authenticates and registers its port; rank 0 answers with
// the table of every rank's port; then every pair connects directly (the higher rank dials). Every
// connection starts with the shared-secret handshake of auth.h (or none with `insecure`).
//
//   TcpOptions o{.host = "127.0.0.1", .port = 29500, .rank = r, .size = n, .secret = key};
//   SHARDPS_ASSIGN_OR_RETURN(auto transport, CreateTcpTransport(o));   // blocks until the mesh is up
//
// Wire: per message a 16-byte envelope (payload length u64, frame length u32, reserved u32), the
// frame, then the payload, written from the caller's buffer. A payload the receiver claims during
// the dispatch of its frame is read straight into its buffer; one it leaves parked is read into a
// side buffer at the next Poll, so a parked payload never blocks the frames behind it.
// Thread safety: as Transport (one owning thread; Wake() from any thread).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "shardps/core/auth.h"
#include "shardps/core/transport.h"

namespace shardps {

struct TcpOptions {
  std::string host = "127.0.0.1";  // the coordinator (rank 0) and where every rank listens
  uint16_t port = 0;
  int rank = 0;
  int size = 1;
  Secret secret;          // required unless `insecure`
  bool insecure = false;  // no authentication: only on a trusted network
  std::chrono::milliseconds setup_timeout{60000};
  uint64_t max_frame_bytes = 64 * 1024;
  uint64_t max_payload_bytes = uint64_t{1} << 31;
};

Result<std::unique_ptr<Transport>> CreateTcpTransport(const TcpOptions& options);

}  // namespace shardps
