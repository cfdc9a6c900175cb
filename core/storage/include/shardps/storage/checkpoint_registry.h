// Checkpoint registry and reader: the versions in a checkpoint directory, their manifests, tags,
// rollback and retention, and reading the saved tables back.
//
//   SHARDPS_ASSIGN_OR_RETURN(CheckpointVersion v, ResolveCheckpoint("ckpt@7", warn));   // or "ckpt", "ckpt@best"
//   std::printf("version %llu at step %llu\n", (unsigned long long)v.version, (unsigned long long)v.manifest.step());
//   CheckpointReader reader(v);
//   SHARDPS_ASSIGN_OR_RETURN(uint32_t t, reader.FindTable("l0.w", size, /*slots=*/0));
//   SHARDPS_RETURN_IF_ERROR(reader.Read(t, 0, size, weights, {}));
//
// A version is valid only if its MANIFEST parses with a matching CRC32C, every shard it lists
// exists with the recorded size, step and per-chunk CRC32Cs. Readers verify every chunk they
// touch. Writing checkpoints (shard files, manifest) is the servers' and the lead worker's
// business: shardps/storage/checkpoint.h in the source tree, not installed.
// Thread safety: free functions; a CheckpointReader is used by one thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "shardps/base/status.h"
#include "shardps/storage/file_system.h"

namespace shardps {

namespace ckpt {
class Manifest;  // generated from checkpoint.proto (internal)
}

// Fault injection for crash tests: called at each phase of a write ("before-rename:<path>",
// "before-dir-fsync:<path>", "shard-written:<version dir>"); a test hook may kill the process.
// Production code passes nothing.
using CheckpointFaultHook = std::function<void(const std::string& phase)>;

std::string CheckpointVersionDir(const std::string& dir, uint64_t version);  // DIR/v00000007

// What a version's MANIFEST records, read-only. Empty (all zero) when the MANIFEST could not be read.
class CheckpointManifest {
 public:
  CheckpointManifest();
  explicit CheckpointManifest(ckpt::Manifest m);
  CheckpointManifest(const CheckpointManifest& o);
  CheckpointManifest& operator=(const CheckpointManifest& o);
  CheckpointManifest(CheckpointManifest&& o) noexcept;
  CheckpointManifest& operator=(CheckpointManifest&& o) noexcept;
  ~CheckpointManifest();

  uint64_t version() const;
  uint64_t step() const;            // steps applied; training resumes with this step
  uint64_t epoch() const;           // data cursor: epoch and step within it of the next step
  uint64_t step_in_epoch() const;
  uint64_t seed() const;
  int64_t global_batch() const;
  const std::string& config() const;  // the training config, text format
  uint32_t num_servers() const;     // topology at save time
  uint32_t num_workers() const;
  int64_t created_unix_ms() const;
  uint64_t train_samples() const;   // training samples used (0: not recorded)
  uint32_t train_data_crc32c() const;

  struct Table {
    std::string name;
    uint64_t size = 0;
    std::vector<uint64_t> shape;  // empty in manifests written before shapes were recorded
    std::string optimizer;
    uint32_t slots = 0;           // optimizer state floats per weight
    uint32_t row_dim = 0;         // a sparse table's floats per row (its size is 0); 0: dense
  };
  std::vector<Table> tables() const;

  // The whole record as stored, for shardps' own code (its class is generated and not installed).
  const ckpt::Manifest& proto() const;

