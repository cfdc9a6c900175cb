// ServerOptions: how a parameter server holds requests, bounds its memory and writes checkpoints.
// Given to a Node (NodeOptions::server) for the ranks that serve.
//
//   NodeOptions options;
//   options.server.max_hold = std::chrono::seconds(30);      // longest a request is held
//   options.server.checkpoint_dir = "/data/run/ckpt";        // where CHECKPOINT requests write
//   SHARDPS_ASSIGN_OR_RETURN(auto node, Node::Start(std::move(transport), cluster, layout, options));
#pragma once

#include <chrono>
#include <cstddef>
#include <string>

#include "shardps/storage/checkpoint_registry.h"  // CheckpointFaultHook

namespace shardps {
class FileSystem;
}

namespace shardps::ps {

// The largest ServerOptions::staleness accepted.
inline constexpr int kMaxStaleness = 1000;

struct ServerOptions {
  // The consistency policy deciding when a step is complete and a pull is answered: a name from
  // RegisteredConsistencyPolicies() (consistency.h). "bsp", bulk synchronous, is the default.
  std::string consistency = "bsp";
  // "ssp" only: how many steps a read may lag behind the reader's own step (0..kMaxStaleness; 0
  // gives the weights of "bsp"). The other policies ignore it.
  int staleness = 0;
  // Longest a request is held (a pull waiting for a step, a push waiting for lower-ranked
  // workers) when the request itself names no shorter timeout.
  std::chrono::milliseconds max_hold{60000};
  // Pushes for future steps parked per chunk before further ones are refused.
  size_t max_future_pushes_per_chunk = 4096;
  // Pulls waiting per chunk before further ones are refused.
  size_t max_waiting_pulls_per_chunk = 4096;
  // Accumulators (one chunk each): chunks summing a step at the same time. Bounds the server's
  // memory to weights + optimizer state + (accumulators + scratch_buffers) chunks.
  size_t accumulators = 16;
  // Scratch buffers (one chunk each) for receiving the second and later gradients of a step.
  size_t scratch_buffers = 4;
  // Where CHECKPOINT requests write (the request names only a version number, so a peer cannot
  // choose the path). Empty: checkpoints are refused.
  std::string checkpoint_dir;
  // What shard writes go through (made at the program's edge; a fault-injecting one in tests).
  // Null: the operating system's files (PosixFileSystem).
  FileSystem* file_system = nullptr;
  // Crash tests only (shardps train --test-crash-at): called at each phase of a shard write.
  CheckpointFaultHook checkpoint_fault;
  // The workers' codec (ClientOptions::codec). With a lossy one, checkpoints carry each chunk's
  // replica and the workers' error-feedback residuals (CodecStateArrays), and a restore gives
  // them back, so a resumed run goes on as the uninterrupted one would.
  std::string codec = "identity";
  // The workers' optimizer when it runs on the workers (RunOptions::optimizer_on "workers"): each
  // worker's optimizer slots travel with its pushes before a checkpoint step, are saved with the
  // tables and given back on restore, like the residuals. Empty: the optimizer runs here.
  std::string worker_optimizer;
};

// Checks what can be checked before a server starts: an unknown consistency policy is
// INVALID_ARGUMENT naming it and the registered ones; a staleness outside 0..kMaxStaleness is
// INVALID_ARGUMENT naming ServerOptions::staleness.
Status ValidateServerOptions(const ServerOptions& options);

}  // namespace shardps::ps
