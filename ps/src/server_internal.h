// The server's private types, shared by its source files (server.cc: requests and the policy's
// host; server_checkpoint.cc: checkpoints, restore and snapshots).
#pragma once

#include <map>
#include <memory>
#include <vector>

#include "shardps/ps/server.h"

namespace shardps::ps {

// A chunk this server holds and its policy's decisions about it.
struct Server::Served : Chunk {
  std::unique_ptr<ChunkSync> sync;
};

struct Server::BarrierState {
  // barrier id -> requests, by worker index
  std::map<uint64_t, std::vector<HeldPtr>> waiting;
};

}  // namespace shardps::ps
