// Ranks as threads over the in-process transport with the "ssp" and "asp" consistency policies.
// Every worker pushes a gradient of -1 on every key with SGD at learning rate 1 from zero weights,
// so a weight's value tells how many pushes went into it: under ssp every applied step adds the
// number of workers, so each reply says which version it holds and the SSP invariant (a worker at
// clock c never reads weights older than c - s) is checked on every reply. A straggler is made by
// holding one worker back until the others have run s steps ahead (no timing: it waits for them),
// so the test also sees the fast workers answered while the straggler has pushed nothing.
#include <gtest/gtest.h>

#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>

#include "common/threads_cluster.h"

namespace shardps {
namespace {

using testing::JobConfig;
using testing::JoinStatuses;
using testing::ThreadsJob;
using std::chrono::milliseconds;

constexpr auto kWait = milliseconds(30000);
constexpr uint64_t kSize = 256;  // 4 chunks of 64

// Counts how many workers reached a clock; waits bounded by a deadline.
class Clocks {
 public:
  void Reached() {
    {
      std::lock_guard<std::mutex> l(mu_);
      ++n_;
    }
    cv_.notify_all();
  }
  bool WaitFor(int n, milliseconds timeout) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, timeout, [&] { return n_ >= n; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int n_ = 0;
};

// The job every test here runs: one server (rank 0) and `workers` workers, one table "w" of kSize
// weights in chunks of 64, SGD at learning rate 1 from zero, under the consistency policy
// `consistency`.
class OneServerJob : public ::testing::Test {
 protected:
  static constexpr int kServers = 1;

  static JobConfig Config(int workers, const std::string& consistency) {
    TableSpec t{.name = "w", .size = kSize};
    t.optimizer.kind = OptimizerKind::kSgd;
    t.optimizer.learning_rate = 1.0f;
    t.init.kind = InitKind::kConstant;
    t.init.value = 0.0f;
    JobConfig cfg;
    cfg.world = kServers + workers;
    cfg.servers = kServers;
    cfg.tables = {t};
    cfg.chunk_floats = 64;
    cfg.node.server.consistency = consistency;
    return cfg;
  }

