// Server: holds this rank's chunks of every table (weights and optimizer state), handles the
// workers' requests and runs the optimizer on its chunks.
//
//   ps::Server server(endpoint, cluster, layout, {});
//   endpoint.SetServerHandler(&server);
//   endpoint.Start();
//   server.WaitForWorkers(std::chrono::minutes(10));   // until every worker sent SHUTDOWN
//
// Request handling lives here: every request is validated before its payload is touched
// (unknown table, key range out of bounds or across chunks, wrong length, unknown codec all get an
// ERROR reply, the payload is discarded and no table changes), payloads are received straight
// into the server's buffers and pull replies sent straight from the weights (with the identity
// codec; another codec decodes and encodes copies).
// When a push counts, when a step is complete and when a pull is answered is the consistency
// policy's decision (ServerOptions::consistency, consistency.h; the default "bsp" sums each
// step's pushes in worker-rank order and answers a pull for version v at version v). Every held
// request has a deadline; on expiry it gets an ERROR naming the step and the worker ranks whose
// pushes are missing.
//
// Thread safety: OnFrame/OnTick run on the endpoint's communication thread. WaitForWorkers,
// Snapshot and stats() may be called from any thread.
#pragma once

#include <atomic>
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
#include "shardps/ps/consistency.h"
#include "shardps/ps/server_options.h"
#include "shardps/base/layout.h"
#include "shardps/base/thread_annotations.h"
#include "shardps/storage/safetensors.h"

namespace shardps {
class Codec;
}

namespace shardps::ps {

struct ServerStats {
  uint64_t pushes = 0;
  uint64_t pulls = 0;
  uint64_t steps_applied = 0;  // chunk updates
  uint64_t errors_sent = 0;
  uint64_t sparse_rows = 0;    // rows of sparse tables held
  uint64_t sparse_bytes = 0;   // memory they take (rows, their keys and optimizer state, the index)
  uint64_t sparse_zero_rows_elided = 0;  // rows of exact zeros left out of pull replies (FTRL, L1)
  // Dense tables' payload bytes on the wire (frame headers not counted).
  uint64_t push_bytes_received = 0;
  uint64_t pull_bytes_sent = 0;
  // Compressed pull replies: with the change since the worker's version, or the replica whole.
  uint64_t delta_replies = 0;
  uint64_t full_replies = 0;
};

class SparseTable;  // sparse_table.h
struct SparseRequest;

class Server final : public FrameHandler, private PolicyHost, private SparseHost {
 public:
  // `options` should have passed ValidateServerOptions (Node::Start checks): a server built with
  // an unknown consistency policy refuses every request with that error.
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

  // Blocks until every worker has sent SHUTDOWN. `timeout` bounds the silence, not the job: the
  // wait fails (naming the workers that have not finished) once no request from any worker has
  // arrived for `timeout`, however long training has run. A lost peer ends the wait at once with
  // its error.
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
  struct Served;    // a Chunk and its policy's ChunkSync
  struct Downlink;  // a chunk's compressed pull replies (server_internal.h)
  // Brings the chunk's replica to the chunk's version (encoding the change) with `codec`.
  Status RefreshDownlink(Served& chunk, const Codec& codec, float density);
  void SendCompressed(Served& chunk, const HeldRequest& pull, const Codec& codec);
  // Keeps the worker state a push carried (wire.proto residual_floats: the worker's error-feedback
  // residual and its optimizer slots of the range, WorkerStateArrays arrays) for a checkpoint.
  void KeepWorkerState(const HeldRequest& push, std::span<const uint8_t> bytes);
  Status RestoreCodecState(CheckpointReader& reader, uint32_t table, Served& chunk);  // server_checkpoint.cc
  // Arrays per weight of the workers' state a checkpoint of this chunk's table carries.
  uint32_t WorkerArrays(const Served& chunk) const;
  // A full reply's payload: the range of `values`, then (give_back) the worker's saved state of it.
  std::shared_ptr<std::vector<uint8_t>> FullPayload(Served& chunk, const float* values, uint64_t off, uint64_t n, int worker,
                                                    bool whole, wire::Header* reply);
  struct BarrierState;
  struct SecAggState;  // server_secagg.cc

