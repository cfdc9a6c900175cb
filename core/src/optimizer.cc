#include "shardps/core/optimizer.h"

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

void ApplyOptimizer(const OptimizerConfig& c, uint64_t step, std::span<float> weights, std::span<float> slots,
                    std::span<const float> gradient) {
  const size_t n = weights.size();
  assert(gradient.size() == n);
  assert(step >= 1);
  assert(slots.size() == n * static_cast<size_t>(OptimizerSlots(c.kind)));
  float* __restrict w = weights.data();
  const float* __restrict g = gradient.data();
  const float lr = c.learning_rate;
  const float wd = c.weight_decay;
  switch (c.kind) {
    case OptimizerKind::kSgd:
      for (size_t i = 0; i < n; ++i) w[i] -= lr * (g[i] + wd * w[i]);
      return;
    case OptimizerKind::kMomentum: {
      float* __restrict v = slots.data();
      const float mu = c.momentum;
      for (size_t i = 0; i < n; ++i) {
        v[i] = mu * v[i] + (g[i] + wd * w[i]);
        w[i] -= lr * v[i];
      }
      return;
    }
    case OptimizerKind::kAdam: {
      float* __restrict m = slots.data();
      float* __restrict v = slots.data() + n;
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

}  // namespace shardps
