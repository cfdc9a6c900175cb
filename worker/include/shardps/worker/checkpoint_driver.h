// CheckpointDriver: checkpoints of a synchronous training run, driven from one worker (the lead)
// of a library user's own trainer. At a step boundary it asks every server to write its shard of
// the checkpointed tables, lets training go on while the servers write, and once every shard is
// durable commits the version's manifest under the registry lock and applies the retention
// rules. At most one checkpoint is in flight.
//
//   SHARDPS_RETURN_IF_ERROR(EnsureWritableDirectory(fs, "ck", "checkpoint directory"));
//   NodeOptions no;  no.server.checkpoint_dir = "ck";  // where the servers write their shards
//   ... Node::Start(..., no) on every rank ...
//   worker::CheckpointRun run{.seed = 7, .num_servers = 2, .num_workers = 4, .tables = layout.tables()};
//   worker::CheckpointDriver ckpts(fs, *node->client(), run,
//                                  {.dir = "ck", .every = 500, .keep_last = 3, .timeout = 60s});
//   for (uint64_t step = 0; step < steps; ++step) {
//     ... push and pull step `step` ...
//     SHARDPS_RETURN_IF_ERROR(ckpts.OnStep({.step = step + 1}, /*final=*/step + 1 == steps));
//   }
//
// A later job restores the newest version through Node (NodeOptions::restore_from) and goes on
// from its position:
//   SHARDPS_ASSIGN_OR_RETURN(CheckpointVersion v, ResolveCheckpoint("ck", warn));
//   CheckpointReader reader(v);
//   NodeOptions no;  no.restore_from = &reader;       // every serving rank loads its shard
//   uint64_t first_step = v.manifest.step();
//
// A failed checkpoint returns its error from OnStep (the caller should stop), leaving the previous
// version the newest; the version directory it had started is removed.
// Thread safety: one thread (the training thread that calls OnStep).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "shardps/base/layout.h"
#include "shardps/base/status.h"
#include "shardps/storage/checkpoint_registry.h"
#include "shardps/storage/file_system.h"
#include "shardps/worker/kv_client.h"

namespace shardps::worker {

// Where training stands after a step: `step` steps applied; the next is step `step_in_epoch` of
// epoch `epoch` (the data cursor a checkpoint records; a trainer without epochs leaves them 0).
struct Cursor {
  uint64_t step = 0;
  uint64_t epoch = 0;
  uint64_t step_in_epoch = 0;
};

// What every version of a run records beside the tables' data (CheckpointManifest reads it back).
struct CheckpointRun {
  uint64_t seed = 0;
  int64_t global_batch = 0;
  std::string config;            // the run's configuration as text, for the record
  uint32_t num_servers = 1;      // every version must have this many shards
  uint32_t num_workers = 1;
  uint64_t chunk_floats = 0;     // the layout's (TableLayout::chunk_floats); recorded only
  uint64_t train_samples = 0;    // 0: not recorded
  uint32_t train_data_crc32c = 0;
  // The job's tables as the layout has them; those with `checkpointed` are saved.
  std::vector<TableSpec> tables;
  // The codec of the workers' pushes and pulls (ClientOptions::codec): with a lossy one, the
  // servers save their replicas and the workers' error-feedback residuals with the tables
  // (ServerOptions::codec must name the same).
  std::string codec = "identity";
  // optimizer_on workers (RunOptions::optimizer_on): the workers' optimizer, whose slots the
  // servers save with the tables (ServerOptions::worker_optimizer must name the same); "" else.
  std::string worker_optimizer;
};

struct CheckpointOptions {
  std::string dir;              // the checkpoint directory (versions, registry)
  uint64_t every = 0;           // a checkpoint every this many steps (0: only the final one)
  uint64_t keep_last = 0;       // retention: keep this many newest untagged versions (0: all)
  uint64_t max_bytes = 0;       // retention: at most this many bytes of untagged versions (0: no limit)
  std::chrono::milliseconds timeout{120000};  // for the servers' shards and the registry lock
  CheckpointFaultHook fault;    // tests: called at each phase of a write (checkpoint_registry.h)
  std::function<void(const std::string&)> on_warning;  // default: stderr
};

class CheckpointDriver {
 public:
  // `client` is the lead worker's. options.dir must exist and be every server's
  // ServerOptions::checkpoint_dir (the servers write their shards there, this driver the
  // manifest): one machine, or a file system every rank shares.
  CheckpointDriver(FileSystem& fs, KVClient& client, const CheckpointRun& run, CheckpointOptions options);
  ~CheckpointDriver();
  CheckpointDriver(const CheckpointDriver&) = delete;
  CheckpointDriver& operator=(const CheckpointDriver&) = delete;

  // A resumed run does not write its starting point again.
  void set_resumed_at(uint64_t step);

  // After every step: collects a finished checkpoint, starts one every `every` steps, and with
  // `final` writes the last step (unless already written) and waits for it.
  Status OnStep(const Cursor& cur, bool final);

  double stall_ms() const;  // training time spent waiting for checkpoints
  // Bytes of shard data per second of (parallel) shard writing, summed over all checkpoints.
  double write_mb_per_s() const;
  uint64_t bytes() const;
  int written() const;

 private:
  struct State;  // the manifest being written (its class is generated and not installed)
  std::unique_ptr<State> s_;
};

}  // namespace shardps::worker
