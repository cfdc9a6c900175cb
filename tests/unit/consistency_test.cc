// The consistency-policy interface, driven through the bulk synchronous policy ("bsp"), the
// bounded-staleness one ("ssp") and the asynchronous one ("asp") with a host that keeps payloads
// in memory and completes receives and sends when the test says so (as a transport does, later on
// the communication thread). The server's own tests (multirank) run the policies behind real
// transports.
#include <gtest/gtest.h>

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "shardps/base/optimizer.h"
#include "shardps/ps/consistency.h"
#include "shardps/ps/server_options.h"

namespace shardps::ps {
namespace {

constexpr int kWorkerRankBase = 10;  // worker w is rank 10 + w in the texts

// The server's side of the interface, in memory.
class TestHost final : public PolicyHost {
 public:
  struct Reply {
    uint64_t request_id = 0;
    bool ok = false;
    Status error;
    uint64_t version = 0;         // pull replies
    std::vector<float> weights;   // pull replies: the weights as they were when sent
  };

  explicit TestHost(size_t accumulators = 4, size_t scratch = 2) : accum_cap_(accumulators), scratch_cap_(scratch) {}

  void Refuse(HeldRequest& r, const Status& why) override { replies.push_back({r.h().request_id(), false, why}); }
  void Acknowledge(const HeldRequest& r) override { replies.push_back({r.h().request_id(), true, Status::Ok()}); }
  void SendWeights(Chunk& c, const HeldRequest& r) override {
    const uint64_t off = r.h().key_begin() - c.info.begin;
    Reply reply{r.h().request_id(), true, Status::Ok(), c.version};
    reply.weights.assign(c.weights.begin() + static_cast<int64_t>(off),
                         c.weights.begin() + static_cast<int64_t>(off + r.keys()));
    replies.push_back(std::move(reply));
    ++c.inflight_sends;
    sends.push_back(&c);
  }
  Status ReceivePayload(const HeldPtr& push, std::span<float> dest, std::function<void(Status)> done) override {
    const std::vector<float>& p = payloads.at(push->h().request_id());
    if (p.size() != dest.size()) return InvalidArgument("test payload has the wrong size");
    receives.push_back([p, dest, done = std::move(done)] {
      std::copy(p.begin(), p.end(), dest.begin());
      done(Status::Ok());
    });
    return Status::Ok();
  }
  void ApplyUpdate(Chunk& c, std::span<const float> g) override {
    ASSERT_EQ(c.inflight_sends, 0) << "update while a pull reply reads the weights";
    ApplyOptimizer(c.spec->optimizer, c.version + 1, c.weights, c.slots, g);
    ++c.version;
    ++updates;
  }
  float* AcquireAccumulator(ChunkSync* w) override { return Acquire(accum_, accum_cap_, accum_waiters_, w); }
  void ReleaseAccumulator(float* b) override { Release(accum_, accum_waiters_, b); }
  float* AcquireScratch(ChunkSync* w) override { return Acquire(scratch_, scratch_cap_, scratch_waiters_, w); }
  void ReleaseScratch(float* b) override { Release(scratch_, scratch_waiters_, b); }
  void WakeAt(Clock::time_point d) override { wake = std::min(wake, d); }
  std::string Describe(const Chunk& c) const override {
    return "chunk " + std::to_string(c.info.index) + " at step " + std::to_string(c.version);
  }
  std::string Self() const override { return "test server"; }
  int WorkerRank(int w) const override { return kWorkerRankBase + w; }

  // Completes the receives started so far, oldest first (and any they start meanwhile).
  void RunReceives() {
    while (!receives.empty()) {
      auto r = std::move(receives.front());
      receives.pop_front();
      r();
    }
  }
  // The transport is done with every pull reply sent so far.
  void FinishSends(ChunkSync& sync) {
    auto done = std::move(sends);
    sends.clear();
    for (Chunk* c : done) {
      if (--c->inflight_sends == 0) sync.OnWeightsFree();
    }
  }
  const Reply* Find(uint64_t id) const {
    for (const Reply& r : replies) if (r.request_id == id) return &r;
    return nullptr;
  }

