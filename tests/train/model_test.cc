// Tests of worker::Model: table declarations, spec validation, gradients against a double-precision
// finite-difference reference, the on_ready protocol, Evaluate, linearity and determinism; the
// distillation loss (its gradient against finite differences, alpha = 0 bit for bit) and Logits.
#include "shardps/worker/model.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

namespace shardps::worker {
namespace {

// Parameters and gradients of one model, with the span views its API takes.
struct Buffers {
  std::vector<std::vector<float>> tables;
  std::vector<std::span<const float>> cview() const {
    return {tables.begin(), tables.end()};
  }
  std::vector<std::span<float>> view() {
    return {tables.begin(), tables.end()};
  }
};

std::unique_ptr<Model> MakeModel(const ModelSpec& spec) {
  auto m = Model::Create(spec);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return std::move(m).value();
}

Buffers ZeroBuffers(const Model& model) {
  Buffers b;
  for (const TableSpec& t : model.Tables(1)) b.tables.emplace_back(t.size, 0.0f);
  return b;
}

Buffers RandomParams(const Model& model, std::mt19937& rng, float range = 1.0f) {
  std::uniform_real_distribution<float> u(-range, range);
  Buffers b = ZeroBuffers(model);
  for (auto& t : b.tables)
    for (float& v : t) v = u(rng);
  return b;
}

std::vector<float> RandomInputs(int64_t rows, int64_t dim, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(rows * dim));
  for (float& v : x) v = u(rng);
  return x;
}

std::vector<int32_t> RandomLabels(int64_t rows, int classes, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> u(0, classes - 1);
  std::vector<int32_t> y(static_cast<size_t>(rows));
  for (int32_t& v : y) v = u(rng);
  return y;
}

// Double-precision logits of every row, and (optional) the signs of the hidden pre-activations.
std::vector<std::vector<double>> ReferenceLogits(const ModelSpec& spec, const std::vector<std::vector<double>>& p,
                                                 const std::vector<float>& x, int64_t rows,
                                                 std::vector<bool>* relu_signs = nullptr) {
  std::vector<int64_t> d{spec.input_dim};
  d.insert(d.end(), spec.hidden.begin(), spec.hidden.end());
  d.push_back(spec.num_classes);
  const size_t L = d.size() - 1;
  if (relu_signs) relu_signs->clear();
  std::vector<std::vector<double>> out;
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<double> a(x.begin() + r * d[0], x.begin() + (r + 1) * d[0]);
    for (size_t l = 0; l < L; ++l) {
      std::vector<double> z(static_cast<size_t>(d[l + 1]));
      for (int64_t o = 0; o < d[l + 1]; ++o) {
        double s = p[2 * l + 1][o];
        for (int64_t i = 0; i < d[l]; ++i) s += a[i] * p[2 * l][i * d[l + 1] + o];
        z[o] = s;
      }
      if (l + 1 < L) {
        for (double& v : z) {
          if (relu_signs) relu_signs->push_back(v > 0);
          v = std::max(v, 0.0);
        }
      }
      a = std::move(z);
    }
    out.push_back(std::move(a));
  }
  return out;
}

// Straightforward double-precision forward pass: the sum of the samples' cross-entropy losses.
// `relu_signs` (optional) records whether each hidden pre-activation was positive, so the finite
// difference can tell when a perturbation crossed a ReLU kink.
double ReferenceLoss(const ModelSpec& spec, const std::vector<std::vector<double>>& p, const std::vector<float>& x,
                     const std::vector<int32_t>& y, int64_t rows, std::vector<bool>* relu_signs = nullptr) {
  const auto z = ReferenceLogits(spec, p, x, rows, relu_signs);
  double loss = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const std::vector<double>& a = z[r];
    double m = *std::max_element(a.begin(), a.end());
    double s = 0;
    for (double v : a) s += std::exp(v - m);
    loss += std::log(s) + m - a[y[r]];
  }
  return loss;
}

// ---------------------------------------------------------------------------------------------
// Create and Tables.

// Create(spec) fails with InvalidArgument and a message naming `needle` (the offending value).
void ExpectRejected(const ModelSpec& spec, const std::string& needle) {
  auto m = Model::Create(spec);
  ASSERT_FALSE(m.ok()) << "input_dim " << spec.input_dim << " classes " << spec.num_classes;
  EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(m.status().message().find(needle), std::string::npos) << m.status().message();
}

ModelSpec Spec(int64_t input_dim, int num_classes, std::vector<int64_t> hidden = {}) {
  ModelSpec s;
  s.input_dim = input_dim;
  s.num_classes = num_classes;
  s.hidden = std::move(hidden);
  return s;
}

TEST(ModelCreate, RejectsBadSpecs) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  ExpectRejected(Spec(0, 10), "0");
  ExpectRejected(Spec(-3, 10), "-3");
  ExpectRejected(Spec(4, 1), "1");
  ExpectRejected(Spec(4, 0), "0");
  ExpectRejected(Spec(4, -2), "-2");
  ExpectRejected(Spec(4, 3, {5, 0}), "0");
  ExpectRejected(Spec(4, 3, {-7}), "-7");
  // 2^20 x 2^12 = 2^32 floats in l0.w.
  ExpectRejected(Spec(int64_t{1} << 20, 3, {int64_t{1} << 12}), "1048576");
  // (2^30 + 1) x 2 > 2^31 floats.
  ExpectRejected(Spec((int64_t{1} << 30) + 1, 2), "1073741825");
  // Products that overflow int64.
  ExpectRejected(Spec(kMax, 2), std::to_string(kMax));
  ExpectRejected(Spec(3, 2, {4, kMax / 2}), std::to_string(kMax / 2));
  ExpectRejected(Spec(3, 2, {kMax, kMax}), std::to_string(kMax));
}

