// Optimizers: SGD, momentum, Adam, sum, AdaGrad and FTRL against hand-computed values and scalar
// formulas; element-wise property; AddInto; the registry (names, slots, errors) and the layout's
// use of it (unknown names refused, name and hyperparameters in the digest).
#include "shardps/base/optimizer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "shardps/base/layout.h"

namespace shardps {
namespace {

OptimizerConfig Config(std::string_view kind, float lr, float wd = 0.0f) {
  OptimizerConfig c;
  c.kind = std::string(kind);
  c.learning_rate = lr;
  c.weight_decay = wd;
  return c;
}

bool BitEqual(const std::vector<float>& a, const std::vector<float>& b) {
  // memcmp of two empty vectors would pass null pointers (undefined behaviour).
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// One weight from zero state: after step i (gradient steps[i].g) the weight must be steps[i].w
// (exactly, or within w_tol) and the slots exactly steps[i].slots (all of them, when given).
struct Step {
  float g;
  double w;
  std::vector<float> slots;
};
void ExpectSteps(const OptimizerConfig& c, float w0, const std::vector<Step>& steps, double w_tol = 0.0) {
  std::vector<float> w = {w0}, s(static_cast<size_t>(OptimizerSlots(c.kind)), 0.0f);
  for (size_t i = 0; i < steps.size(); ++i) {
    ApplyOptimizer(c, i + 1, w, s, std::vector<float>{steps[i].g});
    if (w_tol == 0.0) {
      EXPECT_EQ(w[0], static_cast<float>(steps[i].w)) << c.kind << " step " << i + 1;
    } else {
      EXPECT_NEAR(w[0], steps[i].w, w_tol) << c.kind << " step " << i + 1;
    }
    if (!steps[i].slots.empty()) {
      EXPECT_EQ(s, steps[i].slots) << c.kind << " step " << i + 1;
    }
  }
}

// ---------------------------------------------------------------- SGD

TEST(SgdTest, ThreeStepsByHand) {
  // lr = 0.25, constant gradient. All values are dyadic, so exact in float.
  //   w = 1:  1 - 0.25*0.5 = 0.875 -> 0.75 -> 0.625
  //   w = -2: -2 - 0.25*1 = -2.25 -> -2.5 -> -2.75
  const OptimizerConfig c = Config(OptimizerKind::kSgd, 0.25f);
  std::vector<float> w = {1.0f, -2.0f};
  const std::vector<float> g = {0.5f, 1.0f};
  const float expect0[3] = {0.875f, 0.75f, 0.625f};
  const float expect1[3] = {-2.25f, -2.5f, -2.75f};
  for (int step = 1; step <= 3; ++step) {
    ApplyOptimizer(c, step, w, {}, g);
    EXPECT_EQ(w[0], expect0[step - 1]) << "step " << step;
    EXPECT_EQ(w[1], expect1[step - 1]) << "step " << step;
  }
}

TEST(SgdTest, ThreeStepsWithWeightDecayByHand) {
  // lr = 0.5, wd = 0.25, g = 0.5, w0 = 1:  w -= 0.5 * (0.5 + 0.25*w)
  //   step 1: g' = 0.75        w = 1 - 0.375 = 0.625
  //   step 2: g' = 0.65625     w = 0.625 - 0.328125 = 0.296875
  //   step 3: g' = 0.57421875  w = 0.296875 - 0.287109375 = 0.009765625
  const OptimizerConfig c = Config(OptimizerKind::kSgd, 0.5f, 0.25f);
  std::vector<float> w = {1.0f};
  const std::vector<float> g = {0.5f};
  const float expect[3] = {0.625f, 0.296875f, 0.009765625f};
  for (int step = 1; step <= 3; ++step) {
    ApplyOptimizer(c, step, w, {}, g);
    EXPECT_EQ(w[0], expect[step - 1]) << "step " << step;
  }
}

TEST(SgdTest, ZeroGradientAndZeroDecayLeavesWeights) {
  const OptimizerConfig c = Config(OptimizerKind::kSgd, 0.1f);
  std::vector<float> w = {1.5f, -3.0f, 0.0f};
  ApplyOptimizer(c, 1, w, {}, std::vector<float>(3, 0.0f));
  EXPECT_EQ(w, (std::vector<float>{1.5f, -3.0f, 0.0f}));
}

TEST(SgdTest, MatchesScalarFormulaOnRandomValues) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> d(-2.0f, 2.0f);
  const OptimizerConfig c = Config(OptimizerKind::kSgd, 0.01f, 1e-4f);
  std::vector<float> w(37), g(37);
  for (auto& x : w) x = d(rng);
  std::vector<double> ref(w.begin(), w.end());
  for (int step = 1; step <= 3; ++step) {
    for (auto& x : g) x = d(rng);
    ApplyOptimizer(c, step, w, {}, g);
    for (size_t i = 0; i < w.size(); ++i) {
      ref[i] -= 0.01 * (g[i] + 1e-4 * ref[i]);
      EXPECT_NEAR(w[i], ref[i], 1e-6) << "step " << step << " i " << i;
    }
  }
}

// ---------------------------------------------------------------- momentum

TEST(MomentumTest, ThreeStepsByHand) {
  // mu = 0.5, lr = 0.25, g = 1, w0 = 1, v0 = 0:
  //   v = 1    w = 0.75
  //   v = 1.5  w = 0.375
  //   v = 1.75 w = -0.0625
  OptimizerConfig c = Config(OptimizerKind::kMomentum, 0.25f);
  c.momentum = 0.5f;
  std::vector<float> w = {1.0f};
  std::vector<float> v = {0.0f};
  const std::vector<float> g = {1.0f};
  const float ew[3] = {0.75f, 0.375f, -0.0625f};
  const float ev[3] = {1.0f, 1.5f, 1.75f};
  for (int step = 1; step <= 3; ++step) {
    ApplyOptimizer(c, step, w, v, g);
    EXPECT_EQ(w[0], ew[step - 1]) << "step " << step;
    EXPECT_EQ(v[0], ev[step - 1]) << "step " << step;
  }
}

TEST(MomentumTest, ThreeStepsWithWeightDecayByHand) {
  // mu = 0.5, lr = 0.25, wd = 0.5, g = 1, w0 = 1:
  //   step 1: g' = 1.5        v = 1.5        w = 1 - 0.375 = 0.625
  //   step 2: g' = 1.3125     v = 2.0625     w = 0.625 - 0.515625 = 0.109375
  //   step 3: g' = 1.0546875  v = 2.0859375  w = 0.109375 - 0.521484375 = -0.412109375
  OptimizerConfig c = Config(OptimizerKind::kMomentum, 0.25f, 0.5f);
  c.momentum = 0.5f;
  std::vector<float> w = {1.0f};
  std::vector<float> v = {0.0f};
  const std::vector<float> g = {1.0f};
  const float ew[3] = {0.625f, 0.109375f, -0.412109375f};
  const float ev[3] = {1.5f, 2.0625f, 2.0859375f};
  for (int step = 1; step <= 3; ++step) {
    ApplyOptimizer(c, step, w, v, g);
    EXPECT_EQ(w[0], ew[step - 1]) << "step " << step;
    EXPECT_EQ(v[0], ev[step - 1]) << "step " << step;
  }
}

TEST(MomentumTest, MatchesScalarFormulaOnRandomValues) {
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  OptimizerConfig c = Config(OptimizerKind::kMomentum, 0.05f, 0.01f);
  c.momentum = 0.9f;
  const size_t n = 29;
  std::vector<float> w(n), v(n, 0.0f), g(n);
  for (auto& x : w) x = d(rng);
  std::vector<double> rw(w.begin(), w.end()), rv(n, 0.0);
  for (int step = 1; step <= 3; ++step) {
    for (auto& x : g) x = d(rng);
    ApplyOptimizer(c, step, w, v, g);
    for (size_t i = 0; i < n; ++i) {
      rv[i] = 0.9 * rv[i] + (g[i] + 0.01 * rw[i]);
      rw[i] -= 0.05 * rv[i];
      EXPECT_NEAR(v[i], rv[i], 1e-5) << "step " << step << " i " << i;
      EXPECT_NEAR(w[i], rw[i], 1e-6) << "step " << step << " i " << i;
    }
  }
}

// ---------------------------------------------------------------- Adam

// Literals computed on paper / in double precision from
//   m = b1*m + (1-b1)*g'; v = b2*v + (1-b2)*g'^2; w -= lr*(m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)
// with b1 = 0.9, b2 = 0.999, eps = 1e-8.
TEST(AdamTest, ThreeStepsByHand) {
  // Element 0: w0 = 1, lr = 0.1, g = 1, -1, 2.
  //   t=1: m = 0.1,   v = 0.001;     mhat = 1,          vhat = 1        -> w = 0.9
  //   t=2: m = -0.01, v = 0.001999;  mhat = -0.01/0.19, vhat = 1        -> w = 0.905263159
  //   t=3: m = 0.191, v = 0.005997001; mhat = 0.191/0.271 = 0.704797, vhat = 0.005997001/0.002997001
  //        = 2.001001, sqrt = 1.414567                                  -> w = 0.855438945
  // Element 1: w0 = -2, g = 0.5 constant: mhat = g, vhat = g^2 at every t, so each step moves
  //   w by lr * 0.5/(0.5+1e-8) ~= 0.1 -> -2.1, -2.2, -2.3.
  const OptimizerConfig c = Config(OptimizerKind::kAdam, 0.1f);
  ASSERT_EQ(c.beta1, 0.9f);
  ASSERT_EQ(c.beta2, 0.999f);
  ASSERT_EQ(c.epsilon, 1e-8f);
  std::vector<float> w = {1.0f, -2.0f};
  std::vector<float> slots(4, 0.0f);  // m[0], m[1], v[0], v[1]
  const float g0[3] = {1.0f, -1.0f, 2.0f};
  const double ew0[3] = {0.900000001, 0.905263159, 0.855438945};
  const double ew1[3] = {-2.1, -2.2, -2.3};
  for (int step = 1; step <= 3; ++step) {
    const std::vector<float> g = {g0[step - 1], 0.5f};
    ApplyOptimizer(c, step, w, slots, g);
    EXPECT_NEAR(w[0], ew0[step - 1], 1e-6) << "step " << step;
    EXPECT_NEAR(w[1], ew1[step - 1], 2e-6) << "step " << step;
  }
  // State after three steps: m = 0.191, v = 0.005997001 for element 0;
  // element 1: m = 0.5*(1-0.9^3) = 0.1355, v = 0.25*(1-0.999^3) = 0.000749250...
  // (0.999f is 0.99900001287..., so v carries a ~1e-5 relative offset from the decimal value.)
  EXPECT_NEAR(slots[0], 0.191, 1e-6);
  EXPECT_NEAR(slots[1], 0.1355, 1e-6);
  EXPECT_NEAR(slots[2], 0.005997001, 0.005997001 * 1e-4);
  EXPECT_NEAR(slots[3], 0.00074925025, 0.00074925025 * 1e-4);
}

TEST(AdamTest, ThreeStepsWithWeightDecayByHand) {
  // w0 = 1, lr = 0.1, wd = 0.5, g = 1, -1, 2 (g' = g + 0.5*w):
  //   t=1: g' = 1.5;   m = 0.15, v = 0.00225, mhat = 1.5, vhat = 2.25   -> w = 1 - 0.1 = 0.9
  //   t=2: g' = -0.55; m = 0.08, v = 0.00255025; mhat = 0.421053, vhat = 1.275763 -> w = 0.862722104
  //   t=3:                                                              -> w = 0.793505984
  const OptimizerConfig c = Config(OptimizerKind::kAdam, 0.1f, 0.5f);
  std::vector<float> w = {1.0f};
  std::vector<float> slots(2, 0.0f);
  const float g[3] = {1.0f, -1.0f, 2.0f};
  const double ew[3] = {0.900000001, 0.862722104, 0.793505984};
  for (int step = 1; step <= 3; ++step) {
    ApplyOptimizer(c, step, w, slots, std::vector<float>{g[step - 1]});
    EXPECT_NEAR(w[0], ew[step - 1], 1e-6) << "step " << step;
  }
}

TEST(AdamTest, MatchesScalarFormulaOnRandomValues) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  OptimizerConfig c = Config(OptimizerKind::kAdam, 0.01f, 0.001f);
  c.beta1 = 0.8f;
  c.beta2 = 0.99f;
  c.epsilon = 1e-6f;
  const size_t n = 23;
  std::vector<float> w(n), slots(2 * n, 0.0f), g(n);
  for (auto& x : w) x = d(rng);
  std::vector<double> rw(w.begin(), w.end()), rm(n, 0.0), rv(n, 0.0);
  const double b1 = c.beta1, b2 = c.beta2, eps = c.epsilon;
  for (int step = 1; step <= 3; ++step) {
    for (auto& x : g) x = d(rng);
    ApplyOptimizer(c, step, w, slots, g);
    for (size_t i = 0; i < n; ++i) {
      const double gp = g[i] + 0.001 * rw[i];
      rm[i] = b1 * rm[i] + (1 - b1) * gp;
      rv[i] = b2 * rv[i] + (1 - b2) * gp * gp;
      const double mhat = rm[i] / (1 - std::pow(b1, step));
      const double vhat = rv[i] / (1 - std::pow(b2, step));
      rw[i] -= 0.01 * mhat / (std::sqrt(vhat) + eps);
      EXPECT_NEAR(w[i], rw[i], 2e-6) << "step " << step << " i " << i;
      EXPECT_NEAR(slots[i], rm[i], 1e-6);
      EXPECT_NEAR(slots[n + i], rv[i], 1e-7);
    }
  }
}

TEST(AdamTest, ZeroGradientFromZeroStateKeepsWeights) {
  const OptimizerConfig c = Config(OptimizerKind::kAdam, 0.1f);
  std::vector<float> w = {0.5f, -0.25f};
  std::vector<float> slots(4, 0.0f);
  ApplyOptimizer(c, 1, w, slots, std::vector<float>(2, 0.0f));
  EXPECT_EQ(w, (std::vector<float>{0.5f, -0.25f}));
  EXPECT_EQ(slots, std::vector<float>(4, 0.0f));
}

// ---------------------------------------------------------------- sum

TEST(SumTest, WeightsBecomeTheGradient) {
  const OptimizerConfig c = Config(OptimizerKind::kSum, 0.1f, 0.5f);  // lr and wd are ignored
  std::vector<float> w = {1.0f, 2.0f, 3.0f};
  ApplyOptimizer(c, 1, w, {}, std::vector<float>{-1.0f, 0.0f, 7.5f});
  EXPECT_EQ(w, (std::vector<float>{-1.0f, 0.0f, 7.5f}));
  ApplyOptimizer(c, 2, w, {}, std::vector<float>{4.0f, 5.0f, 6.0f});
  EXPECT_EQ(w, (std::vector<float>{4.0f, 5.0f, 6.0f}));
}

// ---------------------------------------------------------------- AdaGrad

// s += g'^2; w -= lr * g' / (sqrt(s + a0) + eps), g' = g + wd*w. The values below are chosen so
// that every square root and quotient is exact in float.
TEST(AdaGradTest, ThreeStepsByHand) {
  // lr = 21/16, a0 = 0, eps = 1, w0 = 1, g = 3, 4, 12:
  //   t=1: s = 9,   sqrt = 3,  w = 1 - (21/16*3)/4 = 1 - 63/64         = 0.015625
  //   t=2: s = 25,  sqrt = 5,  w = 0.015625 - (21/16*4)/6 = - 0.875   = -0.859375
  //   t=3: s = 169, sqrt = 13, w = -0.859375 - (21/16*12)/14 = - 1.125 = -1.984375
  OptimizerConfig c = Config("adagrad", 21.0f / 16.0f);
  c.initial_accumulator = 0.0f;
  c.epsilon = 1.0f;
  ExpectSteps(c, 1.0f, {{3.0f, 0.015625, {9.0f}}, {4.0f, -0.859375, {25.0f}}, {12.0f, -1.984375, {169.0f}}});
}

TEST(AdaGradTest, InitialAccumulatorAndZeroGradientByHand) {
  // lr = 7, a0 = 16, eps = 1, w0 = 0, g = 3, 0, 12:
  //   t=1: s = 9,   sqrt(25) = 5,   w = 0 - 21/6 = -3.5
  //   t=2: g = 0: s and w unchanged
  //   t=3: s = 153, sqrt(169) = 13, w = -3.5 - 84/14 = -9.5
  OptimizerConfig c = Config("adagrad", 7.0f);
  c.initial_accumulator = 16.0f;
  c.epsilon = 1.0f;
  ExpectSteps(c, 0.0f, {{3.0f, -3.5, {9.0f}}, {0.0f, -3.5, {9.0f}}, {12.0f, -9.5, {153.0f}}});
}

TEST(AdaGradTest, TwoStepsWithWeightDecayByHand) {
  // lr = 21/16, wd = 0.5, a0 = 0, eps = 1, w0 = 1:
  //   t=1: g = 2.5:       g' = 2.5 + 0.5   = 3, s = 9,  w = 1 - 63/64    = 0.015625
  //   t=2: g = 3.9921875: g' = g + 1/128   = 4, s = 25, w = 0.015625 - 0.875 = -0.859375
  OptimizerConfig c = Config("adagrad", 21.0f / 16.0f, 0.5f);
  c.initial_accumulator = 0.0f;
  c.epsilon = 1.0f;
  ExpectSteps(c, 1.0f, {{2.5f, 0.015625, {9.0f}}, {3.9921875f, -0.859375, {25.0f}}});
}

TEST(AdaGradTest, MatchesScalarFormulaOnRandomValues) {
  std::mt19937 rng(4);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  OptimizerConfig c = Config("adagrad", 0.05f, 0.01f);
  c.initial_accumulator = 0.1f;
  c.epsilon = 1e-6f;
  const size_t n = 31;
  std::vector<float> w(n), s(n, 0.0f), g(n);
  for (auto& x : w) x = d(rng);
  std::vector<double> rw(w.begin(), w.end()), rs(n, 0.0);
  const double a0 = c.initial_accumulator, eps = c.epsilon;
  for (int step = 1; step <= 4; ++step) {
    for (auto& x : g) x = d(rng);
    ApplyOptimizer(c, step, w, s, g);
    for (size_t i = 0; i < n; ++i) {
      const double gp = g[i] + 0.01 * rw[i];
      rs[i] += gp * gp;
      rw[i] -= 0.05 * gp / (std::sqrt(rs[i] + a0) + eps);
      EXPECT_NEAR(w[i], rw[i], 2e-6) << "step " << step << " i " << i;
      EXPECT_NEAR(s[i], rs[i], 2e-6) << "step " << step << " i " << i;
    }
  }
}

// ---------------------------------------------------------------- FTRL-Proximal

// alpha = lr; n' = n + g'^2; sigma = (sqrt(n') - sqrt(n)) / alpha; z += g' - sigma*w; n = n';
// w = |z| <= l1 ? 0 : -(z - sign(z)*l1) / ((beta + sqrt(n)) / alpha + l2).   Slots: z, n.
TEST(FtrlTest, ThreeStepsByHand) {
  // alpha = 1, beta = 1, l1 = l2 = 0, w0 = 0, g = 3, 4, 0:
  //   t=1: n = 9,  sigma = 3, z = 3,                 w = -3 / (1 + 3)    = -0.75
  //   t=2: n = 25, sigma = 2, z = 3 + 4 + 2*0.75 = 8.5, w = -8.5 / (1 + 5) = -1.41666667
  //   t=3: g = 0: n, z unchanged, w = -8.5 / 6 again
  OptimizerConfig c = Config("ftrl", 1.0f);
  c.ftrl_beta = 1.0f;
  ExpectSteps(c, 0.0f, {{3.0f, -0.75, {3.0f, 9.0f}}, {4.0f, -8.5 / 6, {8.5f, 25.0f}}, {0.0f, -8.5 / 6, {8.5f, 25.0f}}},
              /*w_tol=*/1e-6);
}

TEST(FtrlTest, L1GivesExactZerosByHand) {
  // alpha = 1, beta = 1, l1 = 4, w0 = 0, g = 3, 4, -12:
  //   t=1: n = 9,   z = 3 <= 4                          -> w = 0
  //   t=2: n = 25,  sigma = 2, z = 3 + 4 - 0 = 7 > 4     -> w = -(7 - 4) / (1 + 5) = -0.5
  //   t=3: n = 169, sigma = 8, z = 7 - 12 + 8*0.5 = -1    -> |z| <= 4: w = 0
  OptimizerConfig c = Config("ftrl", 1.0f);
  c.ftrl_beta = 1.0f;
  c.l1 = 4.0f;
  ExpectSteps(c, 0.0f, {{3.0f, 0.0, {3.0f, 9.0f}}, {4.0f, -0.5, {7.0f, 25.0f}}, {-12.0f, 0.0, {-1.0f, 169.0f}}});
}

TEST(FtrlTest, L2AndLearningRateByHand) {
  // alpha = 0.5, beta = 1, l2 = 2, w0 = 0, g = 3, 4:
  //   t=1: n = 9,  sigma = 3/0.5 = 6, z = 3,               w = -3 / ((1+3)/0.5 + 2)   = -0.3
  //   t=2: n = 25, sigma = 2/0.5 = 4, z = 3 + 4 + 4*0.3 = 8.2, w = -8.2 / ((1+5)/0.5 + 2) = -0.585714286
  OptimizerConfig c = Config("ftrl", 0.5f);
  c.ftrl_beta = 1.0f;
  c.l2 = 2.0f;
  std::vector<float> w = {0.0f}, slots(2, 0.0f);
  ApplyOptimizer(c, 1, w, slots, std::vector<float>{3.0f});
  EXPECT_NEAR(w[0], -0.3, 1e-7);
  ApplyOptimizer(c, 2, w, slots, std::vector<float>{4.0f});
  EXPECT_NEAR(slots[0], 8.2, 1e-6);
  EXPECT_NEAR(w[0], -8.2 / 14, 1e-6);
}

TEST(FtrlTest, MatchesScalarFormulaOnRandomValues) {
  std::mt19937 rng(6);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  OptimizerConfig c = Config("ftrl", 0.1f, 0.01f);
  c.ftrl_beta = 0.5f;
  c.l1 = 0.2f;
  c.l2 = 0.25f;
  const size_t n = 37;
  std::vector<float> w(n), slots(2 * n, 0.0f), g(n);
  for (auto& x : w) x = 0.05f * d(rng);  // non-zero initial weights enter through sigma * w
  std::vector<double> rw(w.begin(), w.end()), rz(n, 0.0), rn(n, 0.0);
  const double alpha = 0.1, beta = 0.5, l1 = c.l1, l2 = 0.25;
  int zeros = 0;
  for (int step = 1; step <= 4; ++step) {
    for (auto& x : g) x = d(rng);
    ApplyOptimizer(c, step, w, slots, g);
    for (size_t i = 0; i < n; ++i) {
      const double gp = g[i] + 0.01 * rw[i];
      const double n2 = rn[i] + gp * gp;
      const double sigma = (std::sqrt(n2) - std::sqrt(rn[i])) / alpha;
      rz[i] += gp - sigma * rw[i];
      rn[i] = n2;
      rw[i] = std::fabs(rz[i]) <= l1 ? 0.0 : -(rz[i] - std::copysign(l1, rz[i])) / ((beta + std::sqrt(n2)) / alpha + l2);
      if (rw[i] == 0.0) {
        ++zeros;
        EXPECT_EQ(w[i], 0.0f) << "step " << step << " i " << i;
      }
      EXPECT_NEAR(w[i], rw[i], 1e-5) << "step " << step << " i " << i;
      EXPECT_NEAR(slots[i], rz[i], 1e-4) << "step " << step << " i " << i;
      EXPECT_NEAR(slots[n + i], rn[i], 1e-5) << "step " << step << " i " << i;
    }
  }
  EXPECT_GT(zeros, 0);  // both branches were exercised
  EXPECT_LT(zeros, 4 * static_cast<int>(n));
}

// ---------------------------------------------------------------- element-wise property

// Applies 3 steps to [0, n) in one call, to [0, cut) and [cut, n) in separate calls (with
// their own slices of state), and to the two ranges of the whole table with
// ApplyOptimizerToRange (high range first), and requires bit-identical weights and state.
void ExpectSplitInvariant(const OptimizerConfig& c, size_t n, size_t cut, uint32_t seed) {
  const size_t k = static_cast<size_t>(OptimizerSlots(c.kind));
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> w(n);
  for (auto& x : w) x = d(rng);
  std::vector<float> whole_w = w, whole_s(k * n, 0.0f);
  std::vector<float> lo_w(w.begin(), w.begin() + cut), hi_w(w.begin() + cut, w.end());
  std::vector<float> lo_s(k * cut, 0.0f), hi_s(k * (n - cut), 0.0f);
  std::vector<float> range_w = w, range_s(k * n, 0.0f);
  for (int step = 1; step <= 3; ++step) {
    std::vector<float> g(n);
    for (auto& x : g) x = d(rng);
    ApplyOptimizer(c, step, whole_w, whole_s, g);
    ApplyOptimizer(c, step, lo_w, lo_s, std::span<const float>(g).subspan(0, cut));
    ApplyOptimizer(c, step, hi_w, hi_s, std::span<const float>(g).subspan(cut));
    ApplyOptimizerToRange(c, step, range_w, range_s, cut, std::span<const float>(g).subspan(cut));
    ApplyOptimizerToRange(c, step, range_w, range_s, 0, std::span<const float>(g).subspan(0, cut));
  }
  EXPECT_TRUE(BitEqual(whole_w, range_w)) << OptimizerKindName(c.kind) << " n=" << n << " cut=" << cut << " (ranges)";
  EXPECT_TRUE(BitEqual(whole_s, range_s)) << OptimizerKindName(c.kind) << " n=" << n << " cut=" << cut << " (ranges)";
  std::vector<float> joined_w = lo_w;
  joined_w.insert(joined_w.end(), hi_w.begin(), hi_w.end());
  EXPECT_TRUE(BitEqual(whole_w, joined_w)) << OptimizerKindName(c.kind) << " n=" << n << " cut=" << cut;
  // Slot j of the whole array is slot j of the low half followed by slot j of the high half.
  std::vector<float> joined_s;
  for (size_t j = 0; j < k; ++j) {
    joined_s.insert(joined_s.end(), lo_s.begin() + j * cut, lo_s.begin() + (j + 1) * cut);
    joined_s.insert(joined_s.end(), hi_s.begin() + j * (n - cut), hi_s.begin() + (j + 1) * (n - cut));
  }
  EXPECT_TRUE(BitEqual(whole_s, joined_s)) << OptimizerKindName(c.kind) << " n=" << n << " cut=" << cut;
}

TEST(ElementWiseTest, WholeEqualsHalvesBitForBit) {
  std::vector<OptimizerConfig> configs = {
      Config(OptimizerKind::kSgd, 0.01f),          Config(OptimizerKind::kSgd, 0.1f, 0.01f),
      Config(OptimizerKind::kMomentum, 0.01f),     Config(OptimizerKind::kMomentum, 0.05f, 0.001f),
      Config(OptimizerKind::kAdam, 0.001f),        Config(OptimizerKind::kAdam, 0.01f, 0.01f),
      Config(OptimizerKind::kSum, 1.0f),
      Config("adagrad", 0.05f),                    Config("adagrad", 0.1f, 0.01f),
      Config("ftrl", 0.1f),                        Config("ftrl", 0.05f, 0.01f),
  };
  configs.back().l1 = 0.01f;  // FTRL's zero branch on some elements
  configs.back().l2 = 0.1f;
  uint32_t seed = 10;
  for (const OptimizerConfig& c : configs) {
    // Odd lengths and cuts so vectorised bodies and scalar tails fall in different places.
    for (size_t n : {size_t{1}, size_t{7}, size_t{64}, size_t{1001}}) {
      for (size_t cut : {size_t{0}, size_t{1}, n / 3, n / 2, n - 1, n}) {
        if (cut > n) continue;
        ExpectSplitInvariant(c, n, cut, ++seed);
      }
    }
    for (size_t cut = 0; cut <= 40; ++cut) ExpectSplitInvariant(c, 40, cut, ++seed);
  }
}

TEST(ElementWiseTest, UnalignedSubspanEqualsAligned) {
  // The same values processed from an offset of 1..7 floats give the same results.
  const OptimizerConfig c = Config(OptimizerKind::kAdam, 0.01f, 0.01f);
  const size_t n = 100;
  std::mt19937 rng(77);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> w0(n), g(n);
  for (auto& x : w0) x = d(rng);
  for (auto& x : g) x = d(rng);
  std::vector<float> ref_w = w0, ref_s(2 * n, 0.0f);
  ApplyOptimizer(c, 1, ref_w, ref_s, g);
  for (size_t off = 1; off < 8; ++off) {
    std::vector<float> wbuf(n + off), gbuf(n + off), sbuf(2 * n + off, 0.0f);
    std::copy(w0.begin(), w0.end(), wbuf.begin() + off);
    std::copy(g.begin(), g.end(), gbuf.begin() + off);
    std::span<float> w(wbuf.data() + off, n);
    ApplyOptimizer(c, 1, w, std::span<float>(sbuf.data() + off, 2 * n), std::span<const float>(gbuf.data() + off, n));
    EXPECT_TRUE(BitEqual(ref_w, std::vector<float>(w.begin(), w.end()))) << "offset " << off;
    EXPECT_TRUE(BitEqual(ref_s, std::vector<float>(sbuf.begin() + off, sbuf.end()))) << "offset " << off;
  }
}

// ---------------------------------------------------------------- AddInto

TEST(AddIntoTest, AddsElementWise) {
  std::vector<float> dst = {1.0f, 2.0f, -3.0f};
  AddInto(dst, std::vector<float>{0.5f, -2.0f, 3.0f});
  EXPECT_EQ(dst, (std::vector<float>{1.5f, 0.0f, 0.0f}));
  AddInto(dst, std::vector<float>{1.0f, 1.0f, 1.0f});
  EXPECT_EQ(dst, (std::vector<float>{2.5f, 1.0f, 1.0f}));
}

TEST(AddIntoTest, MatchesScalarLoopForAllSmallLengths) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> d(-10.0f, 10.0f);
  for (size_t n = 0; n <= 67; ++n) {
    std::vector<float> dst(n), src(n);
    for (auto& x : dst) x = d(rng);
    for (auto& x : src) x = d(rng);
    std::vector<float> expect = dst;
    for (size_t i = 0; i < n; ++i) expect[i] = expect[i] + src[i];
    AddInto(dst, src);
    EXPECT_TRUE(BitEqual(dst, expect)) << "n " << n;
  }
}

