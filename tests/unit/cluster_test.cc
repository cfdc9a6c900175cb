// Cluster: role assignment (split and colocated), index lookups, invalid inputs.
#include "shardps/base/cluster.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace shardps {
namespace {

Cluster MustCreate(int world, int rank, int servers, bool colocated = false) {
  ClusterOptions o;
  o.num_servers = servers;
  o.colocated = colocated;
  Result<Cluster> r = Cluster::Create(world, rank, o);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return std::move(r).value();
}

TEST(ClusterTest, SplitServersFirstThenWorkers) {
  // The example from the header: 4 ranks, 2 servers, rank 3.
  const Cluster c = MustCreate(4, 3, 2);
  EXPECT_EQ(c.rank(), 3);
  EXPECT_EQ(c.size(), 4);
  EXPECT_FALSE(c.colocated());
  EXPECT_EQ(c.num_servers(), 2);
  EXPECT_EQ(c.num_workers(), 2);
  EXPECT_EQ(c.server_ranks(), (std::vector<int>{0, 1}));
  EXPECT_EQ(c.worker_ranks(), (std::vector<int>{2, 3}));
  EXPECT_FALSE(c.is_server());
  EXPECT_TRUE(c.is_worker());
  EXPECT_EQ(c.server_index(), -1);
  EXPECT_EQ(c.worker_index(), 1);
  EXPECT_EQ(c.server_rank(0), 0);
  EXPECT_EQ(c.server_rank(1), 1);
  EXPECT_EQ(c.worker_rank(0), 2);
  EXPECT_EQ(c.worker_rank(1), 3);
  EXPECT_EQ(c.Describe(), "4 ranks: servers [0,1], workers [2,3]");
}

TEST(ClusterTest, EveryRankOfASplitWorld) {
  for (int world = 2; world <= 7; ++world) {
    for (int servers = 1; servers < world; ++servers) {
      for (int rank = 0; rank < world; ++rank) {
        SCOPED_TRACE("world " + std::to_string(world) + " servers " + std::to_string(servers) + " rank " +
                     std::to_string(rank));
        const Cluster c = MustCreate(world, rank, servers);
        EXPECT_EQ(c.num_servers(), servers);
        EXPECT_EQ(c.num_workers(), world - servers);
        const bool server = rank < servers;
        EXPECT_EQ(c.is_server(), server);
        EXPECT_EQ(c.is_worker(), !server);  // exactly one role when not colocated
        EXPECT_EQ(c.server_index(), server ? rank : -1);
        EXPECT_EQ(c.worker_index(), server ? -1 : rank - servers);
        if (server) {
          EXPECT_EQ(c.server_rank(c.server_index()), rank);
        } else {
          EXPECT_EQ(c.worker_rank(c.worker_index()), rank);
        }
      }
    }
  }
}

TEST(ClusterTest, IndexOfLookups) {
  const Cluster c = MustCreate(5, 0, 2);  // servers [0,1], workers [2,3,4]
  EXPECT_EQ(c.ServerIndexOf(0), 0);
  EXPECT_EQ(c.ServerIndexOf(1), 1);
  EXPECT_EQ(c.ServerIndexOf(2), -1);
  EXPECT_EQ(c.ServerIndexOf(4), -1);
  EXPECT_EQ(c.WorkerIndexOf(0), -1);
  EXPECT_EQ(c.WorkerIndexOf(1), -1);
  EXPECT_EQ(c.WorkerIndexOf(2), 0);
  EXPECT_EQ(c.WorkerIndexOf(3), 1);
  EXPECT_EQ(c.WorkerIndexOf(4), 2);
  // Ranks outside the world have no role.
  EXPECT_EQ(c.WorkerIndexOf(5), -1);
  EXPECT_EQ(c.WorkerIndexOf(-1), -1);
  EXPECT_EQ(c.ServerIndexOf(5), -1);
  EXPECT_EQ(c.ServerIndexOf(-1), -1);
  // Round trip through the rank accessors.
  for (int i = 0; i < c.num_workers(); ++i) EXPECT_EQ(c.WorkerIndexOf(c.worker_rank(i)), i);
  for (int i = 0; i < c.num_servers(); ++i) EXPECT_EQ(c.ServerIndexOf(c.server_rank(i)), i);
}

TEST(ClusterTest, Colocated) {
  for (int world = 1; world <= 5; ++world) {
    for (int rank = 0; rank < world; ++rank) {
      SCOPED_TRACE("world " + std::to_string(world) + " rank " + std::to_string(rank));
      // num_servers is ignored when colocated, even values that would be invalid otherwise.
      for (int servers : {0, 1, world, 100}) {
        const Cluster c = MustCreate(world, rank, servers, /*colocated=*/true);
        EXPECT_TRUE(c.colocated());
        EXPECT_EQ(c.num_servers(), world);
        EXPECT_EQ(c.num_workers(), world);
        EXPECT_TRUE(c.is_server());
        EXPECT_TRUE(c.is_worker());
        EXPECT_EQ(c.server_index(), rank);
        EXPECT_EQ(c.worker_index(), rank);
        for (int r = 0; r < world; ++r) {
          EXPECT_EQ(c.ServerIndexOf(r), r);
          EXPECT_EQ(c.WorkerIndexOf(r), r);
        }
      }
    }
  }
  EXPECT_EQ(MustCreate(3, 1, 1, true).Describe(), "3 ranks: servers [0,1,2], workers [0,1,2] (colocated)");
}

TEST(ClusterTest, SingleRankColocatedIsValid) {
  const Cluster c = MustCreate(1, 0, 1, true);
  EXPECT_EQ(c.server_ranks(), std::vector<int>{0});
  EXPECT_EQ(c.worker_ranks(), std::vector<int>{0});
}

void ExpectInvalid(int world, int rank, int servers, bool colocated, const std::string& must_mention) {
  ClusterOptions o;
  o.num_servers = servers;
  o.colocated = colocated;
  Result<Cluster> r = Cluster::Create(world, rank, o);
  ASSERT_FALSE(r.ok()) << "world " << world << " rank " << rank << " servers " << servers;
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().ToString();
  EXPECT_NE(r.status().message().find(must_mention), std::string::npos)
      << "message should mention '" << must_mention << "': " << r.status().message();
}

TEST(ClusterTest, ServersMustLeaveAWorker) {
  ExpectInvalid(4, 0, 4, false, "--servers");
  ExpectInvalid(4, 0, 5, false, "--servers");
  ExpectInvalid(1, 0, 1, false, "--servers");
  ExpectInvalid(2, 1, 2, false, "--servers");
  // The message points at the way out.
  ExpectInvalid(4, 0, 4, false, "--colocated");
}

TEST(ClusterTest, ServersMustBeAtLeastOne) {
  ExpectInvalid(4, 0, 0, false, "--servers");
  ExpectInvalid(4, 2, -1, false, "--servers");
  ExpectInvalid(4, 0, 0, false, "0");
}

TEST(ClusterTest, BadRank) {
  ExpectInvalid(4, 4, 1, false, "rank");
  ExpectInvalid(4, -1, 1, false, "rank");
  ExpectInvalid(4, 100, 1, true, "rank");
  ExpectInvalid(4, 4, 1, false, "4");  // names the offending value
}

TEST(ClusterTest, BadWorldSize) {
  ExpectInvalid(0, 0, 1, false, "world size");
  ExpectInvalid(-3, 0, 1, true, "world size");
}

TEST(ClusterTest, FormatRanks) {
  EXPECT_EQ(FormatRanks({}), "[]");
  EXPECT_EQ(FormatRanks({7}), "[7]");
  EXPECT_EQ(FormatRanks({2, 5, 7}), "[2,5,7]");
}

}  // namespace
}  // namespace shardps
