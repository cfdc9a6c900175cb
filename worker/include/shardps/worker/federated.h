// Federated averaging (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks
// from Decentralized Data"): the training data is split into N clients' partitions that never
// mix; every round a seeded sample of max(1, round(C x N)) clients trains E local epochs with
// batch B from the current global model, and the global model moves by the average of their
// changes weighted by their sample counts. FedSGD is E = 1 with B = 0 (each client's whole
// partition as one batch): one gradient step of the sampled clients' union per round.
//
//   SHARDPS_ASSIGN_OR_RETURN(Partition p, MakePartition(train.labels, train.num_classes, opts));
//   std::cerr << FormatLabelHistogram(p, train.labels, train.num_classes);
//   SHARDPS_ASSIGN_OR_RETURN(TrainResult r, TrainFederated(model, train, test, params, run, fed, hooks));
//
// Simulated clients: client k is hosted by worker process k mod W, which trains its sampled
// clients one after another in increasing k. Every worker computes the whole partition and the
// whole sample (pure functions of the seed), so each knows n_S, the samples of the round's
// clients, and pushes sum over its clients k of (n_k / n_S) x (w - w_k); the tables hold "sgd"
// with learning rate 1, so the servers' bulk-synchronous sum moves the model by the weighted
// average. A round is one version of the tables: checkpoints are taken between rounds and a
// resumed run is bit-identical (nothing but the global model carries over from a round).
//
// Partitioners (the registry in federated.cc; docs/federated.md):
//   iid        a seeded permutation cut into N parts whose sizes differ by at most one;
//   shards     sort by label (stable), cut into N x k shards of floor(n / (N x k)) samples
//              (the rest, fewer than N x k samples, is left out), a seeded shuffle of the shards,
//              k consecutive ones per client (with k = 2, most clients see two labels);
//   dirichlet  per label, proportions over the N clients drawn from Dirichlet(alpha), the
//              label's samples (shuffled) cut at the cumulative proportions; redrawn (up to 100
//              times, keyed by the attempt) until every client has at least one sample.
// Every random draw is counter-based, keyed by (seed, purpose, ...): no state, no std::
// distribution, the same bits on every platform.
// Thread safety: pure functions; TrainFederated runs on the calling thread.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "shardps/base/status.h"
#include "shardps/worker/trainer.h"

namespace shardps::worker {

struct PartitionOptions {
  std::string partitioner = "iid";  // iid | shards | dirichlet
  int clients = 100;
  int shards_per_client = 2;        // shards
  double dirichlet_alpha = 0.5;     // dirichlet: > 0 (smaller: more skewed)
  uint64_t seed = 1;
};

// Client k's training samples (indices into the dataset), in increasing order.
struct Partition {
  std::vector<std::vector<int64_t>> clients;
  int64_t samples() const;
};

Result<Partition> MakePartition(const std::vector<int32_t>& labels, int num_classes, const PartitionOptions& options);
// "iid, shards, dirichlet".
std::string RegisteredPartitioners();
bool IsPartitioner(const std::string& name);

// counts[k][c]: client k's samples of label c.
std::vector<std::vector<int64_t>> LabelHistogram(const Partition& p, const std::vector<int32_t>& labels, int num_classes);
// One line per client: "client  samples  label0 label1 ...", and a last line with the smallest,
// median and largest partition and how many labels a client sees (median).
std::string FormatLabelHistogram(const Partition& p, const std::vector<int32_t>& labels, int num_classes);

// The clients of round `round`: max(1, round(fraction x clients)) distinct ones, increasing; a
// pure function of (seed, round).
std::vector<int> SampleClients(int clients, double fraction, uint64_t seed, uint64_t round);

struct FederatedOptions {
  PartitionOptions partition;
  double fraction = 0.1;      // C
  int local_epochs = 5;       // E
  int64_t local_batch = 10;   // B; 0: a client's whole partition (FedSGD with E = 1)
  int rounds = 50;
  int eval_every_rounds = 1;
  // Differential privacy (DP-FedAvg, McMahan et al. 2018; docs/federated.md#differential-privacy):
  // with clip_norm S > 0 each client's change w - w_k is clipped to L2 norm S (over all tables),
  // the clients are averaged with equal weights 1/m (m: the round's clients, fixed by N and C), and
  // the lead worker adds Gaussian noise of standard deviation z x S / m (noise_multiplier z) to
  // every coordinate of the average. An RDP accountant (sampling rate q = m / N) gives epsilon at
  // dp_delta after every round. S = 0: no clipping, no noise, sample-weighted averaging.
  double clip_norm = 0;
  double noise_multiplier = 0;
  double dp_delta = 1e-5;
  // Secure aggregation (Bonawitz et al. 2017; docs/federated.md#secure-aggregation): the round's
  // sum of client updates goes through the aggregator on server rank 0 (ParamStore::SecAgg),
  // which learns only the sum. Each client's update (its change weighted n_k / n-bar, n-bar = the
  // partition's mean size; with clip_norm: clipped, weight 1) is clipped per element to
  // [-secagg_clip, secagg_clip], rounded stochastically to secagg_bits bits, and followed by its
  // sample count n_k (1 with clip_norm) as one more ring element, so the sum carries the
  // survivors' samples and the average is over the clients whose updates the sum holds. The ring
  // is wide enough that neither the sum of m updates nor of the counts can wrap. Client ids in a
  // round are 1..m by position in the sample (m <= 255); threshold t (0: floor(2m / 3) + 1).
  // The lead worker pushes the average, the others zeros. A round that aborts (fewer than t
  // clients left) leaves the model as it was.
  bool secure_aggregation = false;
  int secagg_bits = 16;
  double secagg_clip = 1.0;
  int secagg_threshold = 0;
  // Simulated dropouts (tests, benchmarks): every round this many of the sampled clients (a seeded
  // choice) fall silent before phase secagg_drop_phase (0: they never advertise keys, 1: after
  // advertising, 2: after sharing their keys, 3: after sending their masked input).
  int secagg_dropouts = 0;
  int secagg_drop_phase = 2;
};

// Federated averaging over the servers (see above). `run` gives the seed, the client optimizer
// (run.optimizer, fresh state every round: "sgd" is McMahan's), worker/workers, the timeout and
// start_step (resume: rounds already applied); run.mode must be "fedavg". The tables must be
// TrainingTables(model, run). MetricsRow::step is the round, `clients` its participants;
// TrainResult::steps counts rounds. With clip_norm > 0, MetricsRow::epsilon and clipped and
// TrainResult::epsilon report the privacy spent and the clients clipped. With secure_aggregation,
// MetricsRow::survivors and secagg_clipped, and TrainResult::secagg_* report each round.
Result<TrainResult> TrainFederated(const Model& model, const Dataset& train, const Dataset& test, ParamStore& params,
                                   const RunOptions& run, const FederatedOptions& fed, const TrainHooks& hooks);

}  // namespace shardps::worker
