// Tests of shardps/worker/sparse_lr.h: the loss and gradient of logistic regression over a sparse
// batch, against the closed form on a hand-sized batch and central finite differences on a larger
// one; numerical stability at large logits; determinism; refused shapes.
#include "shardps/worker/sparse_lr.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "shardps/worker/data.h"

namespace shardps::worker {
namespace {

double NaiveSigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }
double NaiveLoss(double z, double y) { return -(y * std::log(NaiveSigmoid(z)) + (1 - y) * std::log(1 - NaiveSigmoid(z))); }

TEST(SparseLrTest, ScalarFunctions) {
  for (double z : {-5.0, -3.0, -0.5, 0.0, 0.25, 2.0, 5.0}) {
    EXPECT_NEAR(Sigmoid(z), NaiveSigmoid(z), 1e-15);
    EXPECT_NEAR(Softplus(z), std::log1p(std::exp(z)), 1e-12);
    for (double y : {0.0, 1.0}) EXPECT_NEAR(LogisticLoss(z, y), NaiveLoss(z, y), 1e-9) << z << " " << y;
    const double p = NaiveSigmoid(z);
    EXPECT_NEAR(BernoulliEntropyOfLogit(z), p * NaiveLoss(z, 1) + (1 - p) * NaiveLoss(z, 0), 1e-9) << z;
  }
  // Far out, where the naive forms lose digits or overflow.
  EXPECT_DOUBLE_EQ(LogisticLoss(30, 0), 30 + std::log1p(std::exp(-30.0)));
  EXPECT_DOUBLE_EQ(LogisticLoss(-30, 0), std::log1p(std::exp(-30.0)));
  EXPECT_DOUBLE_EQ(LogisticLoss(30, 1), std::log1p(std::exp(-30.0)));
  EXPECT_NEAR(BernoulliEntropyOfLogit(30), std::exp(-30.0) * 31, 1e-15);
  EXPECT_DOUBLE_EQ(LogisticLoss(1000, 0), 1000);
  EXPECT_DOUBLE_EQ(LogisticLoss(-1000, 1), 1000);
  EXPECT_EQ(LogisticLoss(1000, 1), 0);
  EXPECT_EQ(Sigmoid(-1000), 0);
  EXPECT_EQ(Sigmoid(1000), 1);
  EXPECT_NEAR(BernoulliEntropyOfLogit(0), std::log(2.0), 1e-15);
  EXPECT_GE(BernoulliEntropyOfLogit(800), 0);
  EXPECT_LT(BernoulliEntropyOfLogit(800), 1e-300);
}

TEST(SparseLrTest, ClosedFormOnTwoRows) {
  // row 0: y = 1, {5: 1, 9: 2}; row 1: y = 0, {9: 1}; the bias as key 0.
  SparseDataset d;
  d.source = "two";
  d.ids = {5, 9, 9};
  d.values = {1, 2, 1};
  d.row_offsets = {0, 2, 3};
  d.labels = {1, 0};
  SparseBatch b;
  const std::vector<int64_t> rows = {0, 1};
  ASSERT_TRUE(MakeSparseBatch(d, rows, {}, &b).ok());
  ASSERT_EQ(b.keys, (std::vector<uint64_t>{0, 5, 9}));
  const std::vector<float> w = {0.1f, 0.2f, -0.3f};
  const double wb = w[0], w5 = w[1], w9 = w[2];
  const double z0 = wb + w5 + 2 * w9, z1 = wb + w9;
  const double loss = (NaiveLoss(z0, 1) + NaiveLoss(z1, 0)) / 2;
  const double r0 = (NaiveSigmoid(z0) - 1) / 2, r1 = NaiveSigmoid(z1) / 2;
  std::vector<float> g(3, 99.0f);
  auto l = SparseLrLossAndGradient(b, w, g);
  ASSERT_TRUE(l.ok()) << l.status().message();
  EXPECT_EQ(l->rows, 2);
  EXPECT_NEAR(l->mean_loss, loss, 1e-12);
  EXPECT_NEAR(l->loss_sum, 2 * loss, 1e-12);
  EXPECT_NEAR(g[0], r0 + r1, 1e-7);
  EXPECT_NEAR(g[1], r0, 1e-7);
  EXPECT_NEAR(g[2], 2 * r0 + r1, 1e-7);
  // Evaluation gives the same loss; logits are z0, z1.
  auto e = SparseLrEvaluate(b, w);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->loss_sum, l->loss_sum);
  std::vector<double> z(2);
  ASSERT_TRUE(SparseLrLogits(b, w, z).ok());
  EXPECT_NEAR(z[0], z0, 1e-15);
  EXPECT_NEAR(z[1], z1, 1e-15);
  // A normalizer (a worker's share of a global batch of 8) scales loss and gradient by 2/8.
  std::vector<float> g8(3);
  auto l8 = SparseLrLossAndGradient(b, w, g8, {.normalizer = 8});
  ASSERT_TRUE(l8.ok());
  EXPECT_NEAR(l8->mean_loss, loss * 2 / 8, 1e-12);
  for (int k = 0; k < 3; ++k) EXPECT_NEAR(g8[k], g[k] * 2 / 8, 1e-7);
}

// A batch of 40 rows over 25 ids with real values and repeats across rows.
SparseDataset RandomData() {
  SparseDataset d;
  d.source = "random";
  uint64_t x = 7;
  auto next = [&] {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    return x >> 33;
  };
  for (int r = 0; r < 40; ++r) {
    uint64_t id = 0;
    const int len = static_cast<int>(next() % 6);
    for (int k = 0; k < len; ++k) {
      id += 1 + next() % 5;
      d.ids.push_back(id * 1000);
      d.values.push_back(static_cast<float>(static_cast<int>(next() % 200) - 100) / 50.0f);
    }
    d.row_offsets.push_back(d.ids.size());
    d.labels.push_back(static_cast<float>(next() % 2));
  }
  return d;
}

