// Tests of shardps datagen (tools/datagen.h): flag validation before anything is written, the
// rank <-> id bijection, Zipf frequencies against the exact probabilities, labels drawn from the
// true model, byte-identical output for the same seed, and the round trip through the sparse
// libsvm reader (rows, values, and the Bayes log-loss recomputed from the true weights).
#include "datagen.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <unordered_map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "common/scratch_dir.h"
#include "shardps/worker/data.h"
#include "shardps/worker/sparse_lr.h"

namespace shardps::tools {
namespace {

namespace fs = std::filesystem;

std::string Slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

Result<DatagenOptions> Parse(std::vector<std::string> args) {
  args.insert(args.begin(), "datagen");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return ParseDatagenFlags(static_cast<int>(argv.size()), argv.data());
}

TEST(DatagenTest, FlagsAreValidatedWithTheFlagNamed) {
  auto ok = Parse({"--out", "d", "--seed", "7", "--feature-bits", "30", "--values", "real", "--labels", "pm1", "--ids", "rank"});
  ASSERT_TRUE(ok.ok()) << ok.status().message();
  EXPECT_EQ(ok->seed, 7u);
  EXPECT_EQ(ok->feature_bits, 30);
  EXPECT_TRUE(ok->real_values);
  EXPECT_TRUE(ok->plus_minus_labels);
  EXPECT_FALSE(ok->hashed_ids);
  const std::vector<std::pair<std::vector<std::string>, std::string>> bad = {
      {{}, "--out DIR is required"},
      {{"--out", "d", "--feature-bits", "0"}, "--feature-bits must be in [1, 52], got 0"},
      {{"--out", "d", "--feature-bits", "53"}, "--feature-bits must be in [1, 52], got 53"},
      {{"--out", "d", "--nnz", "0"}, "--nnz must be in"},
      {{"--out", "d", "--nnz", "-3"}, "--nnz must be in"},
      {{"--out", "d", "--feature-bits", "3", "--nnz", "9"}, "--nnz 9 exceeds the 8 features of --feature-bits 3"},
      {{"--out", "d", "--train-rows", "0"}, "--train-rows must be in"},
      {{"--out", "d", "--test-rows", "-1"}, "--test-rows must be in"},
      {{"--out", "d", "--zipf-exponent", "0"}, "--zipf-exponent must be in (0, 10]"},
      {{"--out", "d", "--zipf-exponent", "nan"}, "--zipf-exponent must be in (0, 10]"},
      {{"--out", "d", "--weight-scale", "-1"}, "--weight-scale must be in"},
      {{"--out", "d", "--weight-decay", "inf"}, "--weight-decay must be in"},
      {{"--out", "d", "--bias", "1e9"}, "--bias must be in"},
      {{"--out", "d", "--values", "float"}, "--values must be binary or real, got 'float'"},
      {{"--out", "d", "--ids", "x"}, "--ids must be hashed or rank"},
      {{"--out", "d", "--labels", "yes"}, "--labels must be 01 or pm1"},
      {{"--out", "d", "--seed", "-1"}, "--seed must be an integer in [0, 2^64 - 1], got '-1'"},
      {{"--out", "d", "--seed", "18446744073709551616"}, "--seed must be an integer"},
      {{"--out", "d", "--nnz", "abc"}, "nnz"},
      {{"--out", "d", "--bogus", "1"}, "bogus"},
  };
  for (const auto& [args, expect] : bad) {
    auto r = Parse(args);
    ASSERT_FALSE(r.ok()) << expect;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().message();
    EXPECT_NE(r.status().message().find(expect), std::string::npos) << "expected '" << expect << "' in: " << r.status().message();
  }
}

TEST(DatagenTest, BadOptionsAndExistingFilesWriteNothing) {
  testing::ScratchDir scratch("shardps_datagen_test");
  DatagenOptions o;
  o.out_dir = (scratch.path() / "new").string();
  o.nnz = 0;
  auto r = RunDatagen(o);
  ASSERT_FALSE(r.ok());
  EXPECT_FALSE(fs::exists(o.out_dir)) << "nothing is created for invalid options";
  // More than the disk holds (2^40 rows): refused before the directory is made.
  o.nnz = 30;
  o.train_rows = int64_t{1} << 40;
  r = RunDatagen(o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted) << r.status().message();
  EXPECT_NE(r.status().message().find("bytes free"), std::string::npos) << r.status().message();
  EXPECT_FALSE(fs::exists(o.out_dir));
  // An existing meta.json is not replaced without force; nothing else is written either.
  o.nnz = 5;
  o.train_rows = 10;
  o.test_rows = 10;
  o.out_dir = scratch.string();
  { std::ofstream(scratch.path() / "meta.json") << "mine"; }
  r = RunDatagen(o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("meta.json' exists; pass --force"), std::string::npos) << r.status().message();
  EXPECT_EQ(Slurp(scratch.path() / "meta.json"), "mine");
  EXPECT_FALSE(fs::exists(scratch.path() / "train.svm"));
  o.force = true;
  ASSERT_TRUE(RunDatagen(o).ok());
  EXPECT_NE(Slurp(scratch.path() / "meta.json"), "mine");
  // --out naming a file.
  o.out_dir = (scratch.path() / "meta.json").string();
  r = RunDatagen(o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("is not a directory"), std::string::npos) << r.status().message();
  // No temporary files are left anywhere.
  for (const auto& e : fs::directory_iterator(scratch.path())) {
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
  }
}

TEST(DatagenTest, RankToIdIsABijectionOntoTheIdSpace) {
  for (int bits = 1; bits <= 14; ++bits) {
    for (bool hashed : {true, false}) {
      DatagenOptions o;
      o.feature_bits = bits;
      o.hashed_ids = hashed;
      o.seed = 3;
      const SyntheticClicks m(o);
      const uint64_t n = uint64_t{1} << bits;
      std::vector<bool> seen(n + 1, false);
      for (uint64_t r = 1; r <= n; ++r) {
        const uint64_t id = m.RankToId(r);
        ASSERT_GE(id, 1u);
        ASSERT_LE(id, n);
        ASSERT_FALSE(seen[id]) << "bits " << bits << ": id " << id << " twice";
        seen[id] = true;
        ASSERT_EQ(m.IdToRank(id), r) << "bits " << bits;
      }
    }
  }
  for (int bits : {24, 40, 52}) {
    DatagenOptions o;
    o.feature_bits = bits;
    const SyntheticClicks m(o);
    uint64_t moved = 0;
    for (uint64_t r = 1; r < 5000; r += 7) {
      const uint64_t id = m.RankToId(r);
      ASSERT_LE(id, m.num_features());
      ASSERT_EQ(m.IdToRank(id), r);
      moved += id != r;
      const uint64_t top = m.num_features() - r;
      ASSERT_EQ(m.IdToRank(m.RankToId(top)), top);
    }
    EXPECT_GT(moved, 600u) << "hashed ids are spread, not the ranks";
  }
}

// Empirical rank frequencies against P(r) = r^-s / sum, for small ranks, within 5 sigma; and the
// frequencies fall with the rank.
TEST(DatagenTest, RanksAreZipfDistributed) {
  for (double s : {0.7, 1.0, 1.1, 1.6}) {
    DatagenOptions o;
    o.feature_bits = 16;
    o.zipf_exponent = s;
    const SyntheticClicks m(o);
    double norm = 0;
    for (uint64_t r = 1; r <= m.num_features(); ++r) norm += std::pow(static_cast<double>(r), -s);
    constexpr int kDraws = 400000;
    std::map<uint64_t, int> count;
    uint64_t state = 42;
    for (int i = 0; i < kDraws; ++i) {
      const uint64_t r = m.SampleRank(&state);
      ASSERT_GE(r, 1u);
      ASSERT_LE(r, m.num_features());
      ++count[r];
    }
    for (uint64_t r : {1, 2, 3, 5, 10, 100}) {
      const double p = std::pow(static_cast<double>(r), -s) / norm;
      const double sigma = std::sqrt(kDraws * p * (1 - p));
      EXPECT_NEAR(count[r], kDraws * p, 5 * sigma) << "s " << s << " rank " << r;
    }
    // The tail above rank 1000 as a whole.
    double tail_p = 0;
    for (uint64_t r = 1001; r <= m.num_features(); ++r) tail_p += std::pow(static_cast<double>(r), -s) / norm;
    int tail = 0;
    for (const auto& [r, c] : count) tail += r > 1000 ? c : 0;
    EXPECT_NEAR(tail, kDraws * tail_p, 5 * std::sqrt(kDraws * tail_p * (1 - tail_p))) << "s " << s;
    EXPECT_GT(count[1], count[2]);
    EXPECT_GT(count[2], count[8]);
    EXPECT_GT(count[8], count[64]);
  }
}

TEST(DatagenTest, RowsFollowTheTrueModel) {
  DatagenOptions o;
  o.feature_bits = 20;
  o.nnz = 12;
  o.real_values = true;
  const SyntheticClicks m(o);
  SyntheticClicks::Row row, again;
  constexpr int kRows = 30000;
  double positives = 0, expected = 0, var = 0;
  std::map<uint64_t, int> freq;
  for (int i = 0; i < kRows; ++i) {
    m.MakeRow(SyntheticClicks::Split::kTrain, static_cast<uint64_t>(i), &row);
    ASSERT_TRUE(std::is_sorted(row.ids.begin(), row.ids.end()));
    ASSERT_EQ(std::set<uint64_t>(row.ids.begin(), row.ids.end()).size(), row.ids.size());
    ASSERT_EQ(row.ids.size(), 12u) << "nnz distinct features a row";
    // The logit is the bias plus the true weights of the row's ids (the trainer's reference).
    double z = m.bias();
    for (size_t k = 0; k < row.ids.size(); ++k) {
      ASSERT_GE(row.values[k], 0.25f);
      ASSERT_LE(row.values[k], 1.75f);
      z += m.TrueWeight(row.ids[k]) * row.values[k];
      ++freq[row.ids[k]];
    }
    ASSERT_NEAR(row.logit, z, 1e-12);
    const double p = worker::Sigmoid(row.logit);
    positives += row.label;
    expected += p;
    var += p * (1 - p);
    if (i % 1000 == 0) {  // a pure function of (split, row)
      m.MakeRow(SyntheticClicks::Split::kTrain, static_cast<uint64_t>(i), &again);
      ASSERT_EQ(again.ids, row.ids);
      ASSERT_EQ(again.values, row.values);
      ASSERT_EQ(again.label, row.label);
    }
  }
  EXPECT_NEAR(positives, expected, 5 * std::sqrt(var));
  EXPECT_GT(expected / kRows, 0.05);
  EXPECT_LT(expected / kRows, 0.6);
  // Frequencies of ids fall with the rank behind them.
  EXPECT_GT(freq[m.RankToId(1)], freq[m.RankToId(4)]);
  EXPECT_GT(freq[m.RankToId(4)], freq[m.RankToId(32)]);
  EXPECT_GT(freq[m.RankToId(32)], freq[m.RankToId(1024)]);
  // Train and test rows differ.
  m.MakeRow(SyntheticClicks::Split::kTest, 0, &again);
  m.MakeRow(SyntheticClicks::Split::kTrain, 0, &row);
  EXPECT_NE(again.ids, row.ids);
}

// A law too steep to give nnz distinct features ends the row short instead of looping.
TEST(DatagenTest, SteepLawEndsRowsShort) {
  DatagenOptions o;
  o.feature_bits = 30;
  o.zipf_exponent = 10;
  o.nnz = 40;
  const SyntheticClicks m(o);
  SyntheticClicks::Row row;
  for (uint64_t i = 0; i < 200; ++i) {
    m.MakeRow(SyntheticClicks::Split::kTrain, i, &row);
    ASSERT_GE(row.ids.size(), 1u);
    ASSERT_LT(row.ids.size(), 40u);
  }
}

TEST(DatagenTest, SameSeedSameBytesAndTheReaderReadsItBack) {
  testing::ScratchDir scratch("shardps_datagen_test");
  DatagenOptions o;
  o.feature_bits = 24;
  o.nnz = 20;
  o.train_rows = 3000;
  o.test_rows = 2000;
  o.real_values = true;
  o.plus_minus_labels = true;
  o.out_dir = (scratch.path() / "a").string();
  auto a = RunDatagen(o);
  ASSERT_TRUE(a.ok()) << a.status().message();
  o.out_dir = (scratch.path() / "b").string();
  auto b = RunDatagen(o);
  ASSERT_TRUE(b.ok());
  for (const char* f : {"train.svm", "test.svm", "meta.json"}) {
    const std::string x = Slurp(scratch.path() / "a" / f), y = Slurp(scratch.path() / "b" / f);
    EXPECT_FALSE(x.empty()) << f;
    EXPECT_TRUE(x == y) << f << " differs between two runs with the same seed";
  }
  o.seed = 2;
  o.out_dir = (scratch.path() / "c").string();
  ASSERT_TRUE(RunDatagen(o).ok());
  EXPECT_NE(Slurp(scratch.path() / "a/train.svm"), Slurp(scratch.path() / "c/train.svm"));

  // Round trip: the reader gives back exactly the generated rows.
  o.seed = 1;
  const SyntheticClicks m(o);
  auto test = worker::ReadLibsvmSparse((scratch.path() / "a/test.svm").string(), {.labels = worker::LabelFormat::kPlusMinusOne});
  ASSERT_TRUE(test.ok()) << test.status().message();
  ASSERT_EQ(test->num_rows(), 2000);
  EXPECT_EQ(test->nnz(), a->test.nonzeros);
  EXPECT_LE(test->max_id, m.num_features());
  SyntheticClicks::Row row;
  double bayes = 0, truth = 0;
  for (int64_t i = 0; i < test->num_rows(); ++i) {
    m.MakeRow(SyntheticClicks::Split::kTest, static_cast<uint64_t>(i), &row);
    const size_t b0 = test->row_offsets[i], b1 = test->row_offsets[i + 1];
    ASSERT_EQ(std::vector<uint64_t>(test->ids.begin() + b0, test->ids.begin() + b1), row.ids) << "row " << i;
    ASSERT_EQ(std::vector<float>(test->values.begin() + b0, test->values.begin() + b1), row.values) << "row " << i;
    ASSERT_EQ(test->labels[i], static_cast<float>(row.label));
    // The true logit from the file's values and the true weights.
    double z = m.bias();
    for (size_t k = b0; k < b1; ++k) z += m.TrueWeight(test->ids[k]) * test->values[k];
    bayes += worker::BernoulliEntropyOfLogit(z);
    truth += worker::LogisticLoss(z, test->labels[i]);
  }
  EXPECT_DOUBLE_EQ(bayes / 2000, a->test.bayes_logloss);
  EXPECT_DOUBLE_EQ(truth / 2000, a->test.true_model_logloss);
  EXPECT_LT(a->test.bayes_logloss, a->constant_logloss) << "the features carry information";
  // meta.json states it.
  const std::string meta = Slurp(scratch.path() / "a/meta.json");
  char want[64];
  std::snprintf(want, sizeof(want), "\"bayes_logloss\": %.17g,", a->test.bayes_logloss);
  EXPECT_NE(meta.find(want), std::string::npos) << meta;
  EXPECT_NE(meta.find("\"seed\": 1,"), std::string::npos) << meta;
}

// The pieces together, as a sparse trainer will use them: generated files, the sparse reader,
// batches of sorted unique keys, the LR gradient per key, AdaGrad on a key -> weight map. The
// model must learn: close at least half the gap between the constant predictor and the Bayes
// log-loss on the test set.
TEST(DatagenTest, SparseLogisticRegressionLearnsTheGeneratedModel) {
  testing::ScratchDir scratch("shardps_datagen_test");
  DatagenOptions o;
  o.feature_bits = 16;
  o.nnz = 10;
  o.train_rows = 40000;
  o.test_rows = 5000;
  o.out_dir = scratch.string();
  auto gen = RunDatagen(o);
  ASSERT_TRUE(gen.ok()) << gen.status().message();
  auto train = worker::ReadLibsvmSparse(scratch.string() + "/train.svm");
  auto test = worker::ReadLibsvmSparse(scratch.string() + "/test.svm");
  ASSERT_TRUE(train.ok() && test.ok());
  std::unordered_map<uint64_t, std::pair<float, float>> table;  // key -> (weight, sum of squared gradients)
  worker::EpochOrder order(train->num_rows(), 5);
  worker::SparseBatch b;
  std::vector<float> w, g;
  for (uint64_t epoch = 0; epoch < 2; ++epoch) {
    const std::vector<int64_t> perm = order.Permutation(epoch);
    for (size_t s = 0; s + 100 <= perm.size(); s += 100) {
      ASSERT_TRUE(worker::MakeSparseBatch(*train, std::span<const int64_t>(perm.data() + s, 100), {}, &b).ok());
      w.resize(b.keys.size());
      g.resize(b.keys.size());
      for (size_t k = 0; k < b.keys.size(); ++k) w[k] = table[b.keys[k]].first;
      ASSERT_TRUE(worker::SparseLrLossAndGradient(b, w, g).ok());
      for (size_t k = 0; k < b.keys.size(); ++k) {
        auto& [wk, g2] = table[b.keys[k]];
        g2 += g[k] * g[k];
        wk -= 0.05f * g[k] / (std::sqrt(g2) + 1e-8f);
      }
    }
  }
  std::vector<int64_t> all(static_cast<size_t>(test->num_rows()));
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int64_t>(i);
  ASSERT_TRUE(worker::MakeSparseBatch(*test, all, {}, &b).ok());
  w.assign(b.keys.size(), 0.0f);
  for (size_t k = 0; k < b.keys.size(); ++k) {
    if (auto it = table.find(b.keys[k]); it != table.end()) w[k] = it->second.first;
  }
  auto loss = worker::SparseLrEvaluate(b, w);
  ASSERT_TRUE(loss.ok());
  const double bayes = gen->test.bayes_logloss, constant = gen->constant_logloss;
  std::printf("test log-loss %.6f, Bayes %.6f, constant %.6f\n", loss->mean_loss, bayes, constant);
  ASSERT_LT(bayes, constant);
  EXPECT_LT(loss->mean_loss, bayes + 0.5 * (constant - bayes))
      << "test log-loss " << loss->mean_loss << ", Bayes " << bayes << ", constant " << constant;
}

}  // namespace
}  // namespace shardps::tools