TEST(ModelCreate, AcceptsLimits) {
  // Exactly 2^31 floats in one table is allowed (Create does not allocate anything).
  EXPECT_TRUE(Model::Create({.input_dim = int64_t{1} << 30, .num_classes = 2}).ok());
  EXPECT_TRUE(Model::Create({.input_dim = 1, .num_classes = 2}).ok());
  EXPECT_TRUE(Model::Create({.input_dim = 1, .num_classes = 2, .hidden = {1, 1, 1}}).ok());
}

TEST(ModelTables, MlpNamesSizesOrderInit) {
  auto model = MakeModel({.input_dim = 784, .num_classes = 10, .hidden = {256, 64}});
  EXPECT_EQ(model->name(), "mlp");
  EXPECT_EQ(model->num_tables(), 6u);
  const std::vector<TableSpec> t = model->Tables(/*seed=*/7);
  ASSERT_EQ(t.size(), 6u);
  const std::vector<std::string> names = {"l0.w", "l0.b", "l1.w", "l1.b", "l2.w", "l2.b"};
  const std::vector<uint64_t> sizes = {784 * 256, 256, 256 * 64, 64, 64 * 10, 10};
  const std::vector<std::pair<int, int>> fan = {{784, 256}, {256, 64}, {64, 10}};
  for (size_t i = 0; i < t.size(); ++i) {
    EXPECT_EQ(t[i].name, names[i]);
    EXPECT_EQ(t[i].size, sizes[i]);
    if (i % 2 == 0) {
      const auto [in, out] = fan[i / 2];
      const float limit = static_cast<float>(std::sqrt(6.0 / (in + out)));
      EXPECT_EQ(t[i].init.kind, InitKind::kUniform) << names[i];
      EXPECT_FLOAT_EQ(t[i].init.low, -limit);
      EXPECT_FLOAT_EQ(t[i].init.high, limit);
      EXPECT_EQ(t[i].init.seed, 7u);
    } else {
      EXPECT_EQ(t[i].init.kind, InitKind::kZeros) << names[i];
    }
    // The optimizer is left at its default for the caller to set.
    EXPECT_EQ(t[i].optimizer.kind, OptimizerConfig{}.kind);
    EXPECT_EQ(t[i].optimizer.learning_rate, OptimizerConfig{}.learning_rate);
  }
  // The seed is a deterministic function of the argument.
  const std::vector<TableSpec> again = model->Tables(7);
  const std::vector<TableSpec> other = model->Tables(8);
  EXPECT_EQ(again[0].init.seed, t[0].init.seed);
  EXPECT_NE(other[0].init.seed, t[0].init.seed);
}

TEST(ModelTables, SoftmaxStartsAtZero) {
  auto model = MakeModel({.input_dim = 784, .num_classes = 10});
  EXPECT_EQ(model->name(), "softmax");
  EXPECT_EQ(model->num_tables(), 2u);
  const std::vector<TableSpec> t = model->Tables(3);
  ASSERT_EQ(t.size(), 2u);
  EXPECT_EQ(t[0].name, "l0.w");
  EXPECT_EQ(t[0].size, 7840u);
  EXPECT_EQ(t[0].init.kind, InitKind::kZeros);
  EXPECT_EQ(t[1].name, "l0.b");
  EXPECT_EQ(t[1].size, 10u);
  EXPECT_EQ(t[1].init.kind, InitKind::kZeros);
}

TEST(ModelTables, InitializedWeightsStayInRange) {
  auto model = MakeModel({.input_dim = 30, .num_classes = 4, .hidden = {20}});
  const std::vector<TableSpec> t = model->Tables(11);
  std::vector<float> w0(t[0].size), w1(t[2].size);
  InitializeWeights(t[0].init, 0, 0, w0);
  InitializeWeights(t[2].init, 2, 0, w1);
  for (float v : w0) EXPECT_TRUE(v >= t[0].init.low && v <= t[0].init.high) << v;
  for (float v : w1) EXPECT_TRUE(v >= t[2].init.low && v <= t[2].init.high) << v;
  EXPECT_NE(w0[0], w0[1]);
}

// ---------------------------------------------------------------------------------------------
// Gradient against finite differences.

class ModelGradientCheck : public ::testing::TestWithParam<std::vector<int64_t>> {};

