// Federated averaging (worker/include/shardps/worker/federated.h): the partitioners are
// reproducible from the seed, give every sample to at most one client and have the skew each
// promises; client sampling is a pure function of (seed, round); one FedSGD round is one
// gradient step on the union of the sampled clients' data; FedAvg through LocalParams is
// deterministic; bad settings are refused with the setting named.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "shardps/base/optimizer.h"
#include "shardps/privacy/rdp_accountant.h"
#include "shardps/worker/federated.h"

namespace shardps::worker {
namespace {

// 1000 samples, 10 labels, 100 of each, in a scrambled order.
std::vector<int32_t> Labels(int n = 1000, int classes = 10) {
  std::vector<int32_t> y(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) y[i] = static_cast<int32_t>((i * 7) % classes);
  return y;
}

// Every index at most once; returns how many there are.
int64_t ExpectDisjoint(const Partition& p, int64_t n) {
  std::vector<int> seen(static_cast<size_t>(n), 0);
  int64_t total = 0;
  for (const auto& c : p.clients) {
    EXPECT_TRUE(std::is_sorted(c.begin(), c.end()));
    for (int64_t i : c) {
      EXPECT_GE(i, 0);
      EXPECT_LT(i, n);
      if (i >= 0 && i < n) {
        EXPECT_EQ(seen[i]++, 0) << "sample " << i << " given twice";
      }
      ++total;
    }
  }
  return total;
}

int LabelsSeen(const std::vector<int64_t>& counts) {
  return static_cast<int>(std::count_if(counts.begin(), counts.end(), [](int64_t c) { return c > 0; }));
}

TEST(Partition, IidCoversEverySampleInEqualParts) {
  const auto y = Labels();
  auto p = MakePartition(y, 10, {.partitioner = "iid", .clients = 7, .seed = 3});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(ExpectDisjoint(*p, 1000), 1000);
  for (const auto& c : p->clients) EXPECT_TRUE(c.size() == 142 || c.size() == 143) << c.size();
  // Shuffled: a client is not a contiguous run of indices.
  EXPECT_GT(p->clients[0].back() - p->clients[0].front(), 500);
}

TEST(Partition, SameSeedSamePartitionOtherSeedAnother) {
  const auto y = Labels();
  for (const char* name : {"iid", "shards", "dirichlet"}) {
    const PartitionOptions o{.partitioner = name, .clients = 10, .seed = 5};
    auto a = MakePartition(y, 10, o), b = MakePartition(y, 10, o);
    PartitionOptions other = o;
    other.seed = 6;
    auto c = MakePartition(y, 10, other);
    ASSERT_TRUE(a.ok() && b.ok() && c.ok()) << name;
    EXPECT_EQ(a->clients, b->clients) << name;
    EXPECT_NE(a->clients, c->clients) << name;
  }
}

TEST(Partition, LabelShardsGiveEachClientFewLabels) {
  const auto y = Labels();
  auto p = MakePartition(y, 10, {.partitioner = "shards", .clients = 20, .shards_per_client = 2, .seed = 1});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  // 40 shards of 25 samples: all 1000 used; 100 samples per label = 4 whole shards per label, so
  // each shard holds one label and each client at most 2.
  EXPECT_EQ(ExpectDisjoint(*p, 1000), 1000);
  const auto h = LabelHistogram(*p, y, 10);
  for (size_t k = 0; k < h.size(); ++k) {
    EXPECT_EQ(p->clients[k].size(), 50u);
    EXPECT_LE(LabelsSeen(h[k]), 2) << "client " << k;
    EXPECT_GE(LabelsSeen(h[k]), 1) << "client " << k;
  }
}

TEST(Partition, LabelShardsLeaveOutTheRemainder) {
  const auto y = Labels(1003);
  auto p = MakePartition(y, 10, {.partitioner = "shards", .clients = 10, .shards_per_client = 3, .seed = 1});
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(ExpectDisjoint(*p, 1003), 30 * (1003 / 30));
}

TEST(Partition, DirichletSkewGrowsAsAlphaShrinks) {
  const auto y = Labels(5000);
  double mean_labels[2];
  const double alphas[2] = {100.0, 0.1};
  for (int a = 0; a < 2; ++a) {
    auto p = MakePartition(y, 10, {.partitioner = "dirichlet", .clients = 20, .dirichlet_alpha = alphas[a], .seed = 2});
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    EXPECT_EQ(ExpectDisjoint(*p, 5000), 5000) << "alpha " << alphas[a];  // every sample, each once
    const auto h = LabelHistogram(*p, y, 10);
    double sum = 0;
    for (size_t k = 0; k < h.size(); ++k) {
      EXPECT_FALSE(p->clients[k].empty());
      sum += LabelsSeen(h[k]);
    }
    mean_labels[a] = sum / 20;
  }
  EXPECT_GT(mean_labels[0], 9.5);  // alpha 100: nearly every client sees every label
  EXPECT_LT(mean_labels[1], 6.0);  // alpha 0.1: a few labels each
}

TEST(Partition, HistogramCountsAndSummary) {
  const auto y = Labels();
  auto p = MakePartition(y, 10, {.partitioner = "shards", .clients = 20, .shards_per_client = 2, .seed = 1});
  ASSERT_TRUE(p.ok());
  const auto h = LabelHistogram(*p, y, 10);
  int64_t total = 0;
  for (size_t k = 0; k < h.size(); ++k) {
    total += std::accumulate(h[k].begin(), h[k].end(), int64_t{0});
  }
  EXPECT_EQ(total, 1000);
  const std::string text = FormatLabelHistogram(*p, y, 10);
  EXPECT_NE(text.find("samples per client: min 50, median 50, max 50"), std::string::npos) << text;
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 22) << text;  // header, 20 clients, summary
}

TEST(Partition, BadSettingsAreRefusedNamingThem) {
  const auto y = Labels();
  auto expect = [&](const PartitionOptions& o, const std::string& needle) {
    auto p = MakePartition(y, 10, o);
    ASSERT_FALSE(p.ok()) << needle;
    EXPECT_EQ(p.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(p.status().message().find(needle), std::string::npos) << p.status().message();
  };
  expect({.partitioner = "random", .clients = 10}, "partitioner 'random'");
  expect({.partitioner = "iid", .clients = 0}, "clients is 0");
  expect({.partitioner = "shards", .clients = 10, .shards_per_client = 0}, "shards_per_client");
  expect({.partitioner = "shards", .clients = 600, .shards_per_client = 2}, "need at least 1200 samples");
  expect({.partitioner = "dirichlet", .clients = 10, .dirichlet_alpha = 0}, "dirichlet_alpha");
  std::vector<int32_t> bad = y;
  bad[17] = 10;
  auto p = MakePartition(bad, 10, {.partitioner = "iid", .clients = 10});
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("sample 17 has label 10"), std::string::npos) << p.status().message();
}

TEST(SampleClients, DistinctSortedReproducibleAndVaryingByRound) {
  std::set<std::vector<int>> rounds;
  for (uint64_t r = 0; r < 20; ++r) {
    const auto s = SampleClients(100, 0.1, 7, r);
    ASSERT_EQ(s.size(), 10u);
    EXPECT_TRUE(std::is_sorted(s.begin(), s.end()));
    EXPECT_EQ(std::adjacent_find(s.begin(), s.end()), s.end());
    EXPECT_GE(s.front(), 0);
    EXPECT_LT(s.back(), 100);
    EXPECT_EQ(s, SampleClients(100, 0.1, 7, r));
    rounds.insert(s);
  }
  EXPECT_EQ(rounds.size(), 20u);
  EXPECT_EQ(SampleClients(100, 0.001, 7, 0).size(), 1u);  // at least one
  EXPECT_EQ(SampleClients(5, 1.0, 7, 0), (std::vector<int>{0, 1, 2, 3, 4}));
}

// A softmax model on a small synthetic problem: 4 features, 3 classes.
Dataset Synthetic(int n, uint64_t seed) {
  Dataset d;
  d.source = "synthetic";
  d.num_samples = n;
  d.num_features = 4;
  d.num_classes = 3;
  for (int i = 0; i < n; ++i) {
    const int label = static_cast<int>((i * 5 + seed) % 3);
    d.labels.push_back(label);
    for (int f = 0; f < 4; ++f) {
      const double noise = std::sin(static_cast<double>(i * 13 + f * 7 + seed)) * 0.5;
      d.features.push_back(static_cast<float>((f == label ? 1.0 : 0.0) + noise));
    }
  }
  return d;
}

struct Job {
  std::unique_ptr<Model> model;
  RunOptions run;
  FederatedOptions fed;
};

Job MakeJob() {
  Job j;
  auto m = Model::Create(ModelSpec{.input_dim = 4, .num_classes = 3});
  EXPECT_TRUE(m.ok());
  j.model = std::move(*m);
  j.run.mode = "fedavg";
  j.run.optimizer.kind = OptimizerKind::kSgd;
  j.run.optimizer.learning_rate = 0.5f;
  j.fed.partition = {.partitioner = "iid", .clients = 6};
  return j;
}

// The initial weights of a job's tables.
std::vector<std::vector<float>> InitialWeights(const Job& j) {
  LocalParams fresh(TrainingTables(*j.model, j.run));
  const auto tables = j.model->Tables(j.run.seed);
  std::vector<std::vector<float>> w(tables.size());
  for (size_t t = 0; t < tables.size(); ++t) {
    w[t].resize(tables[t].size);
    EXPECT_TRUE(fresh.Pull(static_cast<uint32_t>(t), w[t], 0).wait(std::chrono::milliseconds(0)).ok());
  }
  return w;
}

// A job changed by `change` is refused before training, with `needle` in the message.
void ExpectRefused(void (*change)(Job&), const std::string& needle) {
  const Dataset train = Synthetic(60, 1), test = Synthetic(30, 2);
  Job j = MakeJob();
  change(j);
  LocalParams params(TrainingTables(*j.model, j.run));
  auto r = TrainFederated(*j.model, train, test, params, j.run, j.fed, {});
  ASSERT_FALSE(r.ok()) << needle;
  EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
}

TEST(TrainFederated, OneFedSgdRoundIsOneGradientStepOnTheSampledClientsData) {
  const Dataset train = Synthetic(600, 1), test = Synthetic(90, 2);
  Job j = MakeJob();
  j.fed.fraction = 0.5;  // 3 of 6 clients
  j.fed.local_epochs = 1;
  j.fed.local_batch = 0;
  j.fed.rounds = 1;
  LocalParams params(TrainingTables(*j.model, j.run));
  auto r = TrainFederated(*j.model, train, test, params, j.run, j.fed, {});
  ASSERT_TRUE(r.ok()) << r.status().ToString();

  // The same step by hand: the initial weights, the gradient of the mean loss over the union of
  // the sampled clients' samples, w - lr x g.
  const auto tables = j.model->Tables(j.run.seed);
  std::vector<std::vector<float>> w = InitialWeights(j), g(tables.size());
  for (size_t t = 0; t < tables.size(); ++t) g[t].resize(tables[t].size);
  auto part = MakePartition(train.labels, train.num_classes, {.partitioner = "iid", .clients = 6, .seed = j.run.seed});
  ASSERT_TRUE(part.ok());
  std::vector<int64_t> rows;
  for (int k : SampleClients(6, 0.5, j.run.seed, 0)) rows.insert(rows.end(), part->clients[k].begin(), part->clients[k].end());
  std::vector<float> x;
  std::vector<int32_t> y;
  GatherRows(train, rows, &x, &y);
  std::vector<std::span<const float>> ws(w.begin(), w.end());
  std::vector<std::span<float>> gs(g.begin(), g.end());
  const int64_t n = static_cast<int64_t>(rows.size());
  j.model->Gradient(ws, x.data(), y.data(), n, 1.0f / static_cast<float>(n), gs, nullptr, 0, nullptr);
  ASSERT_EQ(r->weights.size(), tables.size());
  double worst = 0;
  for (size_t t = 0; t < tables.size(); ++t) {
    for (size_t i = 0; i < w[t].size(); ++i) {
      const double expected = w[t][i] - 0.5 * g[t][i];
      worst = std::max(worst, std::abs(expected - r->weights[t][i]));
    }
  }
  EXPECT_LT(worst, 1e-5);  // float rounding of the weighted sum; a wrong weighting is off by ~1e-2
  // The model moved: the check above is not met by the initial weights.
  double moved = 0;
  for (size_t t = 0; t < tables.size(); ++t) {
    for (size_t i = 0; i < w[t].size(); ++i) moved = std::max(moved, std::abs(double(w[t][i]) - r->weights[t][i]));
  }
  EXPECT_GT(moved, 1e-3);
}

TEST(TrainFederated, DeterministicLearnsAndReportsRounds) {
  const Dataset train = Synthetic(600, 1), test = Synthetic(90, 2);
  Job j = MakeJob();
  j.fed.fraction = 0.5;
  j.fed.local_epochs = 2;
  j.fed.local_batch = 10;
  j.fed.rounds = 4;
  std::vector<MetricsRow> rows;
  TrainHooks hooks;
  hooks.on_metrics = [&](const MetricsRow& m) { rows.push_back(m); };
  LocalParams a(TrainingTables(*j.model, j.run)), b(TrainingTables(*j.model, j.run));
  auto ra = TrainFederated(*j.model, train, test, a, j.run, j.fed, hooks);
  auto rb = TrainFederated(*j.model, train, test, b, j.run, j.fed, {});
  ASSERT_TRUE(ra.ok() && rb.ok());
  EXPECT_EQ(ra->weights_sha256, rb->weights_sha256);
  EXPECT_EQ(ra->steps, 4);
  EXPECT_GT(ra->test_accuracy, 0.9);  // separable up to noise: chance is 1/3
  ASSERT_EQ(rows.size(), 4u);
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i].step, static_cast<int64_t>(i + 1));
    EXPECT_EQ(rows[i].clients, 3);
    EXPECT_EQ(rows[i].samples, static_cast<int64_t>(i + 1) * 300 * 2);  // 3 clients x 100 samples x 2 epochs
    EXPECT_GE(rows[i].test_accuracy, 0.0);
  }
}

