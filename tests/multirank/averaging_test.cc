// Model averaging through the servers: the result is the sample-weighted mean of the replicas.
#include <gtest/gtest.h>

#include <mutex>

#include "common/threads_cluster.h"
#include "shardps/worker/trainer.h"

namespace shardps {
namespace {

using std::chrono::milliseconds;

TEST(Averaging, SampleWeightedMeanOfFixedReplicas) {
  testing::JobConfig cfg;
  cfg.world = 5;  // servers 0, 1; workers 2, 3, 4
  cfg.servers = 2;
  TableSpec a{.name = "a", .size = 300}, b{.name = "b", .size = 7}, n{.name = "_samples", .size = 1};
  for (TableSpec* t : {&a, &b, &n}) t->optimizer.kind = OptimizerKind::kSum;
  cfg.tables = {a, b, n};
  cfg.chunk_floats = 64;
  const double samples[] = {10, 20, 70};
  testing::ThreadsJob job(cfg);
  std::mutex mu;
  std::vector<std::vector<std::vector<float>>> results(5);
  auto st = job.Run([&](int rank, Node& node) -> Status {
    auto* c = node.client();
    if (!c) return Status::Ok();
    const int w = rank - 2;
    worker::ClientParams params(*c);
    for (uint64_t round = 0; round < 2; ++round) {
      // Replica of worker w: element i of table t is (w + 1) * (i + 1) + t + round.
      std::vector<std::vector<float>> replica = {std::vector<float>(300), std::vector<float>(7)};
      for (size_t t = 0; t < 2; ++t)
        for (size_t i = 0; i < replica[t].size(); ++i) replica[t][i] = static_cast<float>((w + 1) * (i + 1) + t + round);
      SHARDPS_RETURN_IF_ERROR(worker::AverageReplicas(params, replica, 2, samples[w], round, milliseconds(20000)));
      std::lock_guard<std::mutex> lock(mu);
      results[rank] = replica;
    }
    return Status::Ok();
  });
  for (const Status& s : st) ASSERT_TRUE(s.ok()) << testing::JoinStatuses(st);
  for (int rank = 2; rank < 5; ++rank) {
    ASSERT_EQ(results[rank].size(), 2u);
    for (size_t t = 0; t < 2; ++t) {
      for (size_t i = 0; i < results[rank][t].size(); ++i) {
        double num = 0, den = 0;
        for (int w = 0; w < 3; ++w) {
          num += samples[w] * ((w + 1) * (i + 1) + t + 1.0);
          den += samples[w];
        }
        EXPECT_NEAR(results[rank][t][i], num / den, 1e-4 * std::abs(num / den)) << "rank " << rank << " t " << t << " i " << i;
      }
    }
    // Every worker ends with the same replica.
    EXPECT_EQ(results[rank], results[2]);
  }
}

}  // namespace
}  // namespace shardps
