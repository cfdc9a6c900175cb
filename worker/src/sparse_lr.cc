#include "shardps/worker/sparse_lr.h"

#include <cmath>
#include <new>
#include <string>
#include <vector>

namespace shardps::worker {

double Sigmoid(double z) {
  if (z >= 0) return 1.0 / (1.0 + std::exp(-z));
  const double e = std::exp(z);
  return e / (1.0 + e);
}

double Softplus(double z) { return (z > 0 ? z : 0.0) + std::log1p(std::exp(-std::fabs(z))); }

// -log sigmoid(z) = softplus(-z) and -log(1 - sigmoid(z)) = softplus(z), each accurate on its own
// (softplus(z) - y z would lose the small loss of a confident right answer to cancellation).
double LogisticLoss(double z, double y) {
  if (y == 1) return Softplus(-z);
  if (y == 0) return Softplus(z);
  return y * Softplus(-z) + (1 - y) * Softplus(z);
}

double BernoulliEntropyOfLogit(double z) {
  return Sigmoid(z) * Softplus(-z) + Sigmoid(-z) * Softplus(z);  // 1 - p as sigmoid(-z): no cancellation
}

namespace {

Status CheckShapes(const SparseBatch& batch, size_t weights, const SparseLrOptions& options) {
  if (weights != batch.keys.size()) {
    return InvalidArgument("sparse LR: " + std::to_string(weights) + " weights for " + std::to_string(batch.keys.size()) +
                           " keys");
  }
  if (batch.row_offsets.size() != batch.labels.size() + 1 || batch.slots.size() != batch.values.size() ||
      batch.row_offsets.back() != batch.slots.size()) {
    return InvalidArgument("sparse LR: the batch's row offsets, slots and values disagree (not built by MakeSparseBatch?)");
  }
  if (!(options.normalizer >= 0) || !std::isfinite(options.normalizer)) {
    return InvalidArgument("sparse LR: normalizer must be a finite number >= 0 (0: the batch's rows), got " +
                           std::to_string(options.normalizer));
  }
  if (options.normalizer == 0 && batch.labels.empty()) return InvalidArgument("sparse LR: an empty batch has no mean loss");
  return Status::Ok();
}

double Logit(const SparseBatch& batch, std::span<const float> weights, size_t row) {
  double z = 0;
  for (uint64_t j = batch.row_offsets[row]; j < batch.row_offsets[row + 1]; ++j) {
    z += static_cast<double>(weights[batch.slots[j]]) * static_cast<double>(batch.values[j]);
  }
  return z;
}

Result<SparseLrLoss> Run(const SparseBatch& batch, std::span<const float> weights, std::span<float>* grad,
                         const SparseLrOptions& options) {
  SHARDPS_RETURN_IF_ERROR(CheckShapes(batch, weights.size(), options));
  for (uint32_t s : batch.slots) {
    if (s >= weights.size()) return InvalidArgument("sparse LR: slot " + std::to_string(s) + " is outside the batch's keys");
  }
  const size_t rows = batch.labels.size();
  const double norm = options.normalizer > 0 ? options.normalizer : static_cast<double>(rows);
  std::vector<double> acc;
  if (grad) {
    if (grad->size() != weights.size()) {
      return InvalidArgument("sparse LR: a gradient of " + std::to_string(grad->size()) + " entries for " +
                             std::to_string(weights.size()) + " keys");
    }
    try {
      acc.assign(weights.size(), 0.0);
    } catch (const std::bad_alloc&) {
      return ResourceExhausted("sparse LR: out of memory for the gradient of " + std::to_string(weights.size()) + " keys");
    }
  }
  SparseLrLoss out;
  out.rows = static_cast<int64_t>(rows);
  for (size_t i = 0; i < rows; ++i) {
    const double z = Logit(batch, weights, i);
    const double y = batch.labels[i];
    out.loss_sum += LogisticLoss(z, y);
    if (grad) {
      // d(loss_i / norm) / dz = (sigmoid(z) - y) / norm; for y = 1 as -sigmoid(-z) (no cancellation).
      const double r = (y == 1 ? -Sigmoid(-z) : Sigmoid(z) - y) / norm;
      for (uint64_t j = batch.row_offsets[i]; j < batch.row_offsets[i + 1]; ++j) {
        acc[batch.slots[j]] += r * static_cast<double>(batch.values[j]);
      }
    }
  }
  out.mean_loss = out.loss_sum / norm;
  if (grad) {
    for (size_t k = 0; k < acc.size(); ++k) (*grad)[k] = static_cast<float>(acc[k]);
  }
  return out;
}

}  // namespace

Result<SparseLrLoss> SparseLrLossAndGradient(const SparseBatch& batch, std::span<const float> weights, std::span<float> grad,
                                             const SparseLrOptions& options) {
  return Run(batch, weights, &grad, options);
}

Result<SparseLrLoss> SparseLrEvaluate(const SparseBatch& batch, std::span<const float> weights,
                                      const SparseLrOptions& options) {
  return Run(batch, weights, nullptr, options);
}

Status SparseLrLogits(const SparseBatch& batch, std::span<const float> weights, std::span<double> logits) {
  SHARDPS_RETURN_IF_ERROR(CheckShapes(batch, weights.size(), SparseLrOptions{1.0}));
  if (logits.size() != batch.labels.size()) {
    return InvalidArgument("sparse LR: " + std::to_string(logits.size()) + " logits for " +
                           std::to_string(batch.labels.size()) + " rows");
  }
  for (uint32_t s : batch.slots) {
    if (s >= weights.size()) return InvalidArgument("sparse LR: slot " + std::to_string(s) + " is outside the batch's keys");
  }
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = Logit(batch, weights, i);
  return Status::Ok();
}

}  // namespace shardps::worker