TEST(AddIntoTest, SummingGradientsFromSeveralWorkers) {
  std::vector<float> sum(5, 0.0f);
  for (int worker = 1; worker <= 4; ++worker) AddInto(sum, std::vector<float>(5, static_cast<float>(worker)));
  EXPECT_EQ(sum, std::vector<float>(5, 10.0f));
}

// ---------------------------------------------------------------- registry

// Checkpoint manifests record these names and slot counts: changing one would refuse the
// checkpoints written before.
TEST(OptimizerRegistryTest, ListsTheBuiltInsWithTheirSlots) {
  const std::vector<std::pair<std::string, int>> expect = {
      {"sgd", 0}, {"momentum", 1}, {"adam", 2}, {"sum", 0}, {"adagrad", 1}, {"ftrl", 2}};
  const auto all = RegisteredOptimizers();
  ASSERT_EQ(all.size(), expect.size());
  for (size_t i = 0; i < all.size(); ++i) {
    EXPECT_EQ(all[i]->name(), expect[i].first);
    EXPECT_EQ(all[i]->slots(), expect[i].second) << expect[i].first;
    EXPECT_EQ(FindOptimizer(expect[i].first), all[i]) << expect[i].first;
    EXPECT_EQ(OptimizerSlots(expect[i].first), expect[i].second) << expect[i].first;
    EXPECT_EQ(OptimizerKindName(expect[i].first), expect[i].first);
    Result<const Optimizer*> r = LookupOptimizer(expect[i].first);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(*r, all[i]);
  }
  EXPECT_EQ(RegisteredOptimizerNames(), "sgd, momentum, adam, sum, adagrad, ftrl");
  // The constants for C++ callers name registered optimizers.
  for (std::string_view k : {OptimizerKind::kSgd, OptimizerKind::kMomentum, OptimizerKind::kAdam, OptimizerKind::kSum}) {
    EXPECT_NE(FindOptimizer(k), nullptr) << k;
  }
  EXPECT_EQ(OptimizerConfig{}.kind, "sgd");
}

