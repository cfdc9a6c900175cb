// Logistic regression over sparse batches: the loss and the gradient of one step, given the
// weights the model pulled for the batch's keys.
//
//   SparseBatch batch;                       // MakeSparseBatch(data, rows, {.bias_key = true}, &batch)
//   std::vector<float> w(batch.keys.size());  // pulled: w[i] is the weight of batch.keys[i]
//   std::vector<float> g(batch.keys.size());
//   SHARDPS_ASSIGN_OR_RETURN(SparseLrLoss loss, SparseLrLossAndGradient(batch, w, g));
//   // push g: g[i] is d(mean loss)/d(w of batch.keys[i]), keys' order
//
// The model: p(y = 1 | x) = sigmoid(z), z = sum_j w[slot_j] * value_j over the row's nonzeros.
// The bias is an ordinary key (kSparseBiasKey, value 1 in every row) when the batch was built with
// bias_key, so there is no separate bias parameter. Loss of a row: -log sigmoid(z) if y = 1,
// -log(1 - sigmoid(z)) if y = 0, computed without overflow or cancellation for any z.
//
// Determinism: every sum runs in double in a fixed order (a row's nonzeros in order, rows in
// batch order; a key's gradient adds its rows' terms in batch order), so the same batch and
// weights give bit-identical results on every run. Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <span>

#include "shardps/base/status.h"
#include "shardps/worker/data.h"

namespace shardps::worker {

// sigmoid(z) = 1 / (1 + e^-z), accurate for large |z|.
double Sigmoid(double z);
// log(1 + e^z), accurate for large |z|.
double Softplus(double z);
// The log-loss of label y (0 or 1) under logit z: softplus(-z) for y = 1, softplus(z) for y = 0.
double LogisticLoss(double z, double y);
// The entropy of a Bernoulli(sigmoid(z)) label in nats: the expected log-loss of the true model
// when z is the true logit: p softplus(-z) + (1 - p) softplus(z), p = sigmoid(z).
double BernoulliEntropyOfLogit(double z);

struct SparseLrOptions {
  // The gradient and the returned mean are of loss_sum / normalizer. 0 takes the batch's row count;
  // a worker holding part of a global batch passes the global batch size, so the workers'
  // gradients add up to the global mean's gradient.
  double normalizer = 0;
};

struct SparseLrLoss {
  double loss_sum = 0;   // sum of the rows' log-losses
  double mean_loss = 0;  // loss_sum / normalizer
  int64_t rows = 0;
};

// Loss and gradient. weights and grad have batch.keys.size() entries each (grad is overwritten).
// A size mismatch or a non-positive normalizer is refused.
Result<SparseLrLoss> SparseLrLossAndGradient(const SparseBatch& batch, std::span<const float> weights,
                                             std::span<float> grad, const SparseLrOptions& options = {});

// Loss only (evaluation).
Result<SparseLrLoss> SparseLrEvaluate(const SparseBatch& batch, std::span<const float> weights,
                                      const SparseLrOptions& options = {});

// The logit of every row (logits has batch.num_rows() entries).
Status SparseLrLogits(const SparseBatch& batch, std::span<const float> weights, std::span<double> logits);

}  // namespace shardps::worker
