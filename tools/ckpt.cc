// shardps ckpt: inspect the checkpoints of a directory.
//   shardps ckpt list DIR [--json]
//   shardps ckpt verify DIR [VERSION]
//   shardps ckpt tag|untag|rollback|gc ...   (take DIR's registry lock; wait for a job's commit)
//   shardps ckpt copy SRC[@VERSION|@TAG] DST [--all] [--with-tags] [--wait SECONDS]
//       (verified, atomic copies of versions into another registry: backup, migration, restore)
//   shardps ckpt export DIR[@VERSION|@TAG] --out FILE.safetensors ...   (ckpt_export.cc)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "commands.h"
#include "shardps/storage/checkpoint.h"
#include "shardps/storage/file_system.h"
#include "shardps/base/json.h"

namespace shardps::tools {
namespace {

int Usage() {
  std::cerr << "usage: shardps ckpt list DIR [--json]\n"
               "       shardps ckpt verify DIR [VERSION]   (exit 1 on any problem)\n"
               "       shardps ckpt tag DIR VERSION TAG [--wait SECONDS]\n"
               "       shardps ckpt untag DIR TAG [--wait SECONDS]\n"
               "       shardps ckpt rollback DIR VERSION|TAG [--wait SECONDS]   (what a plain --resume DIR picks next)\n"
               "       shardps ckpt gc DIR [--keep-last K] [--max-bytes B] [--wait SECONDS]\n"
               "  tag, untag, rollback and gc take DIR's registry lock, waiting up to --wait seconds (default 60)\n"
               "  for a running job to finish committing a checkpoint; they never stop the job.\n"
               "       shardps ckpt copy SRC[@VERSION|@TAG] DST [--all] [--with-tags] [--wait SECONDS]\n"
               "  copies the version SRC resolves to (--all: every valid version) into the registry DST, verified\n"
               "  and atomically, under the same version number; --with-tags also sets SRC's tags of the copied\n"
               "  versions in DST. Takes DST's writer and registry locks: DST must not be a running job's directory.\n"
               "       shardps ckpt export DIR[@VERSION|@TAG] --out FILE.safetensors [--dtype f32|f16|int8] [--prune-below X]\n";
  return 2;
}

int Fail(const char* cmd, const Status& s) {
  std::cerr << "shardps ckpt " << cmd << ": " << s.message() << "\n";
  return 1;
}

bool ParseU64(const std::string& s, uint64_t* v) {
  if (s.empty() || s.size() > 19 || s.find_first_not_of("0123456789") != std::string::npos) return false;
  *v = std::stoull(s);
  return true;
}

int List(const std::string& dir, bool json) {
  const auto all = ListCheckpoints(dir, /*verify=*/true);
  if (json) {
    std::ostringstream o;
    o << "[";
    for (size_t i = 0; i < all.size(); ++i) {
      const auto& v = all[i];
      o << (i ? "," : "") << "{\"version\":" << v.version << ",\"path\":" << JsonQuote(v.path) << ",\"valid\":"
        << (v.status.ok() ? "true" : "false") << ",\"step\":" << v.manifest.step() << ",\"epoch\":" << v.manifest.epoch()
        << ",\"bytes\":" << v.bytes << ",\"servers\":" << v.manifest.num_servers() << ",\"workers\":" << v.manifest.num_workers()
        << ",\"created_unix_ms\":" << v.manifest.created_unix_ms() << ",\"error\":"
        << JsonQuote(v.status.ok() ? "" : v.status.message()) << "}";
    }
    o << "]";
    std::cout << o.str() << std::endl;
    return 0;
  }
  std::printf("%-9s %-6s %10s %8s %12s  %s\n", "version", "valid", "step", "servers", "bytes", "problem");
  for (const auto& v : all) {
    std::printf("%-9llu %-6s %10llu %8u %12llu  %s\n", static_cast<unsigned long long>(v.version), v.status.ok() ? "yes" : "NO",
                static_cast<unsigned long long>(v.manifest.step()), v.manifest.num_servers(),
                static_cast<unsigned long long>(v.bytes), v.status.ok() ? "" : v.status.message().c_str());
  }
  return 0;
}

int Verify(const std::string& dir, const std::string& version) {
  int bad = 0, total = 0;
  if (!version.empty()) {
    auto v = ResolveCheckpoint(dir + "@" + version, nullptr);
    if (!v.ok()) {
      std::cerr << "shardps ckpt verify: " << v.status().message() << "\n";
      return 1;
    }
    std::cout << v->path << ": OK (step " << v->manifest.step() << ", " << v->bytes << " bytes)\n";
    return 0;
  }
  for (auto& v : ListCheckpoints(dir, /*verify=*/true)) {
    ++total;
    if (v.status.ok()) {
      std::cout << v.path << ": OK (step " << v.manifest.step() << ", " << v.bytes << " bytes)\n";
    } else {
      ++bad;
      std::cout << v.path << ": BAD: " << v.status.message() << "\n";
    }
  }
  if (total == 0) {
    std::cerr << "shardps ckpt verify: no checkpoint versions in '" << dir << "'\n";
    return 1;
  }
  return bad == 0 ? 0 : 1;
}

// The registry lock for one operator command; says when a live job is writing to DIR.
Result<CheckpointDirLock> LockRegistry(const char* cmd, const std::string& dir, uint64_t wait_seconds) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return NotFound("checkpoint directory '" + dir + "' does not exist");
  const std::string writer = CheckpointDirLock::Holder(dir, CheckpointDirLock::Kind::kWriter);
  if (!writer.empty()) std::cerr << "shardps ckpt " << cmd << ": a job is writing to " << dir << " (" << writer << ")\n";
  return CheckpointDirLock::Acquire(dir, CheckpointDirLock::Kind::kRegistry, std::string("shardps ckpt ") + cmd,
                                    std::chrono::seconds(wait_seconds));
}

std::string VersionName(uint64_t v) { return "v" + std::to_string(v); }

// shardps ckpt copy SRC[@VERSION|@TAG] DST [--all] [--with-tags] [--wait SECONDS]
int Copy(int argc, char** argv) {
  std::vector<std::string> pos;
  bool all = false, with_tags = false;
  uint64_t wait_seconds = 60;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--all") all = true;
    else if (a == "--with-tags") with_tags = true;
    else if (a == "--wait" && i + 1 < argc && ParseU64(argv[i + 1], &wait_seconds)) ++i;
    else if (!a.empty() && a[0] != '-') pos.push_back(a);
    else return Usage();
  }
  if (pos.size() != 2) return Usage();
  const std::string& src = pos[0];
  const std::string& dst = pos[1];
  const CheckpointSpec spec = ParseCheckpointSpec(src);
  if (all && !spec.which.empty()) {
    std::cerr << "shardps ckpt copy: --all copies every version of a directory; give SRC without @" << spec.which << "\n";
    return 2;
  }
  auto warn = [](const std::string& w) { std::cerr << "shardps ckpt copy: warning: " << w << "\n"; };

