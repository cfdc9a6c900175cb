// An exception in the middle of a step's backward pass (an allocation failing) unwinds Train past
// the gradient and weight buffers that the tables already pushed still point into. Train must
// cancel those requests before the buffers go away, so that the servers' replies, arriving after
// Train has thrown, are dropped rather than written into freed memory.
//
// The worker trains through the real KV client wrapped in a store that stalls the server just
// before the first table is pushed and throws std::bad_alloc when the backward pass hands it the
// third table. The server resumes only after the exception has left Train, then answers the two
// push-pulls that went out. Checked, over the in-process transport and over TCP:
//  * the exception comes out of Train as std::bad_alloc;
//  * the two handles that went out are CANCELLED once Train has thrown, and still are after the
//    server's late replies have been handled (a reply taken instead of dropped completes them);
//  * under AddressSanitizer (this test carries the multirank label, which scripts/sanitize.sh
//    runs) a late reply written into the freed buffers is a heap-use-after-free report. The first
//    table pushed is 16 MiB, so without a sanitizer its freed buffer goes back to the system and a
//    late write into it faults.
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <mutex>
#include <new>
#include <stdexcept>

#include "common/threads_cluster.h"
#include "shardps/worker/model.h"
#include "shardps/worker/trainer.h"

namespace shardps {
namespace testing {
// Test names and failure messages say "inproc" / "tcp".
void PrintTo(TransportKind k, std::ostream* os) { *os << TransportName(k); }
}  // namespace testing
namespace {

using std::chrono::milliseconds;
using testing::JobConfig;
using testing::ThreadsJob;
using testing::TransportKind;

// Every wait is bounded; the generous bound is for slow (sanitized) builds.
constexpr milliseconds kLong(60000);

// Sets a promise once, whoever gets there first (the normal path or the cleanup of a failed one).
class Signal {
 public:
  void Set() { std::call_once(once_, [this] { promise_.set_value(); }); }
  bool WaitFor(milliseconds d) const { return future_.wait_for(d) == std::future_status::ready; }

 private:
  std::once_flag once_;
  std::promise<void> promise_;
  std::shared_future<void> future_ = promise_.get_future().share();
};

// The worker's store: the real one, except that the first push-pull first stalls the server and
// the `fail_at`-th one throws std::bad_alloc, as an allocation failing mid-backward would.
class FailingMidBackward final : public worker::ParamStore {
 public:
  FailingMidBackward(worker::ParamStore& inner, int fail_at, std::function<void()> before_first)
      : inner_(inner), fail_at_(fail_at), before_first_(std::move(before_first)) {}

  worker::Handle Pull(uint32_t table, std::span<float> out, uint64_t version) override {
    return inner_.Pull(table, out, version);
  }
  worker::Handle PushPull(uint32_t table, std::span<const float> grad, std::span<float> out, uint64_t step,
                          worker::KeyRange range) override {
    const int n = ++push_pulls_;
    if (n == fail_at_) throw std::bad_alloc();
    if (n == 1) before_first_();
    worker::Handle h = inner_.PushPull(table, grad, out, step, range);
    issued_.push_back(h);
    issued_tables_.push_back(table);
    return h;
  }
  void Retain(std::shared_ptr<void> keep) override {
    ++retained_;
    inner_.Retain(std::move(keep));
  }

  int push_pulls() const { return push_pulls_; }
  int retained() const { return retained_; }
  const std::vector<worker::Handle>& issued() const { return issued_; }
  const std::vector<uint32_t>& issued_tables() const { return issued_tables_; }

