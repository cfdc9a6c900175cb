// FaultInjectingFileSystem: a FileSystem (file_system.h) that fails chosen calls, so tests can show
// that every storage failure is handled (internal to shardps' tests; not installed).
//
//   PosixFileSystem posix;
//   FaultInjectingFileSystem faulty(posix, {{.op = FsOp::kWrite, .nth = 3, .error = ENOSPC}});
//   Status s = WriteFileAtomically(faulty, path, parts);   // fails at the third write(2), cleans up
//
// Thread safety: internally locked.
#pragma once

#include <cerrno>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "shardps/base/thread_annotations.h"
#include "shardps/storage/file_system.h"

namespace shardps {

enum class FsOp { kAny, kCreate, kWrite, kSync, kClose, kRename, kRemove, kMakeDir, kSyncDir };
const char* FsOpName(FsOp op);

// One injected failure: the `nth` call (1-based) of kind `op` fails with `error`, or, with
// `short_write` (op kWrite), writes only part of its bytes and reports that.
struct FsFault {
  FsOp op = FsOp::kAny;
  uint64_t nth = 1;
  int error = EIO;
  bool short_write = false;
};

// Passes every call to `base` except the ones its faults select.
class FaultInjectingFileSystem final : public FileSystem {
 public:
  FaultInjectingFileSystem(FileSystem& base, std::vector<FsFault> faults) : base_(base), faults_(std::move(faults)) {
    seen_.assign(faults_.size(), 0);
  }
  int CreateExclusive(const std::string& path, int* fd) override;
  int Write(int fd, const uint8_t* data, size_t n, size_t* written) override;
  int Sync(int fd) override;
  int Close(int fd) override;
  int Rename(const std::string& from, const std::string& to) override;
  int Remove(const std::string& path) override;
  int MakeDir(const std::string& path) override;
  int SyncDir(const std::string& path) override;

  uint64_t calls() const SHARDPS_EXCLUDES(mu_);  // calls made so far, of every kind
  int fired() const SHARDPS_EXCLUDES(mu_);       // faults injected so far
  std::vector<std::string> log() const SHARDPS_EXCLUDES(mu_);  // "write", "rename a -> b", ... in call order

 private:
  // The fault selected for this call, or nullptr; counts the call.
  const FsFault* Next(FsOp op, const std::string& what) SHARDPS_EXCLUDES(mu_);
  FileSystem& base_;
  const std::vector<FsFault> faults_;
  mutable Mutex mu_;
  std::vector<uint64_t> seen_ SHARDPS_GUARDED_BY(mu_);
  uint64_t calls_ SHARDPS_GUARDED_BY(mu_) = 0;
  int fired_ SHARDPS_GUARDED_BY(mu_) = 0;
  std::vector<std::string> log_ SHARDPS_GUARDED_BY(mu_);
};

}  // namespace shardps
