// A parameter server writes its checkpoint shard through ServerOptions::file_system. With a
// fault-injecting file system there (a full disk, an I/O error, a failed fsync or rename), the
// CHECKPOINT request fails with an error naming the failure and the shard file, the server's
// temporary file is gone, the previous valid version stays the newest and reads back intact, and
// the next checkpoint (the fault gone) is written and committed as usual.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>

#include "common/scratch_dir.h"
#include "common/threads_cluster.h"
#include "shardps/storage/checkpoint.h"
#include "shardps/storage/fault_file_system.h"
#include "shardps/storage/file_system.h"

namespace shardps {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
using testing::JobConfig;
using testing::ThreadsJob;

constexpr milliseconds kLong(60000);
constexpr uint64_t kFloats = 1000;

// Every call goes to whichever file system the test points it at (set only while no write runs).
class SwitchedFileSystem final : public FileSystem {
 public:
  explicit SwitchedFileSystem(FileSystem& initial) : to_(&initial) {}
  void Point(FileSystem& to) { to_.store(&to); }

  int CreateExclusive(const std::string& path, int* fd) override { return to_.load()->CreateExclusive(path, fd); }
  int Write(int fd, const uint8_t* data, size_t n, size_t* written) override { return to_.load()->Write(fd, data, n, written); }
  int Sync(int fd) override { return to_.load()->Sync(fd); }
  int Close(int fd) override { return to_.load()->Close(fd); }
  int Rename(const std::string& from, const std::string& to) override { return to_.load()->Rename(from, to); }
  int Remove(const std::string& path) override { return to_.load()->Remove(path); }
  int MakeDir(const std::string& path) override { return to_.load()->MakeDir(path); }
  int SyncDir(const std::string& path) override { return to_.load()->SyncDir(path); }

