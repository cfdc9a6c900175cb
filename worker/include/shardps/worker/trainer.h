// The training loop of one worker: pull -> forward/backward -> push, evaluation, metrics.
//
//   std::vector<TableSpec> tables = TrainingTables(model, run);     // every rank declares these
//   ClientParams params(client);                                    // or LocalParams(tables) alone
//   SHARDPS_ASSIGN_OR_RETURN(TrainResult r, Train(model, train, test, params, run, hooks));
//
// Modes:
//  * sync: every step each worker computes the gradient of its share of the global batch (scaled
//    by 1 / global batch, so the workers' gradients sum to the full-batch gradient) and pushes
//    each table, or each block of rows of a big weight table (RunOptions::push_block_floats), as
//    soon as backprop has produced it, receiving the updated weights in the same round trip
//    (PushPull), so communication overlaps the computation still to come.
//  * local_sgd: each worker keeps a replica and its own optimizer state, takes K local steps on
//    its share (gradients scaled by its own batch share), then the replicas are averaged through
//    the servers weighted by the samples each worker processed; K = 0 averages once, at the end.
// Evaluation splits the test set over the workers and sums the counts through a reduction table.
// Thread safety: Train runs on the calling thread; a ParamStore is used by one Train at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "shardps/base/layout.h"
#include "shardps/base/status.h"
#include "shardps/worker/checkpoint_driver.h"  // Cursor
#include "shardps/worker/data.h"
#include "shardps/worker/kv_client.h"
#include "shardps/worker/model.h"
#include "shardps/worker/teacher.h"

namespace shardps::secagg {
class Aggregator;
}

namespace shardps::worker {

// How a worker reaches the parameters.
class ParamStore {
 public:
  virtual ~ParamStore() = default;
  virtual Handle Pull(uint32_t table, std::span<float> out, uint64_t version) = 0;
  // The same, but the weights exactly as the servers hold them even when pull replies are
  // compressed (KVClient::PullExact). The final pull of a compressed run.
  virtual Handle PullExact(uint32_t table, std::span<float> out, uint64_t version) { return Pull(table, out, version); }
  // True when pull replies are compressed (lossy): the weights a worker holds lag the servers'.
  virtual bool lossy_pulls() const { return false; }
  // Payload bytes this store's requests and replies took so far (none for in-process stores).
  virtual WireCounters wire() const { return {}; }
  // Pushes the gradient of `range` of the table (grad.size() == its length; KeyRange{} is the whole
  // table) and receives the weights of that range after the step's update.
  virtual Handle PushPull(uint32_t table, std::span<const float> grad, std::span<float> out, uint64_t step,
                          KeyRange range) = 0;
  // Keeps buffers a cancelled request could not take back alive until the store's transport has
  // stopped (see Handle::Cancel). Stores whose requests complete at once keep nothing.
  virtual void Retain(std::shared_ptr<void> keep) { (void)keep; }
  // The optimizer on the workers: this worker's optimizer slots of a table, which a store that
  // checkpoints saves and restores (KVClient::ShareOptimizerSlots). In-process stores keep none.
  virtual void ShareOptimizerSlots(uint32_t table, std::span<float> slots) { (void)table, (void)slots; }
  // Secure aggregation (KVClient::SecAgg): this worker's bundle of `phase` of round `round`; the
  // aggregator's answer is moved into *reply. Stores without an aggregator fail it.
  virtual Handle SecAgg(uint64_t round, uint32_t phase, std::span<const uint8_t> bundle, std::vector<uint8_t>* reply);
};

// Through the parameter servers.
class ClientParams final : public ParamStore {
 public:
  explicit ClientParams(KVClient& client) : client_(client) {}
  Handle Pull(uint32_t table, std::span<float> out, uint64_t version) override { return client_.Pull(table, out, version); }
  Handle PullExact(uint32_t table, std::span<float> out, uint64_t version) override {
    return client_.PullExact(table, out, version);
  }
  bool lossy_pulls() const override { return client_.lossy(); }
  WireCounters wire() const override { return client_.wire(); }
  Handle PushPull(uint32_t table, std::span<const float> grad, std::span<float> out, uint64_t step,
                  KeyRange range) override {
    return client_.PushPull(table, grad, out, step, range);
  }
  void Retain(std::shared_ptr<void> keep) override { client_.Retain(std::move(keep)); }
  void ShareOptimizerSlots(uint32_t table, std::span<float> slots) override { client_.ShareOptimizerSlots(table, slots); }
  Handle SecAgg(uint64_t round, uint32_t phase, std::span<const uint8_t> bundle, std::vector<uint8_t>* reply) override {
    return client_.SecAgg(round, phase, bundle, reply);
  }

