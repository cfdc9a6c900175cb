#include "shardps/storage/file_system.h"
#include "shardps/storage/fault_file_system.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

namespace shardps {

namespace fs = std::filesystem;

std::string ErrnoText(int e) { return std::strerror(e); }

// ---- POSIX ----

int PosixFileSystem::CreateExclusive(const std::string& path, int* fd) {
  *fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  return *fd < 0 ? errno : 0;
}

int PosixFileSystem::Write(int fd, const uint8_t* data, size_t n, size_t* written) {
  for (;;) {
    const ssize_t w = ::write(fd, data, std::min<size_t>(n, size_t{1} << 26));
    if (w >= 0) {
      *written = static_cast<size_t>(w);
      return 0;
    }
    if (errno != EINTR) return errno;
  }
}

int PosixFileSystem::Sync(int fd) { return ::fsync(fd) == 0 ? 0 : errno; }

int PosixFileSystem::Close(int fd) { return ::close(fd) == 0 ? 0 : errno; }

int PosixFileSystem::Rename(const std::string& from, const std::string& to) {
  return ::rename(from.c_str(), to.c_str()) == 0 ? 0 : errno;
}

int PosixFileSystem::Remove(const std::string& path) {
  if (::unlink(path.c_str()) == 0) return 0;
  if (errno == EISDIR || errno == EPERM) {  // Linux says EISDIR, POSIX allows EPERM
    return ::rmdir(path.c_str()) == 0 ? 0 : errno;
  }
  return errno;
}

int PosixFileSystem::MakeDir(const std::string& path) { return ::mkdir(path.c_str(), 0755) == 0 ? 0 : errno; }

int PosixFileSystem::SyncDir(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno;
  const int rc = ::fsync(fd) == 0 ? 0 : errno;
  ::close(fd);
  return rc;
}

// ---- fault injection ----

const char* FsOpName(FsOp op) {
  switch (op) {
    case FsOp::kAny: return "any";
    case FsOp::kCreate: return "create";
    case FsOp::kWrite: return "write";
    case FsOp::kSync: return "fsync";
    case FsOp::kClose: return "close";
    case FsOp::kRename: return "rename";
    case FsOp::kRemove: return "remove";
    case FsOp::kMakeDir: return "mkdir";
    case FsOp::kSyncDir: return "fsync-dir";
  }
  return "?";
}

const FsFault* FaultInjectingFileSystem::Next(FsOp op, const std::string& what) {
  MutexLock lock(mu_);
  ++calls_;
  log_.push_back(std::string(FsOpName(op)) + (what.empty() ? "" : " " + what));
  const FsFault* hit = nullptr;
  for (size_t i = 0; i < faults_.size(); ++i) {
    if (faults_[i].op != FsOp::kAny && faults_[i].op != op) continue;
    if (++seen_[i] == faults_[i].nth && !hit) hit = &faults_[i];
  }
  if (hit) {
    ++fired_;
    log_.back() += hit->short_write ? " [short write injected]" : " [" + ErrnoText(hit->error) + " injected]";
  }
  return hit;
}

int FaultInjectingFileSystem::CreateExclusive(const std::string& path, int* fd) {
  if (const FsFault* f = Next(FsOp::kCreate, path)) {
    *fd = -1;
    return f->error;
  }
  return base_.CreateExclusive(path, fd);
}

int FaultInjectingFileSystem::Write(int fd, const uint8_t* data, size_t n, size_t* written) {
  if (const FsFault* f = Next(FsOp::kWrite, "")) {
    if (f->short_write && n > 1) return base_.Write(fd, data, n / 2, written);
    if (!f->short_write) {
      *written = 0;
      return f->error;
    }
  }
  return base_.Write(fd, data, n, written);
}

int FaultInjectingFileSystem::Sync(int fd) {
  if (const FsFault* f = Next(FsOp::kSync, "")) return f->error;
  return base_.Sync(fd);
}

int FaultInjectingFileSystem::Close(int fd) {
  if (const FsFault* f = Next(FsOp::kClose, "")) {
    base_.Close(fd);  // close(2) releases the descriptor even when it reports an error
    return f->error;
  }
  return base_.Close(fd);
}

int FaultInjectingFileSystem::Rename(const std::string& from, const std::string& to) {
  if (const FsFault* f = Next(FsOp::kRename, from + " -> " + to)) return f->error;
  return base_.Rename(from, to);
}

int FaultInjectingFileSystem::Remove(const std::string& path) {
  if (const FsFault* f = Next(FsOp::kRemove, path)) return f->error;
  return base_.Remove(path);
}

int FaultInjectingFileSystem::MakeDir(const std::string& path) {
  if (const FsFault* f = Next(FsOp::kMakeDir, path)) return f->error;
  return base_.MakeDir(path);
}

int FaultInjectingFileSystem::SyncDir(const std::string& path) {
  if (const FsFault* f = Next(FsOp::kSyncDir, path)) return f->error;
  return base_.SyncDir(path);
}

uint64_t FaultInjectingFileSystem::calls() const {
  MutexLock lock(mu_);
  return calls_;
}

int FaultInjectingFileSystem::fired() const {
  MutexLock lock(mu_);
  return fired_;
}

std::vector<std::string> FaultInjectingFileSystem::log() const {
  MutexLock lock(mu_);
  return log_;
}

// ---- helpers ----

namespace {

std::string Q(const std::string& p) { return "'" + p + "'"; }

const char* KindOf(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISSOCK(m)) return "a socket";
  return "not a regular file";
}

std::string DirOf(const std::string& path) {
  const fs::path p(path);
  return p.has_parent_path() ? p.parent_path().string() : ".";
}

// Creates and removes a file in `dir` through `fs`: the honest test that new files can be made there.
Status ProbeDirectory(FileSystem& fs, const std::string& dir, const std::string& what) {
  char host[128] = {0};
  if (::gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  const std::string probe = (fs::path(dir) / (".shardps-probe." + std::string(host) + "." + std::to_string(::getpid()))).string();
  int fd = -1;
  int e = fs.CreateExclusive(probe, &fd);
  if (e == EEXIST) {  // left by an earlier process with the same pid
    fs.Remove(probe);
    e = fs.CreateExclusive(probe, &fd);
  }
  if (e != 0) return IoError("cannot write " + what + ": cannot create a file in " + Q(dir) + ": " + ErrnoText(e));
  if (const int c = fs.Close(fd); c != 0) {
    fs.Remove(probe);
    return IoError("cannot write " + what + ": closing a new file in " + Q(dir) + " failed: " + ErrnoText(c));
  }
  if (const int r = fs.Remove(probe); r != 0 && r != ENOENT) return IoError("cannot remove " + Q(probe) + ": " + ErrnoText(r));
  return Status::Ok();
}

}  // namespace

Status CheckRegularOrAbsent(const std::string& path, const std::string& what) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::Ok();
    return IoError("cannot inspect " + what + " " + Q(path) + ": " + ErrnoText(errno));
  }
  if (S_ISREG(st.st_mode)) return Status::Ok();
  if (S_ISLNK(st.st_mode)) {
    struct stat target {};
    if (::stat(path.c_str(), &target) != 0) return Status::Ok();  // a dangling link: replaced by the file
    if (S_ISREG(target.st_mode)) return Status::Ok();
    return FailedPrecondition("refusing to write " + what + " " + Q(path) + ": it links to " + KindOf(target.st_mode) +
                              ", not a regular file");
  }
  return FailedPrecondition("refusing to write " + what + " " + Q(path) + ": it is " + KindOf(st.st_mode) +
                            ", not a regular file");
}

