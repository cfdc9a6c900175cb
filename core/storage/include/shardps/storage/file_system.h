// The one file interface that checkpoint, export and model writes go through, so that every
// failure of the storage (a full disk, an I/O error, a short write, a failed fsync or rename) can
// be injected in tests and is handled the same way everywhere.
//
//   PosixFileSystem posix;                                  // made once at the program's edge
//   SHARDPS_RETURN_IF_ERROR(WriteFileAtomically(posix, "model.safetensors", parts));
//
// Tests inject failures through FaultInjectingFileSystem (fault_file_system.h, internal).
//
// The primitives return 0 or an errno value; the helpers below turn them into a Status naming the
// file. WriteFileAtomically never leaves its temporary file behind on a failure, and the previous
// content of the destination stays in place unless the rename happened.
// Thread safety: PosixFileSystem is stateless.
#pragma once

#include <sys/types.h>

#include <cerrno>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "shardps/base/status.h"

namespace shardps {

class FileSystem {
 public:
  virtual ~FileSystem() = default;
  // Creates a new file for writing (it must not exist), mode 0644; *fd is set on success.
  virtual int CreateExclusive(const std::string& path, int* fd) = 0;
  // One write(2): *written may be less than n (the caller writes the rest).
  virtual int Write(int fd, const uint8_t* data, size_t n, size_t* written) = 0;
  virtual int Sync(int fd) = 0;
  virtual int Close(int fd) = 0;  // the descriptor is released whatever the result
  virtual int Rename(const std::string& from, const std::string& to) = 0;
  virtual int Remove(const std::string& path) = 0;  // a file, or an empty directory
  virtual int MakeDir(const std::string& path) = 0;
  virtual int SyncDir(const std::string& path) = 0;
};

class PosixFileSystem final : public FileSystem {
 public:
  int CreateExclusive(const std::string& path, int* fd) override;
  int Write(int fd, const uint8_t* data, size_t n, size_t* written) override;
  int Sync(int fd) override;
  int Close(int fd) override;
  int Rename(const std::string& from, const std::string& to) override;
  int Remove(const std::string& path) override;
  int MakeDir(const std::string& path) override;
  int SyncDir(const std::string& path) override;
};

// Writes `parts` to `path` atomically: a temporary file next to it, fsync, rename over `path`,
// fsync of the directory. On any failure the temporary file is removed and an error naming the
// file and the failed step is returned. A `path` that exists and is not a regular file (a
// device, a directory, a FIFO, a link to one) is never replaced. `phase` (crash tests only) is
// called with "before-rename:<path>" and "before-dir-fsync:<path>".
Status WriteFileAtomically(FileSystem& fs, const std::string& path, const std::vector<std::span<const uint8_t>>& parts,
                           const std::function<void(const std::string&)>& phase = nullptr);

// Refuses a `path` that exists and is not a regular file (or a link to one); OK when it is absent.
Status CheckRegularOrAbsent(const std::string& path, const std::string& what);

// Checked before any work starts: `path` can be written as an output (`what` names it in errors):
// it is absent or a regular file, and its directory exists, is a directory and accepts a new
// file (probed by creating and removing one through `fs`).
Status CheckOutputFile(FileSystem& fs, const std::string& path, const std::string& what);

// Creates `dir` and its missing parents (an existing directory is fine).
Status EnsureDirectory(FileSystem& fs, const std::string& dir, const std::string& what);
// The same, then checks that it accepts new files (probed as above).
Status EnsureWritableDirectory(FileSystem& fs, const std::string& dir, const std::string& what);

// Deletes `path` and everything under it; entries that vanish meanwhile (another process deleting
// them) are not an error.
Status RemoveTree(FileSystem& fs, const std::string& path);

std::string ErrnoText(int e);

}  // namespace shardps