TEST_P(ModelGradientCheck, MatchesCentralDifferences) {
  const ModelSpec spec{.input_dim = 7, .num_classes = 3, .hidden = GetParam()};
  auto model = MakeModel(spec);
  std::mt19937 rng(1234);
  const int64_t rows = 6;
  Buffers params = RandomParams(*model, rng);
  const std::vector<float> x = RandomInputs(rows, spec.input_dim, rng);
  const std::vector<int32_t> y = RandomLabels(rows, spec.num_classes, rng);

  Buffers grads = ZeroBuffers(*model);
  for (auto& g : grads.tables) std::fill(g.begin(), g.end(), std::nanf(""));  // every element is written
  const auto pv = params.cview();
  const auto gv = grads.view();
  const double loss = model->Gradient(pv, x.data(), y.data(), rows, 1.0f, gv);

  std::vector<std::vector<double>> p;
  for (const auto& t : params.tables) p.emplace_back(t.begin(), t.end());
  std::vector<bool> base_signs;
  const double ref = ReferenceLoss(spec, p, x, y, rows, &base_signs);
  EXPECT_NEAR(loss, ref, 1e-5 * std::abs(ref) + 1e-5);

  const double eps = 1e-5;
  int checked = 0, skipped = 0, significant = 0;
  double worst = 0;  // largest error as a fraction of the tolerance
  for (size_t t = 0; t < p.size(); ++t) {
    for (size_t i = 0; i < p[t].size(); ++i) {
      const double saved = p[t][i];
      std::vector<bool> sp, sm;
      p[t][i] = saved + eps;
      const double lp = ReferenceLoss(spec, p, x, y, rows, &sp);
      p[t][i] = saved - eps;
      const double lm = ReferenceLoss(spec, p, x, y, rows, &sm);
      p[t][i] = saved;
      if (sp != base_signs || sm != base_signs) {  // crossed a ReLU kink: no derivative to check
        ++skipped;
        continue;
      }
      const double fd = (lp - lm) / (2 * eps);
      const double g = grads.tables[t][i];
      ASSERT_TRUE(std::isfinite(g)) << "table " << t << " element " << i;
      // Float rounding of the model's passes is ~1e-7 relative; the difference quotient's own
      // error is ~1e-10. A real bug is off by far more than this.
      EXPECT_NEAR(g, fd, 1e-5 + 1e-4 * std::abs(fd)) << "table " << t << " element " << i;
      worst = std::max(worst, std::abs(g - fd) / (1e-5 + 1e-4 * std::abs(fd)));
      ++checked;
      if (std::abs(fd) > 1e-2) ++significant;
    }
  }
  // The check is not vacuous: nearly every element was compared and many gradients are sizeable.
  EXPECT_LE(skipped, checked / 20);
  EXPECT_GE(significant, checked / 3) << "checked " << checked;
  RecordProperty("worst_error_fraction_of_tolerance", std::to_string(worst));
  RecordProperty("checked", checked);
  RecordProperty("skipped", skipped);
}

INSTANTIATE_TEST_SUITE_P(Shapes, ModelGradientCheck,
                         ::testing::Values(std::vector<int64_t>{}, std::vector<int64_t>{5},
                                           std::vector<int64_t>{5, 4}),
                         [](const auto& info) {
                           if (info.param.empty()) return std::string("softmax");
                           std::string n = "h";
                           for (int64_t h : info.param) {
                             n.push_back('_');
                             n.append(std::to_string(h));
                           }
                           return n;
                         });

TEST(ModelGradient, LargeLogitsStayFinite) {
  // Logits around +-1000: a naive softmax overflows; the max-subtraction trick must not.
  auto model = MakeModel({.input_dim = 2, .num_classes = 3});
  Buffers params = ZeroBuffers(*model);
  params.tables[0] = {1000, -1000, 500, 0, 0, 1000};  // logits = [1000 x0, 1000 x1 - 1000 x0...]
  const std::vector<float> x = {1, 0, 0, 1, 1, 1};
  const std::vector<int32_t> y = {0, 1, 2};
  Buffers grads = ZeroBuffers(*model);
  const double loss = model->Gradient(params.cview(), x.data(), y.data(), 3, 1.0f, grads.view());
  ASSERT_TRUE(std::isfinite(loss));
  // Row 0: logits (1000, -1000, 500), label 0: loss ~ exp(-500) ~ 0.
  // Row 1: logits (0, 0, 1000), label 1: loss 1000. Row 2: logits (1000, -1000, 1500), label 2: ~0.
  EXPECT_NEAR(loss, 1000.0, 1e-3);
  for (const auto& g : grads.tables)
    for (float v : g) EXPECT_TRUE(std::isfinite(v));
  const EvalResult e = model->Evaluate(params.cview(), x.data(), y.data(), 3);
  EXPECT_NEAR(e.loss_sum, 1000.0, 1e-3);
  EXPECT_EQ(e.correct, 2);
}

// ---------------------------------------------------------------------------------------------
// Protocol, linearity, determinism.

TEST(ModelGradient, OnReadyOncePerTableLastLayerFirstWithFinalGradients) {
  auto model = MakeModel({.input_dim = 7, .num_classes = 3, .hidden = {5, 4}});
  std::mt19937 rng(5);
  const int64_t rows = 9;
  Buffers params = RandomParams(*model, rng);
  const auto x = RandomInputs(rows, 7, rng);
  const auto y = RandomLabels(rows, 3, rng);
  Buffers grads = ZeroBuffers(*model);
  std::vector<size_t> order;
  std::vector<std::vector<float>> at_ready(model->num_tables());
  const double loss =
      model->Gradient(params.cview(), x.data(), y.data(), rows, 0.5f, grads.view(), [&](size_t t, uint64_t b, uint64_t e) {
        order.push_back(t);
        EXPECT_EQ(b, 0u) << "table " << t;  // no block size: whole tables
        EXPECT_EQ(e, grads.tables.at(t).size()) << "table " << t;
        at_ready.at(t) = grads.tables.at(t);  // must already be final
      });
  // Bias then weight, layer 2, then 1, then 0.
  EXPECT_EQ(order, (std::vector<size_t>{5, 4, 3, 2, 1, 0}));
  for (size_t t = 0; t < model->num_tables(); ++t) EXPECT_EQ(at_ready[t], grads.tables[t]) << "table " << t;

  // Same result without a callback.
  Buffers grads2 = ZeroBuffers(*model);
  EXPECT_EQ(model->Gradient(params.cview(), x.data(), y.data(), rows, 0.5f, grads2.view()), loss);
  EXPECT_EQ(grads2.tables, grads.tables);

  // Softmax regression: bias then weight of its single layer.
  auto soft = MakeModel({.input_dim = 7, .num_classes = 3});
  Buffers sp = RandomParams(*soft, rng), sg = ZeroBuffers(*soft);
  order.clear();
  soft->Gradient(sp.cview(), x.data(), y.data(), rows, 1.0f, sg.view(), [&](size_t t, uint64_t, uint64_t) { order.push_back(t); });
  EXPECT_EQ(order, (std::vector<size_t>{1, 0}));
}

