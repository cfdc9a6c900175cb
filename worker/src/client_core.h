// The protocol side of a KVClient (internal to worker/): ClientCore builds the requests, keeps the
// pending ones and matches the replies on the communication thread; OpState is what a Handle and
// that thread share. kv_client.cc: dense tables and the control requests; sparse_client.cc:
// sparse tables.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "shardps/base/codec.h"
#include "shardps/base/thread_annotations.h"
#include "shardps/net/endpoint.h"
#include "shardps/worker/kv_client.h"

namespace shardps::worker {

namespace internal {

// The protocol side of a KVClient: builds the requests, keeps the pending ones and matches the
// replies on the communication thread (the endpoint's client handler).
class ClientCore final : public FrameHandler {
 public:
  ClientCore(Endpoint& endpoint, const Cluster& cluster, const TableLayout& layout, ClientOptions options)
      : endpoint_(endpoint),
        cluster_(cluster),
        layout_(layout),
        options_(options),
        codec_(FindCodec(options_.codec)),
        codec_error_(ValidateClientOptions(options_)) {}

  Handle Push(uint32_t table, std::span<const float> grad, uint64_t step, KeyRange range);
  Handle Pull(uint32_t table, std::span<float> out, uint64_t version, KeyRange range, bool exact = false);
  Handle PushPull(uint32_t table, std::span<const float> grad, std::span<float> out, uint64_t step, KeyRange range);
  Handle Barrier() SHARDPS_EXCLUDES(mu_);
  Handle SecAgg(uint64_t round, uint32_t phase, std::span<const uint8_t> bundle, std::vector<uint8_t>* reply);
  Handle Hello();
  Handle Shutdown();
  void Retain(std::shared_ptr<void> keep) SHARDPS_EXCLUDES(mu_);
  void ShareOptimizerSlots(uint32_t table, std::span<float> slots) SHARDPS_EXCLUDES(ef_mu_);
  Handle Checkpoint(uint64_t version, uint64_t step);
  const TableLayout& layout() const { return layout_; }
  bool lossy() const { return codec_ != nullptr && !codec_->raw(); }
  WireCounters wire() const {
    return {.push_bytes = push_bytes_.load(), .pull_bytes = pull_bytes_.load(), .push_floats = push_floats_.load(),
            .pull_floats = pull_floats_.load()};
  }

  // Sparse tables (sparse_client.cc).
  Handle SparsePush(uint32_t table, std::span<const uint64_t> keys, std::span<const float> grads, uint64_t step);
  Handle SparsePull(uint32_t table, std::span<const uint64_t> keys, std::span<float> rows, uint64_t version);
  Handle SparsePushPull(uint32_t table, std::span<const uint64_t> keys, std::span<const float> grads,
                        std::span<float> rows, uint64_t step);

  Status Cancel(const std::shared_ptr<OpState>& op, std::chrono::milliseconds timeout);
  Endpoint& endpoint() { return endpoint_; }

  // FrameHandler (communication thread).
  void OnFrame(IncomingFrame in, Frame frame) override;
  Clock::time_point OnTick(Clock::time_point now) override { return Clock::time_point::max(); }
  void OnPeerLost(const Status& why) override;

