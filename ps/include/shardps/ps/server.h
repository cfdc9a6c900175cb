// Server: holds this rank's chunks of every table (weights and optimizer state) and runs the
// synchronous step on them.
//
//   ps::Server server(endpoint, cluster, layout, {});
//   endpoint.SetServerHandler(&server);
//   endpoint.Start();
//   server.WaitForWorkers(std::chrono::minutes(10));   // until every worker sent SHUTDOWN
//
// The synchronous step, per chunk (docs/architecture.md has the whole life of a step):
//  * A push carries the worker's step t. Each worker covers every key of the chunk once per step,
//    in one push or several disjoint ones (e.g. layer by layer). Pushes for t are summed in
//    worker-rank order: the payload of worker k is received only after workers 0..k-1 are summed,
//    so the sum is the same bits whatever order messages arrive in. Worker 0's values are received
//    straight into the accumulator; later ones into a scratch buffer and added (vectorised).
//  * When every worker has contributed to step t the optimizer runs once (after any pull reply
//    still being sent from the weights has left) and the chunk moves to version t+1.
//  * A pull for version v is answered when the chunk's version reaches v, straight from the
//    weights buffer.
//  * Every held request has a deadline; on expiry it gets an ERROR naming the step and the worker
//    ranks whose pushes are missing.
// Every request is validated before its payload is touched: unknown table, key range out of
// bounds or across chunks, wrong length, stale or duplicate step all get an ERROR reply, the
// payload is discarded and no table changes.
//
// Thread safety: OnFrame/OnTick run on the endpoint's communication thread. WaitForWorkers,
// Snapshot and stats() may be called from any thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include "shardps/storage/checkpoint.h"
#include "shardps/base/cluster.h"
#include "shardps/net/endpoint.h"
#include "shardps/ps/server_options.h"
#include "shardps/base/layout.h"
#include "shardps/base/thread_annotations.h"
#include "shardps/storage/safetensors.h"

namespace shardps::ps {

struct ServerStats {
  uint64_t pushes = 0;
  uint64_t pulls = 0;
  uint64_t steps_applied = 0;  // chunk updates
  uint64_t errors_sent = 0;
};

class Server final : public FrameHandler {
 public:
  Server(Endpoint& endpoint, const Cluster& cluster, const TableLayout& layout, ServerOptions options = {});
  ~Server() override;
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  void OnFrame(IncomingFrame in, Frame frame) override;
  Clock::time_point OnTick(Clock::time_point now) override;
  void OnPeerLost(const Status& why) override SHARDPS_EXCLUDES(mu_);

  // Steps fully applied to every chunk this server holds of tables [0, tables) (the lowest such
  // chunk version); nullopt when it holds none. Call when the communication thread has stopped.
  std::optional<uint64_t> CompletedSteps(uint32_t tables) const;

  // Blocks until every worker has sent SHUTDOWN; on timeout names the workers that have not. A
  // lost peer ends the wait at once with its error.
  Status WaitForWorkers(std::chrono::milliseconds timeout) SHARDPS_EXCLUDES(mu_);

  struct ChunkCopy {
    ChunkInfo info;
    uint64_t version = 0;
    std::vector<float> weights;
    std::vector<float> slots;
  };
  // Copies of this server's chunks of `table` (all tables when nullopt). Safe while serving: runs
  // on the communication thread when it is running.
  Result<std::vector<ChunkCopy>> Snapshot(std::optional<uint32_t> table, std::chrono::milliseconds timeout);

  ServerStats stats() const SHARDPS_EXCLUDES(mu_);

  // Loads this server's chunks of every saved table (TableSpec::checkpointed; the others start
  // fresh) from a checkpoint, whatever server count and chunking wrote it, and
  // sets them to its step. Call before the endpoint starts.
  Status Restore(CheckpointReader& reader);

  // Sets this server's chunks of every model table from a safetensors file (tensor names = table
  // names, sizes must match; f16 and int8 exports are widened). Optimizer state starts at zero.
  Status InitFrom(const SafetensorsFile& file);

 private:
  struct Held;
  struct ChunkState;
  struct BarrierState;

  void HandleHello(IncomingFrame& in, const wire::Header& h);
  void HandlePush(IncomingFrame& in, Frame& f);
  void HandlePull(IncomingFrame& in, Frame& f);
  void HandleBarrier(IncomingFrame& in, const wire::Header& h);
  void HandleShutdown(IncomingFrame& in, const wire::Header& h);
  void HandleCheckpoint(IncomingFrame& in, const wire::Header& h);
  Result<ChunkState*> ValidateKeys(const wire::Header& h, bool allow_empty);
  void Reject(IncomingFrame& in, const wire::Header& h, const Status& s) SHARDPS_EXCLUDES(mu_);
  void AcceptPush(ChunkState& cs, std::shared_ptr<Held> held);
  bool Claim(ChunkState& cs, Held& held);  // false (and rejected) if it overlaps this step's keys
  void Unclaim(ChunkState& cs, const Held& held);
  void Advance(ChunkState& cs);
  void OnPushPayload(ChunkState& cs, std::shared_ptr<Held> held, float* dest, bool scratch, Status st);
  void FinishContribution(ChunkState& cs, Held& held);
  void ApplyStep(ChunkState& cs);
  void AnswerPulls(ChunkState& cs);
  void SendWeights(ChunkState& cs, Held& held);
  void SendOk(int dest, const wire::Header& request);
  Clock::time_point DeadlineFor(const wire::Header& h, Clock::time_point now) const;
  void ExpireHeld(Clock::time_point now);
  std::vector<int> MissingWorkers(const ChunkState& cs) const;
  std::string Describe(const ChunkState& cs) const;
  // A bounded set of chunk-sized buffers, handed out on demand; chunks that find none wait.
  struct BufferPool {
    BufferPool(uint64_t floats, size_t capacity) : floats(floats), capacity(capacity) {}
    float* Acquire();  // nullptr when all `capacity` buffers are in use
    const uint64_t floats;
    const size_t capacity;
    std::vector<std::unique_ptr<float[]>> buffers;
    std::vector<float*> free;
    std::deque<ChunkState*> waiters;
  };
  // Returns `p` to `pool` and resumes the first chunk waiting for one.
  void Release(BufferPool& pool, float* p);

  // Constant after construction.
  Endpoint& endpoint_;
  const Cluster cluster_;
  const TableLayout layout_;
  const ServerOptions options_;
  const int num_workers_;

  // Communication thread only.
  std::vector<std::unique_ptr<ChunkState>> chunks_;
  std::unordered_map<uint64_t, ChunkState*> by_key_;  // (table << 32 | chunk index)
  BufferPool accum_pool_;
  BufferPool scratch_pool_;
  std::unique_ptr<BarrierState> barrier_;
  std::thread writer_;          // the shard write in flight (at most one)
  bool writer_busy_ = false;
  Clock::time_point next_expiry_ = Clock::time_point::max();

  mutable Mutex mu_;
  std::condition_variable cv_;
  std::vector<bool> worker_done_ SHARDPS_GUARDED_BY(mu_);
  Status lost_ SHARDPS_GUARDED_BY(mu_);
  ServerStats stats_ SHARDPS_GUARDED_BY(mu_);
};

}  // namespace shardps::ps
