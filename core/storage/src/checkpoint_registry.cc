// The checkpoint registry over a directory of versions (checkpoint_registry.h): resolving a
// version, latest or tag; HEAD, tags, rollback, garbage collection and the directory's locks.
#include "shardps/storage/checkpoint.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <optional>
#include <thread>
#include <utility>

#include "checkpoint_io.h"

namespace shardps {

namespace fs = std::filesystem;
using storage_internal::Errno;
using storage_internal::ReadFile;
using storage_internal::SyncDir;

namespace {

Result<CheckpointVersion> LoadVersion(const std::string& dir, uint64_t v, const std::string& label) {
  std::error_code ec;
  CheckpointVersion cv;
  cv.version = v;
  cv.path = CheckpointVersionDir(dir, v);
  if (!fs::is_directory(cv.path, ec)) return NotFound("checkpoint " + label + " does not exist in '" + dir + "'");
  cv.status = VerifyCheckpoint(&cv);
  if (!cv.status.ok()) return cv.status.WithContext("checkpoint " + label + " in '" + dir + "' is not valid");
  return cv;
}

bool IsNumber(const std::string& s) { return !s.empty() && s.size() <= 18 && s.find_first_not_of("0123456789") == std::string::npos; }

Result<uint64_t> VersionOf(const std::string& dir, const std::string& which) {
  if (IsNumber(which)) return std::stoull(which);
  SHARDPS_ASSIGN_OR_RETURN(CheckpointTags tags, ReadCheckpointTags(dir));
  for (const auto& [t, v] : tags) if (t == which) return v;
  return NotFound("no checkpoint version or tag '" + which + "' in '" + dir + "'");
}

Result<std::optional<uint64_t>> ReadHead(const std::string& dir) {
  const std::string path = (fs::path(dir) / "HEAD").string();
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::optional<uint64_t>();
  SHARDPS_ASSIGN_OR_RETURN(std::string raw, ReadFile(path, 64));
  while (!raw.empty() && (raw.back() == '\n' || raw.back() == ' ')) raw.pop_back();
  if (!IsNumber(raw)) return DataLoss("'" + path + "' does not hold a version number");
  return std::optional<uint64_t>(std::stoull(raw));
}

Status WriteText(FileSystem& fsys, const std::string& path, const std::string& text) {
  return WriteFileAtomically(fsys, path, {std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size())});
}

bool ValidTagName(const std::string& t) {
  if (t.empty() || t.size() > 64 || IsNumber(t)) return false;
  for (char c : t) if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) return false;
  return true;
}

}  // namespace

CheckpointSpec ParseCheckpointSpec(const std::string& spec) {
  std::error_code ec;
  // An existing directory is taken whole, '@' in its name or not.
  if (fs::is_directory(spec, ec)) return {spec, ""};
  const size_t at = spec.rfind('@');
  if (at == std::string::npos || at == 0) return {spec, ""};
  const std::string which = spec.substr(at + 1);
  if (!IsNumber(which) && !ValidTagName(which)) return {spec, ""};
  return {spec.substr(0, at), which};
}

Result<CheckpointVersion> ResolveCheckpoint(const std::string& spec, const std::function<void(const std::string&)>& warn) {
  const CheckpointSpec parsed = ParseCheckpointSpec(spec);
  const std::string& dir = parsed.dir;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return NotFound("checkpoint directory '" + dir + "' does not exist" +
                    (parsed.which.empty() ? "" : " (read '" + spec + "' as version or tag '" + parsed.which + "' of it)"));
  }
  if (!parsed.which.empty()) {
    const std::string& which = parsed.which;
    SHARDPS_ASSIGN_OR_RETURN(uint64_t v, VersionOf(dir, which));
    return LoadVersion(dir, v, IsNumber(which) ? "version " + which : "'" + which + "' (version " + std::to_string(v) + ")");
  }
  SHARDPS_ASSIGN_OR_RETURN(std::optional<uint64_t> head, ReadHead(dir));
  if (head) return LoadVersion(dir, *head, "version " + std::to_string(*head) + " (rolled back to)");
  // Newest first; only as many versions are read and verified as it takes to find a valid one.
  auto all = ListCheckpoints(dir, /*verify=*/false);
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    it->status = VerifyCheckpoint(&*it);
    if (it->status.ok()) return std::move(*it);
    if (warn) warn("skipping checkpoint " + it->path + ": " + it->status.message());
  }
  return NotFound("no valid checkpoint in '" + dir + "'");
}

