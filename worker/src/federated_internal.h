// What the simulated (federated.cc) and the real clients (federated_remote.cc) of federated
// averaging share: a client's local training of one round.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include <functional>

#include "shardps/secagg/fixed_point.h"
#include "shardps/worker/federated.h"

namespace shardps::worker::internal {

// Buffers one client's training reuses from round to round.
struct LocalScratch {
  std::vector<std::vector<float>> local, g, slots;
  std::vector<float> xb;
  std::vector<int32_t> yb;
  std::vector<std::span<const float>> wspans;
  std::vector<std::span<float>> gspans;
  void Size(const std::vector<std::vector<float>>& w, uint64_t slots_per_weight) {
    const size_t M = w.size();
    local.resize(M);
    g.resize(M);
    slots.resize(M);
    wspans.resize(M);
    gspans.resize(M);
    for (size_t t = 0; t < M; ++t) {
      local[t].resize(w[t].size());
      g[t].resize(w[t].size());
      slots[t].resize(w[t].size() * slots_per_weight);
    }
  }
};

struct LocalResult {
  double loss_sum = 0;   // the last local epoch's batch losses
  int64_t loss_rows = 0;
};

// Client k of round `round` trains fed.local_epochs epochs of batch fed.local_batch on its samples
// `mine` from the global weights `w`, with a fresh run.optimizer; leaves its change w - w_k in
// s.local. The batch order is keyed by (seed, round, k, epoch): the same wherever the client runs.
Result<LocalResult> LocalUpdate(const Model& model, const Dataset& train, const std::vector<int64_t>& mine, const RunOptions& run,
                                const FederatedOptions& fed, int round, int k, const std::vector<std::vector<float>>& w,
                                LocalScratch& s);

// A secure-aggregation round's ring sum of the survivors' vectors (each a weighted update of
// `push`'s total size, then a count) made into the update: the dequantized sum times
// scale(count), laid out over the tables of `push`. DATA_LOSS when the sum's shape or count is
// impossible.
Status SpreadSum(std::span<const uint64_t> sum, size_t survivors, const secagg::FixedPoint& fp,
                 const std::function<double(uint64_t count)>& scale, std::vector<std::vector<float>>& push);

// The progress line of federated round `round` (0-based).
Progress RoundProgress(int round, int rounds, double test_accuracy, int clients);

}  // namespace shardps::worker::internal