TEST(OptimizerRegistryTest, UnknownNamesAreRefusedWithTheRegisteredNames) {
  for (const std::string name : {"", "SGD", "Adam", "adamw", " sgd", "sgd ", "rmsprop", "momentum2", "AdaGrad"}) {
    EXPECT_EQ(FindOptimizer(name), nullptr) << "'" << name << "'";
    EXPECT_EQ(OptimizerKindName(name), "?") << "'" << name << "'";
    Result<const Optimizer*> r = LookupOptimizer(name);
    ASSERT_FALSE(r.ok()) << "'" << name << "' found";
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("'" + name + "'"), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find("sgd, momentum, adam, sum, adagrad, ftrl"), std::string::npos)
        << r.status().message();
  }
}

TEST(OptimizerRegistryTest, LayoutRefusesATableNamingAnUnknownOptimizer) {
  TableSpec t{.name = "w", .size = 10};
  t.optimizer.kind = "rmsprop";
  auto l = TableLayout::Create({t}, 1);
  ASSERT_FALSE(l.ok());
  EXPECT_EQ(l.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(l.status().message().find("table 'w'"), std::string::npos) << l.status().ToString();
  EXPECT_NE(l.status().message().find("'rmsprop'"), std::string::npos) << l.status().ToString();
  EXPECT_NE(l.status().message().find("adagrad"), std::string::npos) << l.status().ToString();
}

TEST(OptimizerRegistryTest, LayoutDigestCoversTheOptimizerAndEveryHyperparameter) {
  auto digest = [](const OptimizerConfig& c) {
    TableSpec t{.name = "w", .size = 100};
    t.optimizer = c;
    auto l = TableLayout::Create({t}, 2);
    EXPECT_TRUE(l.ok()) << l.status().ToString();
    return l.ok() ? l->digest() : 0;
  };
  const OptimizerConfig base;
  const uint64_t d0 = digest(base);
  EXPECT_EQ(digest(base), d0);  // deterministic
  std::vector<uint64_t> seen = {d0};
  for (const Optimizer* o : RegisteredOptimizers()) {
    if (o->name() == base.kind) continue;
    OptimizerConfig c = base;
    c.kind = std::string(o->name());
    seen.push_back(digest(c));
  }
  for (float OptimizerConfig::*field :
       {&OptimizerConfig::learning_rate, &OptimizerConfig::momentum, &OptimizerConfig::beta1, &OptimizerConfig::beta2,
        &OptimizerConfig::epsilon, &OptimizerConfig::weight_decay, &OptimizerConfig::initial_accumulator,
        &OptimizerConfig::ftrl_beta, &OptimizerConfig::l1, &OptimizerConfig::l2}) {
    OptimizerConfig c = base;
    c.*field += 0.125f;
    seen.push_back(digest(c));
  }
  // All different: a worker and a server that disagree on any of these refuse each other.
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(std::adjacent_find(seen.begin(), seen.end()), seen.end());
  EXPECT_EQ(seen.size(), 1 + 5 + 10u);
}

}  // namespace
}  // namespace shardps
