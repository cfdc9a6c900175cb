#include "shardps/worker/model.h"

#include <Eigen/Dense>
#include <cassert>
#include <cmath>
#include <limits>

namespace shardps::worker {
namespace {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMap = Eigen::Map<const RowMatrix>;
using Map = Eigen::Map<RowMatrix>;
using ConstVecMap = Eigen::Map<const Eigen::RowVectorXf>;
using VecMap = Eigen::Map<Eigen::RowVectorXf>;

constexpr int64_t kMaxTableFloats = int64_t{1} << 31;

// Widths of every layer boundary: input, hidden..., classes.
std::vector<int64_t> Dims(const ModelSpec& s) {
  std::vector<int64_t> d{s.input_dim};
  d.insert(d.end(), s.hidden.begin(), s.hidden.end());
  d.push_back(s.num_classes);
  return d;
}

// Row-wise log-softmax of `z` into `logp`; returns nothing, stable via max subtraction.
void LogSoftmax(const RowMatrix& z, RowMatrix* logp) {
  *logp = z;
  for (Eigen::Index r = 0; r < z.rows(); ++r) {
    auto row = logp->row(r);
    const float m = row.maxCoeff();
    row.array() -= m;
    const float lse = std::log(row.array().exp().sum());
    row.array() -= lse;
  }
}

}  // namespace

Result<std::unique_ptr<Model>> Model::Create(const ModelSpec& spec) {
  if (spec.input_dim < 1) return InvalidArgument("model input_dim must be at least 1, got " + std::to_string(spec.input_dim));
  if (spec.num_classes < 2) return InvalidArgument("model needs at least 2 classes, got " + std::to_string(spec.num_classes));
  for (int64_t h : spec.hidden) {
    if (h < 1) return InvalidArgument("hidden layer width must be at least 1, got " + std::to_string(h));
  }
  const auto d = Dims(spec);
  for (size_t l = 0; l + 1 < d.size(); ++l) {
    if (d[l] > kMaxTableFloats / d[l + 1]) {
      return InvalidArgument("layer " + std::to_string(l) + " of " + std::to_string(d[l]) + " x " + std::to_string(d[l + 1]) +
                             " weights exceeds 2^31 floats");
    }
  }
  return std::unique_ptr<Model>(new Model(spec));
}

std::vector<TableSpec> Model::Tables(uint64_t seed) const {
  const auto d = Dims(spec_);
  std::vector<TableSpec> out;
  for (size_t l = 0; l + 1 < d.size(); ++l) {
    TableSpec w;
    w.name = "l" + std::to_string(l) + ".w";
    w.size = static_cast<uint64_t>(d[l] * d[l + 1]);
    if (spec_.hidden.empty()) {
      w.init.kind = InitKind::kZeros;  // softmax regression: convex, zero is the natural start
    } else {
      const float limit = static_cast<float>(std::sqrt(6.0 / static_cast<double>(d[l] + d[l + 1])));
      w.init.kind = InitKind::kUniform;
      w.init.low = -limit;
      w.init.high = limit;
      w.init.seed = seed;
    }
    TableSpec b;
    b.name = "l" + std::to_string(l) + ".b";
    b.size = static_cast<uint64_t>(d[l + 1]);
    b.init.kind = InitKind::kZeros;
    out.push_back(w);
    out.push_back(b);
  }
  return out;
}

double Model::Gradient(std::span<const std::span<const float>> params, const float* x, const int32_t* y, int64_t rows,
                       float scale, std::span<const std::span<float>> grads,
                       const std::function<void(size_t)>& on_ready) const {
  const auto d = Dims(spec_);
  const size_t L = d.size() - 1;
  assert(params.size() == 2 * L && grads.size() == 2 * L);
  // Forward: keep every layer's input activation (acts[l]) and pre-activation of hidden layers.
  std::vector<RowMatrix> acts(L);  // acts[0] unused: the input is mapped directly
  ConstMap input(x, rows, d[0]);
  RowMatrix z;
  for (size_t l = 0; l < L; ++l) {
    ConstMap w(params[2 * l].data(), d[l], d[l + 1]);
    ConstVecMap b(params[2 * l + 1].data(), d[l + 1]);
    if (l == 0) z.noalias() = input * w;
    else z.noalias() = acts[l] * w;
    z.rowwise() += b;
    if (l + 1 < L) acts[l + 1] = z.cwiseMax(0.0f);  // ReLU; (z > 0) == (act > 0)
  }
  // z holds the logits. Loss and dZ of the output layer.
  RowMatrix logp;
  LogSoftmax(z, &logp);
  double loss = 0;
  RowMatrix dz = logp.array().exp().matrix();  // softmax probabilities
  for (int64_t r = 0; r < rows; ++r) {
    assert(y[r] >= 0 && y[r] < spec_.num_classes);
    loss -= static_cast<double>(logp(r, y[r]));
    dz(r, y[r]) -= 1.0f;
  }
  dz *= scale;
  // Backward, last layer first; each layer's gradients are reported as soon as they are final.
  RowMatrix da;
  for (size_t l = L; l-- > 0;) {
    Map gw(grads[2 * l].data(), d[l], d[l + 1]);
    VecMap gb(grads[2 * l + 1].data(), d[l + 1]);
    if (l == 0) gw.noalias() = input.transpose() * dz;
    else gw.noalias() = acts[l].transpose() * dz;
    gb = dz.colwise().sum();
    if (l > 0) {
      ConstMap w(params[2 * l].data(), d[l], d[l + 1]);
      da.noalias() = dz * w.transpose();
      // ReLU derivative: where the layer's output was positive.
      dz = (acts[l].array() > 0.0f).select(da, 0.0f);
    }
    // Reported after this layer's parameters were last read (w above), so a caller may start
    // overwriting them with new values once every table of the step has been reported.
    if (on_ready) {
      on_ready(2 * l + 1);
      on_ready(2 * l);
    }
  }
  return loss;
}

EvalResult Model::Evaluate(std::span<const std::span<const float>> params, const float* x, const int32_t* y,
                           int64_t rows) const {
  const auto d = Dims(spec_);
  const size_t L = d.size() - 1;
  EvalResult e;
  e.samples = rows;
  // In blocks, to bound the scratch memory for large test sets.
  constexpr int64_t kBlock = 1024;
  RowMatrix a, z, logp;
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
    const int64_t n = std::min(kBlock, rows - r0);
    ConstMap input(x + r0 * d[0], n, d[0]);
    for (size_t l = 0; l < L; ++l) {
      ConstMap w(params[2 * l].data(), d[l], d[l + 1]);
      ConstVecMap b(params[2 * l + 1].data(), d[l + 1]);
      if (l == 0) z.noalias() = input * w;
      else z.noalias() = a * w;
      z.rowwise() += b;
      if (l + 1 < L) a = z.cwiseMax(0.0f);
    }
    LogSoftmax(z, &logp);
    for (int64_t r = 0; r < n; ++r) {
      Eigen::Index best = 0;
      for (Eigen::Index c = 1; c < z.cols(); ++c) if (z(r, c) > z(r, best)) best = c;
      const int32_t label = y[r0 + r];
      if (best == label) ++e.correct;
      e.loss_sum -= static_cast<double>(logp(r, label));
    }
  }
  return e;
}

}  // namespace shardps::worker
