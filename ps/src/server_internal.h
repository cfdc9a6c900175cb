// The server's private types, shared by its source files (server.cc: requests and the policy's
// host; server_checkpoint.cc: checkpoints, restore and snapshots).
#pragma once

#include <map>
#include <memory>
#include <vector>

#include "shardps/ps/server.h"
#include "shardps/secagg/aggregator.h"

namespace shardps::ps {

// A chunk this server holds and its policy's decisions about it.
// Compressed pull replies of a chunk (docs/compression.md): the weights every worker that follows
// the chunk holds (`known`, the replica), and the last change of it, encoded once and sent to
// every worker that holds the version before it. What the replica lacks of the weights
// (weights - known) is the server's error-feedback residual: the next change carries it.
struct Server::Downlink {
  std::vector<float> known;
  uint64_t version = 0;  // the chunk version `known` was brought to
  uint64_t from = 0;     // `delta` changes `known` from this version to `version`
  std::shared_ptr<const std::vector<uint8_t>> delta;  // null: no change encoded yet
  uint32_t codec = 0;
  float density = 0;
  std::vector<float> scratch;  // the change being coded (kept: no allocation per step)
};

struct Server::Served : Chunk {
  std::unique_ptr<ChunkSync> sync;
  std::unique_ptr<Downlink> down;  // created by the first compressed pull
  // By worker index: the state of this chunk a worker sent with a push (or a checkpoint restored):
  // Server::WorkerArrays arrays of the chunk's size (its error-feedback residual, then its
  // optimizer slots), as they stood after `state_at` steps (0: none); `restored`: from a
  // checkpoint, to give back to the worker with its first pull reply at that step.
  std::vector<std::vector<float>> worker_state;
  std::vector<uint64_t> state_at;
  std::vector<bool> restored;
  void SizeWorkerState(size_t workers) {
    if (worker_state.size() == workers) return;
    worker_state.assign(workers, {});
    state_at.assign(workers, 0);
    restored.assign(workers, false);
  }
};

struct Server::BarrierState {
  // barrier id -> requests, by worker index
  std::map<uint64_t, std::vector<HeldPtr>> waiting;
};

// Server index 0: the secure-aggregation rounds of the job (server_secagg.cc). The workers are
// the aggregator's hosts; a phase closes once every worker's SECAGG request of it has arrived.
struct Server::SecAggState {
  explicit SecAggState(int workers) : aggregator(workers), held(static_cast<size_t>(workers)) {}
  secagg::Aggregator aggregator;
  std::vector<HeldPtr> held;  // by worker index: its request of the open phase, once accepted
};

}  // namespace shardps::ps
