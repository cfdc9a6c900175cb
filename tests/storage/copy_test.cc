// CopyCheckpointVersion (checkpoint_registry.h): a version copied into another registry reads back
// byte for byte identical and verifies; a damaged source is refused before anything is written; a
// second copy is reported as already present; another checkpoint under the same number is never
// replaced; and every I/O call of a copy failing in turn, or the process dying at every phase of
// it, leaves the destination either without the version or with the whole valid version, never a
// partial one, and no staging directory that the registry takes for a version.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "common/scratch_dir.h"
#include "shardps/storage/checkpoint.h"
#include "shardps/storage/fault_file_system.h"
#include "shardps/storage/file_system.h"

namespace shardps {
namespace {

namespace fs = std::filesystem;

#define EXPECT_MSG_HAS(status, text)                                                      \
  EXPECT_NE((status).message().find(text), std::string::npos)                             \
      << "message: " << (status).ToString() << "\nexpected to contain: " << (text)

std::string Slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Every entry under `dir` (relative path -> content, "<dir>" for directories).
std::map<std::string, std::string> Tree(const std::string& dir) {
  std::map<std::string, std::string> out;
  std::error_code ec;
  if (!fs::exists(dir, ec)) return out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    out[fs::relative(e.path(), dir).string()] = e.is_directory() ? "<dir>" : Slurp(e.path());
  }
  return out;
}

class CopyTest : public ::testing::Test {
 protected:
  // Two shards of a table "w" of 8 floats, every value `value`, at `step`, as storage_test writes
  // them (the servers' WriteShard, the lead worker's CommitManifest); returns the version.
  uint64_t WriteVersion(const std::string& dir, uint64_t step, float value) {
    auto version = NextCheckpointVersion(posix_, dir);
    EXPECT_TRUE(version.ok()) << version.status().ToString();
    const std::string vdir = CheckpointVersionDir(dir, *version);
    EXPECT_TRUE(CreateCheckpointVersionDir(posix_, vdir).ok());
    for (uint32_t server = 0; server < 2; ++server) {
      ChunkToSave c;
      c.table = 0;
      c.begin = server * 4;
      c.end = c.begin + 4;
      c.data.assign(4, value);
      auto info = WriteShard(posix_, vdir, server, step, {c});
      EXPECT_TRUE(info.ok()) << info.status().ToString();
    }
    ckpt::Manifest m;
    m.set_version(*version);
    m.set_step(step);
    m.set_num_servers(2);
    *m.add_tables() = CheckpointTableInfo(TableSpec{.name = "w", .size = 8, .shape = {2, 4}});
    Status s = CommitManifest(posix_, vdir, &m, 2);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return *version;
  }

  CheckpointVersion Source(uint64_t version) {
    auto v = ResolveCheckpoint(src_ + "@" + std::to_string(version), nullptr);
    EXPECT_TRUE(v.ok()) << v.status().ToString();
    return v.ok() ? *v : CheckpointVersion{};
  }

  // dst_ holds `version`, valid, byte for byte the source's, with weights `value`.
  void ExpectCopied(uint64_t version, float value) {
    const std::string s = CheckpointVersionDir(src_, version), d = CheckpointVersionDir(dst_, version);
    EXPECT_EQ(Tree(d), Tree(s));
    auto v = ResolveCheckpoint(dst_ + "@" + std::to_string(version), nullptr);
    ASSERT_TRUE(v.ok()) << v.status().ToString();
    CheckpointVersion again = *v;
    EXPECT_TRUE(VerifyCheckpoint(&again).ok());
    CheckpointReader reader(*v);
    std::vector<float> w(8), slots;
    ASSERT_TRUE(reader.Read(0, 0, 8, w, slots).ok());
    for (float x : w) EXPECT_EQ(x, value);
  }

  // Nothing under dst_ that a copy stages or a write leaves while in progress.
  void ExpectNoStaging() {
    std::error_code ec;
    if (!fs::exists(dst_, ec)) return;
    for (const auto& e : fs::recursive_directory_iterator(dst_)) {
      const std::string name = e.path().filename().string();
      EXPECT_NE(name.rfind(".copy-", 0), 0u) << "left behind: " << e.path();
      EXPECT_EQ(name.find(".tmp"), std::string::npos) << "left behind: " << e.path();
    }
  }

  std::vector<uint64_t> Versions(const std::string& dir) {
    std::vector<uint64_t> out;
    for (const auto& v : ListCheckpoints(dir, false)) out.push_back(v.version);
    return out;
  }

