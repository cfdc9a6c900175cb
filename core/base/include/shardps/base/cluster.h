// Cluster: which rank is a server, which is a worker. An explicit value, built once at the
// program's edge and passed down (no global lookup), so N ranks can live as threads in one test.
//
//   ClusterOptions o; o.num_servers = 2;           // ranks 0,1 serve; the rest are workers
//   SHARDPS_ASSIGN_OR_RETURN(Cluster c, Cluster::Create(/*world_size=*/4, /*rank=*/3, o));
//   c.is_worker();      // true
//   c.worker_index();   // 1 (0-based index among workers)
//
// Colocated: every rank is both a server of its shard and a worker.
// Thread safety: immutable after construction.
#pragma once

#include <string>
#include <vector>

#include "shardps/base/status.h"

namespace shardps {

struct ClusterOptions {
  int num_servers = 1;     // ignored when colocated
  bool colocated = false;  // every rank serves a shard and works
};

class Cluster {
 public:
  static Result<Cluster> Create(int world_size, int rank, const ClusterOptions& options);

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool colocated() const { return colocated_; }
  int num_servers() const { return static_cast<int>(servers_.size()); }
  int num_workers() const { return static_cast<int>(workers_.size()); }
  bool is_server() const { return server_index_ >= 0; }
  bool is_worker() const { return worker_index_ >= 0; }
  // 0-based index of this rank among servers / workers, -1 if it has no such role.
  int server_index() const { return server_index_; }
  int worker_index() const { return worker_index_; }
  // Global rank of the i-th server / worker.
  int server_rank(int i) const { return servers_.at(i); }
  int worker_rank(int i) const { return workers_.at(i); }
  const std::vector<int>& server_ranks() const { return servers_; }
  const std::vector<int>& worker_ranks() const { return workers_; }
  // Index of global `rank` among workers, -1 if it is not a worker.
  int WorkerIndexOf(int rank) const;
  int ServerIndexOf(int rank) const;
  std::string Describe() const;  // "4 ranks: servers [0,1], workers [2,3]"
  std::string Describe(int rank) const;  // "rank 3 (worker 1)", "rank 0 (server 0)", "rank 1 (server 1, worker 1)"

 private:
  int rank_ = 0;
  int size_ = 0;
  bool colocated_ = false;
  int server_index_ = -1;
  int worker_index_ = -1;
  std::vector<int> servers_;
  std::vector<int> workers_;
};

// "[2,5,7]": used by every error message that names ranks.
std::string FormatRanks(const std::vector<int>& ranks);

}  // namespace shardps
