// Federated averaging with real clients (worker/federated_remote.h) in one process: the
// coordinator and its clients as threads talking over real authenticated loopback channels, so
// the thread-safety build (TSan) sees the coordinator's accept and reader threads at work. A
// client that disconnects in the middle of a round drops out of it; the round still sums the
// others, and the next round runs without it; a second run gives the same weights.
#include <gtest/gtest.h>

#include <thread>

#include "shardps/base/random.h"
#include "shardps/net/channel.h"
#include "shardps/worker/federated_remote.h"

namespace shardps {
namespace {

using std::chrono::milliseconds;

worker::Dataset Synthetic(int64_t n, uint64_t seed) {
  worker::Dataset d;
  d.source = "synthetic";
  d.num_samples = n;
  d.num_features = 12;
  d.num_classes = 3;
  d.features.resize(static_cast<size_t>(n * d.num_features));
  d.labels.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const int32_t label = static_cast<int32_t>(SplitMix64(seed * 7919 + static_cast<uint64_t>(i)) % 3);
    d.labels[static_cast<size_t>(i)] = label;
    for (int64_t f = 0; f < d.num_features; ++f) {
      const double noise = static_cast<double>(SplitMix64(seed ^ (static_cast<uint64_t>(i) << 8 | static_cast<uint64_t>(f))) % 1000) / 1000.0;
      d.features[static_cast<size_t>(i * d.num_features + f)] = static_cast<float>((f % 3 == label ? 1.0 : 0.0) + 0.5 * noise);
    }
  }
  return d;
}

struct JobRun {
  Result<worker::TrainResult> result = Status(StatusCode::kInternal, "not run");
  std::vector<Status> clients;
  std::vector<std::string> notices;
};

// 4 clients, 2 rounds; client `leaver` (if >= 0) closes its connection right before it would
// send phase `leave_phase` of round 1.
JobRun RunJob(int leaver, int leave_phase) {
  const worker::Dataset train = Synthetic(400, 1), test = Synthetic(120, 2);
  auto model = worker::Model::Create({.input_dim = 12, .num_classes = 3, .hidden = {8}});
  EXPECT_TRUE(model.ok());
  worker::RunOptions run;
  run.mode = "fedavg";
  run.optimizer.kind = "sgd";
  run.optimizer.learning_rate = 0.1f;
  run.seed = 5;
  worker::FederatedOptions fed;
  fed.partition.clients = 4;
  fed.fraction = 1.0;
  fed.local_epochs = 1;
  fed.local_batch = 10;
  fed.rounds = 2;
  fed.secure_aggregation = true;
  fed.secagg_threshold = 2;
  Secret secret(32, 7);
  auto listener = Listener::Bind("127.0.0.1", 0);
  EXPECT_TRUE(listener.ok()) << listener.status().ToString();
  JobRun out;
  out.clients.resize(4);
  std::mutex mu;
  std::vector<std::thread> clients;
  for (int k = 0; k < 4; ++k) {
    clients.emplace_back([&, k] {
      auto ch = Channel::Connect("127.0.0.1", listener->port(), secret, Channel::Clock::now() + std::chrono::seconds(30));
      if (!ch.ok()) {
        out.clients[static_cast<size_t>(k)] = ch.status();
        return;
      }
      worker::FedClientOptions o;
      o.fed = fed;
      o.client = k;
      o.reply_timeout = milliseconds(60000);
      if (k == leaver) {
        // Leaves by closing its connection (the socket is shut down) instead of sending phase 0.
        o.on_input = [&](int round, uint32_t, const std::vector<uint64_t>&) {
          if (round == 1 && leave_phase == 0) ch->Close();
        };
      }
      out.clients[static_cast<size_t>(k)] = worker::RunFederatedClient(**model, train, run, o, *ch);
    });
  }
  worker::CoordinatorOptions co;
  co.fed = fed;
  co.wait_clients = 4;
  co.join_timeout = milliseconds(60000);
  worker::TrainHooks hooks;
  hooks.on_notice = [&](const std::string& m) {
    std::lock_guard lock(mu);
    out.notices.push_back(m);
  };
  std::vector<worker::MetricsRow> rows;
  hooks.on_metrics = [&](const worker::MetricsRow& r) { rows.push_back(r); };
  worker::LocalParams params(worker::TrainingTables(**model, run));
  out.result = worker::ServeFederated(**model, test, params, run, co, *listener, secret, hooks);
  for (auto& t : clients) t.join();
  if (out.result.ok()) {
    EXPECT_EQ(rows.size(), 2u);
    for (const auto& r : rows) out.notices.push_back("round " + std::to_string(r.step) + " survivors " + std::to_string(r.survivors) +
                                                     " clients " + std::to_string(r.clients));
  }
  return out;
}

bool Contains(const std::vector<std::string>& v, const std::string& part) {
  for (const auto& s : v) {
    if (s.find(part) != std::string::npos) return true;
  }
  return false;
}

TEST(FedRemote, FourClientThreadsOverLoopbackChannelsTrainTwoRoundsReproducibly) {
  JobRun a = RunJob(-1, 0), b = RunJob(-1, 0);
  ASSERT_TRUE(a.result.ok()) << a.result.status().ToString();
  ASSERT_TRUE(b.result.ok()) << b.result.status().ToString();
  for (const Status& s : a.clients) EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(a.result->weights_sha256, b.result->weights_sha256);
  EXPECT_TRUE(Contains(a.notices, "round 2 survivors 4 clients 4"));
  EXPECT_EQ(a.result->secagg_survivors, 8);
}

TEST(FedRemote, AClientThatDisconnectsMidRoundDropsOutAndTheOthersGoOn) {
  JobRun r = RunJob(2, 0);
  ASSERT_TRUE(r.result.ok()) << r.result.status().ToString();
  EXPECT_FALSE(r.clients[2].ok());  // its own channel was closed under it
  for (int k : {0, 1, 3}) EXPECT_TRUE(r.clients[static_cast<size_t>(k)].ok()) << r.clients[static_cast<size_t>(k)].ToString();
  EXPECT_TRUE(Contains(r.notices, "client 2")) << ::testing::PrintToString(r.notices);
  EXPECT_TRUE(Contains(r.notices, "round 1 survivors 3 clients 4")) << ::testing::PrintToString(r.notices);
  EXPECT_TRUE(Contains(r.notices, "round 2 survivors 3 clients 3")) << ::testing::PrintToString(r.notices);
}

}  // namespace
}  // namespace shardps
