// A server's finish_timeout bounds the workers' silence, not the length of the job. A 16 s test of
// a deadline alone, in its own binary with the label "timing" (not "multirank"): the normal suite
// runs it; the TCP-only and sanitizer stages, which select unit|multirank, do not run it again
// (it adds no code path of theirs).
#include <gtest/gtest.h>

#include <thread>

#include "common/threads_cluster.h"

namespace shardps {
namespace {

using testing::JobConfig;
using testing::ThreadsJob;
using std::chrono::milliseconds;

std::vector<TableSpec> OneTable() {
  TableSpec t{.name = "w", .size = 300};
  t.optimizer.learning_rate = 0.1f;
  return {t};
}

// finish_timeout bounds the workers' silence, not the job: a job that trains for longer than it,
// with requests all along, finishes; one whose worker goes silent for longer is named.
TEST(Deadlines, FinishTimeoutBoundsSilenceNotTheLengthOfTheJob) {
  for (const bool silent : {false, true}) {
    JobConfig cfg;
    cfg.world = 2;  // server 0; worker 1
    cfg.servers = 1;
    cfg.tables = OneTable();
    cfg.chunk_floats = 128;
    cfg.node.finish_timeout = milliseconds(2000);
    ThreadsJob job(cfg);
    auto st = job.Run([&](int rank, Node& node) -> Status {
      auto* c = node.client();
      if (!c) return Status::Ok();
      std::vector<float> g(300, 1.0f), w(300);
      // 5 s of training, 2.5 times the finish timeout, a request every 50 ms.
      const auto end = std::chrono::steady_clock::now() + milliseconds(5000);
      for (uint64_t step = 0; std::chrono::steady_clock::now() < end; ++step) {
        SHARDPS_RETURN_IF_ERROR(c->PushPull(0, g, w, step).wait(milliseconds(30000)));
        std::this_thread::sleep_for(milliseconds(50));
      }
      // Silent: longer than the finish timeout before saying goodbye.
      if (silent) std::this_thread::sleep_for(milliseconds(4000));
      return Status::Ok();
    });
    if (!silent) {
      for (const Status& s : st) EXPECT_TRUE(s.ok()) << s.ToString();
    } else {
      EXPECT_EQ(st[0].code(), StatusCode::kDeadlineExceeded) << st[0].ToString();
      EXPECT_NE(st[0].message().find("worker ranks [1] did not finish"), std::string::npos) << st[0].ToString();
    }
  }
}

}  // namespace
}  // namespace shardps
