// What the training loops of this library share (trainer.cc, federated.cc): the reduction
// table's slots, waiting for a set of requests, and the checks on the weights. Internal.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "shardps/worker/trainer.h"

namespace shardps::worker::internal {

constexpr int kMetricsFloats = 8;
// fedavg also uses kClipped (clients whose update was clipped) and kNormSum (their pre-clip norms).
enum MetricSlot { kCorrect = 0, kTested, kTestLoss, kTrainLoss, kTrained, kClipped, kNormSum, kSecAggClipped };

using Seconds = std::chrono::duration<double>;

// Waits for every handle (each wait bounded by `timeout`). On the first failure the others are
// cancelled, so that once this returns no transport reads from or writes into the buffers of any
// of them, whatever the servers do later. If a transport cannot let go of a buffer (an MPI send
// the peer never matched), `bufs` are moved into the store's keeping (their memory stays where
// it is) until the node has stopped; the caller returns the error and must not use them.
inline std::vector<float> Take(std::vector<float>& v) { return std::move(v); }
inline std::vector<std::vector<float>> Take(std::vector<std::vector<float>>& v) { return std::move(v); }
inline std::vector<std::vector<float>> Take(std::span<std::vector<float>>& s) {
  std::vector<std::vector<float>> out;
  for (auto& v : s) out.push_back(std::move(v));
  return out;
}

// Cancels every handle; if a transport cannot let go of a buffer, `bufs` go into the store's
// keeping. Returns the first cancel error (OK when every buffer is free).
template <typename... Bufs>
Status CancelAll(ParamStore& params, std::vector<Handle>& hs, Bufs&... bufs) {
  Status held;
  for (auto& h : hs) {
    Status c = h.Cancel();
    if (!c.ok() && held.ok()) held = c;
  }
  if (!held.ok()) params.Retain(std::make_shared<std::tuple<decltype(Take(bufs))...>>(Take(bufs)...));
  return held;
}

template <typename... Bufs>
Status WaitAll(ParamStore& params, std::vector<Handle>& hs, std::chrono::milliseconds timeout, Bufs&... bufs) {
  Status first;
  for (auto& h : hs) {
    first = h.wait(timeout);
    if (!first.ok()) break;
  }
  if (first.ok()) return first;
  if (Status held = CancelAll(params, hs, bufs...); !held.ok()) {
    first = Status(first.code(), first.message() + " (and " + held.message() + ")");
  }
  return first;
}

// A weight that is NaN or infinite: the table and index of the first one, to name it.
inline std::optional<std::pair<size_t, size_t>> FirstNonFinite(const std::vector<std::vector<float>>& w) {
  for (size_t t = 0; t < w.size(); ++t) {
    const float* p = w[t].data();
    const size_t n = w[t].size();
    // Summing is cheaper than testing each value and is non-finite whenever one value is.
    float sum = 0.0f;
    for (size_t i = 0; i < n; ++i) sum += p[i] * 0.0f;
    if (std::isfinite(sum)) continue;
    for (size_t i = 0; i < n; ++i) if (!std::isfinite(p[i])) return std::make_pair(t, i);
  }
  return std::nullopt;
}


inline std::string DivergedHint(const RunOptions& run) {
  char lr[32];
  std::snprintf(lr, sizeof(lr), "%.6g", run.optimizer.learning_rate);
  return std::string("; training diverged (optimizer ") + std::string(OptimizerKindName(run.optimizer.kind)) +
         ", learning rate " + lr + "): lower optimizer.learning_rate or resume from an earlier checkpoint";
}

// Evaluates this worker's rows [shard.begin, shard.end) of the test set with the weights `w` into
// the reduction's kCorrect, kTested and kTestLoss slots (left as they are when the shard is empty).
inline void AddTestCounts(const Model& model, const std::vector<std::vector<float>>& w, const Dataset& test,
                          BatchSlice shard, std::vector<float>& slots) {
  const int64_t n = shard.end - shard.begin;
  if (n <= 0) return;
  const std::vector<std::span<const float>> spans(w.begin(), w.end());
  const EvalResult e = model.Evaluate(spans, test.row(shard.begin), test.labels.data() + shard.begin, n);
  slots[kCorrect] = static_cast<float>(e.correct);
  slots[kTested] = static_cast<float>(e.samples);
  slots[kTestLoss] = static_cast<float>(e.loss_sum);
}

}  // namespace shardps::worker::internal
