// Optimizers, element-wise. A server applies them to its chunks in sync mode; a worker applies
// them to its local replica in local_sgd mode (so they live in core/, shared by both sides).
// Applied to one chunk: weights, their state slots and the summed
// gradient all have the chunk's length. Element-wise, so the result of an element does not
// depend on how a table is cut into chunks or spread over servers.
//
//   std::vector<float> w(n), slots(n * OptimizerSlots(cfg.kind)), g(n);
//   ApplyOptimizer(cfg, /*step=*/1, w, slots, g);   // step counts from 1 (Adam's bias correction)
#pragma once

#include <cstdint>
#include <span>

#include "shardps/base/layout.h"

namespace shardps {

// SGD:      w -= lr * (g + wd*w)
// Momentum: v = mu*v + (g + wd*w); w -= lr * v                      (slot 0: v)
// Adam:     m = b1*m + (1-b1)*g'; v = b2*v + (1-b2)*g'^2;           (slots: m, v)
//           w -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps),  g' = g + wd*w
// Sum:      w = g   (the table holds the sum of the step's pushes: reductions, model averaging)
// `slots` holds OptimizerSlots(kind) arrays of weights.size() floats, one after another.
// `step` >= 1 (asserted).
void ApplyOptimizer(const OptimizerConfig& config, uint64_t step, std::span<float> weights,
                    std::span<float> slots, std::span<const float> gradient);

// The same on elements [begin, begin + gradient.size()) of a table held whole: `weights` and
// `slots` are the whole table's (slots as above, OptimizerSlots(kind) arrays of weights.size()),
// so a table can be updated range by range as its gradient arrives, with the same result.
void ApplyOptimizerToRange(const OptimizerConfig& config, uint64_t step, std::span<float> weights,
                           std::span<float> slots, uint64_t begin, std::span<const float> gradient);

// dst[i] += src[i], vectorised.
void AddInto(std::span<float> dst, std::span<const float> src);

}  // namespace shardps
