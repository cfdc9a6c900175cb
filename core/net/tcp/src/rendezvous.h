// Internal to the TCP transport: the rendezvous that connects every pair of ranks (the protocol
// is described in shardps/net/tcp_transport.h). Rank 0 accepts every other rank at the
// coordinator address and answers with the table of their addresses; each other rank listens
// for the ranks above it and dials the ranks below it.
#pragma once

#include <memory>
#include <vector>

#include "rendezvous_io.h"

namespace shardps::tcp_internal {

// One authenticated socket per rank (null at this rank's own index), or the reason the mesh
// did not come up by the setup deadline. Runs `io` on the caller's thread; every listener is
// closed when it returns.
Result<std::vector<std::unique_ptr<tcp::socket>>> Rendezvous(asio::io_context& io, const TcpOptions& o);

}  // namespace shardps::tcp_internal
