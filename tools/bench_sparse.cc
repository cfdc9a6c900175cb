// shardps bench --sparse: push+pull rounds of a sparse table, the counterpart of ps-lite's
// benchmark with many keys of one float each.
#include <chrono>
#include <limits>

#include <fstream>
#include <string>

#include "bench.h"
#include "shardps/node.h"
#include "shardps/ps/server.h"

namespace shardps::tools {

Status RunSparsePs(const BenchFlags& f, Result<std::unique_ptr<Transport>> transport, int rank, int size, Rounds* out) {
  ClusterOptions co;
  co.num_servers = f.servers;
  co.colocated = f.colocated;
  SHARDPS_ASSIGN_OR_RETURN(Cluster cluster, Cluster::Create(size, rank, co));
  TableSpec spec{.name = "bench", .row_dim = f.sparse_dim};
  spec.optimizer.kind = f.sparse_optimizer;
  spec.optimizer.learning_rate = 1e-6f;
  SHARDPS_ASSIGN_OR_RETURN(TableLayout layout, TableLayout::Create({spec}, cluster.num_servers()));
  SHARDPS_RETURN_IF_ERROR(transport.status());
  NodeOptions no;
  no.client.request_timeout = std::chrono::milliseconds(f.timeout_ms);
  no.startup_timeout = std::chrono::milliseconds(f.timeout_ms);
  // Declared before the node, so they outlive it (see RunPs).
  std::vector<uint64_t> keys;
  std::vector<float> grad, rows;
  SHARDPS_ASSIGN_OR_RETURN(auto node, Node::Start(std::move(*transport), cluster, layout, no));
  const auto timeout = std::chrono::milliseconds(f.timeout_ms);
  out->Reset(f.rounds);
  if (auto* client = node->client()) {
    const uint64_t n = f.sparse_keys, d = f.sparse_dim;
    keys.resize(n);
    const uint64_t spread = std::numeric_limits<uint64_t>::max() / n;
    for (uint64_t i = 0; i < n; ++i) keys[i] = spread * i;
    grad.assign(n * d, 1.0f);
    rows.assign(n * d, 0.0f);
    SHARDPS_RETURN_IF_ERROR(client->Barrier().wait(timeout));
    if (f.sparse_fill > 0) {
      // New keys every round (key i of round r: spread * i + r), until the servers hold
      // sparse_fill rows; every worker pushes the same keys, so rows = rounds * n.
      const uint64_t rounds = (f.sparse_fill + n - 1) / n;
      for (uint64_t r = 0; r < rounds; ++r) {
        const uint64_t count = std::min(n, f.sparse_fill - r * n);
        std::vector<uint64_t> ks(count);
        for (uint64_t i = 0; i < count; ++i) ks[i] = spread * i + r;
        SHARDPS_RETURN_IF_ERROR(client->SparsePush(0, ks, std::span<const float>(grad).first(count * d), r).wait(timeout));
      }
      SHARDPS_RETURN_IF_ERROR(client->Barrier().wait(timeout));
      keys.clear();
    }
    if (f.sparse_fill == 0) {
      SHARDPS_RETURN_IF_ERROR(TimeRounds(
          f, out, [&](uint64_t step) { return client->SparsePush(0, keys, grad, step).wait(timeout); },
          [&](uint64_t version) { return client->SparsePull(0, keys, rows, version).wait(timeout); }));
    }
    const float expect = ExpectedBenchWeight(f, spec.optimizer.learning_rate, cluster.num_workers());
    for (uint64_t i = 0; f.sparse_fill == 0 && f.sparse_optimizer == "sgd" && i < rows.size(); ++i) {
      if (rows[i] != expect) {
        return DataLoss("bench --sparse: row element " + std::to_string(i) + " is " + std::to_string(rows[i]) +
                        ", expected " + std::to_string(expect));
      }
    }
  }
  Status finished = node->Finish();
  if (ps::Server* server = node->server(); server && cluster.server_index() == 0) {
    const ps::ServerStats st = server->stats();
    out->sparse_rows = st.sparse_rows;
    out->sparse_bytes = st.sparse_bytes;
    std::ifstream status("/proc/self/status");
    for (std::string line; std::getline(status, line);) {
      if (line.rfind("VmRSS:", 0) == 0) out->server_rss_mib = std::stod(line.substr(6)) / 1024.0;  // kB
      if (line.rfind("VmHWM:", 0) == 0) out->server_peak_rss_mib = std::stod(line.substr(6)) / 1024.0;
    }
  }
  return finished;
}

}  // namespace shardps::tools
