// shardps ckpt: inspect the checkpoints of a directory.
//   shardps ckpt list DIR [--json]
//   shardps ckpt verify DIR [VERSION]
//   shardps ckpt tag|untag|rollback|gc ...   (take DIR's registry lock; wait for a job's commit)
//   shardps ckpt export DIR[@VERSION|@TAG] --out FILE.safetensors ...   (ckpt_export.cc)
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <string>

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
