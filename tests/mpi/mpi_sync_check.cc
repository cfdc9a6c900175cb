// Runs under mpirun (see tests/mpi/CMakeLists.txt). Every worker pushes fixed gradients for a
// few steps; each checks the closed-form weights and the first worker prints a digest of them.
//   mpi_sync_check --servers S [--colocated] [--silent-rank R]
// With --silent-rank, worker rank R stops pushing at step 2 and every other worker must fail
// with an error naming it; the program then exits 0 only if that happened.
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "shardps/net/mpi_transport.h"
#include "shardps/node.h"

using namespace shardps;
using std::chrono::milliseconds;

namespace {

float Grad(int w, uint64_t i) { return static_cast<float>((w + 1) * ((i % 7) + 1)) * 0.25f; }

struct Args {
  int servers = 1;
  bool colocated = false;
  int silent_rank = -1;
};

Status Run(const Args& a, int rank, int size, bool* silent_detected) {
  SHARDPS_ASSIGN_OR_RETURN(Cluster cluster, Cluster::Create(size, rank, {.num_servers = a.servers, .colocated = a.colocated}));
  TableSpec t{.name = "w", .size = 100'003};
  t.optimizer.learning_rate = 0.5f;
  SHARDPS_ASSIGN_OR_RETURN(TableLayout layout, TableLayout::Create({t}, cluster.num_servers(), {.chunk_floats = 8192}));
  SHARDPS_ASSIGN_OR_RETURN(auto transport, CreateMpiTransport(MPI_COMM_WORLD));
  NodeOptions o;
  o.client.request_timeout = milliseconds(a.silent_rank >= 0 ? 1500 : 60000);
  SHARDPS_ASSIGN_OR_RETURN(auto node, Node::Start(std::move(transport), cluster, layout, o));
  Status result;
  if (auto* c = node->client()) {
    const int w = cluster.worker_index();
    std::vector<float> g(t.size), weights(t.size);
    for (uint64_t i = 0; i < t.size; ++i) g[i] = Grad(w, i);
    constexpr int kSteps = 4;
    for (uint64_t step = 0; step < kSteps && result.ok(); ++step) {
      if (rank == a.silent_rank && step == 2) break;
      Status s = c->PushPull(0, g, weights, step).wait(milliseconds(60000));
      if (!s.ok() && a.silent_rank >= 0 && step == 2) {
        const std::string want = "missing pushes from worker ranks [" + std::to_string(a.silent_rank) + "]";
        if (s.message().find(want) != std::string::npos) {
          std::printf("rank %d: expected failure: %s\n", rank, s.ToString().c_str());
          *silent_detected = true;
          break;
        }
      }
      result = s;
    }
    if (result.ok() && a.silent_rank < 0) {
      for (uint64_t i = 0; i < t.size; ++i) {
        float sum = 0;
        for (int k = 0; k < cluster.num_workers(); ++k) sum += Grad(k, i);
        if (weights[i] != -kSteps * 0.5f * sum) {
          result = Internal("rank " + std::to_string(rank) + ": w[" + std::to_string(i) + "] = " +
                            std::to_string(weights[i]) + ", closed form " + std::to_string(-kSteps * 0.5f * sum));
          break;
        }
      }
      if (result.ok() && w == 0) {
        uint64_t h = 0xCBF29CE484222325ull;
        const auto* p = reinterpret_cast<const uint8_t*>(weights.data());
        for (size_t i = 0; i < weights.size() * sizeof(float); ++i) h = (h ^ p[i]) * 0x100000001B3ull;
        std::printf("weights digest %016llx\n", static_cast<unsigned long long>(h));
      }
    }
  }
  Status fin = node->Finish();
  return result.ok() ? fin : result;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--servers") && i + 1 < argc) a.servers = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--colocated")) a.colocated = true;
    else if (!std::strcmp(argv[i], "--silent-rank") && i + 1 < argc) a.silent_rank = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr, "mpi_sync_check: unknown argument '%s'\n", argv[i]);
      return 2;
    }
  }
  setenv("OMPI_MCA_btl_vader_single_copy_mechanism", "none", 0);
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided);
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  bool silent_detected = false;
  Status s = Run(a, rank, size, &silent_detected);
  if (!s.ok()) std::fprintf(stderr, "rank %d: %s\n", rank, s.ToString().c_str());
  int ok = s.ok() ? 1 : 0, all_ok = 0;
  MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  int detected = silent_detected ? 1 : 0, total_detected = 0;
  MPI_Allreduce(&detected, &total_detected, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  MPI_Finalize();
  if (a.silent_rank >= 0) {
    // Every worker other than the silent one must have seen the error naming it.
    const int workers = a.colocated ? size : size - a.servers;
    const bool pass = total_detected == workers - 1;
    if (rank == 0) std::printf("%s: %d of %d workers named the silent rank\n", pass ? "PASS" : "FAIL", total_detected, workers - 1);
    return pass ? 0 : 1;
  }
  if (rank == 0 && all_ok) std::printf("PASS\n");
  return all_ok ? 0 : 1;
}