 private:
  std::unique_ptr<ckpt::Manifest> m_;
};

struct CheckpointVersion {
  uint64_t version = 0;
  std::string path;
  Status status;  // OK when complete and verified
  CheckpointManifest manifest;
  uint64_t bytes = 0;
};

// Every version directory in `dir`, ascending; with `verify`, shard data is read and checked.
std::vector<CheckpointVersion> ListCheckpoints(const std::string& dir, bool verify);
Status VerifyCheckpoint(CheckpointVersion* v);

// "DIR" -> the version `rollback` pinned, else the newest valid version (invalid newer ones are
// reported through `warn` with the reason); "DIR@N" -> version N and "DIR@TAG" -> the tagged
// version, an error if it is not valid.
Result<CheckpointVersion> ResolveCheckpoint(const std::string& spec, const std::function<void(const std::string&)>& warn);

// How a spec splits: an existing directory is taken whole (even with '@' in its name); otherwise
// the text after the LAST '@' is the version or tag when it looks like one (digits, or a valid tag
// name), e.g. "/data/run@2@7" is version 7 of "/data/run@2".
struct CheckpointSpec {
  std::string dir;
  std::string which;  // "" (newest valid / rolled back to), a version number or a tag
};
CheckpointSpec ParseCheckpointSpec(const std::string& spec);

// --resume auto: the version a plain "DIR" resolves to, or none when the directory does not exist,
// is empty or holds only incomplete versions (no MANIFEST) -- a first run, or one preempted before
// its first checkpoint -- with `why` saying which. Committed versions that all fail verification
// are an error (damage is never silently trained over), as is a rollback to an invalid version.
struct AutoResume {
  std::optional<CheckpointVersion> version;
  std::string why;  // set when `version` is empty
};
Result<AutoResume> ResolveCheckpointAuto(const std::string& dir, const std::function<void(const std::string&)>& warn);

// ---- Locks on a checkpoint directory (flock(2); the kernel releases them when the holder dies) ----
// kWriter (DIR/LOCK): held by the job writing checkpoints for its whole run; a second writer is
// refused at start with the holder named. kRegistry (DIR/REGISTRY.LOCK): held briefly by whoever
// changes the registry -- a job committing a version and applying its retention, `shardps ckpt
// gc/tag/untag/rollback` -- so those never interleave. Each lock file holds its holder's pid, host,
// start time and purpose; a file still naming a holder when the lock is free is the record of a
// process that died holding it, and the new holder takes the lock over (taken_over_from()).
class CheckpointDirLock {
 public:
  enum class Kind { kWriter, kRegistry };
  // `dir` must exist. Waits up to `wait` (0: one try); on refusal the error names the holder.
  static Result<CheckpointDirLock> Acquire(const std::string& dir, Kind kind, const std::string& purpose,
                                           std::chrono::milliseconds wait);
  // Who holds `dir`'s lock of `kind` right now, "" when nobody does (a probe: may be stale at once).
  static std::string Holder(const std::string& dir, Kind kind);

  CheckpointDirLock(CheckpointDirLock&& o) noexcept;
  CheckpointDirLock& operator=(CheckpointDirLock&& o) noexcept;
  CheckpointDirLock(const CheckpointDirLock&) = delete;
  CheckpointDirLock& operator=(const CheckpointDirLock&) = delete;
  ~CheckpointDirLock();
  // The record left by a holder that died with the lock, "" when it was released cleanly.
  const std::string& taken_over_from() const { return taken_over_; }

