// Sparse tables, ranks as threads over the in-process transport: key lists split over 1-4 servers
// by SparseServerOf, rows created on first touch, the step's rows summed key by key in worker-rank
// order. Closed forms with exactly representable values (so any order of summation gives them),
// bit-identical rows across server counts and between "bsp" and "ssp" with s = 0 (with values
// whose sums do depend on order), the SSP invariant under a straggler, "asp", refused requests and
// the memory the servers report.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>

#include "common/scratch_dir.h"
#include "common/threads_cluster.h"
#include "shardps/storage/checkpoint_registry.h"
#include "shardps/worker/checkpoint_driver.h"
#include "shardps/base/random.h"

namespace shardps {
namespace {

using testing::JobConfig;
using testing::JoinStatuses;
using testing::ThreadsJob;
using std::chrono::milliseconds;

constexpr auto kWait = milliseconds(30000);
constexpr uint32_t kDim = 3;

// The keys worker `w` touches at step `t`: a seeded sample of a universe that mixes small ids and
// ids near 2^64, sorted, no repeats.
std::vector<uint64_t> KeysOf(int w, uint64_t t, int universe = 40) {
  std::set<uint64_t> keys;
  for (int i = 0; i < universe; ++i) {
    if (SplitMix64((uint64_t(w) << 40) ^ (t << 20) ^ uint64_t(i)) % 3 == 0) {
      keys.insert(i % 2 == 0 ? uint64_t(i) : ~uint64_t(0) - uint64_t(i));
    }
  }
  return {keys.begin(), keys.end()};
}

// Gradient element j of `key` from worker w at step t. Exact: multiples of 1/8 in [-4, 4).
float ExactGrad(int w, uint64_t t, uint64_t key, uint32_t j) {
  return static_cast<float>(static_cast<int>(SplitMix64(key * 31 + t * 7 + uint64_t(w) * 1000003 + j) % 64) - 32) / 8.0f;
}
// The same with full-precision values, whose sums depend on the order of addition.
float RoughGrad(int w, uint64_t t, uint64_t key, uint32_t j) {
  return static_cast<float>(static_cast<double>(SplitMix64(key ^ (t << 32) ^ (uint64_t(w) << 48) ^ j) >> 11) / 9007199254740992.0 - 0.5);
}

TableSpec Sparse(std::string optimizer, float lr) {
  TableSpec t{.name = "emb", .row_dim = kDim};
  t.optimizer.kind = std::move(optimizer);
  t.optimizer.learning_rate = lr;
  return t;
}

JobConfig Config(int servers, int workers, TableSpec t, std::string consistency = "bsp", int staleness = 0) {
  JobConfig c;
  c.world = servers + workers;
  c.servers = servers;
  c.tables = {std::move(t)};
  c.node.server.consistency = std::move(consistency);
  c.node.server.staleness = staleness;
  return c;
}

std::vector<float> Grads(const std::vector<uint64_t>& keys, int w, uint64_t t, float (*g)(int, uint64_t, uint64_t, uint32_t)) {
  std::vector<float> out(keys.size() * kDim);
  for (size_t i = 0; i < keys.size(); ++i) {
    for (uint32_t j = 0; j < kDim; ++j) out[i * kDim + j] = g(w, t, keys[i], j);
  }
  return out;
}

std::vector<uint64_t> AllKeys(int workers, uint64_t steps) {
  std::set<uint64_t> all;
  for (int w = 0; w < workers; ++w) {
    for (uint64_t t = 0; t < steps; ++t) for (uint64_t k : KeysOf(w, t)) all.insert(k);
  }
  return {all.begin(), all.end()};
}

// Runs `steps` synchronous steps (every worker a SparsePushPull a step) and returns the rows of
// every key any worker touched, pulled at the end by worker 0.
std::vector<float> Train(const JobConfig& config, uint64_t steps, float (*g)(int, uint64_t, uint64_t, uint32_t),
                         std::function<void(int w, uint64_t t, const std::vector<uint64_t>&, const std::vector<float>&)>
                             on_reply = nullptr) {
  const int workers = config.world - config.servers;
  const std::vector<uint64_t> all = AllKeys(workers, steps);
  std::vector<float> final_rows(all.size() * kDim);
  ThreadsJob job(config);
  auto st = job.Run([&](int rank, Node& node) -> Status {
    worker::KVClient* c = node.client();
    if (!c) return Status::Ok();
    const int w = rank - config.servers;
    for (uint64_t t = 0; t < steps; ++t) {
      const auto keys = KeysOf(w, t);
      const auto grads = Grads(keys, w, t, g);
      std::vector<float> rows(keys.size() * kDim);
      SHARDPS_RETURN_IF_ERROR(c->SparsePushPull(0, keys, grads, rows, t).wait(kWait));
      if (on_reply) on_reply(w, t, keys, rows);
    }
    // Every worker's last step is in (under "asp" a pull does not wait for it).
    SHARDPS_RETURN_IF_ERROR(c->Barrier().wait(kWait));
    if (w == 0) SHARDPS_RETURN_IF_ERROR(c->SparsePull(0, all, final_rows, steps).wait(kWait));
    return Status::Ok();
  });
  for (const Status& s : st) EXPECT_TRUE(s.ok()) << JoinStatuses(st);
  return final_rows;
}

// SGD at rate 1 from zero rows: a row is minus the sum of every gradient pushed for its key.
std::map<uint64_t, std::vector<float>> ClosedForm(int workers, uint64_t steps) {
  std::map<uint64_t, std::vector<float>> want;
  for (uint64_t t = 0; t < steps; ++t) {
    for (int w = 0; w < workers; ++w) {
      for (uint64_t k : KeysOf(w, t)) {
        auto& row = want[k];
        row.resize(kDim, 0.0f);
        for (uint32_t j = 0; j < kDim; ++j) row[j] -= ExactGrad(w, t, k, j);
      }
    }
  }
  return want;
}

class SparseShape : public ::testing::TestWithParam<std::pair<int, int>> {};

TEST_P(SparseShape, RowsAreTheClosedFormAfterEveryStep) {
  const auto [servers, workers] = GetParam();
  constexpr uint64_t kSteps = 6;
  std::mutex mu;
  std::vector<std::string> wrong;
  const auto rows = Train(Config(servers, workers, Sparse("sgd", 1.0f)), kSteps, ExactGrad,
                          [&](int w, uint64_t t, const std::vector<uint64_t>& keys, const std::vector<float>& got) {
                            // A PUSH_PULL of step t is answered with the rows after step t.
                            const auto want = ClosedForm(workers, t + 1);
                            std::lock_guard<std::mutex> l(mu);
                            for (size_t i = 0; i < keys.size(); ++i) {
                              for (uint32_t j = 0; j < kDim; ++j) {
                                if (got[i * kDim + j] != want.at(keys[i])[j]) {
                                  wrong.push_back("worker " + std::to_string(w) + " step " + std::to_string(t) + " key " +
                                                  std::to_string(keys[i]));
                                }
                              }
                            }
                          });
  EXPECT_TRUE(wrong.empty()) << wrong.size() << " wrong rows, first: " << wrong.front();
  const auto want = ClosedForm(workers, kSteps);
  size_t i = 0;
  for (const auto& [key, row] : want) {
    for (uint32_t j = 0; j < kDim; ++j) EXPECT_EQ(rows[i * kDim + j], row[j]) << "key " << key << " element " << j;
    ++i;
  }
}

INSTANTIATE_TEST_SUITE_P(ServersWorkers, SparseShape,
                         ::testing::Values(std::pair{1, 1}, std::pair{2, 1}, std::pair{1, 2}, std::pair{3, 2},
                                           std::pair{2, 3}, std::pair{4, 4}),
                         [](const auto& info) {
                           return std::to_string(info.param.first) + "servers" + std::to_string(info.param.second) + "workers";
                         });

TEST(SparseTable, RowsAreBitIdenticalOnAnyNumberOfServersAndUnderSspZero) {
  constexpr int kWorkers = 3;
  constexpr uint64_t kSteps = 5;
  TableSpec t = Sparse("adagrad", 0.1f);
  t.init = {.kind = InitKind::kNormal, .stddev = 0.1f, .seed = 9};
  const auto one = Train(Config(1, kWorkers, t), kSteps, RoughGrad);
  for (int servers : {2, 4}) {
    const auto other = Train(Config(servers, kWorkers, t), kSteps, RoughGrad);
    ASSERT_EQ(one.size(), other.size());
    EXPECT_EQ(0, std::memcmp(one.data(), other.data(), one.size() * sizeof(float))) << servers << " servers";
  }
  const auto ssp0 = Train(Config(2, kWorkers, t, "ssp", 0), kSteps, RoughGrad);
  EXPECT_EQ(0, std::memcmp(one.data(), ssp0.data(), one.size() * sizeof(float))) << "ssp with s = 0";
  // The rows did move away from their initial values (the comparison above is not of zeros).
  size_t moved = 0;
  for (float v : one) moved += v != 0.0f;
  EXPECT_GT(moved, one.size() / 2);
}

// Steps [first, last) of the RoughGrad job on `servers` servers; with `ckdir`, worker 0 writes a
// checkpoint at step `save_at` (CheckpointDriver); with `restore`, the servers start from it.
// Returns the rows of every key touched in [0, last), pulled at the end.
std::vector<float> TrainRange(int servers, int workers, const TableSpec& t, uint64_t first, uint64_t last,
                              const std::string& ckdir, uint64_t save_at, CheckpointReader* restore) {
  JobConfig c = Config(servers, workers, t);
  c.node.server.checkpoint_dir = ckdir;
  c.node.restore_from = restore;
  const std::vector<uint64_t> all = AllKeys(workers, last);
  std::vector<float> final_rows(all.size() * kDim);
  PosixFileSystem fs;
  ThreadsJob job(c);
  auto st = job.Run([&](int rank, Node& node) -> Status {
    worker::KVClient* cl = node.client();
    if (!cl) return Status::Ok();
    const int w = rank - servers;
    std::unique_ptr<worker::CheckpointDriver> ckpts;
    if (w == 0 && !ckdir.empty() && !restore) {
      ckpts = std::make_unique<worker::CheckpointDriver>(
          fs, *cl, worker::CheckpointRun{.seed = 1, .num_servers = uint32_t(servers), .num_workers = uint32_t(workers), .tables = {t}},
          worker::CheckpointOptions{.dir = ckdir, .timeout = kWait});
    }
    for (uint64_t step = first; step < last; ++step) {
      const auto keys = KeysOf(w, step);
      const auto grads = Grads(keys, w, step, RoughGrad);
      std::vector<float> rows(keys.size() * kDim);
      SHARDPS_RETURN_IF_ERROR(cl->SparsePushPull(0, keys, grads, rows, step).wait(kWait));
      if (ckpts && step + 1 == save_at) SHARDPS_RETURN_IF_ERROR(ckpts->OnStep({.step = save_at}, /*final=*/true));
    }
    SHARDPS_RETURN_IF_ERROR(cl->Barrier().wait(kWait));
    if (w == 0) SHARDPS_RETURN_IF_ERROR(cl->SparsePull(0, all, final_rows, last).wait(kWait));
    return Status::Ok();
  });
  for (const Status& s : st) EXPECT_TRUE(s.ok()) << JoinStatuses(st);
  return final_rows;
}

// A run checkpointed at step 3 and resumed from there onto another number of servers ends with the
// rows (weights and AdaGrad state alike, since the rows after resuming depend on both) of the run
// that never stopped, bit for bit.
TEST(SparseTable, ACheckpointResumesOntoAnyNumberOfServersBitIdentically) {
  constexpr int kWorkers = 2;
  TableSpec t = Sparse("adagrad", 0.1f);
  t.init = {.kind = InitKind::kUniform, .low = -0.1f, .high = 0.1f, .seed = 3};
  testing::ScratchDir scratch("shardps_sparse_ckpt");
  const std::string ckdir = scratch.string() + "/ck";
  PosixFileSystem fs;
  ASSERT_TRUE(EnsureWritableDirectory(fs, ckdir, "checkpoint directory").ok());
  const auto straight = TrainRange(2, kWorkers, t, 0, 6, ckdir, 3, nullptr);
  auto v = ResolveCheckpoint(ckdir, nullptr);
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  ASSERT_EQ(v->manifest.step(), 3u);
  ASSERT_EQ(v->manifest.tables().at(0).row_dim, kDim);
  for (int servers : {1, 3}) {
    CheckpointReader reader(*v);
    const auto resumed = TrainRange(servers, kWorkers, t, 3, 6, "", 0, &reader);
    ASSERT_EQ(straight.size(), resumed.size());
    EXPECT_EQ(0, std::memcmp(straight.data(), resumed.data(), straight.size() * sizeof(float))) << servers << " servers";
  }
  // The checkpoint holds every row updated in steps 0-2, each once over both shards; any other
  // row it holds (created by a request of step 3 that arrived first) has its initial values.
  CheckpointReader reader(*v);
  std::set<uint64_t> saved;
  size_t rows = 0;
  const auto touched = AllKeys(kWorkers, 3);
  ASSERT_TRUE(reader.ReadSparseRows(0, [&](std::span<const uint64_t> keys, std::span<const float> data) {
    EXPECT_EQ(data.size(), keys.size() * kDim * 2);  // weights and AdaGrad's accumulators
    for (size_t i = 0; i < keys.size(); ++i) {
      if (std::binary_search(touched.begin(), touched.end(), keys[i])) continue;
      std::vector<float> init(kDim);
      InitializeRow(t.init, 0, keys[i], init);
      EXPECT_EQ(std::vector<float>(data.begin() + i * 2 * kDim, data.begin() + i * 2 * kDim + kDim), init);
      EXPECT_EQ(std::vector<float>(data.begin() + i * 2 * kDim + kDim, data.begin() + (i + 1) * 2 * kDim),
                std::vector<float>(kDim, 0.0f));
    }
    rows += keys.size();
    saved.insert(keys.begin(), keys.end());
    return Status::Ok();
  }).ok());
  EXPECT_EQ(rows, saved.size());
  for (uint64_t k : touched) EXPECT_TRUE(saved.count(k)) << "key " << k << " was not saved";
}

TEST(SparseTable, InitialRowsDependOnTheKeyAloneAndAreCreatedByAPull) {
  TableSpec t = Sparse("sgd", 1.0f);
  t.init = {.kind = InitKind::kUniform, .low = -1.0f, .high = 1.0f, .seed = 5};
  const std::vector<uint64_t> keys = {0, 1, 77, 1ull << 63, ~0ull};
  std::vector<float> want(keys.size() * kDim);
  for (size_t i = 0; i < keys.size(); ++i) InitializeRow(t.init, 0, keys[i], std::span<float>(&want[i * kDim], kDim));
  for (int servers : {1, 3}) {
    std::vector<float> got(keys.size() * kDim);
    uint64_t rows_held = 0;
    ThreadsJob job(Config(servers, 1, t));
    auto st = job.Run([&](int rank, Node& node) -> Status {
      if (node.client()) return node.client()->SparsePull(0, keys, got, 0).wait(kWait);
      return Status::Ok();
    });
    for (const Status& s : st) ASSERT_TRUE(s.ok()) << JoinStatuses(st);
    EXPECT_EQ(got, want) << servers << " servers";
    EXPECT_NE(want[0], want[kDim]);  // two keys, two different rows
    (void)rows_held;
  }
}

TEST(SparseTable, ServersReportTheRowsTheyHoldAndTheirMemory) {
  constexpr uint64_t kKeys = 200000;
  TableSpec t{.name = "emb", .row_dim = 8};
  t.optimizer.kind = "adagrad";
  std::vector<uint64_t> keys(kKeys);
  for (uint64_t i = 0; i < kKeys; ++i) keys[i] = i * 1000003;
  ps::ServerStats stats[2];
  ThreadsJob job(Config(2, 1, t));
  auto st = job.Run([&](int rank, Node& node) -> Status {
    if (node.client()) {
      std::vector<float> g(kKeys * 8, 0.5f);
      return node.client()->SparsePush(0, keys, g, 0).wait(kWait);
    }
    // Servers: after the worker's SHUTDOWN every request has been handled.
    SHARDPS_RETURN_IF_ERROR(node.server()->WaitForWorkers(kWait));
    stats[rank] = node.server()->stats();
    return Status::Ok();
  });
  for (const Status& s : st) ASSERT_TRUE(s.ok()) << JoinStatuses(st);
  EXPECT_EQ(stats[0].sparse_rows + stats[1].sparse_rows, kKeys);
  for (const auto& s : stats) {
    EXPECT_GT(s.sparse_rows, kKeys / 3);  // SparseServerOf spreads multiples of a prime evenly
    // Per row: 8 weights and 8 AdaGrad accumulators (64 bytes) and at most 48 bytes of overhead
    // (the key, the index, the unused end of the last block).
    EXPECT_LE(s.sparse_bytes, s.sparse_rows * (64 + 48)) << s.sparse_bytes / s.sparse_rows << " bytes a row";
  }
}

// Under ssp with staleness s, a worker's PUSH_PULL of step t is answered only once every worker
// pushed step t - s: with SGD at rate 1, zero rows and a gradient of -1 on key 5 from every worker
// every step, the row holds (workers x version), so each reply says which version it is.
TEST(SparseTable, SspRepliesAreNeverMoreThanSStepsBehindWithAStraggler) {
  constexpr int kWorkers = 3;
  constexpr uint64_t kSteps = 8, kS = 2;
  std::mutex mu;
  std::condition_variable cv;
  uint64_t fast_done = 0;  // steps completed by worker 1 (a fast one)
  std::vector<std::string> violations;
  ThreadsJob job(Config(1, kWorkers, Sparse("sgd", 1.0f), "ssp", kS));
  auto st = job.Run([&](int rank, Node& node) -> Status {
    worker::KVClient* c = node.client();
    if (!c) return Status::Ok();
    const int w = rank - 1;
    const std::vector<uint64_t> keys = {5};
    for (uint64_t t = 0; t < kSteps; ++t) {
      if (w == 0) {  // the straggler: starts step t only once worker 1 is s steps ahead (or done)
        std::unique_lock<std::mutex> l(mu);
        if (!cv.wait_for(l, kWait, [&] { return fast_done >= std::min(kSteps, t + kS); })) {
          return DeadlineExceeded("worker 1 never got ahead");
        }
      }
      std::vector<float> g(kDim, -1.0f), rows(kDim);
      SHARDPS_RETURN_IF_ERROR(c->SparsePushPull(0, keys, g, rows, t).wait(kWait));
      const float version = rows[0] / kWorkers;
      if (version + static_cast<float>(kS) < static_cast<float>(t + 1) || version != std::floor(version)) {
        std::lock_guard<std::mutex> l(mu);
        violations.push_back("worker " + std::to_string(w) + " step " + std::to_string(t) + " read version " +
                             std::to_string(version));
      }
      if (w == 1) {
        std::lock_guard<std::mutex> l(mu);
        fast_done = t + 1;
        cv.notify_all();
      }
    }
    return Status::Ok();
  });
  for (const Status& s : st) EXPECT_TRUE(s.ok()) << JoinStatuses(st);
  EXPECT_TRUE(violations.empty()) << violations.front();
}

// A worker that never pushes: the others' held pulls are refused at their deadline, naming it.
TEST(SparseTable, AHeldPullIsRefusedAtItsDeadlineNamingTheMissingWorker) {
  JobConfig c = Config(1, 2, Sparse("sgd", 1.0f));
  c.node.server.max_hold = milliseconds(300);
  std::mutex mu;
  std::condition_variable cv;
  bool refused = false;
  Status seen;
  ThreadsJob job(c);
  auto st = job.Run([&](int rank, Node& node) -> Status {
    worker::KVClient* cl = node.client();
    if (!cl) return Status::Ok();
    if (rank == 2) {  // the silent worker waits (bounded) for the verdict, then leaves
      std::unique_lock<std::mutex> l(mu);
      cv.wait_for(l, kWait, [&] { return refused; });
      return Status::Ok();
    }
    std::vector<float> g(kDim, 1.0f), rows(kDim);
    seen = cl->SparsePushPull(0, std::vector<uint64_t>{11}, g, rows, 0).wait(kWait);
    std::lock_guard<std::mutex> l(mu);
    refused = true;
    cv.notify_all();
    return Status::Ok();
  });
  for (const Status& s : st) EXPECT_TRUE(s.ok()) << JoinStatuses(st);
  EXPECT_EQ(seen.code(), StatusCode::kDeadlineExceeded) << seen.ToString();
  EXPECT_NE(seen.message().find("is missing pushes from worker ranks [2]"), std::string::npos) << seen.ToString();
}

// FTRL with L1 keeps rows at exactly zero; a pull reply leaves them out (a bitmap says which rows
// it carries) and the client puts zeros in their place: the rows pulled are the optimizer's,
// applied here to the same gradients, and the server counts the rows it left out.
TEST(SparseTable, FtrlZeroRowsAreLeftOutOfRepliesAndReadAsZeros) {
  TableSpec t = Sparse("ftrl", 0.5f);
  t.optimizer.l1 = 1.0f;
  std::vector<uint64_t> keys;
  std::vector<float> g;
  for (uint64_t k = 0; k < 200; ++k) {
    keys.push_back(k * 7919);
    for (uint32_t j = 0; j < kDim; ++j) g.push_back(k % 3 == 0 ? 4.0f + static_cast<float>(j) : 0.25f);  // |z| > l1 or not
  }
  std::vector<float> want(keys.size() * kDim, 0.0f), slots(keys.size() * kDim * 2, 0.0f);
  for (size_t i = 0; i < keys.size(); ++i) {
    std::vector<float> s(2 * kDim, 0.0f);
    ApplyOptimizer(t.optimizer, 1, std::span<float>(&want[i * kDim], kDim), s, std::span<const float>(&g[i * kDim], kDim));
  }
  size_t zero_rows = 0;
  for (size_t i = 0; i < keys.size(); ++i) zero_rows += want[i * kDim] == 0.0f && want[i * kDim + 1] == 0.0f && want[i * kDim + 2] == 0.0f;
  ASSERT_GT(zero_rows, keys.size() / 2);
  ASSERT_LT(zero_rows, keys.size());
  for (int servers : {1, 2}) {
    std::vector<float> got(keys.size() * kDim, -1.0f);
    std::atomic<uint64_t> elided{0};
    ThreadsJob job(Config(servers, 1, t));
    auto st = job.Run([&](int rank, Node& node) -> Status {
      if (worker::KVClient* c = node.client()) return c->SparsePushPull(0, keys, g, got, 0).wait(kWait);
      SHARDPS_RETURN_IF_ERROR(node.server()->WaitForWorkers(kWait));
      elided += node.server()->stats().sparse_zero_rows_elided;
      return Status::Ok();
    });
    for (const Status& s : st) ASSERT_TRUE(s.ok()) << JoinStatuses(st);
    EXPECT_EQ(got, want) << servers << " servers";
    EXPECT_EQ(elided.load(), zero_rows) << servers << " servers";
  }
}

TEST(SparseTable, AspAppliesEveryPushOnce) {
  constexpr int kWorkers = 3;
  constexpr uint64_t kSteps = 6;
  const auto rows = Train(Config(2, kWorkers, Sparse("sgd", 1.0f), "asp"), kSteps, ExactGrad);
  const auto want = ClosedForm(kWorkers, kSteps);
  size_t i = 0;
  for (const auto& [key, row] : want) {
    for (uint32_t j = 0; j < kDim; ++j) EXPECT_EQ(rows[i * kDim + j], row[j]) << "key " << key;
    ++i;
  }
}

TEST(SparseTable, BadRequestsAreRefusedNamingWhatIsWrong) {
  TableSpec dense{.name = "w", .size = 8};
  JobConfig c = Config(2, 1, Sparse("sgd", 1.0f));
  c.tables.push_back(dense);
  ThreadsJob job(c);
  auto st = job.Run([&](int rank, Node& node) -> Status {
    worker::KVClient* cl = node.client();
    if (!cl) return Status::Ok();
    std::vector<float> g(3 * kDim, 1.0f), rows(3 * kDim);
    const std::vector<uint64_t> unsorted = {4, 9, 2}, repeated = {4, 9, 9};
    Status s = cl->SparsePush(0, unsorted, g, 0).wait(kWait);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("keys[2] = 2 follows keys[1] = 9"), std::string::npos) << s.ToString();
    s = cl->SparsePull(0, repeated, rows, 0).wait(kWait);
    EXPECT_NE(s.message().find("keys[2] = 9 follows keys[1] = 9"), std::string::npos) << s.ToString();
    s = cl->SparsePush(0, std::vector<uint64_t>{1, 2}, g, 0).wait(kWait);
    EXPECT_NE(s.message().find("9 gradient floats, 2 keys of 3 need 6"), std::string::npos) << s.ToString();
    s = cl->SparsePull(1, std::vector<uint64_t>{1}, std::span<float>(rows).first(kDim), 0).wait(kWait);
    EXPECT_NE(s.message().find("dense"), std::string::npos) << s.ToString();
    // A dense request for the sparse table is refused by the client's range check (its size is 0).
    s = cl->Pull(0, rows, 0).wait(kWait);
    EXPECT_FALSE(s.ok());
    // Nothing was applied: a valid push-pull of step 0 still works and gives the closed form.
    std::vector<float> one(kDim, 2.0f), out(kDim);
    SHARDPS_RETURN_IF_ERROR(cl->SparsePushPull(0, std::vector<uint64_t>{7}, one, out, 0).wait(kWait));
    EXPECT_EQ(out, std::vector<float>(kDim, -2.0f));
    return Status::Ok();
  });
  for (const Status& s : st) EXPECT_TRUE(s.ok()) << JoinStatuses(st);
}

TEST(SparseTable, LayoutRefusesASparseTableWithASizeOrASumOptimizer) {
  TableSpec t = Sparse("sgd", 1.0f);
  t.size = 10;
  auto l = TableLayout::Create({t}, 1);
  EXPECT_FALSE(l.ok());
  EXPECT_NE(l.status().message().find("is sparse"), std::string::npos);
  t.size = 0;
  t.optimizer.kind = "sum";
  EXPECT_FALSE(TableLayout::Create({t}, 1).ok());
  // Placement: every server gets keys, and the same key always the same server.
  std::vector<int> per(4, 0);
  for (uint64_t k = 0; k < 4000; ++k) ++per[SparseServerOf(k, 4)];
  for (int n : per) EXPECT_GT(n, 800);
  EXPECT_EQ(SparseServerOf(123456789, 4), SparseServerOf(123456789, 4));
}

}  // namespace
}  // namespace shardps