TEST(TrainFederated, BadSettingsAreRefusedBeforeTraining) {
  auto expect = [](void (*change)(Job&), const std::string& needle) { ExpectRefused(change, needle); };
  expect([](Job& j) { j.fed.fraction = 0; }, "fed_fraction");
  expect([](Job& j) { j.fed.rounds = 0; }, "fed_rounds");
  expect([](Job& j) { j.fed.local_epochs = 0; }, "fed_local_epochs");
  expect([](Job& j) { j.fed.local_batch = -1; }, "fed_local_batch");
  expect([](Job& j) { j.fed.partition.clients = 100; }, "100 clients need at least");  // dirichlet/iid on 60 samples
  expect([](Job& j) { j.run.start_step = 9; j.fed.rounds = 3; }, "round 9");
}

// A dataset of `features` features and `classes` labels, values from a fixed formula.
Dataset Wide(int n, int features, int classes) {
  Dataset d;
  d.source = "wide";
  d.num_samples = n;
  d.num_features = features;
  d.num_classes = classes;
  for (int i = 0; i < n; ++i) {
    d.labels.push_back(i % classes);
    for (int f = 0; f < features; ++f) d.features.push_back(static_cast<float>(std::sin(i * 0.37 + f * 1.3)));
  }
  return d;
}