  std::map<uint64_t, std::vector<float>> payloads;  // by request id
  std::vector<Reply> replies;
  std::deque<std::function<void()>> receives;
  std::vector<Chunk*> sends;
  int updates = 0;
  Clock::time_point wake = Clock::time_point::max();

 private:
  struct Pool {
    std::vector<std::unique_ptr<float[]>> all;
    std::vector<float*> free;
  };
  float* Acquire(Pool& p, size_t cap, std::deque<ChunkSync*>& waiters, ChunkSync* w) {
    if (!p.free.empty()) {
      float* b = p.free.back();
      p.free.pop_back();
      return b;
    }
    if (p.all.size() < cap) {
      p.all.push_back(std::make_unique<float[]>(kChunk));
      return p.all.back().get();
    }
    waiters.push_back(w);
    return nullptr;
  }
  void Release(Pool& p, std::deque<ChunkSync*>& waiters, float* b) {
    p.free.push_back(b);
    while (!p.free.empty() && !waiters.empty()) {
      ChunkSync* s = waiters.front();
      waiters.pop_front();
      s->OnBufferFree();
    }
  }

 public:
  static constexpr uint64_t kChunk = 4;

 private:
  size_t accum_cap_, scratch_cap_;
  Pool accum_, scratch_;
  std::deque<ChunkSync*> accum_waiters_, scratch_waiters_;
};

class BspThroughInterface : public ::testing::Test {
 protected:
  static constexpr int kWorkers = 3;

  void SetUp() override { Make(); }

  void Make(size_t accumulators = 4, size_t scratch = 2) {
    spec_.name = "w";
    spec_.size = TestHost::kChunk;
    spec_.optimizer.kind = "sgd";
    spec_.optimizer.learning_rate = 1.0f;
    chunk_ = std::make_unique<Chunk>();
    chunk_->info.table = 0;
    chunk_->info.index = 0;
    chunk_->info.begin = 0;
    chunk_->info.end = TestHost::kChunk;
    chunk_->spec = &spec_;
    chunk_->weights.assign(TestHost::kChunk, 1.0f);
    host_ = std::make_unique<TestHost>(accumulators, scratch);
    auto policy = LookupConsistencyPolicy(policy_);
    ASSERT_TRUE(policy.ok()) << policy.status().ToString();
    sync_ = (*policy)->ForChunk(*chunk_, *host_, {.num_workers = kWorkers, .max_future_pushes_per_chunk = future_limit_,
                                                  .max_waiting_pulls_per_chunk = 2, .staleness = staleness_});
  }

  HeldPtr Request(wire::Op op, int worker, uint64_t step, uint64_t begin = 0, uint64_t end = TestHost::kChunk,
                  Clock::duration hold = std::chrono::seconds(60)) {
    auto r = std::make_shared<HeldRequest>();
    r->in.source = kWorkerRankBase + worker;
    r->worker = worker;
    r->frame.header.set_op(op);
    r->frame.header.set_request_id(next_id_++);
    r->frame.header.set_table(0);
    r->frame.header.set_key_begin(begin);
    r->frame.header.set_key_end(end);
    r->frame.header.set_step(step);
    r->arrived = Clock::now();
    r->deadline = r->arrived + hold;
    return r;
  }
  // A push of `values` for keys [begin, begin + values.size()); returns its request id.
  uint64_t Push(int worker, uint64_t step, std::vector<float> values, uint64_t begin = 0,
                wire::Op op = wire::PUSH) {
    HeldPtr r = Request(op, worker, step, begin, begin + values.size());
    const uint64_t id = r->h().request_id();
    host_->payloads[id] = std::move(values);
    sync_->OnPush(std::move(r));
    return id;
  }
  uint64_t Pull(int worker, uint64_t version) {
    HeldPtr r = Request(wire::PULL, worker, version);
    const uint64_t id = r->h().request_id();
    sync_->OnPull(std::move(r));
    return id;
  }

