// Copying one checkpoint version into another registry (checkpoint_registry.h:
// CopyCheckpointVersion): backup, migration, restore.
//
// The source version is verified whole (VerifyCheckpoint), and its .info files and MANIFEST checked
// against their CRC32C headers, before anything is written. Its files -- each shard the MANIFEST
// lists, that shard's .info, and the MANIFEST -- are then written (each shard read once more and
// checked against the size and CRC32C the MANIFEST records, so what is written is what was
// verified) atomically (WriteFileAtomically: temporary name, fsync, rename, directory fsync) into a hidden
// staging directory of the destination, ".copy-v00000007-<pid>". The staged copy is verified
// again, renamed to v00000007 and the destination directory fsynced: a crash or a failure at any
// point leaves either no version 7 in the destination or the whole verified version. On a failure
// the staging directory is deleted.
//
// Registry functions only take names of the form v<8 digits> for versions, so a staging directory
// is never listed, resumed from, numbered past or collected by gc. One that a killed copy left
// behind is deleted by the next copy into the same directory: copies hold the directory's registry
// lock, so no other copy can be writing it.
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "checkpoint_io.h"
#include "shardps/base/crc32c.h"
#include "shardps/storage/checkpoint.h"
#include "shardps/storage/file_system.h"

namespace shardps {

namespace fs = std::filesystem;
using storage_internal::ReadFile;
using storage_internal::SyncDir;

namespace {

constexpr char kStagingPrefix[] = ".copy-v";
constexpr uint64_t kMaxMessageBytes = uint64_t{64} << 20;  // the reader's limit for .info and MANIFEST
constexpr uint64_t kMaxShardBytes = uint64_t{1} << 40;

std::string Q(const std::string& p) { return "'" + p + "'"; }
std::string Join(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }

// One file of a version, as the MANIFEST describes it.
struct VersionFile {
  std::string name;
  bool shard = false;          // a shard's data (.bin): size and CRC32C from the MANIFEST
  const ckpt::ShardInfo* info = nullptr;  // for a shard's .info: the MANIFEST's entry it must match
};

// [CRC32C little-endian][message], as the writer stores .info files and the MANIFEST.
Status CheckMessageCrc(const std::string& raw, const std::string& path) {
  if (raw.size() < 4) return DataLoss(Q(path) + " is truncated (" + std::to_string(raw.size()) + " bytes)");
  const auto* p = reinterpret_cast<const uint8_t*>(raw.data());
  const uint32_t crc = p[0] | (p[1] << 8) | (p[2] << 16) | (uint32_t{p[3]} << 24);
  if (Crc32c(raw.data() + 4, raw.size() - 4) != crc) return DataLoss(Q(path) + ": CRC32C mismatch");
  return Status::Ok();
}

template <typename M>
Result<M> ParseMessage(const std::string& raw, const std::string& path) {
  SHARDPS_RETURN_IF_ERROR(CheckMessageCrc(raw, path));
  M m;
  if (!m.ParseFromArray(raw.data() + 4, static_cast<int>(raw.size() - 4))) return DataLoss(Q(path) + " does not parse");
  return m;
}

// A name the MANIFEST gives a shard must stay inside the version directory.
bool PlainName(const std::string& n) {
  return !n.empty() && n != "." && n != ".." && n != "MANIFEST" && n.find('/') == std::string::npos &&
         n.rfind(kStagingPrefix, 0) != 0;
}

// The files of the version in `dir`: every shard the MANIFEST lists and its .info (when `dir` holds
// one: readers never need it), the MANIFEST last.
Result<std::vector<VersionFile>> FilesOf(const ckpt::Manifest& m, const std::string& dir) {
  std::vector<VersionFile> out;
  std::set<std::string> seen;
  for (const auto& shard : m.shards()) {
    const std::string& name = shard.file();
    if (!PlainName(name)) return DataLoss(Q(Join(dir, "MANIFEST")) + " lists the shard file " + Q(name) + ", not a file name");
    if (!seen.insert(name).second) return DataLoss(Q(Join(dir, "MANIFEST")) + " lists the shard file " + Q(name) + " twice");
    out.push_back({.name = name, .shard = true, .info = &shard});
    const std::string bin = ".bin";
    if (name.size() > bin.size() && name.compare(name.size() - bin.size(), bin.size(), bin) == 0) {
      const std::string info = name.substr(0, name.size() - bin.size()) + ".info";
      std::error_code ec;
      if (fs::exists(Join(dir, info), ec) && seen.insert(info).second) out.push_back({.name = info, .shard = false, .info = &shard});
    }
  }
  out.push_back({.name = "MANIFEST", .shard = false, .info = nullptr});
  return out;
}

// Reads file `f` of the version in `dir` and checks it against what the MANIFEST records.
Result<std::string> ReadChecked(const std::string& dir, const VersionFile& f) {
  const std::string path = Join(dir, f.name);
  SHARDPS_ASSIGN_OR_RETURN(std::string raw, ReadFile(path, f.shard ? kMaxShardBytes : kMaxMessageBytes));
  if (f.shard) {
    if (raw.size() != f.info->bytes()) {
      return DataLoss(Q(path) + " has " + std::to_string(raw.size()) + " bytes, the manifest says " + std::to_string(f.info->bytes()));
    }
    if (Crc32c(raw.data(), raw.size()) != f.info->crc32c()) return DataLoss(Q(path) + " fails its CRC32C");
  } else if (f.info != nullptr) {
    SHARDPS_ASSIGN_OR_RETURN(ckpt::ShardInfo info, ParseMessage<ckpt::ShardInfo>(raw, path));
    if (info.file() != f.info->file() || info.bytes() != f.info->bytes() || info.crc32c() != f.info->crc32c()) {
      return DataLoss(Q(path) + " describes " + Q(info.file()) + " of " + std::to_string(info.bytes()) +
                      " bytes, not what the MANIFEST records of " + Q(f.info->file()));
    }
  } else {
    SHARDPS_RETURN_IF_ERROR(CheckMessageCrc(raw, path));
  }
  return raw;
}

uint64_t FileBytes(const std::string& dir, const std::vector<VersionFile>& files) {
  uint64_t total = 0;
  for (const auto& f : files) {
    std::error_code ec;
    const auto n = fs::file_size(Join(dir, f.name), ec);
    if (!ec) total += n;
  }
  return total;
}

// Deletes the staging directories of copies that died (best effort: they are invisible anyway).
void RemoveStaleStaging(FileSystem& fsys, const std::string& dst_dir) {
  std::error_code ec;
  std::vector<std::string> stale;
  for (const auto& e : fs::directory_iterator(dst_dir, ec)) {
    if (e.path().filename().string().rfind(kStagingPrefix, 0) == 0) stale.push_back(e.path().string());
  }
  for (const auto& p : stale) (void)RemoveTree(fsys, p);
}

}  // namespace

Result<CopyReport> CopyCheckpointVersion(FileSystem& fsys, const CheckpointVersion& src, const std::string& dst_dir,
                                         const CheckpointFaultHook& fault) {
  CopyReport report;
  report.version = src.version;
  if (dst_dir.empty()) return InvalidArgument("no destination checkpoint directory given");

  // 1. The source, verified whole before anything is written.
  CheckpointVersion source;
  source.version = src.version;
  source.path = src.path;
  if (Status s = VerifyCheckpoint(&source); !s.ok()) {
    return s.WithContext("source checkpoint " + Q(src.path) + " is not valid");
  }
  const std::string src_manifest = Join(src.path, "MANIFEST");
  SHARDPS_ASSIGN_OR_RETURN(std::string manifest_raw, ReadFile(src_manifest, kMaxMessageBytes));
  SHARDPS_ASSIGN_OR_RETURN(ckpt::Manifest manifest, ParseMessage<ckpt::Manifest>(manifest_raw, src_manifest));
  if (manifest.version() != src.version) {
    return DataLoss(Q(src_manifest) + " names version " + std::to_string(manifest.version()) + ", not " +
                    std::to_string(src.version));
  }
  SHARDPS_ASSIGN_OR_RETURN(std::vector<VersionFile> files, FilesOf(manifest, src.path));
  // The .info files and the MANIFEST (small: kept, written from here, compared again once staged),
  // checked now too, so that nothing is written for a source with any damaged file.
  std::map<std::string, std::string> small;
  for (const VersionFile& f : files) {
    if (f.shard) continue;
    SHARDPS_ASSIGN_OR_RETURN(std::string raw, ReadChecked(src.path, f));
    small.emplace(f.name, std::move(raw));
  }
  if (small.at("MANIFEST") != manifest_raw) {
    return DataLoss(Q(src_manifest) + " changed while it was read");
  }

  // 2. The destination's version of that number: the same checkpoint, or a conflict.
  const std::string target = CheckpointVersionDir(dst_dir, src.version);
  struct stat st {};
  if (::lstat(target.c_str(), &st) == 0) {
    const std::string what = "destination " + Q(target) + " already exists";
    const std::string nothing = "; nothing was copied from " + Q(src.path);
    if (!S_ISDIR(st.st_mode)) return FailedPrecondition(what + " and is not a version directory" + nothing);
    auto present_raw = ReadFile(Join(target, "MANIFEST"), kMaxMessageBytes);
    if (!present_raw.ok()) {
      return FailedPrecondition(what + " without a readable MANIFEST (an incomplete version, or one being written: " +
                                present_raw.status().message() + ")" + nothing);
    }
    if (*present_raw != manifest_raw) {
      std::string steps;
      if (auto m = ParseMessage<ckpt::Manifest>(*present_raw, Join(target, "MANIFEST")); m.ok()) {
        steps = ", step " + std::to_string(m->step()) + " there and " + std::to_string(manifest.step()) + " in the source";
      }
      return FailedPrecondition(what + " and holds another checkpoint than " + Q(src.path) + " (their MANIFESTs differ" + steps +
                                "); a version number names one checkpoint, so it is not replaced");
    }
    CheckpointVersion present;
    present.version = src.version;
    present.path = target;
    if (Status s = VerifyCheckpoint(&present); !s.ok()) {
      return s.WithContext(what + " with the MANIFEST of " + Q(src.path) + " but is not valid (delete it and copy again)");
    }
    report.already_present = true;
    report.bytes = FileBytes(target, files);
    return report;
  } else if (errno != ENOENT) {
    return IoError("cannot inspect " + Q(target) + ": " + ErrnoText(errno));
  }

  // 3. Staged in a hidden directory of the destination.
  std::error_code ec;
  const bool existed = fs::is_directory(dst_dir, ec);
  SHARDPS_RETURN_IF_ERROR(EnsureDirectory(fsys, dst_dir, "checkpoint directory"));
  if (!existed) {
    const fs::path parent = fs::path(dst_dir).parent_path();
    SHARDPS_RETURN_IF_ERROR(SyncDir(fsys, parent.empty() ? "." : parent.string()));
  }
  RemoveStaleStaging(fsys, dst_dir);
  const std::string staging =
      Join(dst_dir, kStagingPrefix + fs::path(target).filename().string().substr(1) + "-" + std::to_string(::getpid()));
  if (int e = fsys.MakeDir(staging); e != 0) {
    return IoError("cannot create the staging directory " + Q(staging) + ": " + ErrnoText(e));
  }
  Status staged = [&]() -> Status {
    for (const VersionFile& f : files) {
      std::string shard;
      if (f.shard) {
        SHARDPS_ASSIGN_OR_RETURN(shard, ReadChecked(src.path, f));  // one at a time: shards may be large
      }
      const std::string& raw = f.shard ? shard : small.at(f.name);
      SHARDPS_RETURN_IF_ERROR(WriteFileAtomically(
          fsys, Join(staging, f.name), {std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(raw.data()), raw.size())},
          fault));
      report.bytes += raw.size();
    }
    // The staged copy, read back: the shards against the staged MANIFEST, the rest byte for byte.
    CheckpointVersion copy;
    copy.version = src.version;
    copy.path = staging;
    if (Status s = VerifyCheckpoint(&copy); !s.ok()) return s.WithContext("the staged copy " + Q(staging) + " does not verify");
    for (const auto& [name, raw] : small) {
      SHARDPS_ASSIGN_OR_RETURN(std::string back, ReadFile(Join(staging, name), kMaxMessageBytes));
      if (back != raw) return DataLoss("the staged copy " + Q(Join(staging, name)) + " differs from " + Q(Join(src.path, name)));
    }
    return Status::Ok();
  }();
  auto abandon = [&](Status s) {
    (void)RemoveTree(fsys, staging);
    return s.WithContext("copying " + Q(src.path) + " to " + Q(target));
  };
  if (!staged.ok()) return abandon(staged);

  // 4. The commit: one rename makes the whole version appear.
  if (fault) fault("before-rename:" + target);
  if (::lstat(target.c_str(), &st) == 0) {
    return abandon(FailedPrecondition(Q(target) + " appeared while the copy was staged (is a job writing to " + Q(dst_dir) + "?)"));
  }
  if (int e = fsys.Rename(staging, target); e != 0) {
    return abandon(IoError("cannot rename " + Q(staging) + " to " + Q(target) + ": " + ErrnoText(e)));
  }
  if (fault) fault("before-dir-fsync:" + target);
  if (Status s = SyncDir(fsys, dst_dir); !s.ok()) {
    // The version is whole and in place, but its name may not survive a power loss.
    return s.WithContext("copied " + Q(src.path) + " to " + Q(target));
  }
  return report;
}

}  // namespace shardps