Result<AutoResume> ResolveCheckpointAuto(const std::string& dir, const std::function<void(const std::string&)>& warn) {
  std::error_code ec;
  AutoResume out;
  if (!fs::exists(dir, ec)) {
    out.why = "checkpoint directory '" + dir + "' does not exist yet";
    return out;
  }
  if (!fs::is_directory(dir, ec)) return FailedPrecondition("checkpoint directory '" + dir + "' is not a directory");
  SHARDPS_ASSIGN_OR_RETURN(std::optional<uint64_t> head, ReadHead(dir));
  if (head) {  // an operator's rollback is obeyed strictly
    SHARDPS_ASSIGN_OR_RETURN(CheckpointVersion v, LoadVersion(dir, *head, "version " + std::to_string(*head) + " (rolled back to)"));
    out.version = std::move(v);
    return out;
  }
  auto all = ListCheckpoints(dir, /*verify=*/false);
  std::string incomplete, broken;
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    it->status = VerifyCheckpoint(&*it);
    if (it->status.ok()) {
      out.version = std::move(*it);
      return out;
    }
    const bool has_manifest = fs::exists(fs::path(it->path) / "MANIFEST", ec);
    std::string& list = has_manifest ? broken : incomplete;
    list += (list.empty() ? "" : ", ") + fs::path(it->path).filename().string();
    if (has_manifest) list += " (" + it->status.message() + ")";
    if (warn) warn("skipping checkpoint " + it->path + ": " + it->status.message());
  }
  if (!broken.empty()) {
    // Committed checkpoints that fail verification are damage, not a first run: never trained over.
    return DataLoss("checkpoint directory '" + dir + "' holds committed checkpoints but none is valid: " + broken +
                    "; refusing to start fresh over them (inspect with shardps ckpt verify, then remove them or move the "
                    "directory away)");
  }
  out.why = all.empty() ? "checkpoint directory '" + dir + "' holds no checkpoint"
                        : "checkpoint directory '" + dir + "' holds only incomplete versions (" + incomplete + ", no MANIFEST)";
  return out;
}

Result<CheckpointTags> ReadCheckpointTags(const std::string& dir) {
  CheckpointTags tags;
  const std::string path = (fs::path(dir) / "TAGS").string();
  std::error_code ec;
  if (!fs::exists(path, ec)) return tags;
  SHARDPS_ASSIGN_OR_RETURN(std::string raw, ReadFile(path, 1 << 20));
  size_t line_no = 0;
  for (size_t b = 0; b < raw.size();) {
    size_t e = raw.find('\n', b);
    if (e == std::string::npos) e = raw.size();
    std::string line = raw.substr(b, e - b);
    b = e + 1;
    ++line_no;
    if (line.empty()) continue;
    const size_t sp = line.find(' ');
    if (sp == std::string::npos || !IsNumber(line.substr(sp + 1)) || !ValidTagName(line.substr(0, sp))) {
      return DataLoss("'" + path + "':" + std::to_string(line_no) + ": expected '<tag> <version>'");
    }
    tags.emplace_back(line.substr(0, sp), std::stoull(line.substr(sp + 1)));
  }
  std::sort(tags.begin(), tags.end());
  return tags;
}

static Status WriteTags(FileSystem& fsys, const std::string& dir, const CheckpointTags& tags) {
  std::string text;
  for (const auto& [t, v] : tags) text += t + " " + std::to_string(v) + "\n";
  return WriteText(fsys, (fs::path(dir) / "TAGS").string(), text);
}

Status TagCheckpoint(FileSystem& fsys, const std::string& dir, uint64_t version, const std::string& tag) {
  if (!ValidTagName(tag)) return InvalidArgument("tag '" + tag + "': use letters, digits, '-', '_' or '.', not only digits");
  SHARDPS_RETURN_IF_ERROR(LoadVersion(dir, version, "version " + std::to_string(version)).status());
  SHARDPS_ASSIGN_OR_RETURN(CheckpointTags tags, ReadCheckpointTags(dir));
  std::erase_if(tags, [&](const auto& p) { return p.first == tag; });
  tags.emplace_back(tag, version);
  std::sort(tags.begin(), tags.end());
  return WriteTags(fsys, dir, tags);
}

