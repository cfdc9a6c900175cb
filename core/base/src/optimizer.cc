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

// n elements at w / g; slot array k of these elements starts at slots + k * stride.
void Apply(const OptimizerConfig& c, uint64_t step, float* __restrict w, float* slots, size_t stride,
           const float* __restrict g, size_t n) {
  assert(step >= 1);
  const float lr = c.learning_rate;
  const float wd = c.weight_decay;
  switch (c.kind) {
    case OptimizerKind::kSgd:
      for (size_t i = 0; i < n; ++i) w[i] -= lr * (g[i] + wd * w[i]);
      return;
    case OptimizerKind::kMomentum: {
      float* __restrict v = slots;
      const float mu = c.momentum;
      for (size_t i = 0; i < n; ++i) {
        v[i] = mu * v[i] + (g[i] + wd * w[i]);
        w[i] -= lr * v[i];
      }
      return;
    }
    case OptimizerKind::kAdam: {
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
      return;
    }
    case OptimizerKind::kSum:
      for (size_t i = 0; i < n; ++i) w[i] = g[i];
      return;
  }
}

}  // namespace

void ApplyOptimizer(const OptimizerConfig& c, uint64_t step, std::span<float> weights, std::span<float> slots,
                    std::span<const float> gradient) {
  const size_t n = weights.size();
  assert(gradient.size() == n);
  assert(slots.size() == n * static_cast<size_t>(OptimizerSlots(c.kind)));
  Apply(c, step, weights.data(), slots.data(), n, gradient.data(), n);
}

void ApplyOptimizerToRange(const OptimizerConfig& c, uint64_t step, std::span<float> weights, std::span<float> slots,
                           uint64_t begin, std::span<const float> gradient) {
  const size_t n = weights.size();
  assert(begin <= n && gradient.size() <= n - begin);
  assert(slots.size() == n * static_cast<size_t>(OptimizerSlots(c.kind)));
  Apply(c, step, weights.data() + begin, slots.data() + begin, n, gradient.data(), gradient.size());
}

}  // namespace shardps