  std::string policy_ = "bsp";
  uint64_t staleness_ = 0;
  size_t future_limit_ = 2;
  TableSpec spec_;
  std::unique_ptr<Chunk> chunk_;
  std::unique_ptr<TestHost> host_;
  std::unique_ptr<ChunkSync> sync_;
  uint64_t next_id_ = 1;
};

// Values whose float sum depends on the order of the additions.
const std::vector<float> kG0 = {1e8f, 1.0f, 0.5f, -3.0f};
const std::vector<float> kG1 = {1.0f, 1e8f, 0.25f, 7.0f};
const std::vector<float> kG2 = {-1e8f, -1e8f, 1e-3f, 2.0f};

std::vector<float> Expected() {
  std::vector<float> w(4, 1.0f);
  for (size_t i = 0; i < 4; ++i) w[i] -= 1.0f * ((kG0[i] + kG1[i]) + kG2[i]);  // worker-rank order
  return w;
}

TEST(ConsistencyRegistry, BspIsRegisteredAndTheDefault) {
  auto p = LookupConsistencyPolicy(ServerOptions{}.consistency);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ((*p)->name(), kBspConsistency);
  EXPECT_TRUE(ValidateServerOptions(ServerOptions{}).ok());
}

TEST(ConsistencyRegistry, UnknownNameIsInvalidArgumentNamingIt) {
  auto p = LookupConsistencyPolicy("bounded-stale");
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(p.status().message().find("'bounded-stale'"), std::string::npos) << p.status().ToString();
  EXPECT_NE(p.status().message().find("bsp"), std::string::npos) << p.status().ToString();
  ServerOptions o;
  o.consistency = "bounded-stale";
  Status s = ValidateServerOptions(o);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("'bounded-stale'"), std::string::npos) << s.ToString();
}

TEST_F(BspThroughInterface, SumsInWorkerRankOrderWhateverTheArrivalOrder) {
  for (const std::vector<int>& order : {std::vector<int>{2, 0, 1}, {1, 2, 0}, {0, 1, 2}}) {
    Make();
    const std::vector<std::vector<float>> g = {kG0, kG1, kG2};
    std::vector<uint64_t> ids;
    for (int w : order) {
      ids.push_back(Push(w, 0, g[w]));
      host_->RunReceives();
      if (ids.size() < 3) {
        EXPECT_EQ(chunk_->version, 0u);
      }
    }
    EXPECT_EQ(chunk_->version, 1u);
    EXPECT_EQ(host_->updates, 1);
    EXPECT_EQ(chunk_->weights, Expected());  // bit for bit
    for (uint64_t id : ids) {
      const TestHost::Reply* r = host_->Find(id);
      ASSERT_NE(r, nullptr) << "push " << id << " not acknowledged";
      EXPECT_TRUE(r->ok) << r->error.ToString();
    }
    EXPECT_TRUE(sync_->MissingWorkers().size() == kWorkers);  // the next step has nothing yet
  }
}

TEST_F(BspThroughInterface, DisjointPiecesOfAWorkerMakeItsContribution) {
  Push(0, 0, {kG0[0], kG0[1]}, 0);
  Push(0, 0, {kG0[2], kG0[3]}, 2);
  Push(1, 0, kG1);
  host_->RunReceives();
  EXPECT_EQ(sync_->MissingWorkers(), std::vector<int>{kWorkerRankBase + 2});
  Push(2, 0, kG2);
  host_->RunReceives();
  EXPECT_EQ(chunk_->version, 1u);
  EXPECT_EQ(chunk_->weights, Expected());
}

TEST_F(BspThroughInterface, PullIsAnsweredOnceItsVersionExists) {
  const uint64_t now = Pull(0, 0);
  ASSERT_NE(host_->Find(now), nullptr);
  EXPECT_EQ(host_->Find(now)->version, 0u);
  host_->FinishSends(*sync_);
  const uint64_t later = Pull(1, 1);
  EXPECT_EQ(host_->Find(later), nullptr) << "answered before its step was applied";
  Push(0, 0, kG0);
  Push(1, 0, kG1);
  Push(2, 0, kG2);
  host_->RunReceives();
  const TestHost::Reply* r = host_->Find(later);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->version, 1u);
  EXPECT_EQ(r->weights, Expected());
}