  PosixFileSystem posix_;
  testing::ScratchDir scratch_{"shardps_copy"};
  std::string root_ = scratch_.string();
  std::string src_ = root_ + "/src";
  std::string dst_ = root_ + "/backup/dst";  // its parent does not exist either
};

TEST_F(CopyTest, ACopyReadsBackIdenticalAndVerifies) {
  WriteVersion(src_, 10, 1.0f);
  WriteVersion(src_, 20, 2.0f);
  auto r = CopyCheckpointVersion(posix_, Source(2), dst_);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->version, 2u);
  EXPECT_FALSE(r->already_present);
  uint64_t bytes = 0;
  for (const auto& e : fs::directory_iterator(CheckpointVersionDir(src_, 2))) bytes += e.file_size();
  EXPECT_EQ(r->bytes, bytes);
  ExpectCopied(2, 2.0f);
  ExpectNoStaging();
  // The same number as in the source; the destination numbers on from there.
  EXPECT_EQ(Versions(dst_), std::vector<uint64_t>{2});
  auto next = NextCheckpointVersion(posix_, dst_);
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(*next, 3u);
  // An older version next to it keeps its number: the newest stays what a plain DST resolves to.
  ASSERT_TRUE(CopyCheckpointVersion(posix_, Source(1), dst_).ok());
  ExpectCopied(1, 1.0f);
  auto newest = ResolveCheckpoint(dst_, nullptr);
  ASSERT_TRUE(newest.ok());
  EXPECT_EQ(newest->version, 2u);
}