 private:
  CheckpointDirLock() = default;
  void Release();
  int fd_ = -1;
  std::string taken_over_;
};

// ---- Registry: tags, rollback and retention (files DIR/TAGS and DIR/HEAD, written atomically) ----
// Callers that change the registry hold DIR's kRegistry lock.
using CheckpointTags = std::vector<std::pair<std::string, uint64_t>>;  // (tag, version), sorted by tag
Result<CheckpointTags> ReadCheckpointTags(const std::string& dir);
// Tags `version` (which must be valid) as `tag`, moving the tag if it existed.
Status TagCheckpoint(FileSystem& fs, const std::string& dir, uint64_t version, const std::string& tag);
Status UntagCheckpoint(FileSystem& fs, const std::string& dir, const std::string& tag);
// Makes `spec` (a version number or a tag; must be valid) the version a plain "DIR" resolves to,
// until the next checkpoint is written (which calls ClearCheckpointHead).
Result<uint64_t> RollbackCheckpoint(FileSystem& fs, const std::string& dir, const std::string& spec);
Status ClearCheckpointHead(FileSystem& fs, const std::string& dir);

struct GcReport {
  std::vector<uint64_t> deleted;
  uint64_t bytes_freed = 0;
  uint64_t bytes_kept = 0;
};
// Deletes versions, oldest first, beyond the newest `keep_last` valid ones (0: no count limit) or
// while the directory holds more than `max_bytes` (0: no byte limit). Never deletes a tagged
// version, the rolled-back-to version or the newest valid one; versions newer than the newest
// valid one may be being written and are left alone; invalid older ones are deleted first. A
// version that is already gone when it is deleted is not an error.
Result<GcReport> CollectCheckpointGarbage(FileSystem& fs, const std::string& dir, uint64_t keep_last, uint64_t max_bytes);

// ---- Copying between registries (backup, migration, restore) ----
struct CopyReport {
  uint64_t version = 0;
  uint64_t bytes = 0;            // bytes of the version's files: copied, or held by the present copy
  bool already_present = false;  // the destination held this version already (the same MANIFEST)
};
// Copies one version into the registry `dst_dir` (created if missing) under the same version
// number. The source is verified whole (VerifyCheckpoint) before anything is written: a damaged
// source is refused naming the file, and the destination is left untouched. Every file of the
// version (the shards the MANIFEST lists, their .info files, the MANIFEST) is read again, checked
// against the CRC32Cs the MANIFEST and the .info headers record, written through `fs` into a
// hidden staging directory of dst_dir (".copy-v00000007-<pid>"; no registry function takes it for
// a version), fsynced, and the staged copy verified again; then it is renamed to v00000007 and
// dst_dir fsynced. A crash or a failure at any point leaves either no such version in dst_dir or
// the whole verified one; on a failure the staging directory is deleted, and one a killed copy
// left is deleted by the next copy into dst_dir. If dst_dir already holds that version number:
// the same MANIFEST bytes (and a valid version) is reported as already_present; anything else is
// a FAILED_PRECONDITION naming both paths, and nothing is replaced. Tags and HEAD are not copied.
// The caller holds dst_dir's kRegistry lock, and no job may be writing checkpoints to dst_dir (a
// job numbers its versions without that lock): `shardps ckpt copy` holds dst_dir's kWriter lock
// too. `fault` (crash tests) is called with the phases of each staged file's write
// ("before-rename:<staged file>", ...), then "before-rename:<version dir>" and
// "before-dir-fsync:<version dir>" around the commit.
Result<CopyReport> CopyCheckpointVersion(FileSystem& fs, const CheckpointVersion& src, const std::string& dst_dir,
                                         const CheckpointFaultHook& fault = nullptr);

// Reads element ranges of saved tables, whatever chunking and server count wrote them.
class CheckpointReader {
 public:
  explicit CheckpointReader(CheckpointVersion v) : v_(std::move(v)) {}
  const CheckpointVersion& checkpoint() const { return v_; }
  // The stored record (internal: its class is generated and not installed).
  const ckpt::Manifest& manifest() const;
  // Index of the saved table `name`, checking size and optimizer state layout.
  Result<uint32_t> FindTable(const std::string& name, uint64_t size, uint32_t slots) const;
  // weights.size() == end - begin; slots.size() == (end - begin) * table slots.
  Status Read(uint32_t table, uint64_t begin, uint64_t end, std::span<float> weights, std::span<float> slots);
  // A compressed run's state of dense table `table` (TableInfo::codec_arrays arrays after the
  // slots): arrays.size() == (end - begin) * codec_arrays, array after array.
  // *replica: whether a saved chunk of the range held a replica (ChunkEntry.replica).
  Status ReadCodecState(uint32_t table, uint64_t begin, uint64_t end, std::span<float> arrays, bool* replica);

  // Sparse tables. Index of the saved sparse table `name`, checking its row_dim and slots.
  Result<uint32_t> FindSparseTable(const std::string& name, uint32_t row_dim, uint32_t slots) const;
  // Calls `each` with every block of saved rows of sparse table `table` (one per shard, each
  // checked against its CRC32C): the keys and, row after row, row_dim weights then the slots
  // arrays of row_dim. An error from `each` stops the reading and is returned.
  using RowBlock = std::function<Status(std::span<const uint64_t> keys, std::span<const float> rows)>;
  Status ReadSparseRows(uint32_t table, const RowBlock& each);

 private:
  // Arrays [first, first + count) of each saved weight of [begin, end) (array 0: the weights,
  // then the slots, then the codec state) into out, array after array.
  Status ReadArrays(uint32_t table, uint64_t begin, uint64_t end, uint32_t first, uint32_t count, std::span<float> out,
                    bool* replica = nullptr);
  CheckpointVersion v_;
};

}  // namespace shardps