Status UntagCheckpoint(FileSystem& fsys, const std::string& dir, const std::string& tag) {
  SHARDPS_ASSIGN_OR_RETURN(CheckpointTags tags, ReadCheckpointTags(dir));
  const size_t before = tags.size();
  std::erase_if(tags, [&](const auto& p) { return p.first == tag; });
  if (tags.size() == before) return NotFound("no tag '" + tag + "' in '" + dir + "'");
  return WriteTags(fsys, dir, tags);
}

Result<uint64_t> RollbackCheckpoint(FileSystem& fsys, const std::string& dir, const std::string& spec) {
  SHARDPS_ASSIGN_OR_RETURN(uint64_t v, VersionOf(dir, spec));
  SHARDPS_RETURN_IF_ERROR(LoadVersion(dir, v, "version " + std::to_string(v)).status());
  SHARDPS_RETURN_IF_ERROR(WriteText(fsys, (fs::path(dir) / "HEAD").string(), std::to_string(v) + "\n"));
  return v;
}

Status ClearCheckpointHead(FileSystem& fsys, const std::string& dir) {
  const std::string path = (fs::path(dir) / "HEAD").string();
  std::error_code ec;
  if (!fs::exists(path, ec)) return Status::Ok();
  const int e = fsys.Remove(path);
  if (e != 0 && e != ENOENT) return IoError("cannot remove '" + path + "': " + ErrnoText(e));
  return SyncDir(fsys, dir);
}

Result<GcReport> CollectCheckpointGarbage(FileSystem& fsys, const std::string& dir, uint64_t keep_last, uint64_t max_bytes) {
  auto all = ListCheckpoints(dir, /*verify=*/true);
  SHARDPS_ASSIGN_OR_RETURN(CheckpointTags tags, ReadCheckpointTags(dir));
  SHARDPS_ASSIGN_OR_RETURN(std::optional<uint64_t> head, ReadHead(dir));
  // Sizes on disk, whatever the state of the version.
  std::vector<uint64_t> bytes(all.size(), 0);
  uint64_t total = 0;
  for (size_t i = 0; i < all.size(); ++i) {
    std::error_code ec;
    for (const auto& e : fs::recursive_directory_iterator(all[i].path, ec)) {
      if (e.is_regular_file(ec)) bytes[i] += e.file_size(ec);
    }
    total += bytes[i];
  }
  int64_t newest_valid = -1;
  for (size_t i = 0; i < all.size(); ++i) if (all[i].status.ok()) newest_valid = static_cast<int64_t>(i);
  auto is_protected = [&](size_t i) {
    if (static_cast<int64_t>(i) >= newest_valid) return true;  // the newest valid one, and any being written
    for (const auto& [t, v] : tags) if (v == all[i].version) return true;
    return head && *head == all[i].version;
  };
  // Valid versions kept by the count rule: the newest keep_last.
  std::vector<bool> over_count(all.size(), false);
  if (keep_last > 0) {
    uint64_t seen = 0;
    for (int64_t i = static_cast<int64_t>(all.size()) - 1; i >= 0; --i) {
      if (!all[i].status.ok()) continue;
      if (++seen > keep_last) over_count[i] = true;
    }
  }
  GcReport report;
  auto remove = [&](size_t i) -> Status {
    // A version another process deleted meanwhile is simply gone: not an error.
    SHARDPS_RETURN_IF_ERROR(RemoveTree(fsys, all[i].path));
    report.deleted.push_back(all[i].version);
    report.bytes_freed += bytes[i];
    total -= bytes[i];
    bytes[i] = 0;
    return Status::Ok();
  };
  // Broken older versions first, then the count rule, then the byte budget, oldest first.
  for (size_t i = 0; i < all.size(); ++i) {
    if (!is_protected(i) && (!all[i].status.ok() || over_count[i])) SHARDPS_RETURN_IF_ERROR(remove(i));
  }
  if (max_bytes > 0) {
    for (size_t i = 0; i < all.size() && total > max_bytes; ++i) {
      if (bytes[i] > 0 && !is_protected(i)) SHARDPS_RETURN_IF_ERROR(remove(i));
    }
  }
  if (!report.deleted.empty()) SHARDPS_RETURN_IF_ERROR(SyncDir(fsys, dir));
  std::sort(report.deleted.begin(), report.deleted.end());
  report.bytes_kept = total;
  return report;
}