TEST_F(BspThroughInterface, PushPullIsAnsweredWithTheWeightsAfterItsStep) {
  const uint64_t id = Push(0, 0, kG0, 0, wire::PUSH_PULL);
  Push(1, 0, kG1);
  host_->RunReceives();
  EXPECT_EQ(host_->Find(id), nullptr);
  Push(2, 0, kG2);
  host_->RunReceives();
  const TestHost::Reply* r = host_->Find(id);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->version, 1u);
  EXPECT_EQ(r->weights, Expected());
}

TEST_F(BspThroughInterface, UpdateWaitsForPullRepliesReadingTheWeights) {
  Pull(0, 0);  // its reply still reads the weights
  Push(0, 0, kG0);
  Push(1, 0, kG1);
  Push(2, 0, kG2);
  host_->RunReceives();
  EXPECT_EQ(chunk_->version, 0u) << "updated while a reply was reading the weights";
  host_->FinishSends(*sync_);
  EXPECT_EQ(chunk_->version, 1u);
  EXPECT_EQ(chunk_->weights, Expected());
}

TEST_F(BspThroughInterface, StaleAndDuplicatePushesAreRefused) {
  Push(0, 0, kG0);
  const uint64_t dup = Push(0, 0, {5.0f, 5.0f}, 2);
  ASSERT_NE(host_->Find(dup), nullptr);
  EXPECT_EQ(host_->Find(dup)->error.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(host_->Find(dup)->error.message().find("duplicate"), std::string::npos);
  Push(1, 0, kG1);
  Push(2, 0, kG2);
  host_->RunReceives();
  ASSERT_EQ(chunk_->version, 1u);
  EXPECT_EQ(chunk_->weights, Expected()) << "a refused push changed the sum";
  const uint64_t stale = Push(1, 0, kG1);
  ASSERT_NE(host_->Find(stale), nullptr);
  EXPECT_EQ(host_->Find(stale)->error.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(host_->Find(stale)->error.message().find("stale"), std::string::npos);
}

TEST_F(BspThroughInterface, FuturePushesAreParkedThenCountedAndBounded) {
  const uint64_t early = Push(0, 1, kG0);  // step 1 while the chunk is at 0
  Push(1, 1, kG1);
  EXPECT_EQ(host_->Find(early), nullptr);
  const uint64_t third = Push(2, 1, kG2);  // the limit is 2 parked
  ASSERT_NE(host_->Find(third), nullptr);
  EXPECT_EQ(host_->Find(third)->error.code(), StatusCode::kResourceExhausted);
  for (int w = 0; w < kWorkers; ++w) Push(w, 0, std::vector<float>(4, 0.0f));
  host_->RunReceives();
  EXPECT_EQ(chunk_->version, 1u);
  ASSERT_NE(host_->Find(early), nullptr) << "the parked push was not counted in its step";
  EXPECT_TRUE(host_->Find(early)->ok);
  EXPECT_EQ(sync_->MissingWorkers(), std::vector<int>{kWorkerRankBase + 2});
}

TEST_F(BspThroughInterface, ExpiryNamesTheMissingWorkers) {
  HeldPtr pull = Request(wire::PULL, 0, 1, 0, TestHost::kChunk, std::chrono::milliseconds(5));
  const uint64_t pull_id = pull->h().request_id();
  const Clock::time_point deadline = pull->deadline;
  sync_->OnPull(std::move(pull));
  EXPECT_EQ(host_->wake, deadline) << "the policy holds a request without asking to be woken";
  Push(0, 0, kG0);
  host_->RunReceives();
  EXPECT_EQ(sync_->Expire(deadline - std::chrono::milliseconds(1)), deadline);
  EXPECT_EQ(host_->Find(pull_id), nullptr);
  EXPECT_EQ(sync_->Expire(deadline), Clock::time_point::max());
  const TestHost::Reply* r = host_->Find(pull_id);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->error.code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(r->error.message().find("worker ranks [11,12]"), std::string::npos) << r->error.ToString();
}

TEST_F(BspThroughInterface, ChunksWaitForABufferAndResumeWhenOneIsFree) {
  Make(/*accumulators=*/1, /*scratch=*/1);
  Chunk other = *chunk_;
  auto other_sync = (*LookupConsistencyPolicy("bsp"))->ForChunk(other, *host_, {.num_workers = kWorkers});
  // The other chunk takes the only accumulator; this one waits for it.
  auto push_other = Request(wire::PUSH, 0, 0);
  host_->payloads[push_other->h().request_id()] = kG0;
  other_sync->OnPush(push_other);
  const uint64_t waiting = Push(0, 0, kG0);
  host_->RunReceives();
  EXPECT_EQ(host_->Find(waiting), nullptr) << "received without an accumulator";
  for (int w = 1; w < kWorkers; ++w) {
    auto r = Request(wire::PUSH, w, 0);
    host_->payloads[r->h().request_id()] = w == 1 ? kG1 : kG2;
    other_sync->OnPush(r);
    host_->RunReceives();
  }
  EXPECT_EQ(other.version, 1u);
  host_->RunReceives();  // the freed accumulator went to this chunk
  ASSERT_NE(host_->Find(waiting), nullptr);
  Push(1, 0, kG1);
  Push(2, 0, kG2);
  host_->RunReceives();
  EXPECT_EQ(chunk_->version, 1u);
  EXPECT_EQ(chunk_->weights, Expected());
  EXPECT_EQ(other.weights, Expected());
}

TEST(ConsistencyRegistry, SspAndAspAreRegisteredAndStalenessIsChecked) {
  for (std::string_view name : {kSspConsistency, kAspConsistency}) {
    auto p = LookupConsistencyPolicy(name);
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    EXPECT_EQ((*p)->name(), name);
  }
  ServerOptions o;
  o.consistency = "ssp";
  o.staleness = kMaxStaleness;
  EXPECT_TRUE(ValidateServerOptions(o).ok());
  for (int bad : {-1, kMaxStaleness + 1}) {
    o.staleness = bad;
    Status s = ValidateServerOptions(o);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(s.message().find("staleness"), std::string::npos) << s.ToString();
  }
}

// "ssp" with staleness 2 (and limits set per test).
class SspThroughInterface : public BspThroughInterface {
 protected:
  void SetUp() override { Use(2); }
  void Use(uint64_t s, size_t future_limit = 2) {
    policy_ = "ssp";
    staleness_ = s;
    future_limit_ = future_limit;
    Make();
  }
  // Workers 0..2 push kG0..kG2 for `step` (PUSH), received.
  void CompleteStep(uint64_t step) {
    Push(0, step, kG0);
    Push(1, step, kG1);
    Push(2, step, kG2);
    host_->RunReceives();
  }
};

TEST_F(SspThroughInterface, StalenessZeroSumsAsBspDoesWhateverTheArrivalOrder) {
  for (const std::vector<int>& order : {std::vector<int>{2, 0, 1}, {1, 2, 0}, {0, 1, 2}}) {
    Use(0);
    const std::vector<std::vector<float>> g = {kG0, kG1, kG2};
    std::vector<uint64_t> ids;
    for (int w : order) {
      ids.push_back(Push(w, 0, g[w], 0, wire::PUSH_PULL));
      host_->RunReceives();
      if (ids.size() < 3) {
        EXPECT_EQ(chunk_->version, 0u);
        EXPECT_EQ(host_->Find(ids.back()), nullptr) << "s = 0 answered a push-pull before its step was applied";
      }
    }
    EXPECT_EQ(chunk_->version, 1u);
    EXPECT_EQ(chunk_->weights, Expected());  // bit for bit
    for (uint64_t id : ids) {
      const TestHost::Reply* r = host_->Find(id);
      ASSERT_NE(r, nullptr);
      EXPECT_TRUE(r->ok) << r->error.ToString();
      EXPECT_EQ(r->version, 1u);
      EXPECT_EQ(r->weights, Expected());
    }
  }
}

TEST_F(SspThroughInterface, PullForVersionVIsAnsweredAtVMinusSAndNotBefore) {
  const uint64_t at_once = Pull(0, 2);  // needs version 0
  ASSERT_NE(host_->Find(at_once), nullptr);
  EXPECT_EQ(host_->Find(at_once)->version, 0u);
  host_->FinishSends(*sync_);
  const uint64_t held = Pull(1, 3);  // needs version 1; the chunk is at 0 = v - s - 1
  EXPECT_EQ(host_->Find(held), nullptr) << "answered at version v - s - 1";
  CompleteStep(0);
  const TestHost::Reply* r = host_->Find(held);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->version, 1u);
  EXPECT_EQ(r->weights, Expected());
}

TEST_F(SspThroughInterface, PushPullIsAnsweredWithinTheStalenessBeforeOthersPush) {
  // Worker 0 runs ahead: its push-pulls of steps 0 and 1 want versions 1 and 2, both within
  // s = 2 of version 0; step 2's wants version 3 and waits for step 0 to be applied.
  const uint64_t p0 = Push(0, 0, kG0, 0, wire::PUSH_PULL);
  host_->RunReceives();
  const uint64_t p1 = Push(0, 1, kG0, 0, wire::PUSH_PULL);
  host_->RunReceives();
  const uint64_t p2 = Push(0, 2, kG0, 0, wire::PUSH_PULL);
  host_->RunReceives();
  ASSERT_NE(host_->Find(p0), nullptr);
  ASSERT_NE(host_->Find(p1), nullptr);
  EXPECT_EQ(host_->Find(p0)->version, 0u);
  EXPECT_EQ(host_->Find(p1)->version, 0u);
  EXPECT_EQ(host_->Find(p2), nullptr) << "answered 3 steps stale with s = 2";
  host_->FinishSends(*sync_);
  Push(1, 0, kG1);
  host_->RunReceives();
  EXPECT_EQ(host_->Find(p2), nullptr);
  Push(2, 0, kG2);
  host_->RunReceives();
  EXPECT_EQ(chunk_->version, 1u);
  const TestHost::Reply* r = host_->Find(p2);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->version, 1u);
  EXPECT_EQ(r->weights, Expected());
}