Status CheckOutputFile(FileSystem& fs, const std::string& path, const std::string& what) {
  if (path.empty()) return InvalidArgument("no file name given for " + what);
  SHARDPS_RETURN_IF_ERROR(CheckRegularOrAbsent(path, what));
  const std::string dir = DirOf(path);
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    return NotFound("cannot write " + what + " " + Q(path) + ": its directory " + Q(dir) + ": " + ErrnoText(errno));
  }
  if (!S_ISDIR(st.st_mode)) return FailedPrecondition("cannot write " + what + " " + Q(path) + ": " + Q(dir) + " is not a directory");
  return ProbeDirectory(fs, dir, what + " " + Q(path));
}

Status EnsureDirectory(FileSystem& fs, const std::string& dir, const std::string& what) {
  if (dir.empty()) return InvalidArgument("no directory given for " + what);
  // Create the missing ancestors first, outermost first.
  std::vector<std::string> missing;
  for (fs::path p(dir); !p.empty(); p = p.parent_path()) {
    struct stat st {};
    if (::stat(p.c_str(), &st) == 0) {
      if (!S_ISDIR(st.st_mode)) return FailedPrecondition(what + " " + Q(dir) + ": " + Q(p.string()) + " is not a directory");
      break;
    }
    missing.push_back(p.string());
    if (p == p.parent_path()) break;
  }
  for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
    const int e = fs.MakeDir(*it);
    if (e != 0 && e != EEXIST) return IoError("cannot create " + what + " " + Q(*it) + ": " + ErrnoText(e));
  }
  return Status::Ok();
}