// Blocked weight gradients: each table's reported ranges are whole rows (at most block_floats
// of them unless one row is wider), in order, disjoint and covering the table, and final when
// reported; the same block size gives the same bits every time, and any block size gives the
// unblocked gradient up to float rounding (small blocks may take another Eigen kernel).
void CheckBlocks(const ModelSpec& spec, int64_t rows, uint64_t block_floats, uint32_t seed) {
  SCOPED_TRACE("block_floats " + std::to_string(block_floats));
  auto model = MakeModel(spec);
  std::mt19937 rng(seed);
  Buffers params = RandomParams(*model, rng);
  const auto x = RandomInputs(rows, spec.input_dim, rng);
  const auto y = RandomLabels(rows, spec.num_classes, rng);
  Buffers whole = ZeroBuffers(*model), blocked = ZeroBuffers(*model), again = ZeroBuffers(*model);
  const double lw = model->Gradient(params.cview(), x.data(), y.data(), rows, 0.25f, whole.view());
  std::vector<uint64_t> next(model->num_tables(), 0);  // each table's next unreported element
  std::vector<size_t> table_order;
  std::vector<std::vector<float>> at_ready = whole.tables;  // each element as it was when reported
  const double lb = model->Gradient(
      params.cview(), x.data(), y.data(), rows, 0.25f, blocked.view(),
      [&](size_t t, uint64_t b, uint64_t e) {
        ASSERT_LT(t, next.size());
        EXPECT_EQ(b, next[t]) << "table " << t;
        ASSERT_LT(b, e) << "table " << t;
        ASSERT_LE(e, whole.tables[t].size()) << "table " << t;
        next[t] = e;
        if (table_order.empty() || table_order.back() != t) table_order.push_back(t);
        std::copy(blocked.tables[t].begin() + b, blocked.tables[t].begin() + e, at_ready[t].begin() + b);
        if (t % 2 == 0 && block_floats > 0) {
          const uint64_t cols = whole.tables[t + 1].size();  // a weight table's row is its bias's width
          EXPECT_EQ(b % cols, 0u);
          EXPECT_EQ(e % cols, 0u);
          EXPECT_LE(e - b, std::max<uint64_t>(block_floats, cols));
        }
      },
      block_floats);
  EXPECT_EQ(lb, lw);  // the forward pass does not depend on the blocks
  for (size_t t = 0; t < next.size(); ++t) EXPECT_EQ(next[t], whole.tables[t].size()) << "table " << t << " not covered";
  std::vector<size_t> expected;
  for (size_t t = model->num_tables(); t-- > 0;) expected.push_back(t);  // bias, then weight, last layer first
  EXPECT_EQ(table_order, expected);
  EXPECT_EQ(at_ready, blocked.tables);  // nothing changed after its on_ready
  model->Gradient(params.cview(), x.data(), y.data(), rows, 0.25f, again.view(), nullptr, block_floats);
  EXPECT_EQ(again.tables, blocked.tables);
  for (size_t t = 0; t < whole.tables.size(); ++t) {
    for (size_t i = 0; i < whole.tables[t].size(); ++i) {
      ASSERT_NEAR(blocked.tables[t][i], whole.tables[t][i], 1e-6f + 1e-5f * std::abs(whole.tables[t][i]))
          << "table " << t << " at " << i;
    }
  }
}

TEST(ModelGradient, WeightGradientsInRowBlocks) {
  for (uint64_t b : {0u, 1u, 12u, 20u, 35u, 1000u}) CheckBlocks({.input_dim = 7, .num_classes = 3, .hidden = {5, 4}}, 9, b, 21);
  // The shipped MLP's shape and the training chunk size (128 rows of 256 per block).
  CheckBlocks({.input_dim = 784, .num_classes = 10, .hidden = {256}}, 32, 32768, 22);
  CheckBlocks({.input_dim = 784, .num_classes = 10, .hidden = {256}}, 64, 5000, 23);
}

TEST(ModelGradient, ZeroRows) {
  auto model = MakeModel({.input_dim = 7, .num_classes = 3, .hidden = {5}});
  std::mt19937 rng(6);
  Buffers params = RandomParams(*model, rng);
  Buffers grads = ZeroBuffers(*model);
  for (auto& g : grads.tables) std::fill(g.begin(), g.end(), 3.0f);
  std::vector<size_t> order;
  const float x = 0;
  const int32_t y = 0;
  EXPECT_EQ(model->Gradient(params.cview(), &x, &y, 0, 1.0f, grads.view(),
                            [&](size_t t, uint64_t, uint64_t) { order.push_back(t); }),
            0.0);
  EXPECT_EQ(order, (std::vector<size_t>{3, 2, 1, 0}));
  for (const auto& g : grads.tables)
    for (float v : g) EXPECT_EQ(v, 0.0f);
  const EvalResult e = model->Evaluate(params.cview(), &x, &y, 0);
  EXPECT_EQ(e.samples, 0);
  EXPECT_EQ(e.correct, 0);
  EXPECT_EQ(e.loss_sum, 0.0);
}

