// Models whose parameters live in server tables: softmax regression and an MLP with ReLU hidden
// layers, computed with Eigen on the worker.
//
//   SHARDPS_ASSIGN_OR_RETURN(auto model, Model::Create({.input_dim = 784, .num_classes = 10, .hidden = {256}}));
//   std::vector<TableSpec> tables = model->Tables(/*seed=*/7);   // declare these to the servers
//   double loss_sum = model->Gradient(params, x, y, rows, /*scale=*/1.0f / global_batch, grads,
//                                     [&](size_t table, uint64_t begin, uint64_t end) {
//                                       /* grads[table][begin, end) is final: push it */ },
//                                     /*block_floats=*/32768);
//
// Parameter layout: for each layer l (input -> hidden... -> output) a weight table "l<l>.w" of
// in x out floats, row-major (element (i, o) at i * out + o), then a bias table "l<l>.b" of out
// floats. Weights start uniform in +-sqrt(6 / (in + out)) from a counter-based generator seeded
// by (seed, table), biases at zero; softmax regression (no hidden layer) starts at zero.
// Loss: mean softmax cross-entropy over the samples (Gradient returns the sum over its rows; the
// gradients are d(sum of losses)/d(parameter) * scale). With a Distillation (knowledge
// distillation, Hinton et al. 2015) a sample's loss is
//   alpha * T^2 * H(softmax(t / T), softmax(z / T)) + (1 - alpha) * H(onehot(y), softmax(z))
// (H(p, q) = -sum_c p_c log q_c, z the model's logits, t the teacher's), so dLoss/dz =
//   (1 - alpha) * (softmax(z) - onehot(y)) + alpha * T * (softmax(z / T) - softmax(t / T)).
// Thread safety: a Model is immutable; Gradient/Evaluate may run concurrently on different
// buffers (each call uses its own scratch).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "shardps/base/layout.h"
#include "shardps/base/status.h"

namespace shardps::worker {

struct ModelSpec {
  int64_t input_dim = 0;
  int num_classes = 0;
  std::vector<int64_t> hidden;  // empty: softmax regression
};

// Soft targets for Gradient: the teacher's logits of the same rows (rows x num_classes,
// row-major), the temperature T > 0 and the weight alpha in [0, 1] of the soft term.
struct Distillation {
  const float* teacher_logits = nullptr;
  float temperature = 4.0f;
  float alpha = 0.9f;
};

struct EvalResult {
  int64_t samples = 0;
  int64_t correct = 0;
  double loss_sum = 0.0;
};

class Model {
 public:
  static Result<std::unique_ptr<Model>> Create(const ModelSpec& spec);

  const ModelSpec& spec() const { return spec_; }
  std::string name() const { return spec_.hidden.empty() ? "softmax" : "mlp"; }
  // Weight and bias tables in declaration order (optimizer left at its default: the caller sets it).
  std::vector<TableSpec> Tables(uint64_t seed) const;
  size_t num_tables() const { return 2 * (spec_.hidden.size() + 1); }

  // Called with (table, begin, end) as soon as elements [begin, end) of that table's gradient are
  // final.
  using ReadyFn = std::function<void(size_t table, uint64_t begin, uint64_t end)>;

  // Forward and backward over `rows` samples (x: rows x input_dim row-major, y: labels).
  // Writes grads[t] (same sizes as params[t]) and reports each part as it becomes final, last
  // layer first, so the caller can push it while the layers below are computed. A weight table
  // larger than `block_floats` (> 0) is computed and reported in blocks of whole rows of about
  // that many floats, first rows first: the first layer's gradient, the largest and the last one
  // backpropagation produces, then travels while the rest of it is computed. The same
  // `block_floats` always gives the same blocks and bits; another may round differently (a small
  // block can take another Eigen kernel), so training takes it from the job's configuration.
  // Returns the sum of the samples' losses. `distill` (optional) adds the teacher's soft targets
  // (see the top of this file); without it the loss is the plain cross-entropy, computed exactly
  // as before distillation existed, and with alpha = 0 the gradients are bit-identical to it.
  double Gradient(std::span<const std::span<const float>> params, const float* x, const int32_t* y, int64_t rows,
                  float scale, std::span<const std::span<float>> grads, const ReadyFn& on_ready = nullptr,
                  uint64_t block_floats = 0, const Distillation* distill = nullptr) const;

  // The logits of `rows` samples into out (rows x num_classes, row-major), computed in blocks of
  // 1024 rows like Evaluate: the same rows give the same bits whatever the caller does around it.
  void Logits(std::span<const std::span<const float>> params, const float* x, int64_t rows, float* out) const;

  EvalResult Evaluate(std::span<const std::span<const float>> params, const float* x, const int32_t* y,
                      int64_t rows) const;

 private:
  explicit Model(ModelSpec spec) : spec_(std::move(spec)) {}
  ModelSpec spec_;
};

}  // namespace shardps::worker
