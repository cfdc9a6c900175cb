// KVClient: a worker's view of the parameter servers. Thread-safe; every call returns at once
// with a Handle whose wait(timeout) yields the outcome.
//
//   // a Node makes the client of a working rank (node.h): worker::KVClient& client = *node->client();
//   std::vector<float> w(n), g(n);
//   for (uint64_t step = 0; step < steps; ++step) {
//     SHARDPS_RETURN_IF_ERROR(client.Pull(table, w, /*version=*/step).wait(timeout));
//     ComputeGradient(w, g);
//     SHARDPS_RETURN_IF_ERROR(client.Push(table, g, step).wait(timeout));
//   }
//   // or, one round trip per step: client.PushPull(table, g, w, step).wait(timeout);
//
// Synchronous semantics: in each step every worker pushes every key of a table exactly once (in
// one push or several disjoint key ranges); the servers sum the pushes of step t in worker-rank
// order and apply the optimizer once; Pull(version = t + 1) returns the weights after that.
//
// Sparse tables (TableSpec::row_dim = d > 0) are addressed by key lists instead of ranges:
//   std::vector<uint64_t> ids = {3, 17, 1'000'000'007};          // sorted, no repeats
//   std::vector<float> g(ids.size() * d), rows(ids.size() * d);  // one row of d floats per key
//   SHARDPS_RETURN_IF_ERROR(client.SparsePull(table, ids, rows, /*version=*/step).wait(timeout));
//   ... gradient rows for the same ids into g ...
//   SHARDPS_RETURN_IF_ERROR(client.SparsePush(table, ids, g, step).wait(timeout));
// Rows are created on first touch with the table's initialiser. Each worker sends one sparse push
// per step and table (an empty key list is a valid push: the step still counts it); the servers
// sum the step's rows key by key in worker-rank order and update each touched row once.
// Buffers passed in must stay valid and unchanged until the handle completes or is cancelled:
// payloads are sent from and received into them directly.
// Thread safety: all methods may be called concurrently from any threads.
#pragma once

#include <chrono>
#include <functional>
#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <string>

#include "shardps/base/cluster.h"
#include "shardps/base/layout.h"
#include "shardps/base/status.h"

namespace shardps {
class Endpoint;
class FrameHandler;
}  // namespace shardps

namespace shardps::worker {

// Half-open range of global element offsets within a table; the default is the whole table.
struct KeyRange {
  uint64_t begin = 0;
  uint64_t end = std::numeric_limits<uint64_t>::max();
  // `end`, or `table_size` for the default (the rest of the table).
  uint64_t EndIn(uint64_t table_size) const { return end == std::numeric_limits<uint64_t>::max() ? table_size : end; }
};

struct ClientOptions {
  // How long a server may hold one of this client's requests (sent in every request). A server
  // that gives up answers with an error naming the step and the workers it was waiting for.
  std::chrono::milliseconds request_timeout{60000};
  // The gradient codec of pushes and pull replies: a name from RegisteredCodecs()
  // (shardps/base/codec.h). "identity" sends the floats from and into the caller's buffers.
  std::string codec = "identity";
  // With a lossy codec: keep what compression dropped from each push (the error-feedback
  // residual, one per table on this worker) and add it to the next push of the same range.
  bool error_feedback = true;
  // Pushes and pull replies of steps < compress_after travel as float32 (a warm-up).
  uint64_t compress_after = 0;
  // top-k / random-k: the fraction of each chunk's values sent, in (0, 1].
  float codec_density = 0.01f;
  // With a lossy codec and error feedback: true for the step counts (steps applied) at which a
  // checkpoint will be taken. The push of step s carries this worker's residual of its range to
  // the server when checkpoint_at(s + 1), so the checkpoint holds it; a job restored from that
  // checkpoint gives it back with the first pull reply. Null: residuals are not saved.
  std::function<bool(uint64_t steps)> checkpoint_at;
  // The optimizer this worker applies itself (RunOptions::optimizer_on "workers"), whose slots
  // (ShareOptimizerSlots) travel like the residual before a checkpoint step and come back on
  // restore. Empty: the servers run the optimizer.
  std::string worker_optimizer;
  // Observes every push, pull and push-pull when it completes (every piece answered, or the first
  // failure): the operation ("push", "pull", "push_pull"), seconds from the call to completion,
  // and whether it succeeded. Called on the communication thread: must be cheap and never block
  // (the training program feeds its Prometheus histograms with it). Null: nothing is timed.
  std::function<void(const char* op, double seconds, bool ok)> on_op_done;
};

// Payload bytes of a client's dense-table requests and replies (frame headers not counted), and
// the float32 values they carry (x 4: what the identity codec would have sent).
struct WireCounters {
  uint64_t push_bytes = 0;
  uint64_t pull_bytes = 0;
  uint64_t push_floats = 0;
  uint64_t pull_floats = 0;
};

// Checks what can be checked before a client starts: an unknown codec is INVALID_ARGUMENT naming
// it and the registered ones. (A client built with one fails every operation with that error.)
Status ValidateClientOptions(const ClientOptions& options);

namespace internal {
struct OpState;
class ClientCore;  // the protocol side, on the communication thread (kv_client.cc)
}

// The outcome of an asynchronous operation. Cheap to copy; all copies share the outcome.
class Handle {
 public:
  Handle() = default;  // an operation that has already succeeded
  explicit Handle(std::shared_ptr<internal::OpState> state) : state_(std::move(state)) {}