  // What to copy, every version verified (nothing is written before).
  std::vector<CheckpointVersion> versions;
  std::vector<std::string> skipped;
  if (all) {
    std::error_code ec;
    if (!std::filesystem::is_directory(spec.dir, ec)) {
      return Fail("copy", NotFound("checkpoint directory '" + spec.dir + "' does not exist"));
    }
    for (auto& v : ListCheckpoints(spec.dir, /*verify=*/true)) {
      if (v.status.ok()) {
        versions.push_back(std::move(v));
      } else {
        std::cerr << "shardps ckpt copy: skipping " << VersionName(v.version) << " (" << v.path << "): " << v.status.message() << "\n";
        skipped.push_back(VersionName(v.version));
      }
    }
    if (versions.empty() && skipped.empty()) {
      return Fail("copy", NotFound("no checkpoint versions in '" + spec.dir + "'"));
    }
  } else {
    auto v = ResolveCheckpoint(src, warn);
    if (!v.ok()) return Fail("copy", v.status());
    versions.push_back(std::move(*v));
  }
  CheckpointTags src_tags;
  if (with_tags) {
    auto t = ReadCheckpointTags(spec.dir);
    if (!t.ok()) return Fail("copy", t.status());
    src_tags = std::move(*t);
  }

  PosixFileSystem fs;
  if (!versions.empty()) {
    if (Status s = EnsureDirectory(fs, dst, "destination checkpoint directory"); !s.ok()) return Fail("copy", s);
    // DST's writer lock first (as a job takes it): a job numbers its versions without the registry
    // lock, so no job may write to DST while versions are copied into it. Then the registry lock.
    auto writer = CheckpointDirLock::Acquire(dst, CheckpointDirLock::Kind::kWriter, "shardps ckpt copy",
                                             std::chrono::seconds(wait_seconds));
    if (!writer.ok()) {
      return Fail("copy", writer.status().WithContext("cannot copy into '" + dst +
                                                      "' while a job writes checkpoints there (it numbers versions as it goes)"));
    }
    auto registry = CheckpointDirLock::Acquire(dst, CheckpointDirLock::Kind::kRegistry, "shardps ckpt copy",
                                               std::chrono::seconds(wait_seconds));
    if (!registry.ok()) return Fail("copy", registry.status());
    for (const auto* l : {&*writer, &*registry}) {
      if (!l->taken_over_from().empty()) {
        std::cerr << "shardps ckpt copy: took over a lock of " << dst << " left by " << l->taken_over_from()
                  << " (that process is gone)\n";
      }
    }
    std::vector<uint64_t> copied;
    for (const auto& v : versions) {
      auto r = CopyCheckpointVersion(fs, v, dst);
      if (!r.ok()) return Fail("copy", r.status());
      if (r->already_present) std::cout << VersionName(v.version) << " already present\n";
      else std::cout << "copied " << VersionName(v.version) << " (" << r->bytes << " bytes)\n";
      copied.push_back(v.version);
    }
    if (with_tags) {
      auto before = ReadCheckpointTags(dst);
      if (!before.ok()) return Fail("copy", before.status());
      for (const auto& [tag, version] : src_tags) {
        if (std::find(copied.begin(), copied.end(), version) == copied.end()) continue;
        if (Status s = TagCheckpoint(fs, dst, version, tag); !s.ok()) return Fail("copy", s);
        std::string moved;
        for (const auto& [t, was] : *before) {
          if (t == tag && was != version) moved = " (moved from " + VersionName(was) + ")";
        }
        std::cout << "tagged " << VersionName(version) << " '" << tag << "'" << moved << "\n";
      }
    }
  }
  if (!skipped.empty()) {
    std::cerr << "shardps ckpt copy: skipped " << skipped.size() << " invalid version" << (skipped.size() == 1 ? "" : "s")
              << " of '" << spec.dir << "':";
    for (const auto& s : skipped) std::cerr << " " << s;
    std::cerr << "\n";
    return 1;
  }
  return 0;
}

}  // namespace