 private:
  struct Piece {
    int server_rank = 0;
    wire::Header header;
    std::span<const uint8_t> payload;
    std::shared_ptr<std::vector<uint8_t>> encoded;  // what `payload` points into, for a codec that copies
    std::span<uint8_t> out;  // where a pull reply's payload goes
    // Sparse requests: the reply is raw float32 whatever the client's codec. With `inbox`, `out`
    // points into it (the rows of several servers interleave in the caller's buffer) and
    // `after_receive` moves them into place once received, on the communication thread.
    bool sparse = false;
    std::shared_ptr<std::vector<uint8_t>> inbox;
    int server = 0;  // server index (sparse)
    std::function<void()> after_receive;
    // Dense pulls with a lossy codec: the codec asked for, and whether the request covers its
    // whole chunk (then the reply may be a change of this worker's replica of the chunk, and the
    // request's base_version is set on the communication thread from that replica).
    const Codec* codec = nullptr;
    bool whole_chunk = false;
    std::vector<uint8_t>* bytes_out = nullptr;  // SECAGG: where the reply's bundle goes
  };
  struct Pending {
    std::shared_ptr<OpState> op;
    size_t piece = 0;
    std::span<uint8_t> out;
    wire::Op op_code = wire::OP_UNSPECIFIED;
    int server_rank = -1;  // only this rank's reply is accepted
    uint32_t chunk = 0;
    bool sparse = false;
    std::function<void()> after_receive;
    uint32_t table = 0;
    int server = 0;  // server index (sparse)
    const Codec* codec = nullptr;  // dense: the codec the request asked for
    bool whole_chunk = false;
    uint64_t key_begin = 0;  // dense: the request's range starts here
    std::vector<uint8_t>* bytes_out = nullptr;  // SECAGG
    uint32_t secagg_phase = 0;                   // SECAGG: the phase asked about
  };
  // A chunk's weights as this worker holds them from compressed pull replies (communication
  // thread only): the server's replica at `version` (docs/compression.md).
  struct Replica {
    std::vector<float> values;
    uint64_t version = 0;
    bool valid = false;
    std::vector<float> change;  // a decoded change (kept: no allocation per reply)
  };
  // A compressed pull reply (communication thread).
  void ReceiveCompressed(IncomingFrame in, Frame frame, Pending p);
  // A float32 reply carrying this worker's restored state after the weights (communication thread).
  void ReceiveWithState(IncomingFrame in, Frame frame, Pending p);
  // A SECAGG reply's bundle (communication thread).
  void ReceiveBundle(IncomingFrame in, Frame frame, Pending p);
  // Sparse tables (sparse_client.cc): how the caller's last key list of a table splits over the
  // servers, and which servers hold their part of it (key caching, wire.proto). A request is
  // built and posted under sparse_mu_, so the servers see the requests in the order their
  // caching was decided.
  struct SparsePlan;
  struct SparseTableState {
    std::shared_ptr<const SparsePlan> plan;
    std::vector<bool> held;  // by server index: it holds its part of plan->keys
  };
  void ForgetSparseKeys(uint32_t table, int server) SHARDPS_EXCLUDES(sparse_mu_);
  static std::shared_ptr<const SparsePlan> MakePlan(std::span<const uint64_t> keys, int servers);

  // `kind` ("push", "pull", "push_pull"; null for control operations) is what
  // ClientOptions::on_op_done is told.
  Handle Start(std::string what, std::vector<Piece> pieces, const char* kind = nullptr);
  Status CancelOnCommThread(const std::shared_ptr<OpState>& op, Clock::time_point deadline);
  Handle Failed(Status s);
  Result<std::pair<uint64_t, uint64_t>> Resolve(uint32_t table, KeyRange range, size_t buffer_size,
                                                const char* what) const;
  std::vector<Piece> Split(wire::Op op, uint32_t table, uint64_t begin, uint64_t end, uint64_t step,
                           const float* grad, float* out, const Codec* codec) SHARDPS_EXCLUDES(ef_mu_);
  void ReceiveRows(IncomingFrame in, Frame frame, Pending p);  // a sparse reply's payload (sparse_client.cc)
  void ReceiveElidedRows(IncomingFrame in, Frame frame, Pending p);
  Handle StartSparse(wire::Op op, uint32_t table, std::span<const uint64_t> keys, std::span<const float> grads,
                     std::span<float> rows, uint64_t step) SHARDPS_EXCLUDES(sparse_mu_);  // sparse_client.cc

  // Constant after construction.
  Endpoint& endpoint_;
  const Cluster cluster_;
  const TableLayout layout_;
  const ClientOptions options_;
  const Codec* const codec_;   // null when options_.codec is not registered
  // The codec of a table's pushes and replies: options_.codec, but the identity codec for tables
  // whose optimizer is "sum" (reductions of counts and metrics, which a lossy codec would change).
  // And identity for steps before options_.compress_after (the warm-up).
  const Codec* CodecFor(uint32_t table, uint64_t step) const;
  const Status codec_error_;  // then: why; every operation fails with it

