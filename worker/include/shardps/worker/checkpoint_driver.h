// CheckpointDriver: checkpoints of a synchronous training run, driven from the lead worker. At a
// step boundary it asks every server to write its shard of the tables, lets training go on while
// the servers write, and once every shard is durable commits the version's manifest under the
// registry lock and applies the retention rules. At most one checkpoint is in flight.
//
//   ckpt::Manifest base;                      // what every version records: seed, config, tables...
//   base.set_num_servers(servers);  ...
//   worker::CheckpointDriver ckpts(fs, client, std::move(base),
//                                  {.dir = "ck", .every = 500, .keep_last = 3, .timeout = 60s});
//   hooks.on_step_end = [&](const worker::Cursor& c, bool final) { return ckpts.OnStep(c, final); };
//   SHARDPS_ASSIGN_OR_RETURN(auto result, worker::Train(model, train, test, params, run, hooks));
//
// A failed checkpoint returns its error from OnStep (training then stops), leaving the previous
// version the newest; the version directory it had started is removed.
// Thread safety: one thread (the training thread that calls OnStep).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include "checkpoint.pb.h"
#include "shardps/base/status.h"
#include "shardps/storage/checkpoint.h"
#include "shardps/storage/file_system.h"
#include "shardps/worker/kv_client.h"
#include "shardps/worker/trainer.h"

namespace shardps::worker {

struct CheckpointOptions {
  std::string dir;              // the checkpoint directory (versions, registry)
  uint64_t every = 0;           // a checkpoint every this many steps (0: only the final one)
  uint64_t keep_last = 0;       // retention: keep this many newest untagged versions (0: all)
  uint64_t max_bytes = 0;       // retention: at most this many bytes of untagged versions (0: no limit)
  std::chrono::milliseconds timeout{120000};  // for the servers' shards and the registry lock
  CheckpointFaultHook fault;    // tests: called at each phase of a write (storage/checkpoint.h)
  std::function<void(const std::string&)> on_warning;  // default: stderr
};

class CheckpointDriver {
 public:
  // `base` is copied into every version's manifest (version, step and data cursor are set here);
  // `servers` is the number of shards each version must have.
  CheckpointDriver(FileSystem& fs, KVClient& client, ckpt::Manifest base, uint32_t servers, CheckpointOptions options);

  // A resumed run does not write its starting point again.
  void set_resumed_at(uint64_t step) {
    if (step > 0) last_step_ = step;
  }

  // After every step (TrainHooks::on_step_end): collects a finished checkpoint, starts one every
  // `every` steps, and with `final` writes the last step (unless already written) and waits.
  Status OnStep(const Cursor& cur, bool final);

  double stall_ms() const { return stall_ms_; }  // training time spent waiting for checkpoints
  // Bytes of shard data per second of (parallel) shard writing, summed over all checkpoints.
  double write_mb_per_s() const { return write_seconds_ > 0 ? bytes_ / write_seconds_ / 1e6 : 0; }
  uint64_t bytes() const { return bytes_; }
  int written() const { return written_; }

 private:
  Status Begin(const Cursor& cur);
  Status Collect(bool wait, bool count_stall = true);
  void Warn(const std::string& m) const;

  FileSystem& fs_;
  KVClient& client_;
  const ckpt::Manifest base_;
  const uint32_t servers_;
  const CheckpointOptions options_;
  bool pending_ = false;
  Handle handle_;
  ckpt::Manifest manifest_;
  std::string vdir_;
  uint64_t last_step_ = UINT64_MAX;
  double stall_ms_ = 0;
  int written_ = 0;
  uint64_t bytes_ = 0;
  double write_seconds_ = 0;
};

}  // namespace shardps::worker