TEST(ModelGradient, ScaleIsLinear) {
  auto model = MakeModel({.input_dim = 13, .num_classes = 4, .hidden = {11, 6}});
  std::mt19937 rng(7);
  const int64_t rows = 17;
  Buffers params = RandomParams(*model, rng);
  const auto x = RandomInputs(rows, 13, rng);
  const auto y = RandomLabels(rows, 4, rng);
  Buffers g1 = ZeroBuffers(*model), gp2 = ZeroBuffers(*model), gs = ZeroBuffers(*model);
  const double l1 = model->Gradient(params.cview(), x.data(), y.data(), rows, 1.0f, g1.view());
  // A power of two scales exactly.
  const double l2 = model->Gradient(params.cview(), x.data(), y.data(), rows, 0.25f, gp2.view());
  const float s = 0.0371f;
  const double l3 = model->Gradient(params.cview(), x.data(), y.data(), rows, s, gs.view());
  // The loss does not depend on the scale.
  EXPECT_EQ(l1, l2);
  EXPECT_EQ(l1, l3);
  for (size_t t = 0; t < g1.tables.size(); ++t) {
    float maxabs = 0;
    for (float v : g1.tables[t]) maxabs = std::max(maxabs, std::abs(v));
    for (size_t i = 0; i < g1.tables[t].size(); ++i) {
      EXPECT_EQ(gp2.tables[t][i], 0.25f * g1.tables[t][i]) << t << " " << i;
      EXPECT_NEAR(gs.tables[t][i], s * g1.tables[t][i], 1e-5f * s * maxabs) << t << " " << i;
    }
  }
}

TEST(ModelGradient, SumOverHalvesEqualsWhole) {
  auto model = MakeModel({.input_dim = 20, .num_classes = 5, .hidden = {16}});
  std::mt19937 rng(8);
  const int64_t rows = 64, half = 29;  // uneven split on purpose
  Buffers params = RandomParams(*model, rng, 0.5f);
  const auto x = RandomInputs(rows, 20, rng);
  const auto y = RandomLabels(rows, 5, rng);
  Buffers whole = ZeroBuffers(*model), a = ZeroBuffers(*model), b = ZeroBuffers(*model);
  const double lw = model->Gradient(params.cview(), x.data(), y.data(), rows, 1.0f, whole.view());
  const double la = model->Gradient(params.cview(), x.data(), y.data(), half, 1.0f, a.view());
  const double lb = model->Gradient(params.cview(), x.data() + half * 20, y.data() + half, rows - half, 1.0f, b.view());
  EXPECT_NEAR(lw, la + lb, 1e-5 * std::abs(lw));
  for (size_t t = 0; t < whole.tables.size(); ++t) {
    float maxabs = 0;
    for (float v : whole.tables[t]) maxabs = std::max(maxabs, std::abs(v));
    ASSERT_GT(maxabs, 0.0f);
    for (size_t i = 0; i < whole.tables[t].size(); ++i) {
      EXPECT_NEAR(whole.tables[t][i], a.tables[t][i] + b.tables[t][i], 1e-5f * maxabs) << t << " " << i;
    }
  }
}

TEST(ModelGradient, DeterministicBitForBit) {
  // A realistic size, so Eigen's blocked matrix-product kernels are exercised.
  auto model = MakeModel({.input_dim = 784, .num_classes = 10, .hidden = {256}});
  std::mt19937 rng(9);
  const int64_t rows = 64;
  Buffers params = RandomParams(*model, rng, 0.05f);
  const auto x = RandomInputs(rows, 784, rng);
  const auto y = RandomLabels(rows, 10, rng);
  Buffers g1 = ZeroBuffers(*model), g2 = ZeroBuffers(*model);
  const double l1 = model->Gradient(params.cview(), x.data(), y.data(), rows, 1.0f / 64, g1.view());
  const double l2 = model->Gradient(params.cview(), x.data(), y.data(), rows, 1.0f / 64, g2.view());
  EXPECT_EQ(std::memcmp(&l1, &l2, sizeof l1), 0);
  for (size_t t = 0; t < g1.tables.size(); ++t) {
    ASSERT_EQ(std::memcmp(g1.tables[t].data(), g2.tables[t].data(), g1.tables[t].size() * sizeof(float)), 0) << t;
  }
  // Evaluate is deterministic too and agrees with Gradient's loss.
  const EvalResult e1 = model->Evaluate(params.cview(), x.data(), y.data(), rows);
  const EvalResult e2 = model->Evaluate(params.cview(), x.data(), y.data(), rows);
  EXPECT_EQ(std::memcmp(&e1.loss_sum, &e2.loss_sum, sizeof(double)), 0);
  EXPECT_EQ(e1.correct, e2.correct);
  EXPECT_NEAR(e1.loss_sum, l1, 1e-5 * l1);
}

// ---------------------------------------------------------------------------------------------
// Evaluate.