 private:
  std::atomic<FileSystem*> to_;
};

struct Case {
  std::string name;
  std::vector<FsFault> faults;
  std::string text;  // the failure, as the error must name it
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class ServerCheckpointFault : public ::testing::TestWithParam<Case> {
 protected:
  testing::ScratchDir scratch_{"shardps_server_ckpt"};
  std::string dir_ = scratch_.string() + "/ckpt";
};

std::vector<std::string> Names(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::recursive_directory_iterator(dir, ec)) out.push_back(e.path().filename().string());
  return out;
}

TEST_P(ServerCheckpointFault, TheShardWriteFailsCleanlyAndThePreviousVersionStays) {
  PosixFileSystem posix;
  FaultInjectingFileSystem faulty(posix, GetParam().faults);
  SwitchedFileSystem server_fs(posix);

  TableSpec table{.name = "w", .size = kFloats};
  table.optimizer.learning_rate = 1.0f;
  JobConfig cfg;
  cfg.world = 2;  // server 0; worker 1 (the lead worker, which asks for checkpoints)
  cfg.servers = 1;
  cfg.tables = {table};
  cfg.chunk_floats = 256;
  cfg.node.server.checkpoint_dir = dir_;
  cfg.node.server.file_system = &server_fs;
  ThreadsJob job(cfg);

  ckpt::Manifest base;
  base.set_num_servers(1);
  base.set_num_workers(1);
  auto* ti = base.add_tables();
  ti->set_name(table.name);
  ti->set_size(table.size);
  ti->set_optimizer(std::string(OptimizerKindName(table.optimizer.kind)));
  ti->set_slots(static_cast<uint32_t>(OptimizerSlots(table.optimizer.kind)));

  std::vector<float> w0(kFloats), w1(kFloats);
  Status failed;                 // the checkpoint written through the faulty file system
  std::vector<std::string> left_in_failed_version;  // before the lead worker abandons it
  uint64_t failed_version = 0;

  // What the lead worker does for one checkpoint: a new version directory, the servers' shards,
  // then the MANIFEST; a failed version is abandoned (as tools/train.cc does).
  auto checkpoint = [&](worker::KVClient& c, uint64_t step, uint64_t* version) -> Status {
    SHARDPS_ASSIGN_OR_RETURN(*version, NextCheckpointVersion(posix, dir_));
    const std::string vdir = CheckpointVersionDir(dir_, *version);
    SHARDPS_RETURN_IF_ERROR(CreateCheckpointVersionDir(posix, vdir));
    Status s = c.Checkpoint(*version, step).wait(kLong);
    if (s.ok()) {
      ckpt::Manifest m = base;
      m.set_version(*version);
      m.set_step(step);
      s = CommitManifest(posix, vdir, &m, 1);
    }
    return s;
  };

  auto st = job.Run([&](int rank, Node& node) -> Status {
    auto* c = node.client();
    if (!c) return Status::Ok();
    uint64_t v = 0;
    // Version 1 at step 0, through the real file system.
    SHARDPS_RETURN_IF_ERROR(c->Pull(0, w0, 0).wait(kLong));
    SHARDPS_RETURN_IF_ERROR(checkpoint(*c, 0, &v));
    if (v != 1) return Internal("the first version is " + std::to_string(v));
    // Step 0 applied: the weights move, so a shard at step 1 differs from version 1's.
    std::vector<float> g(kFloats, 1.0f);
    SHARDPS_RETURN_IF_ERROR(c->PushPull(0, g, w1, 0).wait(kLong));
    // Version 2 at step 1, with the fault in the server's file system.
    server_fs.Point(faulty);
    failed = checkpoint(*c, 1, &failed_version);
    server_fs.Point(posix);
    const std::string vdir = CheckpointVersionDir(dir_, failed_version);
    left_in_failed_version = Names(vdir);
    SHARDPS_RETURN_IF_ERROR(AbandonCheckpointVersion(posix, vdir));
    // The server is not stuck on the failure: the next version (2 again: the failed one is gone)
    // is written at step 1 as usual.
    SHARDPS_RETURN_IF_ERROR(checkpoint(*c, 1, &v));
    if (v != 2) return Internal("the version after the abandoned one is " + std::to_string(v));
    return Status::Ok();
  });
  for (const Status& s : st) EXPECT_TRUE(s.ok()) << s.ToString();
  if (HasFailure()) return;

  // The failure went through the server's file system, and the error names it and the file.
  EXPECT_GE(faulty.fired(), 1) << "the server's shard write did not go through ServerOptions::file_system";
  ASSERT_FALSE(failed.ok()) << "the shard write through the faulty file system reported success";
  EXPECT_EQ(failed.code(), StatusCode::kIoError) << failed.ToString();
  EXPECT_NE(failed.message().find(GetParam().text), std::string::npos) << failed.ToString();
  EXPECT_NE(failed.message().find(CheckpointVersionDir(dir_, failed_version)), std::string::npos) << failed.ToString();
  EXPECT_EQ(failed_version, 2u);
  for (const auto& name : left_in_failed_version) {
    EXPECT_EQ(name.find(".tmp"), std::string::npos) << "the server left its temporary file: " << name;
  }

  // Version 1 read back: still valid, at step 0, the initial weights. Version 2, written again
  // after the failure, holds step 1's.
  std::vector<uint64_t> present;
  for (const auto& v : ListCheckpoints(dir_, true)) {
    present.push_back(v.version);
    EXPECT_TRUE(v.status.ok()) << v.path << ": " << v.status.ToString();
  }
  EXPECT_EQ(present, (std::vector<uint64_t>{1, 2}));
  for (const auto& [version, step, want] : {std::tuple{1u, 0u, &w0}, std::tuple{2u, 1u, &w1}}) {
    SCOPED_TRACE("version " + std::to_string(version));
    auto v = ResolveCheckpoint(dir_ + "@" + std::to_string(version), nullptr);
    ASSERT_TRUE(v.ok()) << v.status().ToString();
    EXPECT_EQ(v->manifest.step(), step);
    CheckpointReader reader(*v);
    std::vector<float> w(kFloats), slots;
    Status s = reader.Read(0, 0, kFloats, w, slots);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(w, *want);
  }
  EXPECT_NE(w0, w1);
  for (const auto& name : Names(dir_)) EXPECT_EQ(name.find(".tmp"), std::string::npos) << "left behind: " << name;
}

INSTANTIATE_TEST_SUITE_P(
    Faults, ServerCheckpointFault,
    ::testing::Values(Case{"DiskFullOnTheShard", {{.op = FsOp::kWrite, .nth = 1, .error = ENOSPC}}, "No space left on device"},
                      Case{"DiskFullOnTheShardInfo", {{.op = FsOp::kWrite, .nth = 2, .error = ENOSPC}}, "No space left on device"},
                      Case{"ShortWriteThenIoError",
                           {{.op = FsOp::kWrite, .nth = 1, .short_write = true}, {.op = FsOp::kWrite, .nth = 2, .error = EIO}},
                           "Input/output error"},
                      Case{"FsyncFails", {{.op = FsOp::kSync, .nth = 1, .error = EIO}}, "cannot fsync"},
                      Case{"RenameFails", {{.op = FsOp::kRename, .nth = 1, .error = EIO}}, "cannot rename"}),
    [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace shardps