  // Runs the job, `worker` on each worker rank with its client (the server only serves); success
  // when every rank ended OK, else every rank's status.
  static ::testing::AssertionResult RunWorkers(const JobConfig& cfg,
                                               const std::function<Status(int rank, worker::KVClient& c)>& worker) {
    ThreadsJob job(cfg);
    auto st = job.Run([&](int rank, Node& node) -> Status {
      auto* c = node.client();
      if (!c) return Status::Ok();
      return worker(rank, *c);
    });
    for (const Status& x : st) {
      if (!x.ok()) return ::testing::AssertionFailure() << JoinStatuses(st);
    }
    return ::testing::AssertionSuccess();
  }
};

class Staleness : public OneServerJob, public ::testing::WithParamInterface<int> {};
class StalenessDeadline : public OneServerJob {};
class Asynchronous : public OneServerJob {};

TEST_P(Staleness, NoReplyIsOlderThanTheReadersClockMinusS) {
  const int s = GetParam();
  constexpr int kWorkers = 3, kSteps = 12;
  JobConfig cfg = Config(kWorkers, "ssp");
  cfg.node.server.staleness = s;
  Clocks ahead;  // fast workers that have completed s steps
  std::mutex mu;
  std::vector<std::string> violations;
  std::vector<uint64_t> lag_seen(cfg.world, 0);
  ASSERT_TRUE(RunWorkers(cfg, [&](int rank, worker::KVClient& c) -> Status {
    const int w = rank - kServers;
    const bool straggler = w == kWorkers - 1;
    // The straggler starts only once the others have run s steps ahead of it.
    if (straggler && !ahead.WaitFor(kWorkers - 1, kWait)) {
      return DeadlineExceeded("the fast workers never got " + std::to_string(s) + " steps ahead");
    }
    std::vector<float> g(kSize, -1.0f), out(kSize);
    for (uint64_t step = 0; step < kSteps; ++step) {
      SHARDPS_RETURN_IF_ERROR(c.PushPull(0, g, out, step).wait(kWait).WithContext("step " + std::to_string(step)));
      const uint64_t clock = step + 1;  // the reader's clock after this round trip
      for (uint64_t i = 0; i < kSize; i += 64) {
        const uint64_t version = static_cast<uint64_t>(out[i]) / kWorkers;
        std::lock_guard<std::mutex> l(mu);
        if (out[i] != static_cast<float>(version * kWorkers)) {
          violations.push_back("rank " + std::to_string(rank) + " read " + std::to_string(out[i]) + ", not a whole step");
        }
        if (version + s < clock || version > clock) {
          violations.push_back("rank " + std::to_string(rank) + " at clock " + std::to_string(clock) + " read version " +
                               std::to_string(version) + " of key " + std::to_string(i) + " (staleness " +
                               std::to_string(s) + ")");
        }
        lag_seen[rank] = std::max(lag_seen[rank], clock - version);
        // Before the straggler pushed anything, the fast workers' s-th reply holds version 0.
        if (!straggler && clock == static_cast<uint64_t>(s) && version != 0) {
          violations.push_back("rank " + std::to_string(rank) + " read version " + std::to_string(version) +
                               " at clock " + std::to_string(s) + " although the straggler had not pushed yet");
        }
      }
      if (!straggler && clock == static_cast<uint64_t>(s)) ahead.Reached();
    }
    // Every step applied: the final weights are the same for every worker.
    SHARDPS_RETURN_IF_ERROR(c.Pull(0, out, kSteps + s).wait(kWait));
    for (uint64_t i = 0; i < kSize; ++i) {
      if (out[i] != static_cast<float>(kSteps * kWorkers)) {
        return Internal("rank " + std::to_string(rank) + " final w[" + std::to_string(i) + "] = " + std::to_string(out[i]));
      }
    }
    return Status::Ok();
  }));
  for (const std::string& v : violations) ADD_FAILURE() << v;
  for (int r = kServers; r < kServers + kWorkers - 1; ++r) {
    EXPECT_EQ(lag_seen[r], static_cast<uint64_t>(s)) << "fast rank " << r << " never read s steps behind";
  }
}

INSTANTIATE_TEST_SUITE_P(Ssp, Staleness, ::testing::Values(1, 2, 4));

TEST_F(StalenessDeadline, AReadPastTheBoundWaitsUntilItsDeadlineAndNamesTheStraggler) {
  constexpr int kWorkers = 2;
  JobConfig cfg = Config(kWorkers, "ssp");
  cfg.node.server.staleness = 1;
  cfg.node.server.max_hold = milliseconds(300);
  Clocks refused;
  Status seen = Status::Ok();
  ASSERT_TRUE(RunWorkers(cfg, [&](int rank, worker::KVClient& c) -> Status {
    std::vector<float> g(kSize, -1.0f), out(kSize);
    if (rank == kServers + 1) {  // the straggler: pushes nothing until the other worker was refused
      if (!refused.WaitFor(1, kWait)) return DeadlineExceeded("the fast worker was never refused");
      return Status::Ok();
    }
    SHARDPS_RETURN_IF_ERROR(c.PushPull(0, g, out, 0).wait(kWait));  // within s = 1: answered
    seen = c.PushPull(0, g, out, 1).wait(kWait);  // needs step 0 of the straggler
    refused.Reached();
    return Status::Ok();
  }));
  EXPECT_EQ(seen.code(), StatusCode::kDeadlineExceeded) << seen.ToString();
  EXPECT_NE(seen.message().find("worker ranks [2]"), std::string::npos) << seen.ToString();
  EXPECT_NE(seen.message().find("staleness 1"), std::string::npos) << seen.ToString();
}

TEST_F(Asynchronous, EveryPushIsOneUpdateAndTheFinalPullSeesThemAll) {
  constexpr int kWorkers = 3, kSteps = 10;
  ASSERT_TRUE(RunWorkers(Config(kWorkers, "asp"), [&](int rank, worker::KVClient& c) -> Status {
    std::vector<float> g(kSize, -1.0f), out(kSize);
    for (uint64_t step = 0; step < kSteps; ++step) {
      SHARDPS_RETURN_IF_ERROR(c.PushPull(0, g, out, step).wait(kWait));
      // At least this worker's own step + 1 updates, at most every worker's.
      for (uint64_t i = 0; i < kSize; ++i) {
        if (out[i] < static_cast<float>(step + 1) || out[i] > static_cast<float>(kWorkers * (step + 1) + kWorkers * kSteps)) {
          return Internal("rank " + std::to_string(rank) + " read " + std::to_string(out[i]) + " after step " +
                          std::to_string(step));
        }
      }
    }
    SHARDPS_RETURN_IF_ERROR(c.Pull(0, out, kSteps * kWorkers).wait(kWait));
    for (uint64_t i = 0; i < kSize; ++i) {
      if (out[i] != static_cast<float>(kSteps * kWorkers)) {
        return Internal("rank " + std::to_string(rank) + " final w[" + std::to_string(i) + "] = " + std::to_string(out[i]));
      }
    }
    return Status::Ok();
  }));
}

}  // namespace
}  // namespace shardps
