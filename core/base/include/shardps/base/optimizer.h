// Optimizers, element-wise, in a registry by name. A server applies them to its chunks in sync mode;
// a worker applies them to its local replica in local_sgd mode (so they live in core/, shared by
// both sides). Applied to one chunk: weights, their state slots and the summed gradient all have
// the chunk's length. Element-wise, so the result of an element does not depend on how a table is
// cut into chunks or spread over servers.
//
//   OptimizerConfig cfg{.kind = "adam", .learning_rate = 0.001f};
//   std::vector<float> w(n), slots(n * OptimizerSlots(cfg.kind)), g(n);
//   ApplyOptimizer(cfg, /*step=*/1, w, slots, g);   // step counts from 1 (Adam's bias correction)
//
// Adding an optimizer: write a class deriving from Optimizer in core/base/src/optimizer.cc and list
// it in RegisteredOptimizers() there; give any new hyperparameter a field in OptimizerConfig, the
// layout digest (layout.cc) and the CLI config (tools/config.proto, ToOptimizerConfig). Nothing
// else switches on the optimizer: configs, servers, workers and checkpoints find it by name.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "shardps/base/status.h"

namespace shardps {

// The names of the built-in optimizers, for C++ code that picks one (a config names it as text).
// An optimizer added to the registry needs no entry here.
struct OptimizerKind {
  static constexpr std::string_view kSgd = "sgd";
  static constexpr std::string_view kMomentum = "momentum";
  static constexpr std::string_view kAdam = "adam";
  // The table holds the sum of the last step's pushes (reductions, model averaging).
  static constexpr std::string_view kSum = "sum";
};

// Applied by the server once per step to the sum of the workers' gradients. Each optimizer reads
// the fields it needs (see RegisteredOptimizers() and its formula in optimizer.cc); all of them
// enter the layout digest.
struct OptimizerConfig {
  std::string kind = std::string(OptimizerKind::kSgd);  // a registered optimizer's name
  float learning_rate = 0.01f;
  float momentum = 0.9f;       // momentum: v = momentum*v + (g + wd*w); w -= lr*v
  float beta1 = 0.9f;          // adam
  float beta2 = 0.999f;        // adam
  float epsilon = 1e-8f;       // adam, adagrad: added to the denominator
  float weight_decay = 0.0f;   // added to the gradient as weight_decay * w (all but sum)
  float initial_accumulator = 0.1f;  // adagrad: the sum of squared gradients starts here
  float ftrl_beta = 1.0f;      // ftrl: added to sqrt(n) in the per-weight learning rate
  float l1 = 0.0f;             // ftrl: L1 strength (weights with |z| <= l1 are exactly zero)
  float l2 = 0.0f;             // ftrl: L2 strength
};

// One optimizer: its name, how many state floats it keeps per weight, and its update.
// Implementations are stateless and immutable; their state lives in the slot arrays.
class Optimizer {
 public:
  virtual ~Optimizer() = default;
  virtual std::string_view name() const = 0;
  // State floats kept per weight. Slot arrays start at zero (servers, workers and checkpoints
  // allocate them so), so an optimizer whose state starts elsewhere folds the offset into Apply.
  virtual int slots() const = 0;
  // Updates n elements: w[i], g[i] for i < n; slot array k of these elements starts at
  // slots + k * stride. `step` >= 1 counts this table's updates.
  virtual void Apply(const OptimizerConfig& config, uint64_t step, float* __restrict w, float* slots,
                     size_t stride, const float* __restrict g, size_t n) const = 0;
};

// The registry: every optimizer a table can name, in a fixed order. Built once from the list in
// optimizer.cc and immutable after, so it is shared by every caller without locking.
std::span<const Optimizer* const> RegisteredOptimizers();
// The registered optimizer called `name`, or null.
const Optimizer* FindOptimizer(std::string_view name);
// The same, or InvalidArgument naming `name` and listing the registered names.
Result<const Optimizer*> LookupOptimizer(std::string_view name);
// "sgd, momentum, adam, ...": the registered names, in registry order.
std::string RegisteredOptimizerNames();

// Number of optimizer state floats kept per weight by the optimizer called `kind`, which must be
// registered (TableLayout::Create refuses tables that name another).
int OptimizerSlots(std::string_view kind);
// The registered name of `kind` ("?" if none). Equal to `kind` for a registered optimizer: kept for
// callers written when kinds were an enumeration.
std::string_view OptimizerKindName(std::string_view kind);

// Applies the optimizer config.kind names (registered: asserted) to one chunk.
// `slots` holds OptimizerSlots(config.kind) arrays of weights.size() floats, one after another.
// `step` >= 1 (asserted).
void ApplyOptimizer(const OptimizerConfig& config, uint64_t step, std::span<float> weights,
                    std::span<float> slots, std::span<const float> gradient);

// The same on elements [begin, begin + gradient.size()) of a table held whole: `weights` and
// `slots` are the whole table's (slots as above, OptimizerSlots(kind) arrays of weights.size()),
// so a table can be updated range by range as its gradient arrives, with the same result.
void ApplyOptimizerToRange(const OptimizerConfig& config, uint64_t step, std::span<float> weights,
                           std::span<float> slots, uint64_t begin, std::span<const float> gradient);
// The same with the optimizer already looked up (config.kind must name it): for callers that
// resolve it once, when the table is made, rather than at every step.
void ApplyOptimizerToRange(const Optimizer& optimizer, const OptimizerConfig& config, uint64_t step,
                           std::span<float> weights, std::span<float> slots, uint64_t begin,
                           std::span<const float> gradient);

// dst[i] += src[i], vectorised.
void AddInto(std::span<float> dst, std::span<const float> src);

}  // namespace shardps
