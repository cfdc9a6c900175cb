// Federated averaging with real clients: each client is its own process holding its own data
// partition, joining a coordinator over an authenticated TCP channel (net/channel.h) and free to
// leave at any moment; the coordinator learns only the sum of each round's updates (secure
// aggregation, core/secagg aggregator.h). docs/federated.md#real-clients.
//
//   coordinator:  shardps fed-serve --config C --listen 127.0.0.1:7100 --secret job.key --wait-clients 10
//   client k:     shardps fed-client --config C --connect 127.0.0.1:7100 --secret job.key --client k
//
// A round: the coordinator selects max(2, round(C x connected)) of the clients connected now (a
// seeded choice, ascending by client index; secagg ids 1..m in that order), sends each a TASK
// (the round, its secagg id, the RoundConfig, the global weights), and runs the four phases of
// secure aggregation with them, one SECAGG message per client and phase in each direction. Phase
// 0 includes the clients' local training (deadline train_timeout), the others phase_timeout. A
// client whose connection closes, or that misses a phase's deadline, drops out of the round
// (Aggregator::Drop); up to m - t of them leave the survivors' exact sum, more abort the round,
// which leaves the model as it was. The coordinator applies the average update (through its
// ParamStore: in-process tables holding "sgd" with learning rate 1, the same code a server runs),
// evaluates the model on the test set, and after the last round sends BYE.
// The client: trains E local epochs of batch B on its partition (the partitioner, seed and N of
// the shared config; it reads only its own samples' labels and features into the round), weights
// its change n_k / n-bar, quantizes it (FederatedOptions::secagg_*) and appends n_k; the update the
// coordinator applies is the survivors' sample-weighted average, as in simulated FedAvg.
// Thread safety: each function runs on its calling thread (the coordinator starts one reader
// thread per client connection and joins them before returning).
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "shardps/base/status.h"
#include "shardps/net/auth.h"
#include "shardps/net/channel.h"
#include "shardps/worker/federated.h"
#include "shardps/worker/trainer.h"

namespace shardps::worker {

// Channel message types between a coordinator and its clients.
enum FedMessageType : uint8_t {
  kFedJoin = 1,     // client -> coordinator: u32 client index (its partition)
  kFedTask = 2,     // coordinator -> client: a round (see EncodeTask in federated_remote.cc)
  kFedSecAgg = 3,   // both ways: a secagg bundle of the round's current phase
  kFedBye = 4,      // coordinator -> client: training is over (payload: the reason, text)
  kFedRefused = 5,  // coordinator -> client: the join was refused (payload: why, text)
};

struct CoordinatorOptions {
  FederatedOptions fed;  // rounds, fraction (of the connected clients), secagg_* (secure aggregation always on)
  int wait_clients = 2;                                 // round 1 starts once this many joined
  std::chrono::milliseconds join_timeout{120000};       // ... or fails after this long
  std::chrono::milliseconds train_timeout{600000};      // phase 0: local training + AdvertiseKeys
  std::chrono::milliseconds phase_timeout{30000};       // phases 1-3
  // Test only: after each round that completes (1-based), its survivors, ring width and ring sum.
  std::function<void(int round, const std::vector<uint32_t>& survivors, int ring_bits, const std::vector<uint64_t>& sum)> on_sum;
};

// Runs the rounds with the clients that join through `listener` (each must prove the secret);
// `params` holds TrainingTables(model, run) (LocalParams or a job's servers). MetricsRow per round:
// clients = selected, survivors, test accuracy. TrainResult as TrainFederated's.
Result<TrainResult> ServeFederated(const Model& model, const Dataset& test, ParamStore& params, const RunOptions& run,
                                   const CoordinatorOptions& options, Listener& listener, const Secret& secret,
                                   const TrainHooks& hooks);

struct FedClientOptions {
  FederatedOptions fed;   // partition (clients N, partitioner, seed), local_epochs, local_batch, secagg_*
  int client = 0;         // k: this client's partition
  std::chrono::milliseconds reply_timeout{900000};  // the longest wait for the coordinator
  // Test only: the process SIGKILLs itself right before sending its bundle of this phase (0-3) in
  // this round (1-based), a real crash at a chosen point of the protocol. -1: never.
  int exit_before_phase = -1;
  int exit_round = 1;
  // Test only: called with the ring vector this client is about to mask, each round it takes part in.
  std::function<void(int round, uint32_t secagg_id, const std::vector<uint64_t>& input)> on_input;
};

// Joins the coordinator over `channel` as client options.client and takes part in rounds until
// BYE. `train` is the full training set the partition is cut from.
Status RunFederatedClient(const Model& model, const Dataset& train, const RunOptions& run, const FedClientOptions& options,
                          Channel& channel);

}  // namespace shardps::worker