TEST(TrainFederatedDp, NoiseOnTheAverageHasStandardDeviationZTimesSOverM) {
  // Learning rate 0: every client's change is zero, so the round moves the model by the noise alone.
  const Dataset train = Wide(60, 200, 500), test = Wide(10, 200, 500);
  Job j = MakeJob();
  auto m = Model::Create(ModelSpec{.input_dim = 200, .num_classes = 500});  // 100,500 weights
  ASSERT_TRUE(m.ok());
  j.model = std::move(*m);
  j.run.optimizer.learning_rate = 0.0f;
  j.fed.fraction = 0.5;  // m = 3 of 6 clients
  j.fed.local_epochs = 1;
  j.fed.rounds = 1;
  j.fed.clip_norm = 2.0;
  j.fed.noise_multiplier = 1.0;
  const auto before = InitialWeights(j);
  LocalParams params(TrainingTables(*j.model, j.run));
  auto r = TrainFederated(*j.model, train, test, params, j.run, j.fed, {});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  double sum = 0, sq = 0;
  size_t n = 0;
  for (size_t t = 0; t < before.size(); ++t) {
    for (size_t i = 0; i < before[t].size(); ++i) {
      const double d = static_cast<double>(r->weights[t][i]) - before[t][i];
      sum += d;
      sq += d * d;
      ++n;
    }
  }
  const double mean = sum / n, sd = std::sqrt(sq / n - mean * mean), want = 1.0 * 2.0 / 3;
  EXPECT_NEAR(sd, want, 0.02 * want) << "measured " << sd;
  EXPECT_NEAR(mean, 0.0, 5 * want / std::sqrt(static_cast<double>(n)));
  EXPECT_EQ(r->clipped, 0);  // zero changes are never clipped
  EXPECT_EQ(r->client_updates, 3);
  // One round of the sampled Gaussian mechanism, q = 3 / 6, z = 1: what the accountant says.
  auto acc = privacy::RdpAccountant::Create(0.5, 1.0);
  ASSERT_TRUE(acc.ok());
  acc->Step(1);
  auto spent = acc->Epsilon(1e-5);
  ASSERT_TRUE(spent.ok());
  EXPECT_EQ(r->epsilon, spent->epsilon);
  EXPECT_GT(r->epsilon, 0);
}

