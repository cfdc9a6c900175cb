// Softmax regression / ReLU MLP forward and backward passes over parameters held in caller-owned
// spans (server tables), computed with Eigen. See model.h for the parameter layout.
//
// Determinism: every call runs single-threaded (EIGEN_DONT_PARALLELIZE below; the project never
// builds with -fopenmp) and each reduction has a fixed order, so the same inputs give
// bit-identical losses and gradients on the same build and machine.
#ifndef EIGEN_DONT_PARALLELIZE
#define EIGEN_DONT_PARALLELIZE
#endif
#include "shardps/worker/model.h"

#include <Eigen/Dense>
#include <algorithm>
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

// Widths of every layer boundary: input, hidden..., classes. Layer l maps d[l] -> d[l + 1].
std::vector<int64_t> Dims(const ModelSpec& s) {
  std::vector<int64_t> d{s.input_dim};
  d.insert(d.end(), s.hidden.begin(), s.hidden.end());
  d.push_back(s.num_classes);
  return d;
}

// Debug-build check that the caller's spans match the layout of model.h.
[[maybe_unused]] bool SizesMatch(const std::vector<int64_t>& d, size_t n, const auto& spans) {
  if (spans.size() != n) return false;
  for (size_t l = 0; l + 1 < d.size(); ++l) {
    if (spans[2 * l].size() != static_cast<size_t>(d[l] * d[l + 1])) return false;
    if (spans[2 * l + 1].size() != static_cast<size_t>(d[l + 1])) return false;
  }
  return true;
}

// Forward pass of `n` rows: returns the logits in `z`. `acts` (may be null) receives the
// post-ReLU output of every hidden layer (acts[l] is the input of layer l, acts[0] unused).
// Without `acts`, `a` is the scratch for the running activation.
void Forward(const std::vector<int64_t>& d, std::span<const std::span<const float>> params, const ConstMap& input,
             std::vector<RowMatrix>* acts, RowMatrix* a, RowMatrix* z) {
  const size_t L = d.size() - 1;
  for (size_t l = 0; l < L; ++l) {
    ConstMap w(params[2 * l].data(), d[l], d[l + 1]);
    ConstVecMap b(params[2 * l + 1].data(), d[l + 1]);
    const RowMatrix* prev = l == 0 ? nullptr : (acts ? &(*acts)[l] : a);
    if (prev == nullptr) z->noalias() = input * w;
    else z->noalias() = *prev * w;
    z->rowwise() += b;
    if (l + 1 < L) {
      RowMatrix& out = acts ? (*acts)[l + 1] : *a;
      out = z->cwiseMax(0.0f);  // ReLU; later (out > 0) == (z > 0) gives its derivative
    }
  }
}

// For one row of logits: max and log-sum-exp of (z - max); log p[c] = z[c] - max - lse.
struct RowLse {
  float max;
  float lse;
};

inline RowLse LogSumExp(const float* z, Eigen::Index n) {
  float m = z[0];
  for (Eigen::Index c = 1; c < n; ++c) m = std::max(m, z[c]);
  float s = 0.0f;
  for (Eigen::Index c = 0; c < n; ++c) s += std::exp(z[c] - m);
  return {m, std::log(s)};
}

// The distillation loss of every row of the logits `dz` (see model.h), which it replaces by
// dLoss/dZ * scale. Per row, with p = softmax(z), q = softmax(z / T), u = softmax(t / T):
//   loss = (1 - A) * (lse(z) - z[y]) - A * T^2 * sum_c u_c log q_c
//   dZ   = ((1 - A) * (p - onehot(y)) + A * T * (q - u)) * scale
// The hard term is written as the plain path writes it, times (1 - A) * scale; with A = 0 the
// soft term adds exact zeros, so the gradient is the plain one bit for bit.
double DistillationLoss(const Distillation& d, int64_t rows, float scale, const int32_t* y, RowMatrix& dz) {
  const Eigen::Index C = dz.cols();
  const float T = d.temperature, A = d.alpha;
  assert(d.teacher_logits != nullptr && T > 0.0f && A >= 0.0f && A <= 1.0f);
  const float hard_scale = (1.0f - A) * scale;
  const float soft_scale = A * T * scale;
  const double hard_weight = 1.0 - static_cast<double>(A);
  const double soft_weight = static_cast<double>(A) * static_cast<double>(T) * static_cast<double>(T);
  std::vector<float> zs(static_cast<size_t>(C)), ts(static_cast<size_t>(C)), us(static_cast<size_t>(C)),
      qs(static_cast<size_t>(C));
  double loss = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    float* zr = dz.data() + r * C;
    const float* tr = d.teacher_logits + r * C;
    const int32_t label = y[r];
    assert(label >= 0 && label < static_cast<int32_t>(C));
    const RowLse s = LogSumExp(zr, C);
    const double hard = static_cast<double>(s.lse - (zr[label] - s.max));
    for (Eigen::Index c = 0; c < C; ++c) {
      zs[c] = zr[c] / T;
      ts[c] = tr[c] / T;
    }
    const RowLse sq = LogSumExp(zs.data(), C);  // student at temperature T
    const RowLse st = LogSumExp(ts.data(), C);  // teacher at temperature T
    const float shift = s.max + s.lse;
    const float shift_q = sq.max + sq.lse;
    const float shift_u = st.max + st.lse;
    // Two loops, not one: GCC 12 at -O3 vectorised the single loop (exp, a double sum and the
    // stores into zr) into wrong gradients (model_test's finite differences caught it; -O2 and
    // -fno-tree-vectorize were right). Same arithmetic, same order.
    double soft = 0.0;  // -sum_c u_c log q_c
    for (Eigen::Index c = 0; c < C; ++c) {
      us[c] = std::exp(ts[c] - shift_u);
      qs[c] = std::exp(zs[c] - shift_q);
      const float log_q = (zs[c] - sq.max) - sq.lse;
      soft -= static_cast<double>(us[c]) * static_cast<double>(log_q);
    }
    for (Eigen::Index c = 0; c < C; ++c) zr[c] = std::exp(zr[c] - shift) * hard_scale + soft_scale * (qs[c] - us[c]);
    zr[label] -= hard_scale;
    loss += hard_weight * hard + soft_weight * soft;
  }
  return loss;
}

}  // namespace

