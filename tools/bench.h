// shardps bench's flags and per-round times, shared by its dense (bench.cc) and sparse
// (bench_sparse.cc) rounds.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "shardps/base/status.h"
#include "shardps/net/transport.h"

namespace shardps::tools {

struct BenchFlags {
  uint64_t floats = 1'000'000;
  int servers = 1;
  bool colocated = false;
  int rounds = 100;
  int warmup = 5;
  uint64_t chunk_floats = 256 * 1024;
  int64_t timeout_ms = 60000;
  bool allreduce = true;
  std::string json_out;
  // --sparse K: a sparse table instead, each round a push and a pull of K keys of sparse_dim floats.
  uint64_t sparse_keys = 0;
  uint32_t sparse_dim = 1;
  // --sparse-fill R: instead of timing repeated rounds, push rounds of sparse_keys new keys until
  // the servers hold R rows, with sparse_optimizer, and report the servers' memory.
  uint64_t sparse_fill = 0;
  std::string sparse_optimizer = "sgd";
  // --codec: how the dense rounds' pushes and pull replies travel (a registered codec).
  std::string codec = "identity";

  // The flags every process of a TCP job must share, as the configuration text of the job
  // agreement (json_out is each process's own; allreduce plays no part over TCP). A flag added
  // above that the processes must agree on is added here too.
  std::string Describe() const {
    return "floats " + std::to_string(floats) + " servers " + std::to_string(servers) + " colocated " +
           std::to_string(colocated) + " rounds " + std::to_string(rounds) + " warmup " + std::to_string(warmup) +
           " chunk_floats " + std::to_string(chunk_floats) + " timeout_ms " + std::to_string(timeout_ms) +
           " sparse_keys " + std::to_string(sparse_keys) + " sparse_dim " + std::to_string(sparse_dim) + " codec " + codec;
  }
};

struct Rounds {
  // --sparse on the first server: its resident memory (VmRSS) at the end, the rows it holds and
  // the bytes it counts for them (-1 / 0 elsewhere).
  double server_rss_mib = -1, server_peak_rss_mib = -1;
  uint64_t sparse_rows = 0, sparse_bytes = 0;
  std::vector<double> round, push, pull;
  // A worker's payload bytes each way over all its rounds (warm-up included), and the float32
  // bytes they stand for (WireCounters).
  double push_bytes = 0, pull_bytes = 0, push_float32_bytes = 0, pull_float32_bytes = 0;
  // Every rank holds `rounds` entries of each (zeros where it times nothing: the max over ranks).
  void Reset(int rounds) {
    round.assign(rounds, 0.0);
    push.assign(rounds, 0.0);
    pull.assign(rounds, 0.0);
  }
};

// Runs f.warmup + f.rounds rounds, each `push(step)` then `pull(step + 1)`, each waited for, and
// records the times of the last f.rounds in `out` (whose vectors hold f.rounds entries).
Status TimeRounds(const BenchFlags& f, Rounds* out, const std::function<Status(uint64_t step)>& push,
                  const std::function<Status(uint64_t version)>& pull);

// What every weight holds after f.warmup + f.rounds rounds of SGD at rate `lr` on the sum of
// `workers` gradients of ones, in the servers' float arithmetic: the bench checks every weight
// against it, so a fast but wrong data path cannot pass as a benchmark result.
float ExpectedBenchWeight(const BenchFlags& f, float lr, int workers);

// The rounds of a sparse table (--sparse): every worker pushes a gradient of ones for the same
// f.sparse_keys keys (spread over the uint64 range, as ps-lite's benchmark spreads them), waits,
// then pulls their rows after that step; the rows are checked at the end.
Status RunSparsePs(const BenchFlags& f, Result<std::unique_ptr<Transport>> transport, int rank, int size, Rounds* out);

}  // namespace shardps::tools