TEST_F(CopyTest, ADamagedSourceIsRefusedAndTheDestinationUntouched) {
  WriteVersion(src_, 10, 1.0f);
  WriteVersion(src_, 20, 2.0f);
  const std::string shard = CheckpointVersionDir(src_, 2) + "/shard-00001.bin";
  {
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(5);
    f.put('\x7f');
  }
  // CheckpointVersion as a caller may hold it from before the damage (status OK).
  CheckpointVersion stale;
  stale.version = 2;
  stale.path = CheckpointVersionDir(src_, 2);
  // The destination does not exist: it is not even created.
  auto r = CopyCheckpointVersion(posix_, stale, dst_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << r.status().ToString();
  EXPECT_MSG_HAS(r.status(), shard);
  EXPECT_MSG_HAS(r.status(), "fails its CRC32C");
  EXPECT_FALSE(fs::exists(dst_));
  // A destination holding another version: no new entry at all.
  ASSERT_TRUE(CopyCheckpointVersion(posix_, Source(1), dst_).ok());
  const auto before = Tree(dst_);
  r = CopyCheckpointVersion(posix_, stale, dst_);
  ASSERT_FALSE(r.ok());
  EXPECT_MSG_HAS(r.status(), shard);
  EXPECT_EQ(Tree(dst_), before);

  // A damaged .info (which readers never need) and MANIFEST are refused before any write as well.
  WriteVersion(src_, 30, 3.0f);
  for (const std::string name : {"shard-00000.info", "MANIFEST"}) {
    SCOPED_TRACE(name);
    const std::string path = CheckpointVersionDir(src_, 3) + "/" + name;
    std::string bytes = Slurp(path);
    bytes[bytes.size() - 1] ^= 0x20;
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
    CheckpointVersion v3;
    v3.version = 3;
    v3.path = CheckpointVersionDir(src_, 3);
    r = CopyCheckpointVersion(posix_, v3, dst_);
    ASSERT_FALSE(r.ok());
    EXPECT_MSG_HAS(r.status(), path);
    EXPECT_EQ(Tree(dst_), before);
    bytes[bytes.size() - 1] ^= 0x20;
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  }
  ASSERT_TRUE(CopyCheckpointVersion(posix_, Source(3), dst_).ok());
  ExpectCopied(3, 3.0f);
}

TEST_F(CopyTest, CopyingTwiceReportsAlreadyPresent) {
  WriteVersion(src_, 10, 1.0f);
  auto first = CopyCheckpointVersion(posix_, Source(1), dst_);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  const auto before = Tree(dst_);
  auto second = CopyCheckpointVersion(posix_, Source(1), dst_);
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_TRUE(second->already_present);
  EXPECT_EQ(second->bytes, first->bytes);
  EXPECT_EQ(Tree(dst_), before);
  // Into its own registry: the same.
  auto self = CopyCheckpointVersion(posix_, Source(1), src_);
  ASSERT_TRUE(self.ok()) << self.status().ToString();
  EXPECT_TRUE(self->already_present);
  // The same MANIFEST over damaged shards is not "present": refused, not repaired behind one's back.
  const std::string shard = CheckpointVersionDir(dst_, 1) + "/shard-00000.bin";
  std::string bytes = Slurp(shard);
  bytes[0] ^= 1;
  std::ofstream(shard, std::ios::binary | std::ios::trunc) << bytes;
  auto damaged = CopyCheckpointVersion(posix_, Source(1), dst_);
  ASSERT_FALSE(damaged.ok());
  EXPECT_MSG_HAS(damaged.status(), shard);
  EXPECT_MSG_HAS(damaged.status(), "delete it and copy again");
}

TEST_F(CopyTest, AnotherCheckpointUnderTheSameNumberIsNeverReplaced) {
  WriteVersion(src_, 10, 1.0f);
  WriteVersion(dst_, 99, 9.0f);  // dst's own version 1
  const auto before = Tree(dst_);
  auto r = CopyCheckpointVersion(posix_, Source(1), dst_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition) << r.status().ToString();
  EXPECT_MSG_HAS(r.status(), CheckpointVersionDir(dst_, 1));
  EXPECT_MSG_HAS(r.status(), CheckpointVersionDir(src_, 1));
  EXPECT_MSG_HAS(r.status(), "step 99 there and 10 in the source");
  EXPECT_EQ(Tree(dst_), before);
  // An incomplete version (no MANIFEST: a job may be writing it) is not replaced either.
  ASSERT_TRUE(CreateCheckpointVersionDir(posix_, CheckpointVersionDir(dst_, 2)).ok());
  WriteVersion(src_, 20, 2.0f);
  r = CopyCheckpointVersion(posix_, Source(2), dst_);
  ASSERT_FALSE(r.ok());
  EXPECT_MSG_HAS(r.status(), "without a readable MANIFEST");
  EXPECT_MSG_HAS(r.status(), CheckpointVersionDir(src_, 2));
  EXPECT_TRUE(fs::is_empty(CheckpointVersionDir(dst_, 2)));
  ExpectNoStaging();
}

// Every I/O call of a copy fails in turn, with each error, into a missing destination and into one
// holding another version: the copy fails naming the error, and the destination holds either no
// such version or (a failure of the final directory fsync, after the rename) the whole valid one;
// never a part of it, and no staging directory or temporary file.
TEST_F(CopyTest, EveryCallOfACopyFailsInTurn) {
  WriteVersion(src_, 10, 1.0f);
  WriteVersion(src_, 20, 2.0f);
  const CheckpointVersion v2 = Source(2);
  for (bool existing : {false, true}) {
    if (existing) {
      ASSERT_TRUE(CopyCheckpointVersion(posix_, Source(1), dst_).ok());
    }
    for (int error : {EIO, ENOSPC, EROFS}) {
      uint64_t n = 1;
      int whole = 0;
      for (;; ++n) {
        SCOPED_TRACE(std::string(existing ? "existing" : "missing") + " destination, error " + ErrnoText(error) +
                     ", failing call " + std::to_string(n));
        if (!existing) {
          ASSERT_TRUE(RemoveTree(posix_, root_ + "/backup").ok());  // missing again, parent and all
        }
        FaultInjectingFileSystem faulty(posix_, {{.op = FsOp::kAny, .nth = n, .error = error}});
        auto r = CopyCheckpointVersion(faulty, v2, dst_);
        const std::string target = CheckpointVersionDir(dst_, 2);
        if (faulty.fired() == 0) {
          ASSERT_TRUE(r.ok()) << r.status().ToString();
          ExpectCopied(2, 2.0f);
          ASSERT_TRUE(RemoveTree(posix_, target).ok());
          break;
        }
        ASSERT_FALSE(r.ok()) << "call " << n << " failed and the copy reported success:\n" << faulty.log()[n - 1];
        EXPECT_MSG_HAS(r.status(), ErrnoText(error));
        ExpectNoStaging();
        if (fs::exists(target)) {
          ++whole;
          EXPECT_EQ(faulty.log()[n - 1].rfind("fsync-dir " + dst_, 0), 0u) << faulty.log()[n - 1];
          ExpectCopied(2, 2.0f);
          ASSERT_TRUE(RemoveTree(posix_, target).ok());
        }
        EXPECT_EQ(Versions(dst_), existing ? std::vector<uint64_t>{1} : std::vector<uint64_t>{});
        if (existing) ExpectCopied(1, 1.0f);
        if (HasFatalFailure()) return;
      }
      EXPECT_GT(n, 20u) << "a copy of two shards makes more I/O calls than that";
      EXPECT_EQ(whole, 1) << "only the last call (the directory fsync) comes after the rename";
    }
    ASSERT_TRUE(RemoveTree(posix_, dst_).ok());
  }
}

TEST_F(CopyTest, ShortWritesAreCompleted) {
  WriteVersion(src_, 10, 1.0f);
  FaultInjectingFileSystem faulty(posix_, {{.op = FsOp::kWrite, .nth = 1, .short_write = true},
                                           {.op = FsOp::kWrite, .nth = 3, .short_write = true}});
  auto r = CopyCheckpointVersion(faulty, Source(1), dst_);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(faulty.fired(), 2);
  ExpectCopied(1, 1.0f);
}

// The process dies at each phase of a copy (a child process, killed by the fault hook): the
// destination holds no version 2 or the whole valid one; a staging directory left behind is not a
// version to the registry (listing, numbering, resume, gc), and the next copy deletes it.
TEST_F(CopyTest, ACopyKilledAtAnyPhaseLeavesNoPartialVersion) {
  WriteVersion(src_, 10, 1.0f);
  WriteVersion(src_, 20, 2.0f);
  ASSERT_TRUE(CopyCheckpointVersion(posix_, Source(1), dst_).ok());
  std::vector<std::string> phases;
  ASSERT_TRUE(CopyCheckpointVersion(posix_, Source(2), dst_, [&](const std::string& p) { phases.push_back(p); }).ok());
  ASSERT_TRUE(RemoveTree(posix_, CheckpointVersionDir(dst_, 2)).ok());
  ASSERT_GE(phases.size(), 10u);  // 2 phases per staged file (5 files), 2 around the commit
  EXPECT_EQ(phases[phases.size() - 2], "before-rename:" + CheckpointVersionDir(dst_, 2));
  const CheckpointVersion v2 = Source(2);
  for (size_t i = 0; i < phases.size(); ++i) {
    const std::string& phase = phases[i];  // staged files' names hold the pid: the child dies at the i-th phase
    SCOPED_TRACE("killed at " + phase);
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      size_t seen = 0;
      auto r = CopyCheckpointVersion(posix_, v2, dst_, [&](const std::string&) {
        if (seen++ == i) ::_exit(42);
      });
      ::_exit(r.ok() ? 0 : 1);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 42) << "the child did not die at the phase";
    const bool committed = phase == "before-dir-fsync:" + CheckpointVersionDir(dst_, 2);
    if (committed) {
      ExpectCopied(2, 2.0f);
    } else {
      // Only the staging directory: invisible to the registry.
      EXPECT_FALSE(fs::exists(CheckpointVersionDir(dst_, 2)));
      EXPECT_EQ(Versions(dst_), std::vector<uint64_t>{1});
      auto next = NextCheckpointVersion(posix_, dst_);
      ASSERT_TRUE(next.ok());
      EXPECT_EQ(*next, 2u);
      auto newest = ResolveCheckpointAuto(dst_, nullptr);
      ASSERT_TRUE(newest.ok()) << newest.status().ToString();
      ASSERT_TRUE(newest->version.has_value());
      EXPECT_EQ(newest->version->version, 1u);
      auto gc = CollectCheckpointGarbage(posix_, dst_, 1, 0);
      ASSERT_TRUE(gc.ok()) << gc.status().ToString();
      EXPECT_TRUE(gc->deleted.empty());
      int staging = 0;
      for (const auto& e : fs::directory_iterator(dst_)) staging += e.path().filename().string().rfind(".copy-v00000002-", 0) == 0;
      EXPECT_EQ(staging, 1);
      // The next copy deletes what the killed one left, and completes.
      auto r = CopyCheckpointVersion(posix_, v2, dst_);
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      ExpectCopied(2, 2.0f);
      ExpectNoStaging();
    }
    ASSERT_TRUE(RemoveTree(posix_, CheckpointVersionDir(dst_, 2)).ok());
    if (HasFatalFailure()) return;
  }
}

}  // namespace
}  // namespace shardps
