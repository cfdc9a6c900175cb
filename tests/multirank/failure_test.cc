// Deadlines: a worker that stops pushing, or a server that never answers, makes every waiting
// rank fail with an error that names the step and the missing ranks; a transport whose Poll keeps
// failing ends the job on its rank with that error.
#include <gtest/gtest.h>

#include <atomic>
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

TEST(Deadlines, WorkerThatNeverPushesIsNamedByTheOthers) {
  JobConfig cfg;
  cfg.world = 4;  // server 0; workers 1, 2, 3
  cfg.servers = 1;
  cfg.tables = OneTable();
  cfg.chunk_floats = 128;
  cfg.node.client.request_timeout = milliseconds(500);
  ThreadsJob job(cfg);
  std::vector<Status> step2(4);
  auto st = job.Run([&](int rank, Node& node) -> Status {
    auto* c = node.client();
    if (!c) return Status::Ok();
    std::vector<float> g(300, 1.0f), w(300);
    for (uint64_t step = 0; step < 3; ++step) {
      if (rank == 3 && step == 2) return Status::Ok();  // worker rank 3 goes silent at step 2
      Status s = c->PushPull(0, g, w, step).wait(milliseconds(30000));
      if (step == 2) step2[rank] = s;
      else SHARDPS_RETURN_IF_ERROR(s);
    }
    return Status::Ok();
  });
  for (const Status& s : st) EXPECT_TRUE(s.ok()) << s.ToString();
  for (int rank : {1, 2}) {
    const Status& s = step2[rank];
    EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.ToString();
    EXPECT_NE(s.message().find("missing pushes from worker ranks [3]"), std::string::npos) << s.ToString();
    EXPECT_NE(s.message().find("step 2"), std::string::npos) << s.ToString();
  }
}

TEST(Deadlines, LocalWaitNamesServersThatHaveNotAnswered) {
  JobConfig cfg;
  cfg.world = 4;  // servers 0, 1; workers 2, 3
  cfg.servers = 2;
  cfg.tables = OneTable();
  cfg.chunk_floats = 100;  // 3 chunks over 2 servers
  cfg.node.client.request_timeout = milliseconds(3000);
  ThreadsJob job(cfg);
  Status short_wait, long_wait;
  auto st = job.Run([&](int rank, Node& node) -> Status {
    auto* c = node.client();
    if (!c || rank == 3) return Status::Ok();  // worker 3 never pushes
    std::vector<float> g(300, 1.0f), w(300);
    SHARDPS_RETURN_IF_ERROR(c->Push(0, g, 0).wait(milliseconds(30000)));
    worker::Handle pull = c->Pull(0, w, 1);
    short_wait = pull.wait(milliseconds(50));   // before the servers give up
    long_wait = pull.wait(milliseconds(30000));  // the servers' own verdict
    return Status::Ok();
  });
  for (const Status& s : st) EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(short_wait.code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(short_wait.message().find("from server ranks [0,1]"), std::string::npos) << short_wait.ToString();
  EXPECT_EQ(long_wait.code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(long_wait.message().find("worker ranks [3]"), std::string::npos) << long_wait.ToString();
}

TEST(Deadlines, ServerThatNeverAnswersFailsStartup) {
  InProcHub hub(2);
  auto silent = hub.Connect(0);  // rank 0 is a "server" process that is stopped: it never polls
  auto cluster = Cluster::Create(2, 1, {.num_servers = 1});
  ASSERT_TRUE(cluster.ok());
  auto layout = TableLayout::Create(OneTable(), 1);
  ASSERT_TRUE(layout.ok());
  NodeOptions o;
  o.startup_timeout = milliseconds(200);
  auto node = Node::Start(hub.Connect(1), *cluster, *layout, o);
  ASSERT_FALSE(node.ok());
  EXPECT_EQ(node.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(node.status().message().find("server ranks [0]"), std::string::npos) << node.status().ToString();
}

// A real transport whose Poll fails from the moment it is armed (a broken device, a dead MPI
// library): everything else goes to the real one.
class FailingPoll final : public ForwardingTransport {
 public:
  explicit FailingPoll(std::unique_ptr<Transport> inner) : ForwardingTransport(std::move(inner)) {}
  void Arm() { armed_ = true; }
  Status Poll(std::vector<IncomingFrame>* frames, Clock::time_point deadline) override {
    if (armed_) return Internal("injected: the device is gone");
    return ForwardingTransport::Poll(frames, deadline);
  }

 private:
  std::atomic<bool> armed_{false};
};

TEST(TransportFailure, APollThatKeepsFailingEndsTheJobOnThatRankWithItsError) {
  JobConfig cfg;
  cfg.world = 2;  // server 0; worker 1
  cfg.servers = 1;
  cfg.tables = OneTable();
  cfg.chunk_floats = 128;
  cfg.node.endpoint.poll_failure_limit = milliseconds(200);
  cfg.node.finish_timeout = milliseconds(2000);  // the server waits for a worker that cannot say goodbye
  std::atomic<int> transport_warnings{0};
  cfg.node.endpoint.on_warning = [&](const std::string& m) {
    if (m.find("injected") != std::string::npos) ++transport_warnings;
  };
  FailingPoll* worker_transport = nullptr;
  cfg.wrap_transport = [&](int rank, std::unique_ptr<Transport> t) -> std::unique_ptr<Transport> {
    if (rank != 1) return t;
    auto f = std::make_unique<FailingPoll>(std::move(t));
    worker_transport = f.get();
    return f;
  };
  ThreadsJob job(cfg);
  Status first, lost, second;
  job.Run([&](int rank, Node& node) -> Status {
    auto* c = node.client();
    if (!c) return Status::Ok();
    std::vector<float> g(300, 1.0f), w(300);
    first = c->PushPull(0, g, w, 0).wait(milliseconds(30000));
    worker_transport->Arm();
    // The endpoint gives up on its transport once the failure persisted (a bounded wait).
    for (int i = 0; i < 3000 && node.endpoint().lost().ok(); ++i) std::this_thread::sleep_for(milliseconds(10));
    lost = node.endpoint().lost();
    // Then every operation fails at once with that error instead of waiting for its deadline.
    second = c->PushPull(0, g, w, 1).wait(milliseconds(60000));
    return Status::Ok();
  });
  ASSERT_TRUE(first.ok()) << first.ToString();
  EXPECT_EQ(lost.code(), StatusCode::kUnavailable) << lost.ToString();
  EXPECT_EQ(second.code(), StatusCode::kUnavailable) << second.ToString();
  EXPECT_NE(second.message().find("kept failing"), std::string::npos) << second.ToString();
  EXPECT_NE(second.message().find("injected: the device is gone"), std::string::npos) << second.ToString();
  // Warned when it started and when it ended the job, not on every turn of the loop.
  EXPECT_GE(transport_warnings.load(), 1);
  EXPECT_LE(transport_warnings.load(), 3);
}

}  // namespace
}  // namespace shardps
