#include "shardps/base/cluster.h"

#include <algorithm>

namespace shardps {

std::string FormatRanks(const std::vector<int>& ranks) {
  std::string s = "[";
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (i) s += ",";
    s += std::to_string(ranks[i]);
  }
  return s + "]";
}

Result<Cluster> Cluster::Create(int world_size, int rank, const ClusterOptions& options) {
  if (world_size < 1) return InvalidArgument("world size must be at least 1, got " + std::to_string(world_size));
  if (rank < 0 || rank >= world_size) {
    return InvalidArgument("rank " + std::to_string(rank) + " outside world of size " + std::to_string(world_size));
  }
  Cluster c;
  c.rank_ = rank;
  c.size_ = world_size;
  c.colocated_ = options.colocated;
  if (options.colocated) {
    for (int r = 0; r < world_size; ++r) {
      c.servers_.push_back(r);
      c.workers_.push_back(r);
    }
  } else {
    if (options.num_servers < 1) {
      return InvalidArgument("--servers must be at least 1, got " + std::to_string(options.num_servers));
    }
    if (options.num_servers >= world_size) {
      return InvalidArgument("--servers " + std::to_string(options.num_servers) + " leaves no worker among " +
                             std::to_string(world_size) + " ranks; start more ranks or use --colocated");
    }
    for (int r = 0; r < world_size; ++r) (r < options.num_servers ? c.servers_ : c.workers_).push_back(r);
  }
  c.server_index_ = c.ServerIndexOf(rank);
  c.worker_index_ = c.WorkerIndexOf(rank);
  return c;
}

int Cluster::WorkerIndexOf(int rank) const {
  auto it = std::find(workers_.begin(), workers_.end(), rank);
  return it == workers_.end() ? -1 : static_cast<int>(it - workers_.begin());
}

int Cluster::ServerIndexOf(int rank) const {
  auto it = std::find(servers_.begin(), servers_.end(), rank);
  return it == servers_.end() ? -1 : static_cast<int>(it - servers_.begin());
}

std::string Cluster::Describe() const {
  return std::to_string(size_) + " ranks: servers " + FormatRanks(servers_) + ", workers " + FormatRanks(workers_) +
         (colocated_ ? " (colocated)" : "");
}

std::string Cluster::Describe(int rank) const {
  const int s = ServerIndexOf(rank), w = WorkerIndexOf(rank);
  std::string roles;
  if (s >= 0) roles = "server " + std::to_string(s);
  if (w >= 0) roles += (roles.empty() ? "" : ", ") + std::string("worker ") + std::to_string(w);
  return "rank " + std::to_string(rank) + (roles.empty() ? "" : " (" + roles + ")");
}

}  // namespace shardps
