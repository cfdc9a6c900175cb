// Writing checkpoints: atomic, verifiable shard files and a manifest committed last. The
// registry and the reader (checkpoint_registry.h) are the public part; this header and the
// generated checkpoint.pb.h are internal to shardps (not installed).
//
//   // each server, for a version directory the lead worker created:
//   SHARDPS_ASSIGN_OR_RETURN(ckpt::ShardInfo info, WriteShard(fs, vdir, server_index, step, chunks));
//   // the lead worker, once every server has written its shard (holding the registry lock):
//   SHARDPS_RETURN_IF_ERROR(CommitManifest(fs, vdir, &manifest, servers));   // MANIFEST is written last
//   // resuming:
//   SHARDPS_ASSIGN_OR_RETURN(CheckpointVersion v, ResolveCheckpoint("DIR@7", warn));
//   CheckpointReader reader(v);  reader.Read(t, begin, end, weights, slots);
//
// Every file is written through a FileSystem (file_system.h) to a temporary name, fsynced,
// renamed, and its directory fsynced, so a crash or a failed write at any instant leaves either
// the previous state or the new one.
// Thread safety: free functions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "checkpoint.pb.h"
#include "shardps/base/layout.h"
#include "shardps/base/status.h"
#include "shardps/storage/checkpoint_registry.h"
#include "shardps/storage/file_system.h"

namespace shardps {

// One chunk to save: its weights and its optimizer state (slots arrays back to back).
struct ChunkToSave {
  uint32_t table = 0;  // index into the `tables` given to WriteShard
  uint64_t begin = 0;
  uint64_t end = 0;
  std::vector<float> data;  // weights, then slots: (end - begin) * (1 + slots) floats
  // A sparse table's rows instead (begin = end = 0): their keys, and in `data` each row's
  // row_dim weights then its slots arrays of row_dim, row after row.
  bool sparse = false;
  // Dense chunks whose data carries codec state (CodecStateArrays): the first array is a replica
  // the server made (ChunkEntry.replica), not a copy of the weights.
  bool replica = false;
  std::vector<uint64_t> keys;
};

// The next version number in `dir` (1 + the largest present, valid or not); creates `dir`.
Result<uint64_t> NextCheckpointVersion(FileSystem& fs, const std::string& dir);
// Creates the version directory (and fsyncs its parent).
Status CreateCheckpointVersionDir(FileSystem& fs, const std::string& version_dir);
// Deletes a version whose write failed (it has no MANIFEST), so no partial files stay behind.
Status AbandonCheckpointVersion(FileSystem& fs, const std::string& version_dir);

// Writes shard-<server>.bin and then shard-<server>.info atomically.
Result<ckpt::ShardInfo> WriteShard(FileSystem& fs, const std::string& version_dir, uint32_t server, uint64_t step,
                                   const std::vector<ChunkToSave>& chunks, const CheckpointFaultHook& fault = nullptr);
// The same through the POSIX file system (what a parameter server uses).
Result<ckpt::ShardInfo> WriteShard(const std::string& version_dir, uint32_t server, uint64_t step,
                                   const std::vector<ChunkToSave>& chunks, const CheckpointFaultHook& fault = nullptr);

// Reads every shard-*.info in the directory into `manifest.shards` (they must be `expected_shards`
// and all at manifest.step), then writes MANIFEST atomically and fsyncs the directory.
// `manifest` is completed in place (shards, creation time).
Status CommitManifest(FileSystem& fs, const std::string& version_dir, ckpt::Manifest* manifest, uint32_t expected_shards,
                      const CheckpointFaultHook& fault = nullptr);

// What a manifest records of a checkpointed table: name, size, shape ([size] when the spec gives
// none), optimizer and its slots per weight.
ckpt::TableInfo CheckpointTableInfo(const TableSpec& table);
// What a run keeps on its workers that a checkpoint of a dense table must carry (docs/compression.md):
// with a lossy codec, the servers' replica and each worker's error-feedback residual; with the
// optimizer on the workers, each worker's optimizer slots.
struct WorkerState {
  std::string codec = "identity";  // the run's codec (ClientOptions::codec)
  std::string optimizer;           // optimizer_on workers: the workers' optimizer; "" when the servers run it
  uint32_t workers = 1;
};
// Arrays per weight each worker keeps of `table`: its residual (lossy codec), then the slots of
// its optimizer; 0 for sparse tables and "sum" reductions, whose pushes travel as float32.
uint32_t WorkerStateArrays(const TableSpec& table, const WorkerState& state);
// Every such array of the table in a checkpoint: the replica (lossy codec), then workers x
// WorkerStateArrays, by worker index; 0 when the table carries none.
uint32_t CodecStateArrays(const TableSpec& table, const WorkerState& state);
// The same for a run with a lossy codec and the optimizer on the servers (1 + workers, or 0).
uint32_t CodecStateArrays(const TableSpec& table, const std::string& codec, uint32_t workers);
// CheckpointTableInfo plus what `state` adds (codec_arrays, codec, worker_arrays, worker_optimizer).
ckpt::TableInfo CheckpointTableInfo(const TableSpec& table, const WorkerState& state);
// Arrays per worker a saved table carries (worker_arrays, or 1 in a manifest from before it was
// recorded whose codec_arrays > 0), and whether it holds a replica (its codec is lossy).
uint32_t SavedWorkerArrays(const ckpt::TableInfo& table);
bool SavedReplica(const ckpt::TableInfo& table);

}  // namespace shardps