TEST(ModelEvaluate, HandMadeSoftmax) {
  // Weights = 10 * identity: the prediction is the argmax of the input.
  auto model = MakeModel({.input_dim = 3, .num_classes = 3});
  Buffers params = ZeroBuffers(*model);
  params.tables[0] = {10, 0, 0, 0, 10, 0, 0, 0, 10};
  const std::vector<float> x = {
      1, 0, 0,      // predicts 0
      0, 2, 1,      // predicts 1
      0, 0, 3,      // predicts 2
      0.5, 0.1, 0,  // predicts 0
      0, 1, 0,      // predicts 1
  };
  const std::vector<int32_t> y = {0, 1, 1, 0, 2};  // rows 2 and 4 are wrong
  const EvalResult e = model->Evaluate(params.cview(), x.data(), y.data(), 5);
  EXPECT_EQ(e.samples, 5);
  EXPECT_EQ(e.correct, 3);
  std::vector<std::vector<double>> p;
  for (const auto& t : params.tables) p.emplace_back(t.begin(), t.end());
  EXPECT_NEAR(e.loss_sum, ReferenceLoss(model->spec(), p, x, y, 5), 1e-4);

  // A bias that overrides the input: always class 2.
  params.tables[1] = {0, 0, 100};
  EXPECT_EQ(model->Evaluate(params.cview(), x.data(), y.data(), 5).correct, 1);  // only row 4's label is 2
  const std::vector<int32_t> all2 = {2, 2, 2, 2, 2};
  EXPECT_EQ(model->Evaluate(params.cview(), x.data(), all2.data(), 5).correct, 5);
}

TEST(ModelEvaluate, TiesGoToTheLowestIndex) {
  // All-zero parameters: every logit ties, so every prediction is class 0 and each loss is log C.
  auto model = MakeModel({.input_dim = 4, .num_classes = 5, .hidden = {3}});
  Buffers params = ZeroBuffers(*model);
  std::mt19937 rng(10);
  const auto x = RandomInputs(8, 4, rng);
  const std::vector<int32_t> y = {0, 1, 2, 3, 4, 0, 0, 4};
  const EvalResult e = model->Evaluate(params.cview(), x.data(), y.data(), 8);
  EXPECT_EQ(e.samples, 8);
  EXPECT_EQ(e.correct, 3);
  EXPECT_NEAR(e.loss_sum, 8 * std::log(5.0), 1e-5);
  // A tie between classes 1 and 3 above the rest picks 1.
  params.tables[3] = {0, 2, 0, 2, -1};
  const std::vector<int32_t> ones(8, 1), threes(8, 3);
  EXPECT_EQ(model->Evaluate(params.cview(), x.data(), ones.data(), 8).correct, 8);
  EXPECT_EQ(model->Evaluate(params.cview(), x.data(), threes.data(), 8).correct, 0);
}

TEST(ModelEvaluate, HandMadeMlp) {
  // Hidden layer = ReLU(x) and ReLU(-x) of a 1-d input; the output picks the sign of x.
  auto model = MakeModel({.input_dim = 1, .num_classes = 2, .hidden = {2}});
  Buffers params = ZeroBuffers(*model);
  params.tables[0] = {1, -1};        // l0.w: 1 x 2
  params.tables[2] = {5, 0, 0, 5};   // l1.w: 2 x 2 (hidden unit h -> class h)
  const std::vector<float> x = {3, -2, 0.5, -0.1, 7};
  const std::vector<int32_t> y = {0, 1, 0, 1, 1};  // the last one is wrong
  const EvalResult e = model->Evaluate(params.cview(), x.data(), y.data(), 5);
  EXPECT_EQ(e.correct, 4);
  std::vector<std::vector<double>> p;
  for (const auto& t : params.tables) p.emplace_back(t.begin(), t.end());
  EXPECT_NEAR(e.loss_sum, ReferenceLoss(model->spec(), p, x, y, 5), 1e-4);
}

TEST(ModelEvaluate, ManyRowsMatchReference) {
  // More rows than Evaluate's internal block, so blocks are stitched together.
  auto model = MakeModel({.input_dim = 6, .num_classes = 4, .hidden = {8}});
  std::mt19937 rng(11);
  const int64_t rows = 2500;
  Buffers params = RandomParams(*model, rng);
  const auto x = RandomInputs(rows, 6, rng);
  const auto y = RandomLabels(rows, 4, rng);
  const EvalResult e = model->Evaluate(params.cview(), x.data(), y.data(), rows);
  EXPECT_EQ(e.samples, rows);
  std::vector<std::vector<double>> p;
  for (const auto& t : params.tables) p.emplace_back(t.begin(), t.end());
  EXPECT_NEAR(e.loss_sum, ReferenceLoss(model->spec(), p, x, y, rows), 1e-5 * e.loss_sum);
  // Correct count: a reference argmax per row (each row evaluated alone).
  int64_t correct = 0;
  for (int64_t r = 0; r < rows; ++r) correct += model->Evaluate(params.cview(), x.data() + r * 6, y.data() + r, 1).correct;
  EXPECT_EQ(e.correct, correct);
  EXPECT_GT(correct, 0);
  EXPECT_LT(correct, rows);
  // Gradient's loss agrees.
  Buffers g = ZeroBuffers(*model);
  EXPECT_NEAR(model->Gradient(params.cview(), x.data(), y.data(), rows, 1.0f, g.view()), e.loss_sum, 1e-5 * e.loss_sum);
}

// ---------------------------------------------------------------------------------------------
// Distillation (knowledge distillation, Hinton et al. 2015): the loss, its gradient, alpha = 0.

// log softmax(v / T), in double.
std::vector<double> LogSoftmax(const std::vector<double>& v, double T) {
  double m = -std::numeric_limits<double>::infinity();
  for (double e : v) m = std::max(m, e / T);
  double s = 0;
  for (double e : v) s += std::exp(e / T - m);
  std::vector<double> out;
  for (double e : v) out.push_back(e / T - m - std::log(s));
  return out;
}