Result<std::unique_ptr<Model>> Model::Create(const ModelSpec& spec) {
  if (spec.input_dim < 1) {
    return InvalidArgument("model input_dim must be at least 1, got " + std::to_string(spec.input_dim));
  }
  if (spec.num_classes < 2) {
    return InvalidArgument("model num_classes must be at least 2, got " + std::to_string(spec.num_classes));
  }
  for (size_t i = 0; i < spec.hidden.size(); ++i) {
    if (spec.hidden[i] < 1) {
      return InvalidArgument("model hidden layer " + std::to_string(i) + " width must be at least 1, got " +
                             std::to_string(spec.hidden[i]));
    }
  }
  const auto d = Dims(spec);
  for (size_t l = 0; l + 1 < d.size(); ++l) {
    // d[l] * d[l + 1] <= 2^31 without computing a product that could overflow.
    if (d[l] > kMaxTableFloats / d[l + 1]) {
      return InvalidArgument("model layer " + std::to_string(l) + " weight table of " + std::to_string(d[l]) + " x " +
                             std::to_string(d[l + 1]) + " floats exceeds the limit of 2^31 floats per table");
    }
  }
  return std::unique_ptr<Model>(new Model(spec));
}

std::vector<TableSpec> Model::Tables(uint64_t seed) const {
  const auto d = Dims(spec_);
  std::vector<TableSpec> out;
  out.reserve(num_tables());
  for (size_t l = 0; l + 1 < d.size(); ++l) {
    TableSpec w;
    w.name = "l" + std::to_string(l) + ".w";
    w.size = static_cast<uint64_t>(d[l] * d[l + 1]);
    w.shape = {static_cast<uint64_t>(d[l]), static_cast<uint64_t>(d[l + 1])};  // [in, out], row-major
    if (spec_.hidden.empty()) {
      w.init.kind = InitKind::kZeros;  // softmax regression is convex: zero is the natural start
    } else {
      // Glorot/Xavier uniform. InitializeWeights mixes the table id into the seed, so every
      // layer draws a different stream from the same run seed.
      const float limit = static_cast<float>(std::sqrt(6.0 / static_cast<double>(d[l] + d[l + 1])));
      w.init.kind = InitKind::kUniform;
      w.init.low = -limit;
      w.init.high = limit;
      w.init.seed = seed;
    }
    TableSpec b;
    b.name = "l" + std::to_string(l) + ".b";
    b.size = static_cast<uint64_t>(d[l + 1]);
    b.shape = {b.size};
    b.init.kind = InitKind::kZeros;
    b.init.seed = seed;
    out.push_back(std::move(w));
    out.push_back(std::move(b));
  }
  return out;
}