  void HandleHello(IncomingFrame& in, const wire::Header& h);
  void HandlePush(IncomingFrame& in, Frame& f);
  void HandlePull(IncomingFrame& in, Frame& f);
  void HandleBarrier(IncomingFrame& in, const wire::Header& h);
  void HandleShutdown(IncomingFrame& in, const wire::Header& h);
  void HandleCheckpoint(IncomingFrame& in, const wire::Header& h);
  void HandleSparse(IncomingFrame& in, Frame& f);                      // server_sparse.cc
  void HandleSecAgg(IncomingFrame& in, Frame& f);                      // server_secagg.cc
  void SubmitSecAgg(const HeldPtr& request, std::span<const uint8_t> bundle);
  // The held SECAGG requests past their deadline fail, naming the workers that never sent the
  // phase, and the round is abandoned; returns the next deadline.
  Clock::time_point ExpireSecAgg(Clock::time_point now);
  void ProcessSparse(int worker);  // the worker's sparse requests whose payload is in, in arrival order
  void SendRows(const HeldRequest& request, uint64_t version, std::shared_ptr<std::vector<float>> rows,
                bool elided) override;
  void UpdateSparseStats() SHARDPS_EXCLUDES(mu_);
  Result<Served*> ValidateKeys(const wire::Header& h, bool allow_empty);
  HeldPtr Hold(IncomingFrame& in, Frame& f);
  void Reject(IncomingFrame& in, const wire::Header& h, const Status& s) SHARDPS_EXCLUDES(mu_);
  void SendOk(int dest, const wire::Header& request);
  Clock::time_point DeadlineFor(const wire::Header& h, Clock::time_point now) const;
  void ExpireHeld(Clock::time_point now);

  // PolicyHost (server.cc): what the chunks' policies ask of the server.
  void Refuse(HeldRequest& request, const Status& why) override;
  void Acknowledge(const HeldRequest& push) override;
  void SendWeights(Chunk& chunk, const HeldRequest& pull) override;
  Status ReceivePayload(const HeldPtr& push, std::span<float> dest, std::function<void(Status)> done) override;
  void ApplyUpdate(Chunk& chunk, std::span<const float> gradient) override;
  float* AcquireAccumulator(ChunkSync* waiter) override;
  void ReleaseAccumulator(float* buffer) override;
  float* AcquireScratch(ChunkSync* waiter) override;
  void ReleaseScratch(float* buffer) override;
  void WakeAt(Clock::time_point deadline) override;
  std::string Describe(const Chunk& chunk) const override;
  std::string Self() const override;
  int WorkerRank(int worker) const override;

  // A bounded set of chunk-sized buffers, handed out on demand; chunks that find none wait.
  struct BufferPool {
    BufferPool(uint64_t floats, size_t capacity) : floats(floats), capacity(capacity) {}
    float* Acquire(ChunkSync* waiter);  // nullptr (and `waiter` queued) when all are in use
    void Release(float* p);             // and resumes the chunks waiting for one
    const uint64_t floats;
    const size_t capacity;
    std::vector<std::unique_ptr<float[]>> buffers;
    std::vector<float*> free;
    std::deque<ChunkSync*> waiters;
  };

  // Constant after construction.
  Endpoint& endpoint_;
  const Cluster cluster_;
  const TableLayout layout_;
  const ServerOptions options_;
  const int num_workers_;
  const Status policy_error_;  // the consistency policy could not be found: every request gets it

  // Communication thread only.
  std::vector<std::unique_ptr<Served>> chunks_;
  std::unordered_map<uint64_t, Served*> by_key_;  // (table << 32 | chunk index)
  std::vector<std::unique_ptr<SparseTable>> sparse_;  // by table id; null for dense tables
  // By worker index: its sparse requests in arrival order, processed in that order (a request may
  // refer to the key list of the one before: key caching) as their payloads complete.
  std::vector<std::deque<std::shared_ptr<SparseRequest>>> sparse_queue_;
  BufferPool accum_pool_;
  BufferPool scratch_pool_;
  std::unique_ptr<BarrierState> barrier_;
  std::unique_ptr<SecAggState> secagg_;  // server index 0: the secure-aggregation rounds
  std::thread writer_;          // the shard write in flight (at most one)
  bool writer_busy_ = false;
  Clock::time_point next_expiry_ = Clock::time_point::max();

  mutable Mutex mu_;
  std::condition_variable cv_;
  std::vector<bool> worker_done_ SHARDPS_GUARDED_BY(mu_);
  // When the last request from a worker arrived (steady clock ticks); written by the communication
  // thread, read by WaitForWorkers.
  std::atomic<Clock::rep> last_request_{Clock::now().time_since_epoch().count()};
  Status lost_ SHARDPS_GUARDED_BY(mu_);
  ServerStats stats_ SHARDPS_GUARDED_BY(mu_);
};

}  // namespace shardps::ps
