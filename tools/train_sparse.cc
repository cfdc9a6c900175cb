#include "train_sparse.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <vector>

#include "shardps/node.h"
#include "shardps/ps/consistency.h"
#include "shardps/worker/checkpoint_driver.h"
#include "shardps/worker/data.h"
#include "shardps/worker/sparse_lr.h"
#include "train_job.h"

namespace shardps::tools {
namespace {

using Seconds = std::chrono::duration<double>;

struct SparseRun {
  double train_loss = 0;  // mean over the lead worker's share of the last logged steps
  double test_loss = 0;
  double test_accuracy = 0;
  int64_t steps = 0;
  int64_t test_rows = 0;
  uint64_t test_keys = 0;
  double wall_seconds = 0;
};

// The test set's mean log-loss and accuracy under the weights the servers hold after `version`
// steps, evaluated by one worker in batches of rows.
Status Evaluate(worker::KVClient& client, const worker::SparseDataset& test, uint64_t version,
                std::chrono::milliseconds timeout, SparseRun* run) {
  constexpr int64_t kRows = 8192;
  double loss = 0;
  int64_t correct = 0;
  worker::SparseBatch batch;
  std::vector<int64_t> rows;
  std::vector<float> w;
  std::vector<double> logits;
  for (int64_t begin = 0; begin < test.num_rows(); begin += kRows) {
    const int64_t end = std::min(test.num_rows(), begin + kRows);
    rows.resize(static_cast<size_t>(end - begin));
    for (int64_t i = begin; i < end; ++i) rows[static_cast<size_t>(i - begin)] = i;
    SHARDPS_RETURN_IF_ERROR(worker::MakeSparseBatch(test, rows, {}, &batch));
    w.resize(batch.keys.size());
    SHARDPS_RETURN_IF_ERROR(client.SparsePull(0, batch.keys, w, version).wait(timeout));
    logits.resize(static_cast<size_t>(batch.num_rows()));
    SHARDPS_RETURN_IF_ERROR(worker::SparseLrLogits(batch, w, logits));
    for (int64_t r = 0; r < batch.num_rows(); ++r) {
      const double y = batch.labels[static_cast<size_t>(r)];
      loss += worker::LogisticLoss(logits[static_cast<size_t>(r)], y);
      correct += (logits[static_cast<size_t>(r)] > 0) == (y > 0.5);
    }
    run->test_keys += batch.keys.size();
  }
  run->test_rows = test.num_rows();
  run->test_loss = test.num_rows() > 0 ? loss / static_cast<double>(test.num_rows()) : 0;
  run->test_accuracy = test.num_rows() > 0 ? static_cast<double>(correct) / static_cast<double>(test.num_rows()) : 0;
  return Status::Ok();
}

// One worker's steps [start_step, total_steps).
Status TrainWorker(const config::TrainConfig& c, worker::KVClient& client, const worker::SparseDataset& train,
                   int worker, int workers, uint64_t start_step, worker::CheckpointDriver* checkpoints, MetricsCsv* csv,
                   SparseRun* run) {
  const auto timeout = std::chrono::milliseconds(c.timeout_ms());
  const int64_t global = c.batch_size();
  const int64_t per_epoch = train.num_rows() / global;
  const uint64_t total = static_cast<uint64_t>(per_epoch) * static_cast<uint64_t>(c.epochs());
  SHARDPS_ASSIGN_OR_RETURN(worker::BatchSlice slice, worker::SliceOfBatch(global, workers, worker));
  const worker::EpochOrder order(train.num_rows(), c.seed());
  std::vector<int64_t> perm;
  uint64_t perm_epoch = UINT64_MAX;
  worker::SparseBatch batch;
  std::vector<float> w, g;
  double logged = 0;
  int64_t logged_rows = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (uint64_t step = start_step; step < total; ++step) {
    const uint64_t epoch = step / static_cast<uint64_t>(per_epoch);
    const uint64_t in_epoch = step % static_cast<uint64_t>(per_epoch);
    if (epoch != perm_epoch) {
      perm = order.Permutation(epoch);
      perm_epoch = epoch;
    }
    const int64_t first = static_cast<int64_t>(in_epoch) * global;
    const std::span<const int64_t> rows(perm.data() + first + slice.begin, static_cast<size_t>(slice.end - slice.begin));
    SHARDPS_RETURN_IF_ERROR(worker::MakeSparseBatch(train, rows, {}, &batch));
    w.resize(batch.keys.size());
    g.resize(batch.keys.size());
    SHARDPS_RETURN_IF_ERROR(client.SparsePull(0, batch.keys, w, step).wait(timeout));
    SHARDPS_ASSIGN_OR_RETURN(worker::SparseLrLoss loss,
                             worker::SparseLrLossAndGradient(batch, w, g, {.normalizer = static_cast<double>(global)}));
    const bool last = step + 1 == total;
    if (checkpoints && (last || (c.checkpoint_every() > 0 && (step + 1) % static_cast<uint64_t>(c.checkpoint_every()) == 0))) {
      // A checkpoint follows this step: the push waits until every server applied the step (the
      // reply's rows are not needed), so the servers are at step + 1 when the checkpoint is asked.
      SHARDPS_RETURN_IF_ERROR(client.SparsePushPull(0, batch.keys, g, w, step).wait(timeout));
    } else {
      SHARDPS_RETURN_IF_ERROR(client.SparsePush(0, batch.keys, g, step).wait(timeout));
    }
    logged += loss.loss_sum;
    logged_rows += loss.rows;
    if (csv && ((step + 1) % static_cast<uint64_t>(c.log_every_steps()) == 0 || last)) {
      const double secs = Seconds(std::chrono::steady_clock::now() - t0).count();
      worker::MetricsRow r;
      r.epoch = static_cast<int>(epoch);
      r.step = static_cast<int64_t>(step + 1);
      r.samples = static_cast<int64_t>(step + 1) * global;
      r.train_loss = logged_rows > 0 ? logged / static_cast<double>(logged_rows) : 0;
      r.wall_seconds = secs;
      r.samples_per_second = secs > 0 ? static_cast<double>((step + 1 - start_step) * static_cast<uint64_t>(global)) / secs : 0;
      csv->Write(r);
      run->train_loss = r.train_loss;
      logged = 0;
      logged_rows = 0;
    }
    if (checkpoints) {
      const uint64_t next = step + 1;
      SHARDPS_RETURN_IF_ERROR(checkpoints->OnStep({.step = next, .epoch = next / static_cast<uint64_t>(per_epoch),
                                                   .step_in_epoch = next % static_cast<uint64_t>(per_epoch)},
                                                  last));
    }
  }
  run->steps = static_cast<int64_t>(total);
  return Status::Ok();
}

std::string Num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

}  // namespace

int RunSparseLr(FileSystem& fs, const config::TrainConfig& c, const OutputFlags& outputs, const std::string& resume,
                const LaunchPlan& plan, int argc, char** argv) {
  const auto t0 = std::chrono::steady_clock::now();
  auto joined = JoinTrainJob(plan, &argc, &argv, c);
  if (!joined.ok()) {
    std::cerr << "shardps train: " << joined.status().ToString() << std::endl;
    return 1;
  }
  TrainProcess& process = *joined;
  Job& job = *process.job;
  const Result<Cluster>& cluster = process.cluster;
  auto report = [&](const Status& s) { process.Report(s); };
  auto agree = [&](const Status& s) { return process.Agree(s); };
  // Checked before anything trains, on every process: the data (workers), the batch split, the
  // checkpoint to resume from, the optimizer.
  Status s = cluster.status();
  const bool is_worker = s.ok() && cluster->is_worker();
  const int worker_index = is_worker ? cluster->worker_index() : -1;
  const bool lead = worker_index == 0;
  worker::SparseDataset train, test;
  Result<Outputs> out = Outputs{};
  if (s.ok() && is_worker) {
    if (lead) {
      out = PrepareOutputs(fs, outputs, c);
      s = out.status();
    }
    worker::SparseReadOptions ro;
    ro.max_feature_id = static_cast<uint64_t>(c.data().num_features());
    if (s.ok()) {
      auto tr = worker::ReadLibsvmSparse(c.data().train(), ro);
      if (tr.ok()) train = std::move(*tr); else s = tr.status();
    }
    if (s.ok() && lead) {
      auto te = worker::ReadLibsvmSparse(c.data().test(), ro);
      if (te.ok()) test = std::move(*te); else s = te.status();
    }
    if (s.ok() && train.num_rows() < c.batch_size()) {
      s = InvalidArgument(c.data().train() + " has " + std::to_string(train.num_rows()) + " rows, fewer than one batch (" +
                          std::to_string(c.batch_size()) + ")");
    }
    if (s.ok()) s = worker::SliceOfBatch(c.batch_size(), cluster->num_workers(), worker_index).status();
  }
  Result<OptimizerConfig> opt = ToOptimizerConfig(c.optimizer());
  if (s.ok()) s = opt.status();
  TableSpec table{.name = "w", .row_dim = 1};
  if (s.ok()) table.optimizer = *opt;
  Result<TableLayout> layout = s.ok() ? TableLayout::Create({table}, cluster->num_servers()) : Result<TableLayout>(s);
  if (s.ok()) s = layout.status();
  std::unique_ptr<CheckpointReader> reader;
  uint64_t start_step = 0;
  if (s.ok() && !resume.empty()) {
    auto warn = [&](const std::string& w) {
      if (lead) std::cerr << "shardps train: warning: " << w << std::endl;
    };
    if (resume == "auto") {
      auto a = ResolveCheckpointAuto(c.checkpoint_dir(), warn);
      if (!a.ok()) s = a.status();
      else if (a->version) reader = std::make_unique<CheckpointReader>(std::move(*a->version));
    } else {
      auto v = ResolveCheckpoint(resume, warn);
      if (!v.ok()) s = v.status();
      else reader = std::make_unique<CheckpointReader>(std::move(*v));
    }
    if (reader) start_step = reader->checkpoint().manifest.step();
  }
  if (s.ok() && !c.checkpoint_dir().empty() && lead) s = EnsureWritableDirectory(fs, c.checkpoint_dir(), "checkpoint directory");
  if (!agree(s)) return 1;

  NodeOptions no;
  no.client.request_timeout = std::chrono::milliseconds(c.timeout_ms());
  no.server.max_hold = std::chrono::milliseconds(c.timeout_ms());
  no.server.consistency = c.consistency();
  no.server.staleness = c.staleness();
  no.server.checkpoint_dir = c.checkpoint_dir();
  no.server.file_system = &fs;
  no.startup_timeout = std::chrono::milliseconds(c.timeout_ms());
  no.restore_from = reader.get();
  auto transport = job.TakeTransport();
  if (!transport.ok()) {
    report(transport.status());
    job.Fail();
    return 1;
  }
  auto node = Node::Start(std::move(*transport), *cluster, *layout, no);
  if (!node.ok()) {
    report(node.status());
    job.Fail();
    return 1;
  }
  SparseRun run;
  if (worker::KVClient* client = (*node)->client()) {
    MetricsCsv csv;
    std::unique_ptr<worker::CheckpointDriver> checkpoints;
    if (lead) {
      s = csv.Open(out->metrics_csv);
      if (s.ok() && !c.checkpoint_dir().empty()) {
        worker::CheckpointRun ck{.seed = c.seed(),
                                 .global_batch = c.batch_size(),
                                 .config = ConfigToText(c),
                                 .num_servers = static_cast<uint32_t>(cluster->num_servers()),
                                 .num_workers = static_cast<uint32_t>(cluster->num_workers()),
                                 .train_samples = static_cast<uint64_t>(train.num_rows()),
                                 .tables = layout->tables()};
        checkpoints = std::make_unique<worker::CheckpointDriver>(
            fs, *client, ck,
            worker::CheckpointOptions{.dir = c.checkpoint_dir(),
                                      .every = static_cast<uint64_t>(c.checkpoint_every()),
                                      .keep_last = static_cast<uint64_t>(c.keep_last()),
                                      .max_bytes = static_cast<uint64_t>(c.max_bytes()),
                                      .timeout = std::chrono::milliseconds(c.timeout_ms())});
        checkpoints->set_resumed_at(start_step);
      }
    }
    if (s.ok()) {
      s = TrainWorker(c, *client, train, worker_index, cluster->num_workers(), start_step, checkpoints.get(),
                      lead ? &csv : nullptr, &run);
    }
    // Every worker's last step is in before the test set is read (under ssp/asp a pull may not wait).
    if (s.ok()) s = client->Barrier().wait(std::chrono::milliseconds(c.timeout_ms()));
    if (s.ok() && lead) s = Evaluate(*client, test, static_cast<uint64_t>(run.steps), std::chrono::milliseconds(c.timeout_ms()), &run);
    if (s.ok() && lead) {
      run.wall_seconds = Seconds(std::chrono::steady_clock::now() - t0).count();
      worker::MetricsRow r;
      r.epoch = c.epochs();
      r.step = run.steps;
      r.samples = run.steps * c.batch_size();
      r.train_loss = run.train_loss;
      r.test_loss = run.test_loss;
      r.test_accuracy = run.test_accuracy;
      r.wall_seconds = run.wall_seconds;
      csv.Write(r);
      const std::string json =
          "{\"model\":\"sparse_lr\",\"servers\":" + std::to_string(cluster->num_servers()) +
          ",\"workers\":" + std::to_string(cluster->num_workers()) + ",\"consistency\":\"" + c.consistency() +
          "\",\"staleness\":" + std::to_string(c.staleness()) + ",\"epochs\":" + std::to_string(c.epochs()) +
          ",\"steps\":" + std::to_string(run.steps) + ",\"train_rows\":" + std::to_string(train.num_rows()) +
          ",\"train_loss\":" + Num(run.train_loss) + ",\"test_rows\":" + std::to_string(run.test_rows) +
          ",\"test_logloss\":" + Num(run.test_loss) + ",\"test_accuracy\":" + Num(run.test_accuracy) +
          ",\"wall_seconds\":" + Num(run.wall_seconds) + "}";
      std::cout << json << std::endl;
      const std::string line = json + "\n";
      s = WriteFileAtomically(fs, out->summary_json,
                              {std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(line.data()), line.size())});
      if (s.ok()) {
        std::cerr << "shardps train: sparse_lr test log-loss " << Num(run.test_loss) << ", accuracy " << Num(run.test_accuracy)
                  << " after " << run.steps << " steps; metrics " << out->metrics_csv << ", summary " << out->summary_json
                  << std::endl;
      }
    }
  }
  if (s.ok()) s = (*node)->Finish();
  else (*node)->Abandon(s);
  if (!s.ok()) {
    report(s);
    node = Result<std::unique_ptr<Node>>(Cancelled("failed"));
    job.Fail();
    return 1;
  }
  const bool all_ok = job.AgreeFinal(true);
  node = Result<std::unique_ptr<Node>>(Cancelled("finished"));
  return all_ok ? 0 : 1;
}

}  // namespace shardps::tools