 private:
  KVClient& client_;
};

// In this process, no servers: the same initialisation and optimizer code a server runs, applied
// to the one worker's gradient, range by range as it is pushed (a step's ranges of a table must
// be disjoint and cover it; the table's version advances when they do). A job of 1 server + 1
// worker gives bit-identical weights.
class LocalParams final : public ParamStore {
 public:
  explicit LocalParams(const std::vector<TableSpec>& tables);
  Handle Pull(uint32_t table, std::span<float> out, uint64_t version) override;
  Handle PushPull(uint32_t table, std::span<const float> grad, std::span<float> out, uint64_t step,
                  KeyRange range) override;
  // An aggregator in this process, with this worker as its only host.
  Handle SecAgg(uint64_t round, uint32_t phase, std::span<const uint8_t> bundle, std::vector<uint8_t>* reply) override;

 private:
  struct Table;
  std::vector<std::shared_ptr<Table>> tables_;
  std::shared_ptr<secagg::Aggregator> aggregator_;
};

struct RunOptions {
  std::string mode = "sync";   // sync | local_sgd | fedavg (TrainFederated, federated.h)
  int local_steps = 0;         // local_sgd: K
  int epochs = 1;
  int64_t batch_size = 64;     // global
  uint64_t seed = 1;
  OptimizerConfig optimizer;
  int log_every_steps = 100;
  int eval_every_epochs = 1;
  int worker = 0;              // this worker's index
  int workers = 1;
  std::chrono::milliseconds timeout{120000};
  uint64_t start_step = 0;      // resume: steps already applied (the servers hold that version)
  // sync: a weight table's gradient larger than this is pushed in blocks of rows as backprop
  // produces them (Model::Gradient's block_floats); 0 pushes whole tables. The job's chunk size,
  // so that blocks are whole chunks.
  uint64_t push_block_floats = 0;
  // The servers' consistency policy (ServerOptions::consistency) and staleness. Under "ssp" and
  // "asp" the replies a worker receives during training may lag the other workers; at the end of
  // sync training it pulls the weights once every worker's last step is applied (ssp: version
  // steps + staleness, answered at version >= steps; asp: version steps x workers, the updates
  // all workers' pushes make), so every worker ends with the same final model.
  std::string consistency = "bsp";
  int staleness = 0;
  // Tests and benchmarks only (shardps train --test-slow-worker): each sync step of this worker
  // also sleeps (slow_factor - 1) x the previous step's measured compute time, so the worker takes
  // about slow_factor times as long to compute. 1: no delay.
  double slow_factor = 1.0;
  // With slow_factor: the slowed worker changes from step to step (a hash of the step picks one
  // of the workers, the same on every worker), a straggler that moves.
  bool slow_rotates = false;
  // Knowledge distillation (docs/distillation.md): with a teacher (not owned; immutable, it must
  // outlive Train), every step's gradient is that of the distillation loss of Model::Gradient
  // with the teacher's logits of the batch rows, temperature distill_temperature (> 0) and weight
  // distill_alpha (in [0, 1]) of the soft term. The teacher's logits of the whole training set
  // are computed once, before the first step (the same bits whatever the workers and batches).
  // The training loss reported is then the distillation loss; test loss and accuracy are the
  // plain ones.
  const Teacher* teacher = nullptr;
  float distill_temperature = 4.0f;
  float distill_alpha = 0.9f;
  // sync mode: "servers" (the tables' optimizer is `optimizer`, applied by the servers to the sum
  // of the gradients) or "workers": each worker applies `optimizer` to its own mean gradient with
  // its own state slots, and pushes the change it made times its share of the batch (rows / B);
  // the tables then hold "sgd" with learning rate 1, so the servers add the changes. With a
  // compressed push the change is what is coded (docs/compression.md).
  std::string optimizer_on = "servers";
};

// Every table of a run in declaration order: the model's, then a reduction table for metrics
// and (local_sgd) one for sample counts.
std::vector<TableSpec> TrainingTables(const Model& model, const RunOptions& run);

struct Progress {
  int epoch = 0;              // 0-based, current
  int epochs = 0;
  int64_t step = 0;           // global steps done
  int64_t total_steps = 0;
  double loss = 0;            // mean training loss of this worker's recent steps
  double test_accuracy = -1;  // last evaluation, -1 before the first
  double samples_per_second = 0;  // all workers together
  double eta_seconds = 0;
  int clients = -1;           // fedavg: the round's participants (epoch and step count rounds); -1 otherwise
};

struct MetricsRow {
  int epoch = 0;
  int64_t step = 0;
  int64_t samples = 0;        // global samples processed so far
  double train_loss = 0;      // mean over the rows since the previous row (all workers on eval rows)
  double test_loss = -1;      // -1: no evaluation in this row
  double test_accuracy = -1;
  double samples_per_second = 0;
  double wall_seconds = 0;
  // This worker's dense-table payload bytes so far, each way (WireCounters).
  uint64_t push_bytes = 0;
  uint64_t pull_bytes = 0;
  int clients = -1;           // fedavg: the round's participating clients; -1 otherwise
  double epsilon = -1;        // fedavg with clip_norm: epsilon spent so far (may be +inf); -1 otherwise
  int clipped = -1;           // fedavg with clip_norm: the round's clients whose update was clipped
  double update_norm = -1;    // fedavg with clip_norm: the mean L2 norm of the round's updates before clipping
  int survivors = -1;         // fedavg with secure aggregation: the clients whose updates the sum holds (0: aborted)
  int64_t secagg_clipped = -1;  // fedavg with secure aggregation: update elements clipped to secagg_clip this round
};

struct TrainHooks {
  std::function<void(const Progress&)> on_progress;  // after every step
  std::function<void(const MetricsRow&)> on_metrics;  // every log_every_steps and every evaluation
  // After every step (with the cursor after it) and once at the end (`final`); an error stops
  // training. Checkpoints hang here.
  std::function<Status(const Cursor&, bool final)> on_step_end;
  // Something the operator should know that does not stop training (e.g. a federated round whose
  // secure aggregation aborted); lead worker only.
  std::function<void(const std::string&)> on_notice;
};

struct TrainResult {
  int epochs = 0;
  int64_t steps = 0;
  double test_accuracy = 0;
  double test_loss = 0;
  double train_loss = 0;  // mean over the last epoch, all workers
  double wall_seconds = 0;
  double samples_per_second = 0;
  // Synchronous steps only (0 otherwise), this worker: seconds spent gathering the batch and
  // computing the gradient, and seconds then spent waiting for the exchange to complete (the
  // part of the push-pull not overlapped with backpropagation, plus waiting for slower workers).
  double compute_seconds = 0;
  double wait_seconds = 0;
  std::vector<std::vector<float>> weights;  // final model tables, in declaration order
  std::string weights_sha256;
  WireCounters wire;  // this worker's payload bytes each way (ParamStore::wire)
  // fedavg with clip_norm > 0: (epsilon, delta)-DP spent by the whole run (+inf without noise),
  // the RDP order that gave it, and the clients clipped over all rounds / all client updates.
  double epsilon = -1;
  double epsilon_order = 0;
  int64_t clipped = 0;
  int64_t client_updates = 0;
  // fedavg with secure aggregation: rounds aborted, client updates in the sums, elements clipped.
  int64_t secagg_aborted = 0;
  int64_t secagg_survivors = 0;
  int64_t secagg_clipped = 0;
};

Result<TrainResult> Train(const Model& model, const Dataset& train, const Dataset& test, ParamStore& params,
                          const RunOptions& run, const TrainHooks& hooks = {});

// SHA-256 of the tables as little-endian float32, in order.
std::string WeightsSha256(const std::vector<std::vector<float>>& tables);

// Averages replicas through the servers: returns sum_i(n_i * w_i) / sum_i(n_i) over all workers,
// table by table, into `replica`. `round` numbers the averaging rounds (0, 1, ...).
Status AverageReplicas(ParamStore& params, std::span<std::vector<float>> replica, uint32_t samples_table,
                       double samples, uint64_t round, std::chrono::milliseconds timeout);

}  // namespace shardps::worker
