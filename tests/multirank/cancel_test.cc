// Cancellation: once Handle::Cancel returns OK, no transport reads from or writes into the
// request's buffers, whatever the servers do later. Run over the in-process transport and over
// TCP; the suite also runs under AddressSanitizer (scripts/test.sh), where a late write into a
// freed buffer or a late read of one is reported. Without a sanitizer the checks still fail: the
// freed buffers are large enough to be returned to the system (a late access faults), and a
// second buffer kept alive must stay exactly as the test left it.
#include <gtest/gtest.h>

#include <future>
#include <memory>

#include "common/threads_cluster.h"

namespace shardps {
namespace {

using std::chrono::milliseconds;
using testing::JobConfig;
using testing::ThreadsJob;
using testing::TransportKind;

constexpr float kSentinel = 12345.0f;

// Every wait in these tests is bounded; the generous bound is for slow (sanitized) builds.
constexpr milliseconds kLong(60000);

class Cancel : public ::testing::TestWithParam<TransportKind> {};

TableSpec Table(const std::string& name, uint64_t size) {
  TableSpec t{.name = name, .size = size};
  t.optimizer.learning_rate = 1.0f;  // w - 1 * g: exact for the values used here
  return t;
}

// A worker gives up on a push-pull whose step cannot complete (the other worker has not pushed),
// cancels it and frees its buffers. The step then completes and the server answers the cancelled
// request: the reply must be dropped, not written into freed memory or into the kept buffer.
TEST_P(Cancel, ALateReplyIsDroppedNotWrittenIntoTheCancelledBuffers) {
  const uint64_t kBig = 4 << 20;   // 16 MiB per buffer: freed memory goes back to the system
  const uint64_t kSmall = 1000;
  JobConfig cfg;
  cfg.transport = GetParam();
  cfg.world = 3;  // server 0; workers 1, 2
  cfg.servers = 1;
  cfg.tables = {Table("big", kBig), Table("small", kSmall)};
  cfg.chunk_floats = 1 << 20;
  cfg.node.client.request_timeout = kLong;
  ThreadsJob job(cfg);
  std::promise<void> cancelled_promise;
  std::shared_future<void> cancelled = cancelled_promise.get_future().share();
  Status wait_status, cancel_status, wait_after_cancel;
  std::vector<float> kept(kSmall, kSentinel), after(kSmall), big_after(kBig);
  auto st = job.Run([&](int rank, Node& node) -> Status {
    auto* c = node.client();
    if (!c) return Status::Ok();
    if (rank == 2) {  // the late worker: pushes step 0 only once rank 1 has cancelled
      if (cancelled.wait_for(kLong) != std::future_status::ready) return DeadlineExceeded("rank 1 never cancelled");
      std::vector<float> g(kBig, 1.0f), w(kBig), gs(kSmall, 1.0f), ws(kSmall);
      SHARDPS_RETURN_IF_ERROR(c->PushPull(0, g, w, 0).wait(kLong));
      SHARDPS_RETURN_IF_ERROR(c->PushPull(1, gs, ws, 0).wait(kLong));
      return c->PushPull(1, gs, ws, 1).wait(kLong);
    }
    auto g = std::make_unique<float[]>(kBig);
    auto w = std::make_unique<float[]>(kBig);
    std::fill(g.get(), g.get() + kBig, 1.0f);
    std::vector<float> gs(kSmall, 1.0f);
    worker::Handle big = c->PushPull(0, {g.get(), kBig}, {w.get(), kBig}, 0);
    worker::Handle small = c->PushPull(1, gs, kept, 0);
    wait_status = small.wait(milliseconds(200));  // cannot finish: rank 2 has not pushed
    cancel_status = big.Cancel();
    if (cancel_status.ok()) cancel_status = small.Cancel();
    wait_after_cancel = big.wait(milliseconds(0));
    g.reset();
    w.reset();
    std::fill(kept.begin(), kept.end(), kSentinel);
    cancelled_promise.set_value();
    // Step 1 of the small table cannot complete before the server has answered step 0, the
    // cancelled request included, on the same stream: once this is here the late replies have
    // been handled.
    SHARDPS_RETURN_IF_ERROR(c->PushPull(1, gs, after, 1).wait(kLong));
    return c->Pull(0, big_after, 1).wait(kLong);
  });
  for (const Status& s : st) EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(wait_status.code(), StatusCode::kDeadlineExceeded) << wait_status.ToString();
  EXPECT_TRUE(cancel_status.ok()) << cancel_status.ToString();
  EXPECT_EQ(wait_after_cancel.code(), StatusCode::kCancelled) << wait_after_cancel.ToString();
  for (uint64_t i = 0; i < kSmall; ++i) ASSERT_EQ(kept[i], kSentinel) << "kept buffer written at " << i << " after cancel";
  // Both workers' pushes counted in step 0 (rank 1's had gone out before it cancelled), and
  // both in step 1: zeros - 2 - 2.
  for (uint64_t i = 0; i < kSmall; ++i) ASSERT_EQ(after[i], -4.0f) << i;
  for (uint64_t i = 0; i < kBig; i += 4099) ASSERT_EQ(big_after[i], -2.0f) << i;
}

// A worker pushes a payload much larger than the socket buffers to a server whose communication
// thread is stalled, gives up, cancels and frees the gradient. The bytes not yet sent must come
// from the transport's own copy: when the server resumes it receives the whole gradient intact
// (the stream is not broken) and applies it.
TEST_P(Cancel, APartlySentPushIsFinishedFromTheTransportsOwnCopy) {
  const uint64_t kFloats = 16 << 20;  // 64 MiB: far more than a loopback socket buffers
  JobConfig cfg;
  cfg.transport = GetParam();
  cfg.world = 2;  // server 0; worker 1
  cfg.servers = 1;
  cfg.tables = {Table("w", kFloats)};
  cfg.chunk_floats = kFloats;
  cfg.node.client.request_timeout = kLong;
  ThreadsJob job(cfg);
  std::promise<void> started_promise, stalled_promise, resume_promise;
  std::shared_future<void> started = started_promise.get_future().share();
  std::shared_future<void> stalled = stalled_promise.get_future().share();
  std::shared_future<void> resume = resume_promise.get_future().share();
  Status wait_status, cancel_status;
  std::vector<float> after(kFloats);
  auto st = job.Run([&](int rank, Node& node) -> Status {
    auto* c = node.client();
    if (!c) {  // the server: its communication thread stops until the worker has cancelled
      if (started.wait_for(kLong) != std::future_status::ready) return DeadlineExceeded("worker never started");
      node.endpoint().Post([&] {
        stalled_promise.set_value();
        (void)resume.wait_for(kLong);
      });
      return Status::Ok();
    }
    started_promise.set_value();  // past Node::Start: the server has answered its HELLO
    if (stalled.wait_for(kLong) != std::future_status::ready) return DeadlineExceeded("server never stalled");
    auto g = std::make_unique<float[]>(kFloats);
    std::fill(g.get(), g.get() + kFloats, 1.0f);
    worker::Handle push = c->Push(0, {g.get(), kFloats}, 0);
    wait_status = push.wait(milliseconds(300));
    cancel_status = push.Cancel();
    g.reset();  // returned to the system: a late read of it faults
    resume_promise.set_value();
    return c->Pull(0, after, 1).wait(kLong);
  });
  for (const Status& s : st) EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(wait_status.code(), StatusCode::kDeadlineExceeded) << wait_status.ToString();
  EXPECT_TRUE(cancel_status.ok()) << cancel_status.ToString();
  for (uint64_t i = 0; i < kFloats; i += 1021) ASSERT_EQ(after[i], -1.0f) << i;
  EXPECT_EQ(after[kFloats - 1], -1.0f);
}

// Cancelling a finished operation changes nothing; cancelling twice is harmless.
TEST_P(Cancel, ACompletedOperationStaysAsItWas) {
  JobConfig cfg;
  cfg.transport = GetParam();
  cfg.world = 2;
  cfg.servers = 1;
  cfg.tables = {Table("w", 100)};
  ThreadsJob job(cfg);
  Status first, second, waited;
  std::vector<float> w(100);
  auto st = job.Run([&](int rank, Node& node) -> Status {
    auto* c = node.client();
    if (!c) return Status::Ok();
    std::vector<float> g(100, 1.0f);
    worker::Handle h = c->PushPull(0, g, w, 0);
    SHARDPS_RETURN_IF_ERROR(h.wait(kLong));
    first = h.Cancel();
    second = h.Cancel();
    waited = h.wait(milliseconds(0));
    return Status::Ok();
  });
  for (const Status& s : st) EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_TRUE(first.ok()) << first.ToString();
  EXPECT_TRUE(second.ok()) << second.ToString();
  EXPECT_TRUE(waited.ok()) << waited.ToString();
  EXPECT_EQ(w[0], -1.0f);
}

INSTANTIATE_TEST_SUITE_P(Transports, Cancel, ::testing::Values(TransportKind::kInProc, TransportKind::kTcp),
                         [](const auto& info) { return testing::TransportName(info.param); });

}  // namespace
}  // namespace shardps