  // Waits up to `timeout`. On expiry the status is DEADLINE_EXCEEDED and names the server ranks
  // that have not answered; the operation stays pending and may be waited on again (or cancelled).
  Status wait(std::chrono::milliseconds timeout) const;
  bool done() const;
  // Gives up the operation: once this returns OK, no transport reads from or writes into its
  // buffers, whatever the servers do later (a late reply is dropped), and wait() returns
  // CANCELLED (or the error it had already failed with). A completed operation is left as it is.
  // An error means a transport still holds the buffers (an MPI send the peer never matched):
  // keep them alive until the node has stopped, e.g. with KVClient::Retain. `timeout` bounds the
  // wait for the communication thread. Call it before the client is destroyed.
  Status Cancel(std::chrono::milliseconds timeout = std::chrono::seconds(10)) const;

 private:
  std::shared_ptr<internal::OpState> state_;
};

class KVClient {
 public:
  // Made by Node for a working rank, on its endpoint (the communication thread, which library
  // users never see); the client registers with it through frame_handler().
  KVClient(Endpoint& endpoint, const Cluster& cluster, const TableLayout& layout, ClientOptions options = {});
  ~KVClient();
  KVClient(const KVClient&) = delete;
  KVClient& operator=(const KVClient&) = delete;

  // Sends the gradient of `range` (grad.size() == range length) for `step`.
  Handle Push(uint32_t table, std::span<const float> grad, uint64_t step, KeyRange range = {});
  // Receives the weights of `range` once the servers have applied `version` steps.
  Handle Pull(uint32_t table, std::span<float> out, uint64_t version, KeyRange range = {});
  // Pull, but the weights exactly as the servers hold them (float32), whatever the codec: with a
  // lossy codec, Pull's replies are compressed changes and lag the servers' weights by the
  // residual the servers keep (docs/compression.md).
  Handle PullExact(uint32_t table, std::span<float> out, uint64_t version, KeyRange range = {});
  // True when this client's codec is lossy (not identity).
  bool lossy() const;
  // The optimizer slots this worker keeps of a table (ClientOptions::worker_optimizer:
  // OptimizerSlots arrays of the table's size, one after another). The pushes before a checkpoint
  // step send their range of them; a reply after a restore writes them back. `slots` must stay
  // valid while the client is used and be touched only by the thread that pushes, between the
  // steps' waits.
  void ShareOptimizerSlots(uint32_t table, std::span<float> slots);
  // Bytes sent and received so far (any thread).
  WireCounters wire() const;
  // Push for `step`, then receive the weights after that step's update, in one round trip.
  Handle PushPull(uint32_t table, std::span<const float> grad, std::span<float> out, uint64_t step,
                  KeyRange range = {});
  // Sparse tables: `keys` sorted ascending without repeats (else INVALID_ARGUMENT naming the
  // first bad position); `grads` and `rows` hold keys.size() rows of the table's row_dim floats,
  // in key order. A push goes to every server (those holding none of the keys get an empty list).
  Handle SparsePush(uint32_t table, std::span<const uint64_t> keys, std::span<const float> grads, uint64_t step);
  // The rows of `keys` once the servers have applied `version` steps (less the staleness under "ssp").
  Handle SparsePull(uint32_t table, std::span<const uint64_t> keys, std::span<float> rows, uint64_t version);
  // SparsePush for `step`, then the rows after that step's update, in one round trip.
  Handle SparsePushPull(uint32_t table, std::span<const uint64_t> keys, std::span<const float> grads,
                        std::span<float> rows, uint64_t step);
  // Completes when every worker has entered the same (n-th) barrier.
  Handle Barrier();
  // Secure aggregation (docs/federated.md): sends this worker's bundle of `phase` (0..3) of round
  // `round` (core/secagg messages.h) to server rank 0, whose aggregator answers once every worker
  // has sent that phase; the answer's bundle is moved into *reply. `bundle` and `reply` must stay
  // valid until the handle completes.
  Handle SecAgg(uint64_t round, uint32_t phase, std::span<const uint8_t> bundle, std::vector<uint8_t>* reply);
  // Checks with every server that both sides use the same table layout.
  Handle Hello();
  // Tells every server this worker is done; call after all other handles completed.
  Handle Shutdown();
  // Keeps `keep` alive until the client is destroyed, which Node does after its communication
  // thread and transport have stopped: for buffers a failed Cancel could not take back.
  void Retain(std::shared_ptr<void> keep);

  // Asks every server to write its shard of the model tables, all at `step`, into checkpoint
  // version `version` of its checkpoint directory; completes when every shard is durable.
  Handle Checkpoint(uint64_t version, uint64_t step);

  const TableLayout& layout() const;

  // What the endpoint hands this client's replies to (Endpoint::SetClientHandler); its calls run
  // on the communication thread.
  FrameHandler* frame_handler();

 private:
  std::unique_ptr<internal::ClientCore> core_;
};

}  // namespace shardps::worker
