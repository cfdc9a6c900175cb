// The smallest shardps program: every worker pushes a gradient of ones for a few steps and pulls
// the weights back. Run with: mpirun -np 3 build/bin/push_pull_example   (1 server, 2 workers)
#include <mpi.h>

#include <cstdio>
#include <vector>

#include "shardps/net/mpi_transport.h"
#include "shardps/node.h"

using namespace shardps;

static Status Run(int rank, int size) {
  SHARDPS_ASSIGN_OR_RETURN(Cluster cluster, Cluster::Create(size, rank, {.num_servers = 1}));
  TableSpec w{.name = "w", .size = 1000};
  w.optimizer.learning_rate = 0.5f;
  SHARDPS_ASSIGN_OR_RETURN(TableLayout layout, TableLayout::Create({w}, cluster.num_servers()));
  SHARDPS_ASSIGN_OR_RETURN(auto transport, CreateMpiTransport(MPI_COMM_WORLD));
  SHARDPS_ASSIGN_OR_RETURN(auto node, Node::Start(std::move(transport), cluster, layout));
  if (auto* client = node->client()) {
    std::vector<float> grad(1000, 1.0f), weights(1000);
    for (uint64_t step = 0; step < 3; ++step) {
      SHARDPS_RETURN_IF_ERROR(client->PushPull(0, grad, weights, step).wait(std::chrono::seconds(30)));
    }
    // 3 steps x (sum over workers of 1.0) x lr 0.5
    std::printf("rank %d: w[0] = %g (expected %g)\n", rank, weights[0], -3 * 0.5 * cluster.num_workers());
  }
  return node->Finish();
}

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided);
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  Status s = Run(rank, size);
  if (!s.ok()) std::fprintf(stderr, "rank %d: %s\n", rank, s.ToString().c_str());
  MPI_Finalize();
  return s.ok() ? 0 : 1;
}