TEST_F(SspThroughInterface, StepsAreAppliedInOrderWithTheSameSumsAsBsp) {
  // Steps 0..2 pushed out of order (later steps first) give the weights of three bsp steps.
  Use(2, /*future_limit=*/16);
  for (uint64_t t : {2u, 1u, 0u}) {
    Push(2, t, kG2);
    Push(1, t, kG1);
    Push(0, t, kG0);
  }
  host_->RunReceives();
  EXPECT_EQ(chunk_->version, 3u);
  std::vector<float> w(4, 1.0f);
  for (int step = 0; step < 3; ++step) {
    for (size_t i = 0; i < 4; ++i) w[i] -= 1.0f * ((kG0[i] + kG1[i]) + kG2[i]);
  }
  EXPECT_EQ(chunk_->weights, w);
}

TEST_F(SspThroughInterface, ParksPushesUpToSAheadAndRefusesBeyondTheLimit) {
  Use(2, /*future_limit=*/3);
  const uint64_t a1 = Push(0, 1, kG0);  // within s: received and acknowledged now
  const uint64_t a2 = Push(0, 2, kG0);
  host_->RunReceives();
  ASSERT_NE(host_->Find(a1), nullptr);
  ASSERT_NE(host_->Find(a2), nullptr);
  EXPECT_TRUE(host_->Find(a1)->ok);
  EXPECT_TRUE(host_->Find(a2)->ok);
  const uint64_t beyond = Push(0, 3, kG0);  // 3 ahead: parked, payload unread
  host_->RunReceives();
  EXPECT_EQ(host_->Find(beyond), nullptr);
  const uint64_t over = Push(1, 1, kG1);  // a fourth push for a future step: over the limit of 3
  ASSERT_NE(host_->Find(over), nullptr);
  EXPECT_EQ(host_->Find(over)->error.code(), StatusCode::kResourceExhausted);
  EXPECT_NE(host_->Find(over)->error.message().find("too many"), std::string::npos) << host_->Find(over)->error.ToString();
  CompleteStep(0);
  EXPECT_EQ(chunk_->version, 1u);
  ASSERT_NE(host_->Find(beyond), nullptr) << "the parked push was not received when the window reached it";
  EXPECT_TRUE(host_->Find(beyond)->ok);
  const uint64_t stale = Push(2, 0, kG2);
  ASSERT_NE(host_->Find(stale), nullptr);
  EXPECT_EQ(host_->Find(stale)->error.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(host_->Find(stale)->error.message().find("stale"), std::string::npos);
  const uint64_t dup = Push(0, 1, {5.0f}, 3);
  ASSERT_NE(host_->Find(dup), nullptr);
  EXPECT_NE(host_->Find(dup)->error.message().find("duplicate"), std::string::npos);
}

TEST_F(SspThroughInterface, UpdateWaitsForPullRepliesReadingTheWeights) {
  Pull(0, 0);
  CompleteStep(0);
  EXPECT_EQ(chunk_->version, 0u) << "updated while a reply was reading the weights";
  host_->FinishSends(*sync_);
  EXPECT_EQ(chunk_->version, 1u);
  EXPECT_EQ(chunk_->weights, Expected());
}

TEST_F(SspThroughInterface, ExpiryNamesTheMissingWorkers) {
  Use(1);
  Push(0, 0, kG0, 0, wire::PUSH_PULL);  // answered at once (wants version 1, s = 1)
  host_->RunReceives();
  host_->FinishSends(*sync_);
  HeldPtr ahead = Request(wire::PUSH_PULL, 0, 1, 0, TestHost::kChunk, std::chrono::milliseconds(5));
  const uint64_t id = ahead->h().request_id();
  const Clock::time_point deadline = ahead->deadline;
  host_->payloads[id] = kG0;
  sync_->OnPush(std::move(ahead));
  host_->RunReceives();
  Push(1, 0, kG1);  // worker 2 (rank 12) never pushes step 0
  host_->RunReceives();
  EXPECT_EQ(host_->Find(id), nullptr) << "answered 2 steps stale with s = 1";
  EXPECT_LE(host_->wake, deadline);
  EXPECT_EQ(sync_->Expire(deadline - std::chrono::milliseconds(1)), deadline);
  EXPECT_EQ(sync_->Expire(deadline), Clock::time_point::max());
  const TestHost::Reply* r = host_->Find(id);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->error.code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(r->error.message().find("worker ranks [12]"), std::string::npos) << r->error.ToString();
  EXPECT_EQ(sync_->MissingWorkers(), std::vector<int>{kWorkerRankBase + 2});
}

TEST_F(SspThroughInterface, ReductionTablesStayBulkSynchronous) {
  spec_.optimizer.kind = std::string(OptimizerKind::kSum);
  sync_ = (*LookupConsistencyPolicy("ssp"))->ForChunk(*chunk_, *host_, {.num_workers = kWorkers, .staleness = 2});
  const uint64_t id = Push(0, 0, kG0, 0, wire::PUSH_PULL);
  host_->RunReceives();
  EXPECT_EQ(host_->Find(id), nullptr) << "a sum table answered before every worker pushed";
  Push(1, 0, kG1);
  Push(2, 0, kG2);
  host_->RunReceives();
  ASSERT_NE(host_->Find(id), nullptr);
  EXPECT_EQ(host_->Find(id)->version, 1u);
}

class AspThroughInterface : public BspThroughInterface {
 protected:
  void SetUp() override {
    policy_ = "asp";
    future_limit_ = 4;
    Make();
  }
};

TEST_F(AspThroughInterface, EachWorkersPushIsAnUpdateOfItsOwn) {
  const uint64_t p1 = Push(1, 0, kG1, 0, wire::PUSH_PULL);
  host_->RunReceives();
  EXPECT_EQ(chunk_->version, 1u);
  std::vector<float> w(4, 1.0f);
  for (size_t i = 0; i < 4; ++i) w[i] -= kG1[i];
  EXPECT_EQ(chunk_->weights, w);
  const TestHost::Reply* r = host_->Find(p1);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->version, 1u);
  EXPECT_EQ(r->weights, w);
  host_->FinishSends(*sync_);
  const uint64_t p0 = Push(0, 0, kG0);
  host_->RunReceives();
  ASSERT_NE(host_->Find(p0), nullptr);
  EXPECT_TRUE(host_->Find(p0)->ok);
  EXPECT_EQ(chunk_->version, 2u);
  for (size_t i = 0; i < 4; ++i) w[i] -= kG0[i];
  EXPECT_EQ(chunk_->weights, w);
  EXPECT_TRUE(sync_->MissingWorkers().empty());
}