TEST(TrainFederatedDp, ClippedUpdatesBoundTheRoundsChange) {
  const Dataset train = Synthetic(600, 1), test = Synthetic(90, 2);
  Job j = MakeJob();
  j.fed.fraction = 0.5;
  j.fed.local_epochs = 2;
  j.fed.local_batch = 10;
  j.fed.rounds = 1;
  j.fed.clip_norm = 0.05;  // far below the clients' changes at learning rate 0.5
  const auto before = InitialWeights(j);
  std::vector<MetricsRow> rows;
  TrainHooks hooks;
  hooks.on_metrics = [&](const MetricsRow& row) { rows.push_back(row); };
  LocalParams params(TrainingTables(*j.model, j.run));
  auto r = TrainFederated(*j.model, train, test, params, j.run, j.fed, hooks);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  double sq = 0;
  for (size_t t = 0; t < before.size(); ++t) {
    for (size_t i = 0; i < before[t].size(); ++i) sq += std::pow(static_cast<double>(r->weights[t][i]) - before[t][i], 2);
  }
  // The average of three changes of norm <= S has norm <= S; each was clipped (its norm was
  // larger), and they point in similar directions, so the average is not far below S either.
  EXPECT_LE(std::sqrt(sq), 0.05 * (1 + 1e-5));
  EXPECT_GT(std::sqrt(sq), 0.01);
  EXPECT_EQ(r->clipped, 3);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].clipped, 3);
  EXPECT_GT(rows[0].update_norm, 0.05);
  EXPECT_TRUE(std::isinf(r->epsilon));  // clipping without noise: no privacy
}

TEST(TrainFederatedDp, BadSettingsAreRefused) {
  auto expect = [](void (*change)(Job&), const std::string& needle) { ExpectRefused(change, needle); };
  expect([](Job& j) { j.fed.clip_norm = -1; }, "clip_norm");
  expect([](Job& j) { j.fed.noise_multiplier = 1; }, "needs clip_norm");
  expect([](Job& j) { j.fed.clip_norm = 1; j.fed.noise_multiplier = -1; }, "noise_multiplier");
  expect([](Job& j) { j.fed.clip_norm = 1; j.fed.dp_delta = 1; }, "dp_delta");
}

}  // namespace
}  // namespace shardps::worker
