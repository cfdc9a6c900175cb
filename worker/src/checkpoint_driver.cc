#include "shardps/worker/checkpoint_driver.h"

#include <algorithm>
#include <iostream>

#include "checkpoint.pb.h"
#include "shardps/storage/checkpoint.h"

namespace shardps::worker {

struct CheckpointDriver::State {
  State(FileSystem& fs, KVClient& client, ckpt::Manifest base, uint32_t servers, CheckpointOptions options)
      : fs(fs), client(client), base(std::move(base)), servers(servers), options(std::move(options)) {}

  Status Begin(const Cursor& cur);
  Status Collect(bool wait, bool count_stall = true);
  void Warn(const std::string& m) const;

  FileSystem& fs;
  KVClient& client;
  const ckpt::Manifest base;
  const uint32_t servers;
  const CheckpointOptions options;
  bool pending = false;
  Handle handle;
  ckpt::Manifest manifest;
  std::string vdir;
  uint64_t last_step = UINT64_MAX;
  double stall_ms = 0;
  int written = 0;
  uint64_t bytes = 0;
  double write_seconds = 0;
};

namespace {

ckpt::Manifest BaseManifest(const CheckpointRun& run) {
  ckpt::Manifest base;
  base.set_seed(run.seed);
  base.set_global_batch(run.global_batch);
  base.set_config(run.config);
  base.set_num_servers(run.num_servers);
  base.set_num_workers(run.num_workers);
  base.set_chunk_floats(run.chunk_floats);
  base.set_train_samples(run.train_samples);
  base.set_train_data_crc32c(run.train_data_crc32c);
  for (const TableSpec& t : run.tables) {
    const WorkerState state{.codec = run.codec, .optimizer = run.worker_optimizer, .workers = run.num_workers};
    if (t.checkpointed) *base.add_tables() = CheckpointTableInfo(t, state);
  }
  return base;
}

}  // namespace

CheckpointDriver::CheckpointDriver(FileSystem& fs, KVClient& client, const CheckpointRun& run, CheckpointOptions options)
    : s_(std::make_unique<State>(fs, client, BaseManifest(run), run.num_servers, std::move(options))) {}

CheckpointDriver::~CheckpointDriver() = default;

void CheckpointDriver::set_resumed_at(uint64_t step) {
  if (step > 0) s_->last_step = step;
}

double CheckpointDriver::stall_ms() const { return s_->stall_ms; }
double CheckpointDriver::write_mb_per_s() const {
  return s_->write_seconds > 0 ? static_cast<double>(s_->bytes) / s_->write_seconds / 1e6 : 0;
}
uint64_t CheckpointDriver::bytes() const { return s_->bytes; }
int CheckpointDriver::written() const { return s_->written; }

void CheckpointDriver::State::Warn(const std::string& m) const {
  if (options.on_warning) options.on_warning(m);
  else std::cerr << "shardps: " << m << std::endl;
}

Status CheckpointDriver::OnStep(const Cursor& cur, bool final) {
  State& s = *s_;
  SHARDPS_RETURN_IF_ERROR(s.Collect(/*wait=*/false));
  if (final) {
    // A checkpoint of an earlier step still being written finishes first (one in flight).
    if (s.pending && s.manifest.step() != cur.step) SHARDPS_RETURN_IF_ERROR(s.Collect(/*wait=*/true, /*count_stall=*/false));
    if (!(s.pending && s.manifest.step() == cur.step) && s.last_step != cur.step) SHARDPS_RETURN_IF_ERROR(s.Begin(cur));
    return s.Collect(/*wait=*/true, /*count_stall=*/false);  // training is over: not a stall
  }
  if (s.options.every > 0 && cur.step % s.options.every == 0) {
    SHARDPS_RETURN_IF_ERROR(s.Collect(/*wait=*/true));
    return s.Begin(cur);
  }
  return Status::Ok();
}

Status CheckpointDriver::State::Begin(const Cursor& cur) {
  const auto t0 = std::chrono::steady_clock::now();
  SHARDPS_ASSIGN_OR_RETURN(uint64_t version, NextCheckpointVersion(fs, options.dir));
  vdir = CheckpointVersionDir(options.dir, version);
  SHARDPS_RETURN_IF_ERROR(CreateCheckpointVersionDir(fs, vdir));
  manifest = base;
  manifest.set_version(version);
  manifest.set_step(cur.step);
  manifest.set_epoch(cur.epoch);
  manifest.set_step_in_epoch(cur.step_in_epoch);
  handle = client.Checkpoint(version, cur.step);
  pending = true;
  stall_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return Status::Ok();
}

Status CheckpointDriver::State::Collect(bool wait, bool count_stall) {
  if (!pending || (!wait && !handle.done())) return Status::Ok();
  const auto t0 = std::chrono::steady_clock::now();
  Status shards = handle.wait(options.timeout);
  // The registry lock: the commit and the retention below never interleave with an operator's
  // `shardps ckpt gc/tag/untag/rollback` (they wait for it, and this waits for them).
  auto registry = CheckpointDirLock::Acquire(options.dir, CheckpointDirLock::Kind::kRegistry,
                                             "shardps train: committing checkpoint", options.timeout);
  if (!registry.ok()) return registry.status();
  if (!registry->taken_over_from().empty()) {
    Warn("took over the registry lock of " + options.dir + " left by " + registry->taken_over_from() +
         " (that process is gone)");
  }
  Status committed = shards.ok() ? CommitManifest(fs, vdir, &manifest, servers, options.fault) : shards;
  if (!committed.ok()) {
    // A version that failed to commit leaves nothing behind (the previous one stays the newest).
    pending = false;
    if (shards.ok() || shards.code() != StatusCode::kDeadlineExceeded) {
      Status cleaned = AbandonCheckpointVersion(fs, vdir);
      if (!cleaned.ok()) Warn(cleaned.ToString());
    }
    return committed.WithContext("checkpoint " + vdir);
  }
  uint64_t slowest = 0;
  for (const auto& sh : manifest.shards()) {
    bytes += sh.bytes();
    slowest = std::max<uint64_t>(slowest, sh.write_micros());
  }
  write_seconds += static_cast<double>(slowest) * 1e-6;  // shards are written in parallel, one per server
  // The newest checkpoint is again what a plain --resume picks; then the retention rules.
  SHARDPS_RETURN_IF_ERROR(ClearCheckpointHead(fs, options.dir));
  if (options.keep_last > 0 || options.max_bytes > 0) {
    SHARDPS_RETURN_IF_ERROR(CollectCheckpointGarbage(fs, options.dir, options.keep_last, options.max_bytes).status());
  }
  if (wait && count_stall) stall_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  pending = false;
  last_step = manifest.step();
  ++written;
  return Status::Ok();
}

}  // namespace shardps::worker