// on_ready order: for each layer, last first, the bias table (2l+1) whole, then the weight table
// (2l) whole or block by block, each call right after its part is written and before the backward
// pass moves on to the layer below. Parameters (all tables) are read until Gradient returns;
// gradients are never touched again after their on_ready.
double Model::Gradient(std::span<const std::span<const float>> params, const float* x, const int32_t* y, int64_t rows,
                       float scale, std::span<const std::span<float>> grads, const ReadyFn& on_ready,
                       uint64_t block_floats, const Distillation* distill) const {
  const auto d = Dims(spec_);
  const size_t L = d.size() - 1;
  assert(SizesMatch(d, num_tables(), params) && SizesMatch(d, num_tables(), grads));
  assert(rows >= 0);

  const ConstMap input(x, rows, d[0]);
  std::vector<RowMatrix> acts(L);  // acts[l]: input of layer l (l >= 1), post-ReLU
  RowMatrix dz;                    // logits, then probabilities, then dLoss/dZ of the current layer
  Forward(d, params, input, &acts, nullptr, &dz);

  // Softmax cross-entropy: loss = lse + max - z[y]; dZ = (softmax - onehot(y)) * scale.
  const Eigen::Index C = dz.cols();
  double loss = 0.0;
  if (distill == nullptr) {
    for (int64_t r = 0; r < rows; ++r) {
      float* zr = dz.data() + r * C;  // row-major: row r is contiguous
      const int32_t label = y[r];
      assert(label >= 0 && label < spec_.num_classes);
      const RowLse s = LogSumExp(zr, C);
      loss += static_cast<double>(s.lse - (zr[label] - s.max));
      const float shift = s.max + s.lse;
      for (Eigen::Index c = 0; c < C; ++c) zr[c] = std::exp(zr[c] - shift) * scale;
      zr[label] -= scale;
    }
  } else {
    loss = DistillationLoss(*distill, rows, scale, y, dz);
  }

  // Backward, last layer first.
  RowMatrix da;
  for (size_t l = L; l-- > 0;) {
    const int64_t in = d[l], out = d[l + 1];
    VecMap gb(grads[2 * l + 1].data(), out);
    gb.noalias() = dz.colwise().sum();
    if (on_ready) on_ready(2 * l + 1, 0, static_cast<uint64_t>(out));
    // dW = input^T * dZ, row block by row block: rows [r0, r0 + n) of dW need only columns
    // [r0, r0 + n) of the layer's input.
    const int64_t block_rows = block_floats == 0 || static_cast<uint64_t>(in * out) <= block_floats
                                   ? in
                                   : std::max<int64_t>(1, static_cast<int64_t>(block_floats) / out);
    for (int64_t r0 = 0; r0 < in; r0 += block_rows) {
      const int64_t n = std::min(block_rows, in - r0);
      Map gw(grads[2 * l].data() + r0 * out, n, out);
      if (l == 0) gw.noalias() = input.middleCols(r0, n).transpose() * dz;
      else gw.noalias() = acts[l].middleCols(r0, n).transpose() * dz;
      if (on_ready) on_ready(2 * l, static_cast<uint64_t>(r0 * out), static_cast<uint64_t>((r0 + n) * out));
    }
    if (l > 0) {
      ConstMap w(params[2 * l].data(), in, out);
      da.noalias() = dz * w.transpose();
      // ReLU derivative: pass where the layer's output (== its pre-activation) was positive.
      dz = (acts[l].array() > 0.0f).select(da.array(), 0.0f).matrix();
    }
  }
  return loss;
}

void Model::Logits(std::span<const std::span<const float>> params, const float* x, int64_t rows, float* out) const {
  const auto d = Dims(spec_);
  assert(SizesMatch(d, num_tables(), params));
  assert(rows >= 0);
  constexpr int64_t kBlock = 1024;  // as Evaluate
  RowMatrix a, z;
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
    const int64_t n = std::min(kBlock, rows - r0);
    const ConstMap input(x + r0 * d[0], n, d[0]);
    Forward(d, params, input, nullptr, &a, &z);
    std::copy(z.data(), z.data() + n * z.cols(), out + r0 * z.cols());
  }
}

EvalResult Model::Evaluate(std::span<const std::span<const float>> params, const float* x, const int32_t* y,
                           int64_t rows) const {
  const auto d = Dims(spec_);
  assert(SizesMatch(d, num_tables(), params));
  assert(rows >= 0);
  EvalResult e;
  e.samples = rows;
  // In blocks, to bound the scratch memory for large test sets.
  constexpr int64_t kBlock = 1024;
  RowMatrix a, z;
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
    const int64_t n = std::min(kBlock, rows - r0);
    const ConstMap input(x + r0 * d[0], n, d[0]);
    Forward(d, params, input, nullptr, &a, &z);
    const Eigen::Index C = z.cols();
    for (int64_t r = 0; r < n; ++r) {
      const float* zr = z.data() + r * C;
      const int32_t label = y[r0 + r];
      assert(label >= 0 && label < spec_.num_classes);
      Eigen::Index best = 0;  // lowest index on ties
      for (Eigen::Index c = 1; c < C; ++c) {
        if (zr[c] > zr[best]) best = c;
      }
      if (best == label) ++e.correct;
      const RowLse s = LogSumExp(zr, C);
      e.loss_sum += static_cast<double>(s.lse - (zr[label] - s.max));
    }
  }
  return e;
}

}  // namespace shardps::worker
