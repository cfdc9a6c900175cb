// shardps train: data-parallel training through the parameter servers (or alone, --servers 0).
// This file is the orchestration: flags, the config, the job's processes and their roles. The
// checks made before training are in train_checks.*, the outputs in train_outputs.*, the training
// loop and checkpoints in the worker library.
#include <unistd.h>

#include <boost/program_options.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>
#include <new>
#include <string>
#include <vector>

#include "commands.h"
#include "launch.h"
#include "progress.h"
#include "shardps/storage/checkpoint.h"
#include "config.h"
#include "shardps/storage/file_system.h"
#include "shardps/storage/safetensors.h"
#include "shardps/node.h"
#include "shardps/ps/consistency.h"
#include "shardps/ps/server.h"
#include "shardps/worker/checkpoint_driver.h"
#include "shardps/worker/federated.h"
#include "shardps/worker/teacher.h"
#include "shardps/worker/trainer.h"
#include "train_checks.h"
#include "train_common.h"
#include "train_job.h"
#include "train_metrics.h"
#include "train_outputs.h"
#include "train_sparse.h"

namespace shardps::tools {
namespace {

namespace po = boost::program_options;

struct TrainFlags : OutputFlags {
  std::string config_path;
  std::vector<std::string> overrides;
  std::string progress = "auto";
  std::string resume;  // DIR, DIR@VERSION, DIR@TAG or "auto" (the checkpoint dir's newest, else a fresh start)
  std::string crash_at;  // test only: PHASE@VERSION
  std::string slow_worker;  // test only: W:F, worker W computes F times as long
  int slow_worker_index = -1;
  double slow_factor = 1.0;
  std::string init_from;  // safetensors file to start from
  bool under_mpirun = false;  // stdout belongs to a launcher: no redrawing progress
  int metrics_port = -1;      // --metrics-port: -1 none; rank r serves /metrics on port + r (0: any free port)
  std::string metrics_address = "127.0.0.1";
};

Result<config::TrainConfig> BuildConfig(const TrainFlags& f) {
  SHARDPS_ASSIGN_OR_RETURN(config::TrainConfig c, LoadTrainConfig(f.config_path));
  for (const std::string& o : f.overrides) SHARDPS_RETURN_IF_ERROR(ApplyConfigOverride(&c, o));
  SHARDPS_RETURN_IF_ERROR(ValidateTrainConfig(c));
  return c;
}

}  // namespace

// train_common.h: what `shardps fed-serve` and `fed-client` (fed.cc) share with train.
Result<worker::Dataset> LoadSplitUnguarded(const config::DataConfig& d, bool train) {
  const std::string& path = train ? d.train() : d.test();
  worker::Dataset ds;
  if (d.format() == "idx") {
    SHARDPS_ASSIGN_OR_RETURN(ds, worker::ReadIdx(path, train ? d.train_labels() : d.test_labels(), d.num_classes()));
  } else if (d.format() == "libsvm") {
    SHARDPS_ASSIGN_OR_RETURN(ds, worker::ReadLibsvm(path, d.num_features(), d.num_classes()));
  } else {
    SHARDPS_ASSIGN_OR_RETURN(ds, worker::ReadCsv(path, d.num_classes(), d.csv_header(), d.csv_label_column()));
  }
  const int64_t limit = train ? d.train_limit() : d.test_limit();
  if (limit > 0 && limit < ds.num_samples) {
    ds.num_samples = limit;
    ds.features.resize(static_cast<size_t>(limit * ds.num_features));
    ds.labels.resize(static_cast<size_t>(limit));
  }
  return ds;
}

// A data set too large for this process's memory is an error naming the file, not an abort.
Result<worker::Dataset> LoadSplit(const config::DataConfig& d, bool train) {
  try {
    return LoadSplitUnguarded(d, train);
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("out of memory loading the " + std::string(train ? "training" : "test") + " data '" +
                             (train ? d.train() : d.test()) + "'");
  }
}

// The optimizer whose state the workers keep (optimizer_on "workers"), or "".
std::string WorkerOptimizer(const config::TrainConfig& c) {
  return c.optimizer_on() == "workers" && c.mode() == "sync" ? c.optimizer().kind() : std::string();
}

worker::RunOptions ToRunOptions(const config::TrainConfig& c, int worker, int workers) {
  worker::RunOptions r;
  r.mode = c.mode();
  r.local_steps = c.local_steps();
  r.epochs = c.epochs();
  r.batch_size = c.batch_size();
  r.seed = c.seed();
  r.optimizer = *ToOptimizerConfig(c.optimizer());  // validated
  r.optimizer_on = c.optimizer_on();
  r.log_every_steps = c.log_every_steps();
  r.eval_every_epochs = c.eval_every_epochs();
  r.worker = worker;
  r.workers = workers;
  r.push_block_floats = c.chunk_floats();
  r.consistency = c.consistency();
  r.staleness = c.staleness();
  // A worker waits longer than a server holds its request (timeout_ms, RunDistributed): when a
  // worker stalls, the server's answer to the live workers, naming the workers whose pushes are
  // missing, arrives before their own wait gives up and could only blame the server.
  r.timeout = std::chrono::milliseconds(c.timeout_ms() + std::max<int64_t>(2000, c.timeout_ms() / 4));
  return r;
}

worker::FederatedOptions ToFederatedOptions(const config::TrainConfig& c) {
  const config::FederatedConfig& f = c.federated();
  worker::FederatedOptions o;
  o.partition.partitioner = f.partitioner();
  o.partition.clients = f.clients();
  o.partition.shards_per_client = f.shards_per_client();
  o.partition.dirichlet_alpha = f.dirichlet_alpha();
  o.partition.seed = c.seed();
  o.fraction = f.fraction();
  o.local_epochs = f.local_epochs();
  o.local_batch = f.local_batch();
  o.rounds = f.rounds();
  o.eval_every_rounds = f.eval_every_rounds();
  o.clip_norm = f.clip_norm();
  o.noise_multiplier = f.noise_multiplier();
  o.dp_delta = f.dp_delta();
  o.secure_aggregation = f.secure_aggregation();
  o.secagg_bits = f.secagg_bits();
  o.secagg_clip = f.secagg_clip();
  o.secagg_threshold = f.secagg_threshold();
  o.secagg_dropouts = f.secagg_dropouts();
  o.secagg_drop_phase = f.secagg_drop_phase();
  return o;
}

// Knowledge distillation: the config's teacher, read and checked against the data and the student
// now, before any training (nullptr without one).
Result<std::unique_ptr<worker::Teacher>> LoadTeacher(const config::TrainConfig& c, const worker::Dataset& train) {
  if (c.teacher().empty()) return std::unique_ptr<worker::Teacher>();
  return worker::Teacher::Load(c.teacher(), train.num_features, c.data().num_classes());
}

Result<std::unique_ptr<worker::Model>> MakeModel(const config::TrainConfig& c, const worker::Dataset& train) {
  worker::ModelSpec ms;
  ms.input_dim = train.num_features;
  ms.num_classes = c.data().num_classes();
  for (int64_t h : c.hidden()) ms.hidden.push_back(h);
  return worker::Model::Create(ms);
}

namespace {

// The crash-test hook of --test-crash-at PHASE@VERSION: kills this process (SIGKILL, no cleanup)
// when a write of that version reaches that phase.
CheckpointFaultHook CrashHook(const std::string& spec, const std::string& dir) {
  if (spec.empty()) return nullptr;
  const size_t at = spec.rfind('@');
  const std::string phase = spec.substr(0, at);
  const std::string vdir = CheckpointVersionDir(dir, std::stoull(spec.substr(at + 1)));
  // "shard-written" -> "shard-written:<vdir>"; "before-rename:MANIFEST" -> "before-rename:<vdir>/MANIFEST".
  const size_t colon = phase.find(':');
  const std::string target = colon == std::string::npos ? phase + ":" + vdir
                                                        : phase.substr(0, colon + 1) + vdir + "/" + phase.substr(colon + 1);
  return [phase, target](const std::string& p) {
    if (p == target) {
      std::cerr << "shardps train: --test-crash-at " << phase << ": killing this process" << std::endl;
      raise(SIGKILL);
    }
  };
}

// --metrics-port P: this process's /metrics on P + rank (any free port for P = 0), logged.
Result<std::unique_ptr<TrainMetrics>> StartTrainMetrics(const TrainFlags& f, const std::string& role, int rank, int size) {
  const int port = f.metrics_port == 0 ? 0 : f.metrics_port + rank;
  if (port > 65535) {
    return InvalidArgument("--metrics-port " + std::to_string(f.metrics_port) + ": rank " + std::to_string(rank) + " would listen on " +
                           std::to_string(port) + ", beyond 65535");
  }
  SHARDPS_ASSIGN_OR_RETURN(auto m, TrainMetrics::Start(f.metrics_address, static_cast<uint16_t>(port), role, rank, size));
  std::cerr << "shardps train: rank " << rank << " (" << role << "): metrics on http://" << f.metrics_address << ":" << m->port()
            << "/metrics" << std::endl;
  return m;
}

// Trains as worker `worker` of `workers` and, on the lead worker, writes the outputs.
Status TrainAndReport(const config::TrainConfig& c, const TrainFlags& f, const Outputs& out, const worker::Dataset& train,
                      const worker::Dataset& test, worker::ParamStore& params, int worker, int workers, int servers,
                      const worker::Teacher* teacher, uint64_t start_step = 0, worker::KVClient* client = nullptr,
                      int64_t* steps_done = nullptr, TrainMetrics* metrics = nullptr) {
  const bool lead = worker == 0;
  SHARDPS_ASSIGN_OR_RETURN(auto model, MakeModel(c, train));
  worker::RunOptions run = ToRunOptions(c, worker, workers);
  run.start_step = start_step;
  if (teacher != nullptr) {
    run.teacher = teacher;
    run.distill_temperature = c.distill_temperature();
    run.distill_alpha = c.distill_alpha();
    if (lead) {
      std::cerr << "shardps train: distilling from " << teacher->source() << " (" << teacher->Describe() << "), temperature "
                << c.distill_temperature() << ", alpha " << c.distill_alpha() << std::endl;
    }
  }
  // --servers 0: one worker applying its own updates at once, which is what "ssp" and "asp" give
  // with one worker; the final pull is not needed.
  if (servers == 0) run.consistency = std::string(ps::kBspConsistency);
  if (f.slow_worker_index >= workers) {
    return InvalidArgument("--test-slow-worker " + f.slow_worker + ": this job has only " + std::to_string(workers) +
                           " workers (0.." + std::to_string(workers - 1) + ")");
  }
  if (f.slow_worker_index == worker || f.slow_worker_index == kAnySlowWorker) run.slow_factor = f.slow_factor;
  run.slow_rotates = f.slow_worker_index == kAnySlowWorker;
  worker::TrainHooks hooks;
  std::unique_ptr<worker::CheckpointDriver> checkpoints;
  if (lead && client && !c.checkpoint_dir().empty()) {
    worker::CheckpointRun ckrun{.seed = c.seed(),
                                .global_batch = c.batch_size(),
                                .config = ConfigToText(c),
                                .num_servers = static_cast<uint32_t>(servers),
                                .num_workers = static_cast<uint32_t>(workers),
                                .chunk_floats = c.chunk_floats(),
                                .train_samples = static_cast<uint64_t>(train.num_samples),
                                .train_data_crc32c = TrainDataCrc(train),
                                .tables = worker::TrainingTables(*model, run),
                                .codec = c.codec(),
                                .worker_optimizer = WorkerOptimizer(c)};
    worker::CheckpointOptions co;
    co.dir = c.checkpoint_dir();
    co.every = static_cast<uint64_t>(c.checkpoint_every());
    co.keep_last = static_cast<uint64_t>(c.keep_last());
    co.max_bytes = static_cast<uint64_t>(c.max_bytes());
    co.timeout = run.timeout;
    co.fault = CrashHook(f.crash_at, c.checkpoint_dir());
    co.on_warning = [](const std::string& m) { std::cerr << "shardps train: " << m << std::endl; };
    checkpoints = std::make_unique<worker::CheckpointDriver>(*out.fs, *client, ckrun,
                                                             std::move(co));
    checkpoints->set_resumed_at(start_step);
    hooks.on_step_end = [&](const worker::Cursor& cur, bool final) {
      const int before = checkpoints->written();
      const auto t0 = std::chrono::steady_clock::now();
      Status s = checkpoints->OnStep(cur, final);
      if (metrics && checkpoints->written() > before) {
        metrics->OnCheckpoint(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      return s;
    };
  }
  MetricsCsv csv;
  std::unique_ptr<ProgressDisplay> progress;
  if (lead) {
    SHARDPS_RETURN_IF_ERROR(csv.Open(out.metrics_csv));
    hooks.on_metrics = [&](const worker::MetricsRow& r) {
      csv.Write(r);
      if (metrics) metrics->OnMetricsRow(r);
    };
    hooks.on_notice = [](const std::string& m) { std::cerr << "shardps train: " << m << std::endl; };
    // Under mpirun a rank's stdout is a pipe or pty owned by the launcher: never redraw there.
    progress = std::make_unique<ProgressDisplay>(f.progress == "auto" && f.under_mpirun ? "plain" : f.progress);
  }
  if (metrics && !lead) hooks.on_metrics = [&](const worker::MetricsRow& r) { metrics->OnMetricsRow(r); };
  hooks.on_progress = [&](const worker::Progress& p) {
    if (steps_done) *steps_done = p.step;
    if (progress) progress->Update(p);
    if (metrics) metrics->OnProgress(p);
  };
  auto train_now = [&]() -> Result<worker::TrainResult> {
    if (c.mode() != "fedavg") return worker::Train(*model, train, test, params, run, hooks);
    const worker::FederatedOptions fed = ToFederatedOptions(c);
    if (lead) {
      worker::PartitionOptions po = fed.partition;
      po.seed = c.seed();
      SHARDPS_ASSIGN_OR_RETURN(const worker::Partition part, worker::MakePartition(train.labels, train.num_classes, po));
      std::cerr << "shardps train: fedavg, " << po.clients << " clients (" << po.partitioner << " partition of "
                << train.num_samples << " samples), fraction " << fed.fraction << ", " << fed.local_epochs
                << " local epochs of batch " << fed.local_batch << ", " << fed.rounds << " rounds\n"
                << worker::FormatLabelHistogram(part, train.labels, train.num_classes) << std::flush;
    }
    return worker::TrainFederated(*model, train, test, params, run, fed, hooks);
  };
  SHARDPS_ASSIGN_OR_RETURN(worker::TrainResult r, train_now());
  if (lead) {
    progress->Finish(r, c.mode() == "fedavg");
    const auto tables = worker::TrainingTables(*model, run);
    SHARDPS_RETURN_IF_ERROR(WriteFinalModel(*out.fs, out.model_out, tables, r.weights));
    SHARDPS_RETURN_IF_ERROR(WriteSummary(*out.fs, out.summary_json, c, servers, workers, r));
    if (checkpoints) {
      std::cerr << "shardps train: " << checkpoints->written() << " checkpoints in " << c.checkpoint_dir() << ", "
                << checkpoints->bytes() << " bytes of shards written at " << checkpoints->write_mb_per_s()
                << " MB/s, training stalled " << checkpoints->stall_ms() << " ms for them in all" << std::endl;
    }
    std::cerr << "shardps train: metrics " << out.metrics_csv << ", model " << out.model_out << ", summary "
              << out.summary_json << std::endl;
  }
  return Status::Ok();
}

int RunSingleProcess(FileSystem& fs, const config::TrainConfig& c, const TrainFlags& f) {
  auto fail = [](const Status& s) {
    std::cerr << "shardps train: " << s.ToString() << std::endl;
    return 1;
  };
  auto out = PrepareOutputs(fs, f, c);
  if (!out.ok()) return fail(out.status());
  auto train = LoadSplit(c.data(), true);
  if (!train.ok()) return fail(train.status());
  auto test = LoadSplit(c.data(), false);
  if (!test.ok()) return fail(test.status());
  auto model = MakeModel(c, *train);
  if (!model.ok()) return fail(model.status());
  auto teacher = LoadTeacher(c, *train);
  if (!teacher.ok()) return fail(teacher.status());
  Status fits = CheckModelFits((*model)->spec(), c, /*trains=*/true, /*holds_tables=*/true, 0, test->num_samples, MemoryLimitBytes());
  if (!fits.ok()) return fail(fits);
  std::unique_ptr<TrainMetrics> metrics;
  if (f.metrics_port >= 0) {
    auto m = StartTrainMetrics(f, "worker", 0, 1);
    if (!m.ok()) return fail(m.status());
    metrics = std::move(*m);
  }
  try {
    worker::LocalParams params(worker::TrainingTables(**model, ToRunOptions(c, 0, 1)));
    Status s = TrainAndReport(c, f, *out, *train, *test, params, 0, 1, 0, teacher.value().get(), 0, nullptr, nullptr,
                              metrics.get());
    return s.ok() ? 0 : fail(s);
  } catch (const std::bad_alloc&) {
    return fail(ResourceExhausted("out of memory while allocating the tables or buffers of a model of " +
                                  std::to_string(c.hidden_size()) + " hidden layers (" + Gigabytes(static_cast<double>(MemoryLimitBytes())) +
                                  " may be used): choose smaller hidden layers"));
  }
}

int RunDistributed(FileSystem& fs, const config::TrainConfig& c, const TrainFlags& f, const LaunchPlan& plan, int argc, char** argv) {
  auto joined = JoinTrainJob(plan, &argc, &argv, c);
  if (!joined.ok()) {
    std::cerr << "shardps train: " << joined.status().ToString() << std::endl;
    return 1;
  }
  TrainProcess& process = *joined;
  Job& job = *process.job;
  const int rank = job.rank();
  const Result<Cluster>& cluster = process.cluster;
  auto report = [&](const Status& s) { process.Report(s); };
  // Reached by every process with its own outcome; a process that was fine says why it stops.
  auto agree = [&](const Status& s) { return process.Agree(s); };
  // Every process reaches each agreement below, whatever failed, so none is left waiting.
  Status s;
  if (!cluster.ok()) s = cluster.status();
  if (s.ok() && f.slow_worker_index >= cluster->num_workers()) {
    s = InvalidArgument("--test-slow-worker " + f.slow_worker + ": this job has only " + std::to_string(cluster->num_workers()) +
                        " workers (0.." + std::to_string(cluster->num_workers() - 1) + ")");
  }
  // --metrics-port: every process serves its metrics from before loading data to its exit.
  std::unique_ptr<TrainMetrics> metrics;
  if (s.ok() && f.metrics_port >= 0) {
    auto m = StartTrainMetrics(f, cluster->is_worker() ? "worker" : "server", rank, job.size());
    if (m.ok()) metrics = std::move(*m); else s = m.status();
  }
  Result<Outputs> out = Outputs{};
  worker::Dataset train, test;
  std::unique_ptr<worker::Teacher> teacher;
  std::optional<CheckpointDirLock> writer_lock;  // the lead worker's, for the whole run
  // The lead worker, which creates and commits every version, checks (and creates) the checkpoint
  // location and holds the directory's writer lock for the whole run.
  const bool ckpt_writer = s.ok() && !c.checkpoint_dir().empty() && cluster->is_worker() && cluster->worker_index() == 0;
  std::error_code exists_ec;
  const bool ckpt_dir_was_missing = ckpt_writer && !std::filesystem::exists(c.checkpoint_dir(), exists_ec);
  if (ckpt_writer) {
    s = EnsureWritableDirectory(fs, c.checkpoint_dir(), "checkpoint directory");
    if (s.ok()) {
      auto lock = CheckpointDirLock::Acquire(c.checkpoint_dir(), CheckpointDirLock::Kind::kWriter, "shardps train",
                                             std::chrono::milliseconds(0));
      if (!lock.ok()) {
        s = lock.status();
      } else {
        if (!lock->taken_over_from().empty()) {
          std::cerr << "shardps train: took over the lock of " << c.checkpoint_dir() << " left by " << lock->taken_over_from()
                    << " (that process is gone)" << std::endl;
        }
        writer_lock = std::move(*lock);
      }
    }
  }
  if (s.ok() && cluster->is_worker()) {
    out = PrepareOutputs(fs, f, c);
    if (!out.ok()) s = out.status();
    if (s.ok()) {
      auto tr = LoadSplit(c.data(), true);
      if (tr.ok()) train = std::move(*tr); else s = tr.status();
    }
    if (s.ok()) {
      auto te = LoadSplit(c.data(), false);
      if (te.ok()) test = std::move(*te); else s = te.status();
    }
    if (s.ok()) {  // every worker reads the teacher (distillation) and checks it before any training
      auto t = LoadTeacher(c, train);
      if (t.ok()) teacher = std::move(*t); else s = t.status();
    }
  }
  // Servers need the model's table shapes; the lead worker knows the input width from its data.
  int64_t input_dim = s.ok() && cluster->is_worker() ? train.num_features : 0;
  if (!agree(s)) return 1;
  // Every rank's data and batch configuration must be the same before any of them trains.
  if (!agree(CompareRanks(job, *cluster, c, train, test))) return 1;
  auto dim = job.Max(input_dim);
  if (!dim.ok()) {
    report(dim.status());
    return 1;
  }
  worker::ModelSpec ms;
  ms.input_dim = *dim;
  ms.num_classes = c.data().num_classes();
  for (int64_t h : c.hidden()) ms.hidden.push_back(h);
  auto model = worker::Model::Create(ms);
  const int worker_index = cluster->worker_index();
  const worker::RunOptions run = ToRunOptions(c, std::max(0, worker_index), cluster->num_workers());
  Result<TableLayout> layout = model.ok() ? TableLayout::Create(worker::TrainingTables(**model, run), cluster->num_servers(),
                                                                {.chunk_floats = c.chunk_floats()})
                                          : Result<TableLayout>(model.status());
  if (!layout.ok()) s = layout.status();
  if (s.ok()) {
    s = CheckModelFits(ms, c, cluster->is_worker(), cluster->is_server(), cluster->num_servers(),
                       cluster->is_worker() ? test.num_samples : 0, MemoryLimitBytes());
  }
  if (!agree(s)) return 1;
  // Resume: every rank resolves the same version of the shared checkpoint directory.
  std::unique_ptr<CheckpointReader> reader;
  uint64_t start_step = 0;
  if (!f.resume.empty()) {
    auto warn = [&](const std::string& w) {
      if (worker_index == 0) std::cerr << "shardps train: warning: " << w << std::endl;
    };
    Result<CheckpointVersion> v = NotFound("no checkpoint");
    bool fresh = false;
    if (f.resume == "auto") {
      // Requeue-safe: the identical command line starts fresh the first time and resumes after.
      auto a = ResolveCheckpointAuto(c.checkpoint_dir(), warn);
      if (!a.ok()) {
        v = a.status();
      } else if (a->version) {
        v = std::move(*a->version);
      } else {
        fresh = true;
        const std::string why = ckpt_dir_was_missing ? "checkpoint directory '" + c.checkpoint_dir() + "' did not exist (created it)"
                                                     : a->why;
        if (worker_index == 0) std::cerr << "shardps train: --resume auto: " << why << "; starting fresh" << std::endl;
      }
    } else {
      v = ResolveCheckpoint(f.resume, warn);
    }
    if (fresh) {
      // nothing to load
    } else if (!v.ok()) {
      s = v.status();
    } else if (Status same = CheckResumeData(*v, c, cluster->is_worker() ? &train : nullptr); !same.ok()) {
      s = same;
    } else {
      start_step = v->manifest.step();
      if (worker_index == 0) {
        std::cerr << "shardps train: resuming from " << v->path << " at step " << start_step << " (epoch " << v->manifest.epoch()
                  << ", step " << v->manifest.step_in_epoch() << " of it)" << std::endl;
      }
      reader = std::make_unique<CheckpointReader>(std::move(*v));
    }
    // Every process must load the same version (an operator's rollback between two processes'
    // resolutions would split them): the lowest and the highest version resolved must agree
    // (0: a fresh start; -1: this process failed, and says why itself).
    const int64_t mine = !s.ok() ? -1 : reader ? static_cast<int64_t>(reader->manifest().version()) : 0;
    auto hi = job.Max(mine);
    auto neg_lo = hi.ok() ? job.Max(-mine) : Result<int64_t>(hi.status());
    if (!neg_lo.ok()) {
      report(neg_lo.status());
      return 1;
    }
    if (-*neg_lo >= 0 && *hi != -*neg_lo) {
      s = FailedPrecondition("the processes of this job resolved different checkpoints of " + (f.resume == "auto" ? c.checkpoint_dir() : f.resume) +
                             " (versions " + std::to_string(-*neg_lo) + " to " + std::to_string(*hi) + ", 0 = none; this one " +
                             std::to_string(mine) + "): was the directory changed while the job started? Start it again");
    }
  }
  NodeOptions no;
  // The servers give up on a held request first (and say which workers it waits for); the
  // workers' own waits (run.timeout) are longer by a margin.
  no.client.request_timeout = std::chrono::milliseconds(c.timeout_ms());
  no.server.max_hold = std::chrono::milliseconds(c.timeout_ms());
  no.server.consistency = c.consistency();
  no.server.staleness = c.staleness();
  no.client.codec = c.codec();
  no.client.error_feedback = c.error_feedback();
  no.client.compress_after = static_cast<uint64_t>(c.compress_after());
  no.client.codec_density = c.codec_density();
  no.server.codec = c.codec();
  no.client.worker_optimizer = WorkerOptimizer(c);
  no.server.worker_optimizer = WorkerOptimizer(c);
  if (metrics) {
    no.client.on_op_done = [m = metrics.get()](const char* op, double seconds, bool ok) { m->OnOp(op, seconds, ok); };
  }
  if (!c.checkpoint_dir().empty() && cluster->is_worker() && c.batch_size() > 0) {
    // The steps checkpoints are taken at (CheckpointDriver: every checkpoint_every, and the last):
    // pushes before them carry the workers' error-feedback residuals and optimizer slots.
    const uint64_t every = static_cast<uint64_t>(c.checkpoint_every());
    const uint64_t last = static_cast<uint64_t>(train.num_samples / c.batch_size()) * static_cast<uint64_t>(c.epochs());
    no.client.checkpoint_at = [every, last](uint64_t steps) { return steps == last || (every > 0 && steps % every == 0); };
  }
  no.server.checkpoint_dir = c.checkpoint_dir();
  no.server.file_system = &fs;
  no.server.checkpoint_fault = CrashHook(f.crash_at, c.checkpoint_dir());
  no.startup_timeout = run.timeout;
  if (reader) no.restore_from = reader.get();
  std::unique_ptr<SafetensorsFile> init;
  if (s.ok() && !f.init_from.empty() && !reader) {  // with --resume auto: only for a fresh start
    auto file = SafetensorsFile::Open(f.init_from);
    if (!file.ok()) {
      s = file.status();
    } else {
      init = std::make_unique<SafetensorsFile>(std::move(*file));
      no.init_from = init.get();
    }
  }
  if (!agree(s)) return 1;
  auto transport = job.TakeTransport();
  if (!transport.ok()) {
    report(transport.status());
    job.Fail();
    return 1;
  }
  int64_t steps_done = static_cast<int64_t>(start_step);
  // A failed allocation (tables, buffers) is this process's failure, told to the job like any other.
  auto out_of_memory = [&](const std::string& doing) {
    return ResourceExhausted("out of memory " + doing + " (" + Gigabytes(static_cast<double>(MemoryLimitBytes())) +
                             " may be used by this process): choose smaller hidden layers");
  };
  Result<std::unique_ptr<Node>> node = Cancelled("not started");
  try {
    node = Node::Start(std::move(*transport), *cluster, *layout, no);
  } catch (const std::bad_alloc&) {
    node = out_of_memory("allocating this process's tables");
  }
  if (!node.ok()) {
    s = node.status();
  } else {
    if (metrics) metrics->SetEndpoint(&(*node)->endpoint());
    if (auto* client = (*node)->client()) {
      try {
        worker::ClientParams params(*client);
        s = TrainAndReport(c, f, *out, train, test, params, worker_index, cluster->num_workers(), cluster->num_servers(),
                           teacher.get(), start_step, client, &steps_done, metrics.get());
      } catch (const std::bad_alloc&) {
        s = out_of_memory("while training");
      }
    }
    if (s.ok()) {
      s = (*node)->Finish();
    } else {
      (*node)->Abandon(s);
    }
    if (!cluster->is_worker() && (*node)->server()) {
      // The model's own tables, not the bookkeeping ones the trainer appends after them.
      const auto done = (*node)->server()->CompletedSteps(static_cast<uint32_t>((*model)->Tables(c.seed()).size()));
      steps_done = done ? static_cast<int64_t>(*done) : -1;
    }
  }
  if (metrics) metrics->SetEndpoint(nullptr);  // the node goes below
  if (!s.ok()) {
    std::cerr << "shardps train: " << cluster->Describe(rank) << ": " << s.ToString() << WhereToResume(c, steps_done) << std::endl;
    node = Result<std::unique_ptr<Node>>(Cancelled("failed"));
    job.Fail();  // MPI: ends every rank now; TCP: peers see this process lost
    return 1;
  }
  const bool all_ok = job.AgreeFinal(true);
  node = Result<std::unique_ptr<Node>>(Cancelled("finished"));
  return all_ok ? 0 : 1;
}

}  // namespace

int TrainMain(int argc, char** argv) {
  TrainFlags f;
  po::options_description desc("shardps train flags");
  int64_t epochs = 0, batch = 0, local_steps = -1, train_limit = -1, test_limit = -1;
  int servers = -1;
  double lr = 0;
  uint64_t seed = 0;
  std::string optimizer, mode, hidden, checkpoint_dir;
  int64_t checkpoint_every = 0, keep_last = 0, max_bytes = 0;
  bool colocated = false;
  std::string consistency, codec, optimizer_on;
  int64_t compress_after = -1;
  double codec_density = 0;
  bool no_error_feedback = false;
  int staleness = -1;
  std::string teacher;
  double distill_temperature = 0, distill_alpha = 0;
  int fed_clients = 0, fed_rounds = 0, fed_local_epochs = 0;
  int64_t fed_local_batch = -1;
  double fed_fraction = 0, dirichlet_alpha = 0, clip_norm = -1, noise_multiplier = -1, dp_delta = 0;
  double secagg_clip = 0;
  int secagg_bits = 0, secagg_threshold = 0, secagg_dropouts = 0, secagg_drop_phase = 0;
  std::string partitioner;
  LaunchFlags launch;
  desc.add_options()("help,h", "print this help")
      ("config", po::value(&f.config_path)->required(), "training config, protobuf text format (.prototxt)")
      ("set", po::value(&f.overrides)->composing(), "override a config key: --set optimizer.learning_rate=0.05 (repeatable)")
      ("epochs", po::value(&epochs), "config epochs")
      ("batch-size", po::value(&batch), "config batch_size (global, split over the workers)")
      ("lr", po::value(&lr), "config optimizer.learning_rate")
      ("optimizer", po::value(&optimizer), "config optimizer.kind: a registered optimizer (sgd, momentum, adam, adagrad, ftrl)")
      ("mode", po::value(&mode), "config mode: sync, local_sgd or fedavg (federated averaging)")
      ("local-steps", po::value(&local_steps), "config local_steps (local_sgd: K; 0 = one final average)")
      ("hidden", po::value(&hidden), "config hidden layer widths, e.g. 256,128")
      ("seed", po::value(&seed), "config seed")
      ("servers", po::value(&servers), "ranks 0..S-1 serve, the rest train; 0 = one process, no servers")
      ("colocated", po::bool_switch(&colocated), "every rank serves a shard and trains")
      ("consistency", po::value(&consistency), "config consistency: bsp (default), ssp (bounded staleness) or asp (asynchronous)")
      ("codec", po::value(&codec),
       "config codec: how pushes and pull replies travel: identity (default), fp16, int8, sign, topk or randomk")
      ("codec-density", po::value(&codec_density), "config codec_density: topk/randomk fraction of values sent (0.01)")
      ("compress-after", po::value(&compress_after), "config compress_after: steps that travel as float32 first")
      ("no-error-feedback", po::bool_switch(&no_error_feedback), "config error_feedback=false: drop what compression loses")
      ("optimizer-on", po::value(&optimizer_on),
       "config optimizer_on: servers (default: on the sum of the gradients) or workers (each worker's own state; pushes its change)")
      ("staleness", po::value(&staleness), "config staleness: ssp's bound, 0..1000")
      ("teacher", po::value(&teacher),
       "config teacher: distill from this trained softmax/mlp model (safetensors, e.g. a run's final_model.safetensors)")
      ("distill-temperature", po::value(&distill_temperature), "config distill_temperature: temperature T > 0 of the soft targets (4)")
      ("distill-alpha", po::value(&distill_alpha), "config distill_alpha: weight in [0, 1] of the soft loss (0.9)")
      ("clients", po::value(&fed_clients), "config federated.clients (fedavg: N)")
      ("fraction", po::value(&fed_fraction), "config federated.fraction (fedavg: C, the share of clients in each round)")
      ("local-epochs", po::value(&fed_local_epochs), "config federated.local_epochs (fedavg: E)")
      ("local-batch", po::value(&fed_local_batch), "config federated.local_batch (fedavg: B; 0 = a client's whole partition)")
      ("rounds", po::value(&fed_rounds), "config federated.rounds (fedavg)")
      ("partitioner", po::value(&partitioner), "config federated.partitioner (fedavg): iid, shards or dirichlet")
      ("dirichlet-alpha", po::value(&dirichlet_alpha), "config federated.dirichlet_alpha (fedavg, partitioner dirichlet)")
      ("clip-norm", po::value(&clip_norm), "config federated.clip_norm (fedavg: DP clipping of each client's update; 0 = none)")
      ("noise-multiplier", po::value(&noise_multiplier), "config federated.noise_multiplier (fedavg: z; noise z x S / m on the average)")
      ("dp-delta", po::value(&dp_delta), "config federated.dp_delta (fedavg: the delta epsilon is reported at, 1e-5)")
      ("secure-aggregation", "config federated.secure_aggregation (fedavg: the servers learn only the sum of the round's updates)")
      ("secagg-bits", po::value(&secagg_bits), "config federated.secagg_bits (secure aggregation: quantization bits, 16)")
      ("secagg-clip", po::value(&secagg_clip), "config federated.secagg_clip (secure aggregation: per-element clip of the updates, 1)")
      ("secagg-threshold", po::value(&secagg_threshold), "config federated.secagg_threshold (secure aggregation: t; 0 = floor(2m/3)+1)")
      ("secagg-dropouts", po::value(&secagg_dropouts), "config federated.secagg_dropouts (simulated: clients per round that drop)")
      ("secagg-drop-phase", po::value(&secagg_drop_phase), "config federated.secagg_drop_phase (simulated: the phase 0-3 they drop before)")
      ("train-limit", po::value(&train_limit), "use only the first N training samples")
      ("test-limit", po::value(&test_limit), "use only the first N test samples")
      ("out-dir", po::value(&f.out_dir)->default_value(f.out_dir), "directory for the outputs below")
      ("summary-json", po::value(&f.summary_json), "summary JSON (default OUT_DIR/summary.json)")
      ("metrics-csv", po::value(&f.metrics_csv), "metrics CSV (default config metrics_csv or OUT_DIR/metrics.csv)")
      ("model-out", po::value(&f.model_out), "final model, safetensors (default OUT_DIR/final_model.safetensors)")
      ("progress", po::value(&f.progress)->default_value(f.progress), "auto (redraw on a terminal), always, plain or never")
      ("metrics-port", po::value(&f.metrics_port),
       "serve Prometheus metrics on http://ADDRESS:PORT+RANK/metrics from every process of the job (0: any free port, logged)")
      ("metrics-address", po::value(&f.metrics_address)->default_value(f.metrics_address), "the address --metrics-port binds")
      ("checkpoint-dir", po::value(&checkpoint_dir), "config checkpoint_dir: write checkpoints (always a final one) there")
      ("checkpoint-every", po::value(&checkpoint_every), "config checkpoint_every: steps between checkpoints")
      ("resume", po::value(&f.resume),
       "resume from DIR (its newest valid checkpoint), DIR@VERSION or DIR@TAG (strict: an error if there is none); "
       "auto: the newest valid checkpoint in --checkpoint-dir, or a fresh start when it has none (for requeued jobs)")
      ("init-from", po::value(&f.init_from), "start from the weights of a safetensors file (e.g. from shardps ckpt export)")
      ("keep-last", po::value(&keep_last), "config keep_last: keep the newest K checkpoints (tagged ones always)")
      ("max-bytes", po::value(&max_bytes), "config max_bytes: keep the checkpoint directory under B bytes")
      ("test-crash-at", po::value(&f.crash_at),
       "TESTS ONLY: SIGKILL this process at a checkpoint phase, PHASE@VERSION: shard-written (servers), "
       "before-rename:MANIFEST or before-dir-fsync:MANIFEST (lead worker)")
      ("test-slow-worker", po::value(&f.slow_worker),
       "TESTS AND BENCHMARKS ONLY: W:F makes worker W (0-based) take F times its compute time per step "
       "(it sleeps F-1 times the previous step's compute), F in [1, 100]; any:F slows one worker per step, "
       "picked by a hash of the step");
  po::options_description launch_desc("how the processes of the job find each other");
  AddLaunchOptions(&launch_desc, &launch);
  desc.add(launch_desc);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
    if (vm.count("help")) {
      std::cout << "usage: mpirun -np N shardps train --config FILE [flags]\n"
                   "       shardps train --config FILE --transport tcp --coordinator HOST:PORT --role server|worker --rank R\n"
                   "                     --num-servers S --num-workers W --secret-file FILE [flags]   (one per process)\n"
                << desc;
      return 0;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << "shardps train: " << e.what() << " (shardps train --help lists the flags)\n";
    return 2;
  }
  if (vm.count("epochs")) f.overrides.push_back("epochs=" + std::to_string(epochs));
  if (vm.count("batch-size")) f.overrides.push_back("batch_size=" + std::to_string(batch));
  if (vm.count("lr")) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.9g", lr);  // std::to_string would print 1e-30 as 0.000000
    f.overrides.push_back(std::string("optimizer.learning_rate=") + buf);
  }
  if (vm.count("optimizer")) f.overrides.push_back("optimizer.kind=" + optimizer);
  if (vm.count("mode")) f.overrides.push_back("mode=" + mode);
  if (vm.count("local-steps")) f.overrides.push_back("local_steps=" + std::to_string(local_steps));
  auto real = [](double v) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.17g", v);
    return std::string(buf);
  };
  if (vm.count("clients")) f.overrides.push_back("federated.clients=" + std::to_string(fed_clients));
  if (vm.count("fraction")) f.overrides.push_back("federated.fraction=" + real(fed_fraction));
  if (vm.count("local-epochs")) f.overrides.push_back("federated.local_epochs=" + std::to_string(fed_local_epochs));
  if (vm.count("local-batch")) f.overrides.push_back("federated.local_batch=" + std::to_string(fed_local_batch));
  if (vm.count("rounds")) f.overrides.push_back("federated.rounds=" + std::to_string(fed_rounds));
  if (vm.count("partitioner")) f.overrides.push_back("federated.partitioner=" + partitioner);
  if (vm.count("dirichlet-alpha")) f.overrides.push_back("federated.dirichlet_alpha=" + real(dirichlet_alpha));
  if (vm.count("clip-norm")) f.overrides.push_back("federated.clip_norm=" + real(clip_norm));
  if (vm.count("noise-multiplier")) f.overrides.push_back("federated.noise_multiplier=" + real(noise_multiplier));
  if (vm.count("dp-delta")) f.overrides.push_back("federated.dp_delta=" + real(dp_delta));
  if (vm.count("secure-aggregation")) f.overrides.push_back("federated.secure_aggregation=true");
  if (vm.count("secagg-bits")) f.overrides.push_back("federated.secagg_bits=" + std::to_string(secagg_bits));
  if (vm.count("secagg-clip")) f.overrides.push_back("federated.secagg_clip=" + real(secagg_clip));
  if (vm.count("secagg-threshold")) f.overrides.push_back("federated.secagg_threshold=" + std::to_string(secagg_threshold));
  if (vm.count("secagg-dropouts")) f.overrides.push_back("federated.secagg_dropouts=" + std::to_string(secagg_dropouts));
  if (vm.count("secagg-drop-phase")) f.overrides.push_back("federated.secagg_drop_phase=" + std::to_string(secagg_drop_phase));
  if (vm.count("hidden")) f.overrides.push_back("hidden=" + hidden);
  if (vm.count("seed")) f.overrides.push_back("seed=" + std::to_string(seed));
  if (vm.count("servers")) f.overrides.push_back("servers=" + std::to_string(servers));
  // The launcher's variables are read once, here at the edge. A TCP job's server count
  // (--num-servers or SHARDPS_NUM_SERVERS) is the config's servers unless --servers says otherwise.
  const Environment env = Environment::FromProcess();
  if (!vm.count("servers") && RequestedServers(launch, env) >= 0) {
    f.overrides.push_back("servers=" + std::to_string(RequestedServers(launch, env)));
  }
  if (colocated) f.overrides.push_back("colocated=true");
  if (vm.count("consistency")) f.overrides.push_back("consistency=" + consistency);
  if (vm.count("codec")) f.overrides.push_back("codec=" + codec);
  if (vm.count("compress-after")) f.overrides.push_back("compress_after=" + std::to_string(compress_after));
  if (vm.count("codec-density")) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.9g", codec_density);
    f.overrides.push_back(std::string("codec_density=") + buf);
  }
  if (no_error_feedback) f.overrides.push_back("error_feedback=false");
  if (vm.count("optimizer-on")) f.overrides.push_back("optimizer_on=" + optimizer_on);
  if (vm.count("staleness")) f.overrides.push_back("staleness=" + std::to_string(staleness));
  if (vm.count("teacher")) f.overrides.push_back("teacher=" + teacher);
  auto float_override = [&](const char* key, double value) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.9g", value);
    f.overrides.push_back(std::string(key) + "=" + buf);
  };
  if (vm.count("distill-temperature")) float_override("distill_temperature", distill_temperature);
  if (vm.count("distill-alpha")) float_override("distill_alpha", distill_alpha);
  if (vm.count("checkpoint-dir")) f.overrides.push_back("checkpoint_dir=" + checkpoint_dir);
  if (vm.count("checkpoint-every")) f.overrides.push_back("checkpoint_every=" + std::to_string(checkpoint_every));
  if (vm.count("keep-last")) f.overrides.push_back("keep_last=" + std::to_string(keep_last));
  if (vm.count("max-bytes")) f.overrides.push_back("max_bytes=" + std::to_string(max_bytes));
  if (vm.count("train-limit")) f.overrides.push_back("data.train_limit=" + std::to_string(train_limit));
  if (vm.count("test-limit")) f.overrides.push_back("data.test_limit=" + std::to_string(test_limit));
  if (!f.resume.empty() && !f.init_from.empty() && f.resume != "auto") {
    std::cerr << "shardps train: give --resume or --init-from, not both (with --resume auto, --init-from applies to a fresh start)\n";
    return 2;
  }
  if (!f.crash_at.empty()) {
    const size_t at = f.crash_at.rfind('@');
    const std::string v = at == std::string::npos ? "" : f.crash_at.substr(at + 1);
    if (v.empty() || v.size() > 9 || v.find_first_not_of("0123456789") != std::string::npos) {
      std::cerr << "shardps train: --test-crash-at wants PHASE@VERSION, got '" << f.crash_at << "'\n";
      return 2;
    }
  }
  if (!f.slow_worker.empty()) {
    Status parsed = ParseSlowWorker(f.slow_worker, &f.slow_worker_index, &f.slow_factor);
    if (!parsed.ok()) {
      std::cerr << "shardps train: " << parsed.message() << "\n";
      return 2;
    }
  }
  if (vm.count("metrics-port") && (f.metrics_port < 0 || f.metrics_port > 65535)) {
    std::cerr << "shardps train: --metrics-port must be in [0, 65535], got " << f.metrics_port << "\n";
    return 2;
  }
  if (f.progress != "auto" && f.progress != "always" && f.progress != "plain" && f.progress != "never") {
    std::cerr << "shardps train: --progress must be auto, always, plain or never, got '" << f.progress << "'\n";
    return 2;
  }
  auto config = BuildConfig(f);
  if (!config.ok()) {
    std::cerr << "shardps train: " << config.status().ToString() << std::endl;
    return 2;
  }
  if (f.resume == "auto" && config->checkpoint_dir().empty()) {
    std::cerr << "shardps train: --resume auto resumes from the checkpoint directory: give --checkpoint-dir\n";
    return 2;
  }
  PosixFileSystem fs;  // every checkpoint and output write goes through it
  auto plan = ResolveLaunch(launch, env, config->colocated() ? -1 : config->servers());
  if (!plan.ok()) {
    std::cerr << "shardps train: " << plan.status().message() << std::endl;
    return 2;
  }
  f.under_mpirun = plan->under_mpirun;
  if (plan->tcp && config->colocated()) {
    std::cerr << "shardps train: --colocated runs under mpirun; with --transport tcp start servers and workers as separate processes\n";
    return 2;
  }
  if (config->model() == "sparse_lr") {
    if (!f.init_from.empty() || !f.slow_worker.empty() || !f.crash_at.empty()) {
      std::cerr << "shardps train: --init-from, --test-slow-worker and --test-crash-at do not apply to model sparse_lr\n";
      return 2;
    }
    return RunSparseLr(fs, *config, f, f.resume, *plan, argc, argv);
  }
  if (!plan->tcp && config->servers() == 0 && !config->colocated()) {
    if (!f.resume.empty() || !f.init_from.empty()) {
      std::cerr << "shardps train: --resume and --init-from need parameter servers (they load the weights)\n";
      return 2;
    }
    if (plan->mpi_world_hint > 1) {
      std::cerr << "shardps train: --servers 0 trains in one process, but " << plan->mpi_world_hint
                << " were started; give --servers S or --colocated\n";
      return 2;
    }
    return RunSingleProcess(fs, *config, f);
  }
  return RunDistributed(fs, *config, f, *plan, argc, argv);
}

}  // namespace shardps::tools