int CkptExportMain(int argc, char** argv);  // ckpt_export.cc

int CkptMain(int argc, char** argv) {
  if (argc < 3) return Usage();
  const std::string cmd = argv[1], dir = argv[2];
  if (cmd == "list") {
    if (argc > 4 || (argc == 4 && std::string(argv[3]) != "--json")) return Usage();
    return List(dir, argc == 4);
  }
  if (cmd == "verify") {
    if (argc > 4) return Usage();
    return Verify(dir, argc == 4 ? argv[3] : "");
  }
  if (cmd == "copy") return Copy(argc, argv);
  PosixFileSystem fs;
  // --wait SECONDS, accepted at the end of the registry commands.
  uint64_t wait_seconds = 60;
  if ((cmd == "tag" || cmd == "untag" || cmd == "rollback" || cmd == "gc") && argc >= 5 &&
      std::string(argv[argc - 2]) == "--wait") {
    if (!ParseU64(argv[argc - 1], &wait_seconds)) return Usage();
    argc -= 2;
  }
  if (cmd == "tag" || cmd == "untag" || cmd == "rollback" || cmd == "gc") {
    if ((cmd == "tag" && argc != 5) || ((cmd == "untag" || cmd == "rollback") && argc != 4)) return Usage();
  }
  if (cmd == "tag") {
    uint64_t v = 0;
    if (!ParseU64(argv[3], &v)) return Usage();
    auto lock = LockRegistry("tag", dir, wait_seconds);
    if (!lock.ok()) return Fail("tag", lock.status());
    Status s = TagCheckpoint(fs, dir, v, argv[4]);
    if (!s.ok()) return Fail("tag", s);
    std::cout << "tagged version " << v << " '" << argv[4] << "'\n";
    return 0;
  }
  if (cmd == "untag") {
    auto lock = LockRegistry("untag", dir, wait_seconds);
    if (!lock.ok()) return Fail("untag", lock.status());
    Status s = UntagCheckpoint(fs, dir, argv[3]);
    return s.ok() ? 0 : Fail("untag", s);
  }
  if (cmd == "rollback") {
    auto lock = LockRegistry("rollback", dir, wait_seconds);
    if (!lock.ok()) return Fail("rollback", lock.status());
    auto v = RollbackCheckpoint(fs, dir, argv[3]);
    if (!v.ok()) return Fail("rollback", v.status());
    std::cout << "a plain --resume " << dir << " (or --resume auto) now picks version " << *v << "\n";
    if (!CheckpointDirLock::Holder(dir, CheckpointDirLock::Kind::kWriter).empty()) {
      std::cerr << "shardps ckpt rollback: note: the running job's next checkpoint becomes the newest and ends this rollback\n";
    }
    return 0;
  }
  if (cmd == "export") return CkptExportMain(argc, argv);
  if (cmd == "gc") {
    uint64_t keep = 0, bytes = 0;
    for (int i = 3; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--keep-last" && i + 1 < argc && ParseU64(argv[i + 1], &keep)) ++i;
      else if (a == "--max-bytes" && i + 1 < argc && ParseU64(argv[i + 1], &bytes)) ++i;
      else return Usage();
    }
    if (keep == 0 && bytes == 0) return Usage();
    auto lock = LockRegistry("gc", dir, wait_seconds);
    if (!lock.ok()) return Fail("gc", lock.status());
    auto r = CollectCheckpointGarbage(fs, dir, keep, bytes);
    if (!r.ok()) return Fail("gc", r.status());
    std::cout << "deleted " << r->deleted.size() << " versions (";
    for (size_t i = 0; i < r->deleted.size(); ++i) std::cout << (i ? " " : "") << r->deleted[i];
    std::cout << "), freed " << r->bytes_freed << " bytes, " << r->bytes_kept << " bytes kept\n";
    return 0;
  }
  return Usage();
}

}  // namespace shardps::tools
