#include "shardps/base/optimizer.h"

#include <cassert>
#include <cmath>

namespace shardps {

void AddInto(std::span<float> dst, std::span<const float> src) {
  assert(dst.size() == src.size());
  float* __restrict d = dst.data();
  const float* __restrict s = src.data();
  const size_t n = dst.size();
  for (size_t i = 0; i < n; ++i) d[i] += s[i];
}

namespace {

// Each optimizer below: n elements at w / g; slot array k of these elements starts at
// slots + k * stride. The float operations and their order are part of the contract: the same
// config and seed give bit-identical weights, release after release.

// w -= lr * (g + wd*w)
class Sgd final : public Optimizer {
 public:
  std::string_view name() const override { return OptimizerKind::kSgd; }
  int slots() const override { return 0; }
  void Apply(const OptimizerConfig& c, uint64_t, float* __restrict w, float*, size_t, const float* __restrict g,
             size_t n) const override {
    const float lr = c.learning_rate;
    const float wd = c.weight_decay;
    for (size_t i = 0; i < n; ++i) w[i] -= lr * (g[i] + wd * w[i]);
  }
};

// v = mu*v + (g + wd*w); w -= lr * v                                    (slot 0: v)
class Momentum final : public Optimizer {
 public:
  std::string_view name() const override { return OptimizerKind::kMomentum; }
  int slots() const override { return 1; }
  void Apply(const OptimizerConfig& c, uint64_t, float* __restrict w, float* slots, size_t,
             const float* __restrict g, size_t n) const override {
    const float lr = c.learning_rate;
    const float wd = c.weight_decay;
    float* __restrict v = slots;
    const float mu = c.momentum;
    for (size_t i = 0; i < n; ++i) {
      v[i] = mu * v[i] + (g[i] + wd * w[i]);
      w[i] -= lr * v[i];
    }
  }
};

// g' = g + wd*w; m = b1*m + (1-b1)*g'; v = b2*v + (1-b2)*g'^2;           (slots: m, v)
// w -= lr * (m / bc1) / (sqrt(v / bc2) + eps), bc = 1 - b^t in double, rounded to float
class Adam final : public Optimizer {
 public:
  std::string_view name() const override { return OptimizerKind::kAdam; }
  int slots() const override { return 2; }
  void Apply(const OptimizerConfig& c, uint64_t step, float* __restrict w, float* slots, size_t stride,
             const float* __restrict g, size_t n) const override {
    const float lr = c.learning_rate;
    const float wd = c.weight_decay;
    float* __restrict m = slots;
    float* __restrict v = slots + stride;
    const float b1 = c.beta1, b2 = c.beta2, eps = c.epsilon;
    const double t = static_cast<double>(step);
    const float bc1 = static_cast<float>(1.0 - std::pow(static_cast<double>(b1), t));
    const float bc2 = static_cast<float>(1.0 - std::pow(static_cast<double>(b2), t));
    for (size_t i = 0; i < n; ++i) {
      const float gi = g[i] + wd * w[i];
      m[i] = b1 * m[i] + (1.0f - b1) * gi;
      v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
      const float mhat = m[i] / bc1;
      const float vhat = v[i] / bc2;
      w[i] -= lr * mhat / (std::sqrt(vhat) + eps);
    }
  }
};

// w = g: the table holds the sum of the step's pushes (reductions, model averaging).
class Sum final : public Optimizer {
 public:
  std::string_view name() const override { return OptimizerKind::kSum; }
  int slots() const override { return 0; }
  void Apply(const OptimizerConfig&, uint64_t, float* __restrict w, float*, size_t, const float* __restrict g,
             size_t n) const override {
    for (size_t i = 0; i < n; ++i) w[i] = g[i];
  }
};

// g' = g + wd*w; s += g'^2; w -= lr * g' / (sqrt(s + a0) + eps)          (slot 0: s)
// a0 = initial_accumulator: the slot holds the sum of squares from zero, a0 is added when used.
class AdaGrad final : public Optimizer {
 public:
  std::string_view name() const override { return "adagrad"; }
  int slots() const override { return 1; }
  void Apply(const OptimizerConfig& c, uint64_t, float* __restrict w, float* slots, size_t,
             const float* __restrict g, size_t n) const override {
    const float lr = c.learning_rate;
    const float wd = c.weight_decay;
    const float a0 = c.initial_accumulator, eps = c.epsilon;
    float* __restrict s = slots;
    for (size_t i = 0; i < n; ++i) {
      const float gi = g[i] + wd * w[i];
      s[i] += gi * gi;
      w[i] -= lr * gi / (std::sqrt(s[i] + a0) + eps);
    }
  }
};

// FTRL-Proximal, per weight (slots: z, n), alpha = learning_rate, beta = ftrl_beta:
//   g' = g + wd*w; n' = n + g'^2; sigma = (sqrt(n') - sqrt(n)) / alpha; z += g' - sigma*w; n = n'
//   w = 0 if |z| <= l1, else -(z - sign(z)*l1) / ((beta + sqrt(n)) / alpha + l2)
// The weights follow from z and n; the initial weights enter through sigma*w at each update.
class Ftrl final : public Optimizer {
 public:
  std::string_view name() const override { return "ftrl"; }
  int slots() const override { return 2; }
  void Apply(const OptimizerConfig& c, uint64_t, float* __restrict w, float* slots, size_t stride,
             const float* __restrict g, size_t n) const override {
    const float alpha = c.learning_rate;
    const float wd = c.weight_decay;
    const float beta = c.ftrl_beta, l1 = c.l1, l2 = c.l2;
    float* __restrict z = slots;
    float* __restrict sq = slots + stride;
    for (size_t i = 0; i < n; ++i) {
      const float gi = g[i] + wd * w[i];
      const float sq_new = sq[i] + gi * gi;
      const float root_new = std::sqrt(sq_new);
      const float sigma = (root_new - std::sqrt(sq[i])) / alpha;
      z[i] += gi - sigma * w[i];
      sq[i] = sq_new;
      // |z| <= l1 also covers z == 0 with no gradient seen yet, where the denominator may be 0.
      w[i] = std::fabs(z[i]) <= l1 ? 0.0f : -(z[i] - std::copysign(l1, z[i])) / ((beta + root_new) / alpha + l2);
    }
  }
};

}  // namespace

std::span<const Optimizer* const> RegisteredOptimizers() {
  // The registry. To add an optimizer, list it here. Built once, immutable after.
  static const Sgd sgd;
  static const Momentum momentum;
  static const Adam adam;
  static const Sum sum;
  static const AdaGrad adagrad;
  static const Ftrl ftrl;
  static const Optimizer* const all[] = {&sgd, &momentum, &adam, &sum, &adagrad, &ftrl};
  return all;
}

const Optimizer* FindOptimizer(std::string_view name) {
  for (const Optimizer* o : RegisteredOptimizers()) {
    if (o->name() == name) return o;
  }
  return nullptr;
}

std::string RegisteredOptimizerNames() {
  std::string s;
  for (const Optimizer* o : RegisteredOptimizers()) {
    if (!s.empty()) s += ", ";
    s += o->name();
  }
  return s;
}

Result<const Optimizer*> LookupOptimizer(std::string_view name) {
  if (const Optimizer* o = FindOptimizer(name)) return o;
  return InvalidArgument("unknown optimizer '" + std::string(name) + "' (registered: " + RegisteredOptimizerNames() + ")");
}

int OptimizerSlots(std::string_view kind) {
  const Optimizer* o = FindOptimizer(kind);
  assert(o != nullptr);
  return o != nullptr ? o->slots() : 0;
}

std::string_view OptimizerKindName(std::string_view kind) {
  const Optimizer* o = FindOptimizer(kind);
  return o != nullptr ? o->name() : "?";
}

void ApplyOptimizer(const OptimizerConfig& c, uint64_t step, std::span<float> weights, std::span<float> slots,
                    std::span<const float> gradient) {
  assert(gradient.size() == weights.size());
  ApplyOptimizerToRange(c, step, weights, slots, 0, gradient);
}

void ApplyOptimizerToRange(const OptimizerConfig& c, uint64_t step, std::span<float> weights, std::span<float> slots,
                           uint64_t begin, std::span<const float> gradient) {
  const Optimizer* o = FindOptimizer(c.kind);
  assert(o != nullptr);
  ApplyOptimizerToRange(*o, c, step, weights, slots, begin, gradient);
}

void ApplyOptimizerToRange(const Optimizer& o, const OptimizerConfig& c, uint64_t step, std::span<float> weights,
                           std::span<float> slots, uint64_t begin, std::span<const float> gradient) {
  assert(step >= 1 && o.name() == c.kind);
  const size_t n = weights.size();
  assert(begin <= n && gradient.size() <= n - begin);
  assert(slots.size() == n * static_cast<size_t>(o.slots()));
  o.Apply(c, step, weights.data() + begin, slots.data() + begin, n, gradient.data(), gradient.size());
}

}  // namespace shardps