// ---- locks ----

namespace {

const char* LockFileName(CheckpointDirLock::Kind kind) {
  return kind == CheckpointDirLock::Kind::kWriter ? "LOCK" : "REGISTRY.LOCK";
}

std::string ReadHolder(int fd) {
  char buf[512];
  const ssize_t n = ::pread(fd, buf, sizeof(buf) - 1, 0);
  std::string s = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\0')) s.pop_back();
  return s;
}

std::string DescribeMe(const std::string& purpose) {
  char host[256] = {0};
  if (::gethostname(host, sizeof(host) - 1) != 0) std::snprintf(host, sizeof(host), "unknown");
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&now, &tm);
  char when[32];
  std::strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", &tm);
  return "pid " + std::to_string(::getpid()) + " on host " + host + ", since " + when + " (" + purpose + ")";
}

}  // namespace

Result<CheckpointDirLock> CheckpointDirLock::Acquire(const std::string& dir, Kind kind, const std::string& purpose,
                                                     std::chrono::milliseconds wait) {
  const std::string path = (fs::path(dir) / LockFileName(kind)).string();
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return IoError(Errno("cannot open lock file '" + path + "'"));
  const auto deadline = std::chrono::steady_clock::now() + wait;
  for (;;) {
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) break;
    if (errno != EWOULDBLOCK && errno != EINTR) {
      Status s = IoError(Errno("cannot lock '" + path + "'"));
      ::close(fd);
      return s;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      std::string holder = ReadHolder(fd);
      ::close(fd);
      if (holder.empty()) holder = "another process (it has not written its name yet)";
      if (kind == Kind::kWriter) {
        return FailedPrecondition("checkpoint directory '" + dir + "' is in use by another writer: " + holder +
                                  "; two jobs must not write to one checkpoint directory (give this one another "
                                  "--checkpoint-dir, or stop that job)");
      }
      return DeadlineExceeded("checkpoint directory '" + dir + "' is busy: its registry lock is held by " + holder +
                              "; gave up after " + std::to_string(wait.count()) + " ms");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  // The lock is ours. A holder that released it cleanly left the file empty; any text left is the
  // record of a process that died holding it (the kernel released its lock).
  CheckpointDirLock lock;
  lock.fd_ = fd;
  lock.taken_over_ = ReadHolder(fd);
  const std::string me = DescribeMe(purpose) + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size())) {
    return IoError(Errno("cannot write lock file '" + path + "'"));  // the destructor releases the lock
  }
  return lock;
}

std::string CheckpointDirLock::Holder(const std::string& dir, Kind kind) {
  const std::string path = (fs::path(dir) / LockFileName(kind)).string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  std::string holder;
  if (::flock(fd, LOCK_SH | LOCK_NB) != 0) {
    holder = ReadHolder(fd);
    if (holder.empty()) holder = "another process";
  }
  ::close(fd);  // releases the shared probe lock if it was taken
  return holder;
}

CheckpointDirLock::CheckpointDirLock(CheckpointDirLock&& o) noexcept : fd_(o.fd_), taken_over_(std::move(o.taken_over_)) {
  o.fd_ = -1;
}

CheckpointDirLock& CheckpointDirLock::operator=(CheckpointDirLock&& o) noexcept {
  if (this != &o) {
    Release();
    fd_ = o.fd_;
    taken_over_ = std::move(o.taken_over_);
    o.fd_ = -1;
  }
  return *this;
}

CheckpointDirLock::~CheckpointDirLock() { Release(); }

void CheckpointDirLock::Release() {
  if (fd_ < 0) return;
  // Empty means "released cleanly"; then unlock (close also would).
  if (::ftruncate(fd_, 0) != 0) { /* the next holder then reports a take-over: harmless */ }
  ::flock(fd_, LOCK_UN);
  ::close(fd_);
  fd_ = -1;
}

}  // namespace shardps