// The distillation loss written straight from its definition: per row
//   alpha * T^2 * (-sum_c softmax(t/T)_c log softmax(z/T)_c) + (1 - alpha) * (-log softmax(z)_y).
double ReferenceDistillLoss(const ModelSpec& spec, const std::vector<std::vector<double>>& p, const std::vector<float>& x,
                            const std::vector<int32_t>& y, const std::vector<float>& teacher, int64_t rows, double T,
                            double alpha, std::vector<bool>* relu_signs = nullptr) {
  const auto z = ReferenceLogits(spec, p, x, rows, relu_signs);
  const int C = spec.num_classes;
  double loss = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const std::vector<double> t(teacher.begin() + r * C, teacher.begin() + (r + 1) * C);
    const auto log_u = LogSoftmax(t, T);
    const auto log_q = LogSoftmax(z[r], T);
    double soft = 0;
    for (int c = 0; c < C; ++c) soft -= std::exp(log_u[c]) * log_q[c];
    const double hard = -LogSoftmax(z[r], 1.0)[y[r]];
    loss += alpha * T * T * soft + (1 - alpha) * hard;
  }
  return loss;
}

std::vector<float> RandomTeacherLogits(int64_t rows, int classes, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-3.0f, 3.0f);
  std::vector<float> t(static_cast<size_t>(rows * classes));
  for (float& v : t) v = u(rng);
  return t;
}

struct DistillCase {
  std::vector<int64_t> hidden;
  float temperature;
  float alpha;
};

void PrintTo(const DistillCase& c, std::ostream* os) {
  *os << "hidden " << c.hidden.size() << " layers, T " << c.temperature << ", alpha " << c.alpha;
}

class DistillationGradientCheck : public ::testing::TestWithParam<DistillCase> {};

TEST_P(DistillationGradientCheck, MatchesCentralDifferencesOfTheDistillationLoss) {
  const DistillCase& dc = GetParam();
  const ModelSpec spec{.input_dim = 7, .num_classes = 4, .hidden = dc.hidden};
  auto model = MakeModel(spec);
  std::mt19937 rng(4321);
  const int64_t rows = 6;
  Buffers params = RandomParams(*model, rng);
  const std::vector<float> x = RandomInputs(rows, spec.input_dim, rng);
  const std::vector<int32_t> y = RandomLabels(rows, spec.num_classes, rng);
  const std::vector<float> teacher = RandomTeacherLogits(rows, spec.num_classes, rng);
  const Distillation distill{.teacher_logits = teacher.data(), .temperature = dc.temperature, .alpha = dc.alpha};

  Buffers grads = ZeroBuffers(*model);
  for (auto& g : grads.tables) std::fill(g.begin(), g.end(), std::nanf(""));  // every element is written
  const double loss = model->Gradient(params.cview(), x.data(), y.data(), rows, 1.0f, grads.view(), nullptr, 0, &distill);

  std::vector<std::vector<double>> p;
  for (const auto& t : params.tables) p.emplace_back(t.begin(), t.end());
  std::vector<bool> base_signs;
  const double T = dc.temperature, A = dc.alpha;
  const double ref = ReferenceDistillLoss(spec, p, x, y, teacher, rows, T, A, &base_signs);
  EXPECT_NEAR(loss, ref, 1e-5 * std::abs(ref) + 1e-5) << "Gradient returns the distillation loss";

  const double eps = 1e-5;
  int checked = 0, skipped = 0, significant = 0;
  for (size_t t = 0; t < p.size(); ++t) {
    for (size_t i = 0; i < p[t].size(); ++i) {
      const double saved = p[t][i];
      std::vector<bool> sp, sm;
      p[t][i] = saved + eps;
      const double lp = ReferenceDistillLoss(spec, p, x, y, teacher, rows, T, A, &sp);
      p[t][i] = saved - eps;
      const double lm = ReferenceDistillLoss(spec, p, x, y, teacher, rows, T, A, &sm);
      p[t][i] = saved;
      if (sp != base_signs || sm != base_signs) {  // crossed a ReLU kink
        ++skipped;
        continue;
      }
      const double fd = (lp - lm) / (2 * eps);
      const double g = grads.tables[t][i];
      ASSERT_TRUE(std::isfinite(g)) << "table " << t << " element " << i;
      EXPECT_NEAR(g, fd, 1e-5 + 1e-4 * std::abs(fd)) << "table " << t << " element " << i;
      ++checked;
      if (std::abs(fd) > 1e-2) ++significant;
    }
  }
  EXPECT_LE(skipped, checked / 20);
  EXPECT_GE(significant, checked / 3) << "checked " << checked;
}

INSTANTIATE_TEST_SUITE_P(Cases, DistillationGradientCheck,
                         ::testing::Values(DistillCase{{}, 4.0f, 0.9f}, DistillCase{{5}, 4.0f, 0.9f},
                                           DistillCase{{5, 4}, 2.0f, 0.5f}, DistillCase{{5}, 8.0f, 1.0f},
                                           DistillCase{{5}, 1.0f, 0.3f}, DistillCase{{}, 0.5f, 0.7f}),
                         [](const auto& info) {
                           const DistillCase& c = info.param;
                           std::string n = c.hidden.empty() ? "softmax" : "h";
                           for (int64_t h : c.hidden) n += "_" + std::to_string(h);
                           n += "_T" + std::to_string(static_cast<int>(c.temperature * 10));
                           n += "_A" + std::to_string(static_cast<int>(c.alpha * 10));
                           return n;
                         });

