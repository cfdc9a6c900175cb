#include "shardps/worker/checkpoint_driver.h"

#include <algorithm>
#include <iostream>

namespace shardps::worker {

CheckpointDriver::CheckpointDriver(FileSystem& fs, KVClient& client, ckpt::Manifest base, uint32_t servers,
                                   CheckpointOptions options)
    : fs_(fs), client_(client), base_(std::move(base)), servers_(servers), options_(std::move(options)) {}

void CheckpointDriver::Warn(const std::string& m) const {
  if (options_.on_warning) options_.on_warning(m);
  else std::cerr << "shardps: " << m << std::endl;
}

Status CheckpointDriver::OnStep(const Cursor& cur, bool final) {
  SHARDPS_RETURN_IF_ERROR(Collect(/*wait=*/false));
  if (final) {
    // A checkpoint of an earlier step still being written finishes first (one in flight).
    if (pending_ && manifest_.step() != cur.step) SHARDPS_RETURN_IF_ERROR(Collect(/*wait=*/true, /*count_stall=*/false));
    if (!(pending_ && manifest_.step() == cur.step) && last_step_ != cur.step) SHARDPS_RETURN_IF_ERROR(Begin(cur));
    return Collect(/*wait=*/true, /*count_stall=*/false);  // training is over: not a stall
  }
  if (options_.every > 0 && cur.step % options_.every == 0) {
    SHARDPS_RETURN_IF_ERROR(Collect(/*wait=*/true));
    return Begin(cur);
  }
  return Status::Ok();
}

Status CheckpointDriver::Begin(const Cursor& cur) {
  const auto t0 = std::chrono::steady_clock::now();
  SHARDPS_ASSIGN_OR_RETURN(uint64_t version, NextCheckpointVersion(fs_, options_.dir));
  vdir_ = CheckpointVersionDir(options_.dir, version);
  SHARDPS_RETURN_IF_ERROR(CreateCheckpointVersionDir(fs_, vdir_));
  manifest_ = base_;
  manifest_.set_version(version);
  manifest_.set_step(cur.step);
  manifest_.set_epoch(cur.epoch);
  manifest_.set_step_in_epoch(cur.step_in_epoch);
  handle_ = client_.Checkpoint(version, cur.step);
  pending_ = true;
  stall_ms_ += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return Status::Ok();
}

Status CheckpointDriver::Collect(bool wait, bool count_stall) {
  if (!pending_ || (!wait && !handle_.done())) return Status::Ok();
  const auto t0 = std::chrono::steady_clock::now();
  Status shards = handle_.wait(options_.timeout);
  // The registry lock: the commit and the retention below never interleave with an operator's
  // `shardps ckpt gc/tag/untag/rollback` (they wait for it, and this waits for them).
  auto registry = CheckpointDirLock::Acquire(options_.dir, CheckpointDirLock::Kind::kRegistry,
                                             "shardps train: committing checkpoint", options_.timeout);
  if (!registry.ok()) return registry.status();
  if (!registry->taken_over_from().empty()) {
    Warn("took over the registry lock of " + options_.dir + " left by " + registry->taken_over_from() +
         " (that process is gone)");
  }
  Status committed = shards.ok() ? CommitManifest(fs_, vdir_, &manifest_, servers_, options_.fault) : shards;
  if (!committed.ok()) {
    // A version that failed to commit leaves nothing behind (the previous one stays the newest).
    pending_ = false;
    if (shards.ok() || shards.code() != StatusCode::kDeadlineExceeded) {
      Status cleaned = AbandonCheckpointVersion(fs_, vdir_);
      if (!cleaned.ok()) Warn(cleaned.ToString());
    }
    return committed.WithContext("checkpoint " + vdir_);
  }
  uint64_t slowest = 0;
  for (const auto& sh : manifest_.shards()) {
    bytes_ += sh.bytes();
    slowest = std::max<uint64_t>(slowest, sh.write_micros());
  }
  write_seconds_ += static_cast<double>(slowest) * 1e-6;  // shards are written in parallel, one per server
  // The newest checkpoint is again what a plain --resume picks; then the retention rules.
  SHARDPS_RETURN_IF_ERROR(ClearCheckpointHead(fs_, options_.dir));
  if (options_.keep_last > 0 || options_.max_bytes > 0) {
    SHARDPS_RETURN_IF_ERROR(CollectCheckpointGarbage(fs_, options_.dir, options_.keep_last, options_.max_bytes).status());
  }
  if (wait && count_stall) stall_ms_ += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  pending_ = false;
  last_step_ = manifest_.step();
  ++written_;
  return Status::Ok();
}

}  // namespace shardps::worker