Status EnsureWritableDirectory(FileSystem& fs, const std::string& dir, const std::string& what) {
  SHARDPS_RETURN_IF_ERROR(EnsureDirectory(fs, dir, what));
  return ProbeDirectory(fs, dir, what + " " + Q(dir));
}

Status WriteFileAtomically(FileSystem& fs, const std::string& path, const std::vector<std::span<const uint8_t>>& parts,
                           const std::function<void(const std::string&)>& phase) {
  SHARDPS_RETURN_IF_ERROR(CheckRegularOrAbsent(path, "file"));
  const std::string tmp = path + ".tmp";
  int fd = -1;
  int e = fs.CreateExclusive(tmp, &fd);
  if (e == EEXIST) {  // left by a process killed while writing it
    fs.Remove(tmp);
    e = fs.CreateExclusive(tmp, &fd);
  }
  if (e != 0) return IoError("cannot create " + Q(tmp) + ": " + ErrnoText(e));
  // From here on every failure removes the temporary file.
  auto abandon = [&](const std::string& step, int err, bool open) {
    if (open) fs.Close(fd);
    fs.Remove(tmp);
    return IoError(step + " " + Q(tmp) + " (for " + Q(path) + "): " + ErrnoText(err));
  };
  uint64_t total = 0;
  for (auto part : parts) {
    size_t done = 0;
    while (done < part.size()) {
      size_t n = 0;
      e = fs.Write(fd, part.data() + done, part.size() - done, &n);
      if (e == 0 && n == 0) e = EIO;  // no progress: never loop forever
      if (e != 0) return abandon("cannot write byte " + std::to_string(total + done) + " of", e, true);
      done += n;
    }
    total += part.size();
  }
  if ((e = fs.Sync(fd)) != 0) return abandon("cannot fsync", e, true);
  if ((e = fs.Close(fd)) != 0) return abandon("cannot close", e, false);
  if (phase) phase("before-rename:" + path);
  // Checked again right before the rename: the destination may have changed since the start.
  if (Status s = CheckRegularOrAbsent(path, "file"); !s.ok()) {
    fs.Remove(tmp);
    return s;
  }
  if ((e = fs.Rename(tmp, path)) != 0) {
    fs.Remove(tmp);
    return IoError("cannot rename " + Q(tmp) + " to " + Q(path) + ": " + ErrnoText(e));
  }
  if (phase) phase("before-dir-fsync:" + path);
  if ((e = fs.SyncDir(DirOf(path))) != 0) {
    return IoError("cannot fsync directory " + Q(DirOf(path)) + " after writing " + Q(path) + ": " + ErrnoText(e));
  }
  return Status::Ok();
}

Status RemoveTree(FileSystem& fs, const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::Ok();
    return IoError("cannot delete " + Q(path) + ": " + ErrnoText(errno));
  }
  if (S_ISDIR(st.st_mode)) {
    std::vector<std::string> entries;
    if (DIR* d = ::opendir(path.c_str())) {
      while (dirent* de = ::readdir(d)) {
        const std::string name = de->d_name;
        if (name != "." && name != "..") entries.push_back((fs::path(path) / name).string());
      }
      ::closedir(d);
    } else if (errno == ENOENT) {
      return Status::Ok();
    } else {
      return IoError("cannot list " + Q(path) + ": " + ErrnoText(errno));
    }
    for (const std::string& e : entries) SHARDPS_RETURN_IF_ERROR(RemoveTree(fs, e));
  }
  const int e = fs.Remove(path);
  if (e != 0 && e != ENOENT) return IoError("cannot delete " + Q(path) + ": " + ErrnoText(e));
  return Status::Ok();
}

}  // namespace shardps