// The distillation loss's gradient is not the plain one: the soft term is really added (a model
// whose gradient check ignored `distill` would pass the check above only by accident).
TEST(ModelDistillation, SoftTermChangesTheGradient) {
  auto model = MakeModel({.input_dim = 7, .num_classes = 4, .hidden = {5}});
  std::mt19937 rng(77);
  const int64_t rows = 6;
  Buffers params = RandomParams(*model, rng);
  const auto x = RandomInputs(rows, 7, rng);
  const auto y = RandomLabels(rows, 4, rng);
  const auto teacher = RandomTeacherLogits(rows, 4, rng);
  const Distillation distill{.teacher_logits = teacher.data(), .temperature = 4.0f, .alpha = 0.9f};
  Buffers plain = ZeroBuffers(*model), soft = ZeroBuffers(*model);
  model->Gradient(params.cview(), x.data(), y.data(), rows, 1.0f, plain.view());
  model->Gradient(params.cview(), x.data(), y.data(), rows, 1.0f, soft.view(), nullptr, 0, &distill);
  EXPECT_NE(plain.tables, soft.tables);
}

// alpha = 0: the loss and every gradient bit are the plain cross-entropy's, whatever the teacher
// and the temperature, also through on_ready in row blocks (the training path).
TEST(ModelDistillation, AlphaZeroIsThePlainGradientBitForBit) {
  auto model = MakeModel({.input_dim = 784, .num_classes = 10, .hidden = {256}});
  std::mt19937 rng(19);
  const int64_t rows = 64;
  Buffers params = RandomParams(*model, rng, 0.05f);
  const auto x = RandomInputs(rows, 784, rng);
  const auto y = RandomLabels(rows, 10, rng);
  const auto teacher = RandomTeacherLogits(rows, 10, rng);
  for (const float T : {1.0f, 4.0f, 7.5f}) {
    for (const uint64_t block : {uint64_t{0}, uint64_t{32768}}) {
      const Distillation distill{.teacher_logits = teacher.data(), .temperature = T, .alpha = 0.0f};
      Buffers g1 = ZeroBuffers(*model), g2 = ZeroBuffers(*model);
      const double l1 = model->Gradient(params.cview(), x.data(), y.data(), rows, 1.0f / 64, g1.view(), nullptr, block);
      const double l2 =
          model->Gradient(params.cview(), x.data(), y.data(), rows, 1.0f / 64, g2.view(), nullptr, block, &distill);
      EXPECT_EQ(std::memcmp(&l1, &l2, sizeof l1), 0) << "T " << T << " block " << block << ": " << l1 << " vs " << l2;
      for (size_t t = 0; t < g1.tables.size(); ++t) {
        ASSERT_EQ(std::memcmp(g1.tables[t].data(), g2.tables[t].data(), g1.tables[t].size() * sizeof(float)), 0)
            << "T " << T << " block " << block << " table " << t;
      }
    }
  }
}

// alpha = 1 ignores the labels; a teacher whose logits equal the student's (T = 1) leaves nothing
// to learn: the gradient is exactly zero.
TEST(ModelDistillation, AlphaOneIgnoresLabelsAndAgreeingTeacherGivesZero) {
  auto model = MakeModel({.input_dim = 5, .num_classes = 3});
  std::mt19937 rng(23);
  const int64_t rows = 8;
  Buffers params = RandomParams(*model, rng);
  const auto x = RandomInputs(rows, 5, rng);
  const auto y1 = RandomLabels(rows, 3, rng);
  std::vector<int32_t> y2(y1);
  for (int32_t& v : y2) v = (v + 1) % 3;
  const auto teacher = RandomTeacherLogits(rows, 3, rng);
  const Distillation soft_only{.teacher_logits = teacher.data(), .temperature = 3.0f, .alpha = 1.0f};
  Buffers g1 = ZeroBuffers(*model), g2 = ZeroBuffers(*model);
  model->Gradient(params.cview(), x.data(), y1.data(), rows, 1.0f, g1.view(), nullptr, 0, &soft_only);
  model->Gradient(params.cview(), x.data(), y2.data(), rows, 1.0f, g2.view(), nullptr, 0, &soft_only);
  EXPECT_EQ(g1.tables, g2.tables);

  std::vector<float> own(static_cast<size_t>(rows * 3));
  model->Logits(params.cview(), x.data(), rows, own.data());
  const Distillation self{.teacher_logits = own.data(), .temperature = 1.0f, .alpha = 1.0f};
  Buffers g = ZeroBuffers(*model);
  model->Gradient(params.cview(), x.data(), y1.data(), rows, 1.0f, g.view(), nullptr, 0, &self);
  for (const auto& t : g.tables)
    for (float v : t) EXPECT_EQ(v, 0.0f);
}

TEST(ModelLogits, MatchReferenceAcrossBlocks) {
  auto model = MakeModel({.input_dim = 6, .num_classes = 4, .hidden = {8}});
  std::mt19937 rng(29);
  const int64_t rows = 2100;  // more than one internal block of 1024 rows
  Buffers params = RandomParams(*model, rng);
  const auto x = RandomInputs(rows, 6, rng);
  std::vector<float> out(static_cast<size_t>(rows * 4), std::nanf(""));
  model->Logits(params.cview(), x.data(), rows, out.data());
  std::vector<std::vector<double>> p;
  for (const auto& t : params.tables) p.emplace_back(t.begin(), t.end());
  const auto ref = ReferenceLogits(model->spec(), p, x, rows);
  for (int64_t r = 0; r < rows; ++r) {
    for (int c = 0; c < 4; ++c) ASSERT_NEAR(out[r * 4 + c], ref[r][c], 1e-5 * (1 + std::abs(ref[r][c]))) << r << " " << c;
  }
}

}  // namespace
}  // namespace shardps::worker