TEST(SparseLrTest, GradientMatchesCentralDifferences) {
  const SparseDataset d = RandomData();
  std::vector<int64_t> rows(40);
  for (int i = 0; i < 40; ++i) rows[i] = (i * 7) % 40;
  SparseBatch b;
  ASSERT_TRUE(MakeSparseBatch(d, rows, {}, &b).ok());
  ASSERT_GT(b.keys.size(), 10u);
  std::vector<float> w(b.keys.size());
  for (size_t k = 0; k < w.size(); ++k) w[k] = static_cast<float>((static_cast<int>(k * 37 % 19) - 9)) / 10.0f;
  std::vector<float> g(w.size());
  ASSERT_TRUE(SparseLrLossAndGradient(b, w, g).ok());
  for (size_t k = 0; k < w.size(); ++k) {
    std::vector<float> wp = w, wm = w;
    wp[k] += 1e-2f;
    wm[k] -= 1e-2f;
    auto lp = SparseLrEvaluate(b, wp);
    auto lm = SparseLrEvaluate(b, wm);
    ASSERT_TRUE(lp.ok() && lm.ok());
    const double fd = (lp->mean_loss - lm->mean_loss) / (static_cast<double>(wp[k]) - static_cast<double>(wm[k]));
    EXPECT_NEAR(g[k], fd, 2e-5) << "key " << b.keys[k];
  }
}

TEST(SparseLrTest, DeterministicAndSplitsAddUp) {
  const SparseDataset d = RandomData();
  std::vector<int64_t> all(40);
  for (int i = 0; i < 40; ++i) all[i] = i;
  SparseBatch b;
  ASSERT_TRUE(MakeSparseBatch(d, all, {}, &b).ok());
  std::vector<float> w(b.keys.size());
  for (size_t k = 0; k < w.size(); ++k) w[k] = 0.05f * static_cast<float>(k % 11) - 0.2f;
  std::vector<float> g1(w.size()), g2(w.size());
  auto l1 = SparseLrLossAndGradient(b, w, g1);
  auto l2 = SparseLrLossAndGradient(b, w, g2);
  ASSERT_TRUE(l1.ok() && l2.ok());
  EXPECT_EQ(l1->loss_sum, l2->loss_sum);
  EXPECT_EQ(g1, g2);  // bit for bit
  // Two workers with 20 rows each and normalizer 40: their gradients (per key) add up to the full one.
  std::vector<int64_t> h1(all.begin(), all.begin() + 20), h2(all.begin() + 20, all.end());
  std::vector<double> sum(b.keys.size(), 0.0);
  double loss = 0;
  for (const auto& half : {h1, h2}) {
    SparseBatch hb;
    ASSERT_TRUE(MakeSparseBatch(d, half, {}, &hb).ok());
    std::vector<float> hw(hb.keys.size()), hg(hb.keys.size());
    for (size_t k = 0; k < hb.keys.size(); ++k) {
      const size_t at = static_cast<size_t>(std::lower_bound(b.keys.begin(), b.keys.end(), hb.keys[k]) - b.keys.begin());
      ASSERT_EQ(b.keys[at], hb.keys[k]);
      hw[k] = w[at];
    }
    auto hl = SparseLrLossAndGradient(hb, hw, hg, {.normalizer = 40});
    ASSERT_TRUE(hl.ok());
    loss += hl->mean_loss;
    for (size_t k = 0; k < hb.keys.size(); ++k) {
      sum[static_cast<size_t>(std::lower_bound(b.keys.begin(), b.keys.end(), hb.keys[k]) - b.keys.begin())] += hg[k];
    }
  }
  EXPECT_NEAR(loss, l1->mean_loss, 1e-12);
  for (size_t k = 0; k < sum.size(); ++k) EXPECT_NEAR(sum[k], g1[k], 1e-6) << k;
}

TEST(SparseLrTest, RefusesMismatchedShapes) {
  const SparseDataset d = RandomData();
  SparseBatch b;
  ASSERT_TRUE(MakeSparseBatch(d, std::vector<int64_t>{0, 1, 2}, {}, &b).ok());
  std::vector<float> w(b.keys.size()), g(b.keys.size());
  std::vector<float> short_w(b.keys.size() - 1);
  auto a = SparseLrLossAndGradient(b, short_w, g);
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("weights for"), std::string::npos) << a.status().message();
  std::vector<float> short_g(b.keys.size() + 1);
  EXPECT_FALSE(SparseLrLossAndGradient(b, w, short_g).ok());
  EXPECT_FALSE(SparseLrLossAndGradient(b, w, g, {.normalizer = -1}).ok());
  EXPECT_FALSE(SparseLrLossAndGradient(b, w, g, {.normalizer = NAN}).ok());
  std::vector<double> z(2);
  EXPECT_FALSE(SparseLrLogits(b, w, z).ok());
  SparseBatch empty;
  EXPECT_FALSE(SparseLrEvaluate(empty, {}).ok());
  ASSERT_TRUE(MakeSparseBatch(d, std::vector<int64_t>{}, {}, &empty).ok());
  EXPECT_FALSE(SparseLrEvaluate(empty, {}).ok()) << "an empty batch has no mean";
  EXPECT_TRUE(SparseLrEvaluate(empty, {}, {.normalizer = 4}).ok());
}

}  // namespace
}  // namespace shardps::worker
