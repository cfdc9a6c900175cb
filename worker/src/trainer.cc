#include "shardps/worker/trainer.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <thread>
#include <tuple>

#include "shardps/base/digest.h"
#include "shardps/base/optimizer.h"
#include "shardps/secagg/aggregator.h"
#include "train_internal.h"

namespace shardps::worker {

namespace internal {
// Defined in kv_client.cc; a completed handle with this outcome.
Handle CompletedHandle(Status s);
}  // namespace internal

struct LocalParams::Table {
  TableSpec spec;
  Result<const Optimizer*> optimizer = nullptr;  // an unknown name is refused by PushPull, naming it
  std::vector<float> weights;
  std::vector<float> slots;
  uint64_t version = 0;
  uint64_t covered = 0;  // elements pushed so far in the step at `version`
};

LocalParams::LocalParams(const std::vector<TableSpec>& tables) {
  for (uint32_t t = 0; t < tables.size(); ++t) {
    auto tab = std::make_shared<Table>();
    tab->spec = tables[t];
    tab->weights.resize(tables[t].size);
    InitializeWeights(tables[t].init, t, 0, tab->weights);
    tab->optimizer = LookupOptimizer(tables[t].optimizer.kind);
    tab->slots.assign(tables[t].size * static_cast<size_t>(tab->optimizer.ok() ? (*tab->optimizer)->slots() : 0), 0.0f);
    tables_.push_back(std::move(tab));
  }
}

Handle ParamStore::SecAgg(uint64_t round, uint32_t phase, std::span<const uint8_t> bundle, std::vector<uint8_t>* reply) {
  (void)round, (void)phase, (void)bundle, (void)reply;
  return internal::CompletedHandle(FailedPrecondition("secure aggregation needs an aggregator; this parameter store has none"));
}

Handle LocalParams::SecAgg(uint64_t round, uint32_t phase, std::span<const uint8_t> bundle, std::vector<uint8_t>* reply) {
  if (!aggregator_) aggregator_ = std::make_shared<secagg::Aggregator>(1);
  Status s = aggregator_->Submit(0, round, static_cast<secagg::Phase>(phase), bundle);
  if (aggregator_->Ready()) {
    std::vector<std::vector<uint8_t>> replies = aggregator_->Finish();
    if (s.ok()) *reply = std::move(replies[0]);
  }
  return internal::CompletedHandle(s);
}

Handle LocalParams::Pull(uint32_t table, std::span<float> out, uint64_t version) {
  if (table >= tables_.size()) return internal::CompletedHandle(NotFound("unknown table " + std::to_string(table)));
  Table& t = *tables_[table];
  if (out.size() != t.weights.size()) return internal::CompletedHandle(InvalidArgument("pull buffer size mismatch"));
  if (version > t.version) {
    return internal::CompletedHandle(FailedPrecondition("pull of version " + std::to_string(version) + " of table '" +
                                                        t.spec.name + "', which is at " + std::to_string(t.version)));
  }
  std::memcpy(out.data(), t.weights.data(), out.size_bytes());
  return internal::CompletedHandle(Status::Ok());
}

Handle LocalParams::PushPull(uint32_t table, std::span<const float> grad, std::span<float> out, uint64_t step,
                             KeyRange range) {
  if (table >= tables_.size()) return internal::CompletedHandle(NotFound("unknown table " + std::to_string(table)));
  Table& t = *tables_[table];
  const uint64_t size = t.weights.size();
  const uint64_t begin = range.begin, end = range.EndIn(size);
  if (begin >= end || end > size || grad.size() != end - begin || out.size() != end - begin) {
    return internal::CompletedHandle(InvalidArgument("push-pull of [" + std::to_string(begin) + "," +
                                                     std::to_string(end) + ") of table '" + t.spec.name + "' (" +
                                                     std::to_string(size) + " floats) with buffers of " +
                                                     std::to_string(grad.size()) + " and " +
                                                     std::to_string(out.size()) + " floats"));
  }
  if (step != t.version) {
    return internal::CompletedHandle(FailedPrecondition("push for step " + std::to_string(step) + " of table '" +
                                                        t.spec.name + "', which is at " + std::to_string(t.version)));
  }
  if (!t.optimizer.ok()) {
    return internal::CompletedHandle(t.optimizer.status().WithContext("table '" + t.spec.name + "'"));
  }
  if (end - begin > size - t.covered) {
    return internal::CompletedHandle(InvalidArgument("push-pull ranges of table '" + t.spec.name + "' in step " +
                                                     std::to_string(step) + " overlap"));
  }
  // Exactly what a server does with one worker: the gradient is the sum, then one update.
  ApplyOptimizerToRange(**t.optimizer, t.spec.optimizer, t.version + 1, t.weights, t.slots, begin, grad);
  std::memcpy(out.data(), t.weights.data() + begin, out.size_bytes());
  t.covered += end - begin;
  if (t.covered == size) {
    ++t.version;
    t.covered = 0;
  }
  return internal::CompletedHandle(Status::Ok());
}

using internal::CancelAll;
using internal::DivergedHint;
using internal::FirstNonFinite;
using internal::kCorrect;
using internal::kMetricsFloats;
using internal::kTested;
using internal::kTestLoss;
using internal::kTrained;
using internal::kTrainLoss;
using internal::Seconds;
using internal::WaitAll;

namespace {

// slow_rotates: the worker slowed in `step`.
int SlowTurn(uint64_t step, int workers) {
  uint64_t x = (step + 1) * 0x9E3779B97F4A7C15ull;
  x ^= x >> 29;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 32;
  return static_cast<int>(x % static_cast<uint64_t>(std::max(1, workers)));
}


// Distillation: the teacher's logits of every training sample (num_samples x classes), computed
// once, after checking that the teacher and the options fit the model.
Result<std::vector<float>> TeacherLogits(const Model& model, const Dataset& train, const RunOptions& run) {
  const Teacher& teacher = *run.teacher;
  const ModelSpec& ms = model.spec();
  if (teacher.spec().input_dim != ms.input_dim || teacher.spec().num_classes != ms.num_classes) {
    return InvalidArgument("teacher model '" + teacher.source() + "' (" + teacher.Describe() + ") does not fit the student (" +
                           std::to_string(ms.input_dim) + " inputs, " + std::to_string(ms.num_classes) + " classes)");
  }
  if (!(run.distill_temperature > 0.0f) || !std::isfinite(run.distill_temperature)) {
    return InvalidArgument("distillation temperature " + std::to_string(run.distill_temperature) + " is not a positive number");
  }
  if (!(run.distill_alpha >= 0.0f && run.distill_alpha <= 1.0f)) {
    return InvalidArgument("distillation alpha " + std::to_string(run.distill_alpha) + " is outside [0, 1]");
  }
  const size_t C = static_cast<size_t>(ms.num_classes);
  std::vector<float> logits(static_cast<size_t>(train.num_samples) * C);
  teacher.Logits(train.features.data(), train.num_samples, logits.data());
  for (size_t i = 0; i < logits.size(); ++i) {
    if (!std::isfinite(logits[i])) {
      return FailedPrecondition("teacher model '" + teacher.source() + "' gives a non-finite logit (" + std::to_string(logits[i]) +
                                ") for training sample " + std::to_string(i / C) + " of " + train.source);
    }
  }
  return logits;
}

}  // namespace

std::vector<TableSpec> TrainingTables(const Model& model, const RunOptions& run) {
  std::vector<TableSpec> tables = model.Tables(run.seed);
  for (TableSpec& t : tables) {
    if (run.mode == "local_sgd") {
      t.optimizer.kind = OptimizerKind::kSum;  // the servers hold the sample-weighted sum of replicas
    } else if (run.optimizer_on == "workers" || run.mode == "fedavg") {
      t.optimizer = OptimizerConfig{};  // the servers add the workers' (clients') changes: w -= 1 * sum
      t.optimizer.kind = OptimizerKind::kSgd;
      t.optimizer.learning_rate = 1.0f;
    } else {
      t.optimizer = run.optimizer;
    }
  }
  TableSpec metrics{.name = "_metrics", .size = kMetricsFloats, .checkpointed = false};
  metrics.optimizer.kind = OptimizerKind::kSum;
  tables.push_back(metrics);
  if (run.mode == "local_sgd") {
    TableSpec samples{.name = "_samples", .size = 1, .checkpointed = false};
    samples.optimizer.kind = OptimizerKind::kSum;
    tables.push_back(samples);
  }
  return tables;
}

std::string WeightsSha256(const std::vector<std::vector<float>>& tables) {
  static_assert(std::endian::native == std::endian::little, "weights are hashed as little-endian float32");
  Sha256 h;
  for (const auto& t : tables) h.Update(t.data(), t.size() * sizeof(float));
  return h.HexDigest();
}

Status AverageReplicas(ParamStore& params, std::span<std::vector<float>> replica, uint32_t samples_table, double samples,
                       uint64_t round, std::chrono::milliseconds timeout) {
  std::vector<std::vector<float>> scaled(replica.size());
  std::vector<Handle> hs;
  const float n = static_cast<float>(samples);
  for (size_t t = 0; t < replica.size(); ++t) {
    scaled[t].resize(replica[t].size());
    for (size_t i = 0; i < replica[t].size(); ++i) scaled[t][i] = replica[t][i] * n;
    hs.push_back(params.PushPull(static_cast<uint32_t>(t), scaled[t], replica[t], round, {}));
  }
  std::vector<float> mine{n}, total(1);
  hs.push_back(params.PushPull(samples_table, mine, total, round, {}));
  SHARDPS_RETURN_IF_ERROR(WaitAll(params, hs, timeout, scaled, mine, total, replica));  // before `scaled` goes away
  if (!(total[0] > 0)) return FailedPrecondition("model averaging round " + std::to_string(round) + " saw no samples");
  for (auto& t : replica) for (float& v : t) v /= total[0];
  return Status::Ok();
}

Result<TrainResult> Train(const Model& model, const Dataset& train, const Dataset& test, ParamStore& params,
                          const RunOptions& run, const TrainHooks& hooks) {
  const auto start = std::chrono::steady_clock::now();
  const ModelSpec& ms = model.spec();
  for (const Dataset* d : {&train, &test}) {
    if (d->num_features != ms.input_dim) {
      return InvalidArgument(d->source + " has " + std::to_string(d->num_features) + " features, the model expects " +
                             std::to_string(ms.input_dim));
    }
    if (d->num_classes > ms.num_classes) {
      return InvalidArgument(d->source + " has " + std::to_string(d->num_classes) + " classes, the model " +
                             std::to_string(ms.num_classes));
    }
  }
  if (train.num_samples < run.batch_size) {
    return InvalidArgument("global batch " + std::to_string(run.batch_size) + " is larger than the " +
                           std::to_string(train.num_samples) + " training samples");
  }
  SHARDPS_ASSIGN_OR_RETURN(BatchSlice slice, SliceOfBatch(run.batch_size, run.workers, run.worker));
  std::vector<float> teacher_logits;  // distillation: the teacher's, num_samples x classes
  if (run.teacher != nullptr) {
    SHARDPS_ASSIGN_OR_RETURN(teacher_logits, TeacherLogits(model, train, run));
  }
  SHARDPS_RETURN_IF_ERROR(LookupOptimizer(run.optimizer.kind).status().WithContext("training options"));
  const bool local_sgd = run.mode == "local_sgd";
  const bool worker_optimizer = !local_sgd && run.optimizer_on == "workers";
  if (!local_sgd && run.optimizer_on != "servers" && run.optimizer_on != "workers") {
    return InvalidArgument("optimizer_on is '" + run.optimizer_on + "': 'servers' or 'workers'");
  }
  const size_t M = model.num_tables();
  const uint32_t metrics_table = static_cast<uint32_t>(M);
  const uint32_t samples_table = static_cast<uint32_t>(M + 1);
  const std::vector<TableSpec> tables = TrainingTables(model, run);
  const auto timeout = run.timeout;

  std::vector<std::vector<float>> w(M), next(M), g(M), slots(M);
  std::vector<std::vector<float>> after(M);  // optimizer on the workers: the weights after this worker's update
  for (size_t t = 0; t < M; ++t) {
    w[t].resize(tables[t].size);
    next[t].resize(tables[t].size);
    g[t].resize(tables[t].size);
    if (local_sgd || worker_optimizer) slots[t].assign(tables[t].size * OptimizerSlots(run.optimizer.kind), 0.0f);
    if (worker_optimizer) {
      after[t].resize(tables[t].size);
      params.ShareOptimizerSlots(static_cast<uint32_t>(t), slots[t]);  // checkpointed with the tables
    }
  }
  {
    std::vector<Handle> hs;
    for (size_t t = 0; t < M; ++t) hs.push_back(params.Pull(static_cast<uint32_t>(t), w[t], run.start_step));
    SHARDPS_RETURN_IF_ERROR(WaitAll(params, hs, timeout, w).WithContext("pulling the model at step " + std::to_string(run.start_step)));
  }

  const int64_t B = run.batch_size;
  const int64_t steps_per_epoch = train.num_samples / B;
  const int64_t total_steps = steps_per_epoch * run.epochs;
  const int64_t rows = slice.end - slice.begin;
  const float scale = local_sgd || worker_optimizer ? 1.0f / static_cast<float>(rows) : 1.0f / static_cast<float>(B);
  const float share = static_cast<float>(rows) / static_cast<float>(B);  // of the batch: weights this worker's change
  const Optimizer* const optimizer = FindOptimizer(run.optimizer.kind);  // looked up above
  // Optimizer on the workers: g[t][b, e) (this worker's mean gradient) becomes the change its
  // optimizer makes to the weights, times its share of the batch: what it pushes.
  auto local_update = [&](size_t t, uint64_t b, uint64_t e, uint64_t at_step) {
    std::copy(w[t].begin() + static_cast<int64_t>(b), w[t].begin() + static_cast<int64_t>(e), after[t].begin() + static_cast<int64_t>(b));
    ApplyOptimizerToRange(*optimizer, run.optimizer, at_step, after[t], slots[t], b,
                          std::span<const float>(g[t]).subspan(b, e - b));
    for (uint64_t i = b; i < e; ++i) g[t][i] = (w[t][i] - after[t][i]) * share;
  };
  const BatchSlice test_shard = ShardOfRows(test.num_samples, run.workers, run.worker);
  EpochOrder order(train.num_samples, run.seed);

  uint64_t reduce_round = 0;
  auto reduce = [&](std::vector<float> local) -> Result<std::vector<float>> {
    std::vector<float> total(kMetricsFloats);
    local.resize(kMetricsFloats, 0.0f);
    std::vector<Handle> hs{params.PushPull(metrics_table, local, total, reduce_round++, {})};
    SHARDPS_RETURN_IF_ERROR(WaitAll(params, hs, timeout, local, total));
    return total;
  };
  uint64_t average_round = 0;
  int64_t samples_since_average = 0;
  auto average = [&]() -> Status {
    Status s = AverageReplicas(params, w, samples_table, static_cast<double>(samples_since_average), average_round++, timeout);
    samples_since_average = 0;
    return s;
  };

  TrainResult result;
  std::vector<float> xb;
  std::vector<int32_t> yb;
  std::vector<float> tb;  // distillation: the teacher's logits of the batch rows
  Distillation batch_distillation{.teacher_logits = nullptr, .temperature = run.distill_temperature, .alpha = run.distill_alpha};
  std::vector<std::span<const float>> wspans(M);
  std::vector<std::span<float>> gspans(M);
  std::vector<Handle> hs;  // sync: the step's push-pulls
  double train_seconds = 0;
  double compute_seconds = 0, wait_seconds = 0;  // sync steps: gathering + gradient, then the exchange
  Seconds last_compute{0};  // the previous sync step's gathering + gradient (slow_factor)
  double interval_loss = 0;
  int64_t interval_rows = 0;
  double recent_loss = 0;
  int64_t step = static_cast<int64_t>(run.start_step);
  double last_accuracy = -1;
  if (local_sgd && run.start_step > 0) return FailedPrecondition("resuming local_sgd training is not supported");
  const int first_epoch = static_cast<int>(run.start_step / steps_per_epoch);
  const int64_t first_step_in_epoch = static_cast<int64_t>(run.start_step % steps_per_epoch);
  if (static_cast<int64_t>(run.start_step) > total_steps) {
    return InvalidArgument("the checkpoint is at step " + std::to_string(run.start_step) + " (epoch " +
                           std::to_string(first_epoch) + "); this run has only " + std::to_string(run.epochs) +
                           " epochs (" + std::to_string(total_steps) + " steps)");
  }

  auto evaluate = [&](int epoch, double epoch_loss, int64_t epoch_rows) -> Status {
    std::vector<float> local(kMetricsFloats, 0.0f);
    internal::AddTestCounts(model, w, test, test_shard, local);
    local[kTrainLoss] = static_cast<float>(epoch_loss);
    local[kTrained] = static_cast<float>(epoch_rows);
    SHARDPS_ASSIGN_OR_RETURN(std::vector<float> total, reduce(local));
    result.test_accuracy = total[kTested] > 0 ? total[kCorrect] / total[kTested] : 0.0;
    result.test_loss = total[kTested] > 0 ? total[kTestLoss] / total[kTested] : 0.0;
    if (total[kTrained] > 0) result.train_loss = total[kTrainLoss] / total[kTrained];
    last_accuracy = result.test_accuracy;
    if (hooks.on_metrics) {
      MetricsRow row;
      row.epoch = epoch;
      row.step = step;
      row.samples = step * B;
      row.train_loss = result.train_loss;
      row.test_loss = result.test_loss;
      row.test_accuracy = result.test_accuracy;
      row.samples_per_second = train_seconds > 0 ? static_cast<double>((step - static_cast<int64_t>(run.start_step)) * B) / train_seconds : 0;
      row.wall_seconds = Seconds(std::chrono::steady_clock::now() - start).count();
      row.push_bytes = params.wire().push_bytes;
      row.pull_bytes = params.wire().pull_bytes;
      hooks.on_metrics(row);
    }
    return Status::Ok();
  };

  for (int epoch = first_epoch; epoch < run.epochs; ++epoch) {
    const std::vector<int64_t> perm = order.Permutation(static_cast<uint64_t>(epoch));
    double epoch_loss = 0;
    int64_t epoch_rows = 0;
    for (int64_t s = epoch == first_epoch ? first_step_in_epoch : 0; s < steps_per_epoch; ++s) {
      const auto t0 = std::chrono::steady_clock::now();
      if (run.slow_factor > 1.0 && !local_sgd && last_compute.count() > 0 &&
          (!run.slow_rotates || SlowTurn(static_cast<uint64_t>(step), run.workers) == run.worker)) {
        std::this_thread::sleep_for(std::chrono::duration_cast<std::chrono::steady_clock::duration>(
            last_compute * (run.slow_factor - 1.0)));
      }
      const auto tc = std::chrono::steady_clock::now();
      GatherRows(train, std::span<const int64_t>(perm).subspan(s * B + slice.begin, rows), &xb, &yb);
      const Distillation* distill = nullptr;
      if (run.teacher != nullptr) {
        const size_t C = static_cast<size_t>(ms.num_classes);
        tb.resize(static_cast<size_t>(rows) * C);
        for (int64_t r = 0; r < rows; ++r) {
          const float* src = teacher_logits.data() + static_cast<size_t>(perm[s * B + slice.begin + r]) * C;
          std::copy(src, src + C, tb.data() + static_cast<size_t>(r) * C);
        }
        batch_distillation.teacher_logits = tb.data();
        distill = &batch_distillation;
      }
      for (size_t t = 0; t < M; ++t) {
        wspans[t] = w[t];
        gspans[t] = g[t];
      }
      double loss;
      if (!local_sgd) {
        hs.clear();
        try {
          loss = model.Gradient(
              wspans, xb.data(), yb.data(), rows, scale, gspans,
              [&](size_t t, uint64_t b, uint64_t e) {
                if (worker_optimizer) local_update(t, b, e, static_cast<uint64_t>(step) + 1);
                hs.push_back(params.PushPull(static_cast<uint32_t>(t), std::span<const float>(g[t]).subspan(b, e - b),
                                             std::span<float>(next[t]).subspan(b, e - b), static_cast<uint64_t>(step),
                                             KeyRange{b, e}));
              },
              run.push_block_floats, distill);
        } catch (...) {
          // An allocation failing mid-backward unwinds past `g` and `next`, which tables already
          // pushed still point into: let go of them first (or keep them alive) as on a failed wait.
          (void)CancelAll(params, hs, g, next);
          throw;
        }
        const auto tg = std::chrono::steady_clock::now();
        SHARDPS_RETURN_IF_ERROR(WaitAll(params, hs, timeout, g, next).WithContext("step " + std::to_string(step)));
        compute_seconds += Seconds(tg - t0).count();
        last_compute = tg - tc;
        wait_seconds += Seconds(std::chrono::steady_clock::now() - tg).count();
        std::swap(w, next);
      } else {
        loss = model.Gradient(wspans, xb.data(), yb.data(), rows, scale, gspans, nullptr, 0, distill);
        for (size_t t = 0; t < M; ++t) ApplyOptimizer(run.optimizer, static_cast<uint64_t>(step) + 1, w[t], slots[t], g[t]);
        samples_since_average += rows;
        if (run.local_steps > 0 && (step + 1) % run.local_steps == 0) {
          SHARDPS_RETURN_IF_ERROR(average().WithContext("averaging after step " + std::to_string(step)));
        }
      }
      // A non-finite loss means the weights are (or are about to be) garbage: stop the job here,
      // naming the step, rather than train on and report success. One test of a double per step.
      if (!std::isfinite(loss)) {
        return FailedPrecondition("step " + std::to_string(step) + " (epoch " + std::to_string(epoch) +
                                  "): the loss of worker " + std::to_string(run.worker) + "'s batch is " +
                                  std::to_string(loss) + DivergedHint(run));
      }
      ++step;
      train_seconds += Seconds(std::chrono::steady_clock::now() - t0).count();
      epoch_loss += loss;
      epoch_rows += rows;
      interval_loss += loss;
      interval_rows += rows;
      recent_loss = recent_loss == 0 ? loss / rows : 0.95 * recent_loss + 0.05 * (loss / rows);
      if (hooks.on_progress) {
        Progress p;
        p.epoch = epoch;
        p.epochs = run.epochs;
        p.step = step;
        p.total_steps = total_steps;
        p.loss = recent_loss;
        p.test_accuracy = last_accuracy;
        p.samples_per_second = train_seconds > 0 ? static_cast<double>((step - static_cast<int64_t>(run.start_step)) * B) / train_seconds : 0;
        p.eta_seconds = p.samples_per_second > 0 ? static_cast<double>((total_steps - step) * B) / p.samples_per_second : 0;
        hooks.on_progress(p);
      }
      if (hooks.on_step_end) {
        const Cursor c{static_cast<uint64_t>(step), static_cast<uint64_t>(step / steps_per_epoch),
                       static_cast<uint64_t>(step % steps_per_epoch)};
        SHARDPS_RETURN_IF_ERROR(hooks.on_step_end(c, false));
      }
      if (step % run.log_every_steps == 0) {
        // The weights themselves, at each logging interval (one pass over them, off the step path).
        if (auto bad = FirstNonFinite(w)) {
          return FailedPrecondition("after step " + std::to_string(step - 1) + " (epoch " + std::to_string(epoch) + "): weight " +
                                    std::to_string(bad->second) + " of table '" + tables[bad->first].name + "' is " +
                                    std::to_string(w[bad->first][bad->second]) + DivergedHint(run));
        }
      }
      if (hooks.on_metrics && step % run.log_every_steps == 0) {
        MetricsRow row;
        row.epoch = epoch;
        row.step = step;
        row.samples = step * B;
        row.train_loss = interval_loss / static_cast<double>(interval_rows);
        row.samples_per_second = static_cast<double>((step - static_cast<int64_t>(run.start_step)) * B) / train_seconds;
        row.wall_seconds = Seconds(std::chrono::steady_clock::now() - start).count();
        row.push_bytes = params.wire().push_bytes;
        row.pull_bytes = params.wire().pull_bytes;
        hooks.on_metrics(row);
        interval_loss = 0;
        interval_rows = 0;
      }
    }
    const bool last = epoch + 1 == run.epochs;
    if (local_sgd && last && samples_since_average > 0) {
      SHARDPS_RETURN_IF_ERROR(average().WithContext("final model average"));
    }
    if (!local_sgd && last && (run.consistency != "bsp" || params.lossy_pulls()) &&
        static_cast<uint64_t>(step) > run.start_step) {
      // The replies of the last steps may lag the other workers: pull the weights every worker's
      // last step went into. Compressed replies lag the servers' weights by the residual the
      // servers keep: the final model is the servers' own (what the checkpoint holds).
      const uint64_t all = run.consistency == "asp"   ? static_cast<uint64_t>(step) * static_cast<uint64_t>(run.workers)
                           : run.consistency == "ssp" ? static_cast<uint64_t>(step) + static_cast<uint64_t>(run.staleness)
                                                      : static_cast<uint64_t>(step);
      std::vector<Handle> fin;
      for (size_t t = 0; t < M; ++t) fin.push_back(params.PullExact(static_cast<uint32_t>(t), w[t], all));
      SHARDPS_RETURN_IF_ERROR(WaitAll(params, fin, timeout, w).WithContext("pulling the final model (" + run.consistency + ")"));
    }
    if (auto bad = FirstNonFinite(w)) {
      return FailedPrecondition("at the end of epoch " + std::to_string(epoch) + " (step " + std::to_string(step) + "): weight " +
                                std::to_string(bad->second) + " of table '" + tables[bad->first].name + "' is " +
                                std::to_string(w[bad->first][bad->second]) + DivergedHint(run));
    }
    if (last || (epoch + 1) % run.eval_every_epochs == 0) {
      SHARDPS_RETURN_IF_ERROR(evaluate(epoch, epoch_loss, epoch_rows).WithContext("evaluating epoch " + std::to_string(epoch)));
    }
  }
  if (static_cast<uint64_t>(step) == run.start_step) {
    // Resumed from the end of training: nothing to train; evaluate the model as it is.
    SHARDPS_RETURN_IF_ERROR(evaluate(run.epochs - 1, 0.0, 0).WithContext("evaluating the resumed model"));
  }
  if (hooks.on_step_end) {
    const Cursor c{static_cast<uint64_t>(step), static_cast<uint64_t>(step / steps_per_epoch),
                   static_cast<uint64_t>(step % steps_per_epoch)};
    SHARDPS_RETURN_IF_ERROR(hooks.on_step_end(c, true));
  }
  result.epochs = run.epochs;
  result.steps = step;
  result.wall_seconds = Seconds(std::chrono::steady_clock::now() - start).count();
  result.compute_seconds = compute_seconds;
  result.wait_seconds = wait_seconds;
  result.samples_per_second = train_seconds > 0 ? static_cast<double>((step - static_cast<int64_t>(run.start_step)) * B) / train_seconds : 0;
  result.weights = std::move(w);
  result.weights_sha256 = WeightsSha256(result.weights);
  result.wire = params.wire();
  return result;
}

}  // namespace shardps::worker