  Mutex mu_;
  uint64_t barrier_count_ SHARDPS_GUARDED_BY(mu_) = 0;
  std::vector<std::shared_ptr<void>> retained_ SHARDPS_GUARDED_BY(mu_);
  Mutex sparse_mu_;
  std::unordered_map<uint32_t, SparseTableState> sparse_ SHARDPS_GUARDED_BY(sparse_mu_);

  // Error feedback (ClientOptions::error_feedback): by table, what compression dropped from this
  // worker's pushes, table-sized. Written by the threads that push.
  Mutex ef_mu_;
  std::unordered_map<uint32_t, std::vector<float>> residual_ SHARDPS_GUARDED_BY(ef_mu_);
  // ClientOptions::worker_optimizer: by table, the optimizer slots the worker shared (not owned).
  std::unordered_map<uint32_t, std::span<float>> worker_slots_ SHARDPS_GUARDED_BY(ef_mu_);
  // Arrays per weight of this worker's state a checkpoint of `table` carries (WorkerStateArrays).
  uint32_t StateArrays(uint32_t table) const;
  // Appends this worker's state of [b, e) of the table (residual, then optimizer slots) to `out`.
  void AppendState(uint32_t table, uint64_t b, uint64_t e, std::vector<uint8_t>& out) SHARDPS_EXCLUDES(ef_mu_);
  // Writes back the state a reply after a restore carried (`arrays` arrays of [b, e)).
  void RestoreState(uint32_t table, uint64_t b, uint64_t e, const uint8_t* bytes, uint64_t arrays) SHARDPS_EXCLUDES(ef_mu_);
  std::atomic<uint64_t> push_bytes_{0}, pull_bytes_{0}, push_floats_{0}, pull_floats_{0};

  // Communication thread only.
  uint64_t next_request_id_ = 1;
  std::unordered_map<uint64_t, Pending> pending_;
  std::unordered_map<uint64_t, Replica> replicas_;  // by (table << 32 | chunk)

};

// Shared by a Handle and the communication thread. Each piece (one message to one server)
// finishes when its send has completed and its reply has arrived (and, for pulls, its payload).
struct OpState {
  std::string what;
  // Called once, outside the lock, when the last piece completes (ClientOptions::on_op_done).
  std::function<void(const Status&)> on_done;
  ClientCore* client = nullptr;                 // null for operations that never started
  std::vector<std::span<const uint8_t>> regions;  // the caller's buffers (payloads and outputs)
  std::vector<std::shared_ptr<std::vector<uint8_t>>> encoded;  // encoded payloads being sent (codecs that copy)
  bool cancelled = false;                        // communication thread only
  mutable Mutex mu;
  std::condition_variable cv;
  std::vector<int> server;                                // by piece
  std::vector<uint8_t> parts_left SHARDPS_GUARDED_BY(mu);  // by piece
  size_t remaining SHARDPS_GUARDED_BY(mu) = 0;
  Status error SHARDPS_GUARDED_BY(mu);                     // the first failure

  // The constructors run before the state is shared, so they set guarded fields without the lock
  // (the analysis does not check constructors).
  explicit OpState(Status done) : error(std::move(done)) {}  // finished before it started
  OpState(std::string description, size_t pieces) : what(std::move(description)), parts_left(pieces, 2), remaining(pieces) {}

  void Part(size_t piece, const Status& s) SHARDPS_EXCLUDES(mu) {
    bool all = false;
    {
      MutexLock lock(mu);
      if (!s.ok() && error.ok()) error = s;
      if (parts_left[piece] == 0) return;
      if (--parts_left[piece] == 0) all = --remaining == 0;
    }
    if (!all) return;
    cv.notify_all();
    if (on_done) {
      Status first;
      {
        MutexLock lock(mu);
        first = error;
      }
      on_done(first);
    }
  }
};

// An operation that finished before it started (kv_client.cc; also used by LocalParams).
Handle CompletedHandle(Status s);

}  // namespace internal

}  // namespace shardps::worker
