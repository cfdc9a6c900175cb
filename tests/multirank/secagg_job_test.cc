// Secure aggregation over a job's transport (SECAGG requests, ps/src/server_secagg.cc): worker
// ranks host clients and relay their bundles to server rank 0's aggregator, over the in-process
// transport and over TCP; a worker that never sends its phase is named by the others once their
// requests' deadline passes; a malformed bundle is refused and the server goes on serving.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "common/threads_cluster.h"
#include "shardps/base/random.h"
#include "shardps/secagg/fixed_point.h"
#include "shardps/secagg/host.h"
#include "shardps/secagg/random_source.h"

namespace shardps {
namespace {

using std::chrono::milliseconds;
using testing::JobConfig;
using testing::ThreadsJob;
using testing::TransportKind;

std::vector<TableSpec> OneTable() { return {TableSpec{.name = "w", .size = 8}}; }

secagg::RoundConfig Config(uint64_t round, int clients, uint32_t t, uint64_t length) {
  secagg::RoundConfig c{.round_id = round, .threshold = t, .participants = {}, .vector_length = length, .ring_bits = 24};
  for (int i = 1; i <= clients; ++i) c.participants.push_back(static_cast<secagg::ClientId>(i));
  return c;
}

std::vector<uint64_t> Input(secagg::ClientId id, uint64_t length) {
  std::vector<uint64_t> x(length);
  for (uint64_t i = 0; i < length; ++i) x[i] = SplitMix64(id * 1000003 + i) & secagg::RingMask(24);
  return x;
}

// This worker's clients of a round: ids id with (id - 1) mod workers == worker.
Result<secagg::OutcomeMessage> RunWorker(worker::KVClient& c, const secagg::RoundConfig& config, int worker, int workers,
                                         const std::set<secagg::ClientId>& drop_after_sharing) {
  std::vector<secagg::HostedClient> mine;
  for (secagg::ClientId id : config.participants) {
    if (static_cast<int>((id - 1) % static_cast<secagg::ClientId>(workers)) != worker) continue;
    mine.push_back({.id = id,
                    .input = Input(id, config.vector_length),
                    .drop_before = drop_after_sharing.count(id) ? secagg::Phase::kMaskedInputCollection : secagg::Phase::kDone});
  }
  secagg::SystemRandomSource rng;
  return secagg::RunHostedRound(config, mine, rng, [&](secagg::Phase phase, std::vector<uint8_t> bundle) -> Result<std::vector<uint8_t>> {
    std::vector<uint8_t> reply;
    SHARDPS_RETURN_IF_ERROR(c.SecAgg(config.round_id, static_cast<uint32_t>(phase), bundle, &reply).wait(milliseconds(30000)));
    return reply;
  });
}

class SecAggJob : public ::testing::TestWithParam<TransportKind> {};

TEST_P(SecAggJob, WorkersRelayTheirClientsAndLearnTheSurvivorsExactSum) {
  JobConfig cfg;
  cfg.transport = GetParam();
  cfg.world = 5;  // servers 0, 1 (the aggregator is server index 0); workers 2, 3, 4
  cfg.servers = 2;
  cfg.tables = OneTable();
  ThreadsJob job(cfg);
  const uint64_t length = 5000;
  const std::set<secagg::ClientId> dropped{2, 6};  // after sharing keys; t = 6 of 9 still holds
  std::map<int, secagg::OutcomeMessage> outcomes;
  std::mutex mu;
  auto st = job.Run([&](int rank, Node& node) -> Status {
    auto* c = node.client();
    if (!c) return Status::Ok();
    for (uint64_t round = 1; round <= 2; ++round) {
      SHARDPS_ASSIGN_OR_RETURN(secagg::OutcomeMessage o,
                               RunWorker(*c, Config(round, 9, 6, length), rank - 2, 3, round == 2 ? dropped : std::set<secagg::ClientId>{}));
      std::lock_guard lock(mu);
      if (round == 2) outcomes[rank] = std::move(o);
    }
    return Status::Ok();
  });
  for (const Status& s : st) EXPECT_TRUE(s.ok()) << s.ToString();
  std::vector<uint64_t> expected(length, 0);
  for (secagg::ClientId id = 1; id <= 9; ++id) {
    if (dropped.count(id)) continue;
    const auto x = Input(id, length);
    for (uint64_t i = 0; i < length; ++i) expected[i] = (expected[i] + x[i]) & secagg::RingMask(24);
  }
  ASSERT_EQ(outcomes.size(), 3u);
  for (const auto& [rank, o] : outcomes) {
    EXPECT_FALSE(o.aborted) << o.reason;
    EXPECT_EQ(o.survivors, (std::vector<secagg::ClientId>{1, 3, 4, 5, 7, 8, 9})) << "rank " << rank;
    EXPECT_EQ(o.sum, expected) << "rank " << rank;
  }
}

INSTANTIATE_TEST_SUITE_P(Transports, SecAggJob, ::testing::Values(TransportKind::kInProc, TransportKind::kTcp),
                         [](const auto& info) { return testing::TransportName(info.param); });

TEST(SecAggJobDeadlines, AWorkerThatNeverSendsItsPhaseIsNamedAndTheRoundAbandoned) {
  JobConfig cfg;
  cfg.world = 4;  // server 0; workers 1, 2, 3
  cfg.servers = 1;
  cfg.tables = OneTable();
  cfg.node.client.request_timeout = milliseconds(500);
  ThreadsJob job(cfg);
  std::vector<Status> results(4);
  auto st = job.Run([&](int rank, Node& node) -> Status {
    auto* c = node.client();
    if (!c || rank == 3) return Status::Ok();  // worker rank 3 never takes part
    results[rank] = RunWorker(*c, Config(1, 6, 4, 100), rank - 1, 3, {}).status();
    return Status::Ok();
  });
  for (const Status& s : st) EXPECT_TRUE(s.ok()) << s.ToString();
  for (int rank : {1, 2}) {
    const Status& s = results[rank];
    EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.ToString();
    EXPECT_NE(s.message().find("worker ranks [3] never sent their bundle"), std::string::npos) << s.ToString();
    EXPECT_NE(s.message().find("phase AdvertiseKeys"), std::string::npos) << s.ToString();
  }
}

TEST(SecAggJobRefusals, AMalformedBundleIsRefusedAndTheNextRoundStillWorks) {
  JobConfig cfg;
  cfg.world = 2;  // server 0, worker 1
  cfg.servers = 1;
  cfg.tables = OneTable();
  ThreadsJob job(cfg);
  Status garbage, ok;
  secagg::OutcomeMessage outcome;
  auto st = job.Run([&](int rank, Node& node) -> Status {
    auto* c = node.client();
    if (!c) return Status::Ok();
    std::vector<uint8_t> junk{'S', 'P', 'S', 'B', 0xff, 0xff, 0, 0}, reply;
    garbage = c->SecAgg(1, 0, junk, &reply).wait(milliseconds(30000));
    // Phase 2 of a round nobody opened.
    std::vector<uint8_t> empty{'S', 'P', 'S', 'B', 0, 0, 0, 0};
    ok = c->SecAgg(1, 2, empty, &reply).wait(milliseconds(30000));
    auto o = RunWorker(*c, Config(2, 3, 2, 50), 0, 1, {});
    SHARDPS_RETURN_IF_ERROR(o.status());
    outcome = std::move(o).value();
    return Status::Ok();
  });
  for (const Status& s : st) EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(garbage.code(), StatusCode::kDataLoss) << garbage.ToString();
  EXPECT_NE(garbage.message().find("secagg bundle"), std::string::npos) << garbage.ToString();
  EXPECT_EQ(ok.code(), StatusCode::kFailedPrecondition) << ok.ToString();
  EXPECT_NE(ok.message().find("no round is open"), std::string::npos) << ok.ToString();
  EXPECT_FALSE(outcome.aborted);
  std::vector<uint64_t> expected(50, 0);
  for (secagg::ClientId id = 1; id <= 3; ++id) {
    const auto x = Input(id, 50);
    for (size_t i = 0; i < 50; ++i) expected[i] = (expected[i] + x[i]) & secagg::RingMask(24);
  }
  EXPECT_EQ(outcome.sum, expected);
}

}  // namespace
}  // namespace shardps