 private:
  worker::ParamStore& inner_;
  const int fail_at_;
  std::function<void()> before_first_;
  int push_pulls_ = 0;
  int retained_ = 0;
  std::vector<worker::Handle> issued_;
  std::vector<uint32_t> issued_tables_;
};

class TrainUnwind : public ::testing::TestWithParam<TransportKind> {};

TEST_P(TrainUnwind, AFailureMidBackwardCancelsThePushesAlreadyIssued) {
  // One hidden layer of 2^20 units over 1 input and 4 classes: tables l0.w (1M floats), l0.b (1M),
  // l1.w (4M: 16 MiB), l1.b (4). The backward pass hands them over as l1.b, l1.w, l0.b, l0.w.
  constexpr int64_t kHidden = 1 << 20;
  constexpr int kClasses = 4;
  auto model_or = worker::Model::Create({.input_dim = 1, .num_classes = kClasses, .hidden = {kHidden}});
  ASSERT_TRUE(model_or.ok()) << model_or.status().ToString();
  const worker::Model& model = **model_or;

  worker::Dataset data;
  data.source = "in-memory samples";
  data.num_samples = 4;
  data.num_features = 1;
  data.num_classes = kClasses;
  data.features = {0.5f, -1.0f, 2.0f, 1.0f};
  data.labels = {0, 1, 2, 3};

  worker::RunOptions run;
  run.epochs = 1;
  run.batch_size = 4;
  run.workers = 1;
  run.worker = 0;
  run.timeout = kLong;
  run.log_every_steps = 1;

  JobConfig cfg;
  cfg.transport = GetParam();
  cfg.world = 2;  // server 0; worker 1
  cfg.servers = 1;
  cfg.tables = worker::TrainingTables(model, run);
  cfg.chunk_floats = 1 << 20;
  cfg.node.client.request_timeout = kLong;
  ThreadsJob job(cfg);

  Signal stall_wanted, stalled, resume;
  std::string exception;                      // what came out of Train
  bool train_returned = false;
  int push_pulls = 0, retained = 0;
  std::vector<uint32_t> issued_tables;
  std::vector<Status> after_throw, after_late_replies;  // each issued handle's wait(0)

  auto st = job.Run([&](int rank, Node& node) -> Status {
    auto* c = node.client();
    if (!c) {  // the server: its communication thread stops until Train has thrown
      if (!stall_wanted.WaitFor(kLong)) return DeadlineExceeded("the worker never asked the server to stall");
      node.endpoint().Post([&] {
        stalled.Set();
        (void)resume.WaitFor(kLong);
      });
      return Status::Ok();
    }
    // Whatever happens below, the server is not left waiting.
    struct Release {
      Signal& a;
      Signal& b;
      ~Release() {
        a.Set();
        b.Set();
      }
    } release{stall_wanted, resume};

    worker::ClientParams real(*c);
    FailingMidBackward store(real, /*fail_at=*/3, [&] {
      stall_wanted.Set();
      if (!stalled.WaitFor(kLong)) throw std::runtime_error("the server never stalled");
    });
    try {
      auto r = worker::Train(model, data, data, store, run);
      train_returned = true;
      if (!r.ok()) return r.status().WithContext("Train returned instead of throwing");
    } catch (const std::bad_alloc&) {
      exception = "std::bad_alloc";
    } catch (const std::exception& e) {
      exception = e.what();
    }
    // Train's buffers are gone now (its stack has unwound).
    push_pulls = store.push_pulls();
    retained = store.retained();
    issued_tables = store.issued_tables();
    for (const auto& h : store.issued()) after_throw.push_back(h.wait(milliseconds(0)));
    resume.Set();
    // The server answers the push-pulls for step 0 first, then these pulls of the weights after
    // step 0, on the same stream: once they are here the late replies have been handled.
    std::vector<float> b1(kClasses), w1(static_cast<size_t>(kHidden) * kClasses);
    SHARDPS_RETURN_IF_ERROR(c->Pull(3, b1, 1).wait(kLong));
    SHARDPS_RETURN_IF_ERROR(c->Pull(2, w1, 1).wait(kLong));
    for (const auto& h : store.issued()) after_late_replies.push_back(h.wait(milliseconds(0)));
    return Status::Ok();
  });
  for (const Status& s : st) EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_FALSE(train_returned);
  EXPECT_EQ(exception, "std::bad_alloc");
  EXPECT_EQ(push_pulls, 3);
  EXPECT_EQ(issued_tables, (std::vector<uint32_t>{3, 2}));  // l1.b, l1.w went out before the failure
  EXPECT_EQ(retained, 0) << "the in-process and TCP transports let go of cancelled buffers";
  ASSERT_EQ(after_throw.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(after_throw[i].code(), StatusCode::kCancelled)
        << "push-pull of table " << issued_tables[i] << " still pending after Train threw: " << after_throw[i].ToString();
  }
  ASSERT_EQ(after_late_replies.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(after_late_replies[i].code(), StatusCode::kCancelled)
        << "the late reply to table " << issued_tables[i] << " was taken: " << after_late_replies[i].ToString();
  }
}

INSTANTIATE_TEST_SUITE_P(Transports, TrainUnwind, ::testing::Values(TransportKind::kInProc, TransportKind::kTcp),
                         [](const auto& info) { return testing::TransportName(info.param); });

}  // namespace
}  // namespace shardps