TEST_F(AspThroughInterface, PiecesOfAWorkerMakeOneUpdateAndRepliesWait) {
  const uint64_t now = Pull(2, 0);
  ASSERT_NE(host_->Find(now), nullptr);
  const uint64_t held = Pull(2, 2);  // two updates
  EXPECT_EQ(host_->Find(held), nullptr);
  const uint64_t a = Push(0, 0, {kG0[0], kG0[1]}, 0, wire::PUSH_PULL);
  host_->RunReceives();
  EXPECT_EQ(chunk_->version, 0u) << "applied half a contribution";
  Push(0, 0, {kG0[2], kG0[3]}, 2, wire::PUSH_PULL);
  host_->RunReceives();
  EXPECT_EQ(chunk_->version, 0u) << "updated while a pull reply was reading the weights";
  host_->FinishSends(*sync_);
  EXPECT_EQ(chunk_->version, 1u);
  ASSERT_NE(host_->Find(a), nullptr);
  EXPECT_EQ(host_->Find(a)->version, 1u);
  host_->FinishSends(*sync_);
  Push(1, 0, kG1);
  host_->RunReceives();
  EXPECT_EQ(chunk_->version, 2u);
  ASSERT_NE(host_->Find(held), nullptr);
  EXPECT_EQ(host_->Find(held)->version, 2u);
  const uint64_t stale = Push(0, 0, kG0);
  ASSERT_NE(host_->Find(stale), nullptr);
  EXPECT_EQ(host_->Find(stale)->error.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(host_->Find(stale)->error.message().find("stale"), std::string::npos);
}

TEST_F(AspThroughInterface, ContributionsThatCompleteWhileAReplyIsSentAreAppliedTogether) {
  Pull(2, 0);  // its reply reads the weights
  const uint64_t a = Push(0, 0, kG0, 0, wire::PUSH_PULL);
  const uint64_t b = Push(1, 0, kG1, 0, wire::PUSH_PULL);
  host_->RunReceives();
  EXPECT_EQ(chunk_->version, 0u);
  host_->FinishSends(*sync_);
  EXPECT_EQ(chunk_->version, 2u) << "one update per contribution";
  std::vector<float> w(4, 1.0f);
  for (size_t i = 0; i < 4; ++i) w[i] = (w[i] - kG0[i]) - kG1[i];  // in completion order
  EXPECT_EQ(chunk_->weights, w);
  for (uint64_t id : {a, b}) {
    ASSERT_NE(host_->Find(id), nullptr);
    EXPECT_EQ(host_->Find(id)->version, 2u);
  }
}

TEST_F(AspThroughInterface, AnIncompleteContributionExpiresNamingItsWorker) {
  HeldPtr half = Request(wire::PUSH_PULL, 1, 0, 0, 2, std::chrono::milliseconds(5));
  const uint64_t id = half->h().request_id();
  const Clock::time_point deadline = half->deadline;
  host_->payloads[id] = {kG1[0], kG1[1]};
  sync_->OnPush(std::move(half));
  host_->RunReceives();
  EXPECT_LE(host_->wake, deadline);
  EXPECT_EQ(sync_->Expire(deadline), Clock::time_point::max());
  const TestHost::Reply* r = host_->Find(id);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->error.code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(r->error.message().find("worker rank 11 pushed only 2 of the 4 keys"), std::string::npos) << r->error.ToString();
  EXPECT_EQ(chunk_->version, 0u);
}

}  // namespace
}  // namespace shardps::ps
