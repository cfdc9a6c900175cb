// Storage under failure: every checkpoint, export and model write goes through a FileSystem; a
// fault-injecting one fails each I/O call in turn, and every failure must leave the previous
// valid version intact and no temporary file behind. Also: the checkpoint directory locks,
// retention over versions that vanish, '@' in checkpoint paths, --resume auto's resolution,
// output paths that are devices, and gzip data with trailing garbage.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "common/scratch_dir.h"
#include "shardps/storage/checkpoint.h"
#include "shardps/storage/fault_file_system.h"
#include "shardps/storage/file_system.h"
#include "shardps/storage/safetensors.h"
#include "shardps/worker/data.h"

namespace shardps {
namespace {

namespace fs = std::filesystem;

#define EXPECT_MSG_HAS(status, text)                                                      \
  EXPECT_NE((status).message().find(text), std::string::npos)                             \
      << "message: " << (status).ToString() << "\nexpected to contain: " << (text)

class StorageTest : public ::testing::Test {
 protected:
  // Two shards of a table "w" of 8 floats, every value `value`, at `step`; the lead worker's and
  // the servers' part of a checkpoint, as the job does it: on any failure the version is abandoned.
  Status WriteVersion(FileSystem& fsys, uint64_t step, float value, uint64_t* version_out = nullptr) {
    SHARDPS_ASSIGN_OR_RETURN(uint64_t version, NextCheckpointVersion(fsys, dir_));
    if (version_out) *version_out = version;
    const std::string vdir = CheckpointVersionDir(dir_, version);
    SHARDPS_RETURN_IF_ERROR(CreateCheckpointVersionDir(fsys, vdir));
    Status s = [&]() -> Status {
      for (uint32_t server = 0; server < 2; ++server) {
        ChunkToSave c;
        c.table = 0;
        c.begin = server * 4;
        c.end = c.begin + 4;
        c.data.assign(4, value);
        SHARDPS_RETURN_IF_ERROR(WriteShard(fsys, vdir, server, step, {c}).status());
      }
      ckpt::Manifest m;
      m.set_version(version);
      m.set_step(step);
      m.set_num_servers(2);
      auto* t = m.add_tables();
      t->set_name("w");
      t->set_size(8);
      t->set_slots(0);
      if (!shape_.empty()) *t = CheckpointTableInfo(TableSpec{.name = "w", .size = 8, .shape = shape_});
      return CommitManifest(fsys, vdir, &m, 2);
    }();
    if (!s.ok()) {
      Status cleaned = AbandonCheckpointVersion(fsys, vdir);
      EXPECT_TRUE(cleaned.ok()) << cleaned.ToString();
    }
    return s;
  }

  // The newest valid version is `version` at `step` with every weight `value`.
  void ExpectNewest(uint64_t version, uint64_t step, float value) {
    auto v = ResolveCheckpoint(dir_, nullptr);
    ASSERT_TRUE(v.ok()) << v.status().ToString();
    EXPECT_EQ(v->version, version);
    EXPECT_EQ(v->manifest.step(), step);
    CheckpointReader reader(*v);
    std::vector<float> w(8), slots;
    Status s = reader.Read(0, 0, 8, w, slots);
    ASSERT_TRUE(s.ok()) << s.ToString();
    for (float x : w) EXPECT_EQ(x, value);
  }

  // No temporary or probe file anywhere under root_, and no version directory but `versions`.
  void ExpectClean(const std::vector<uint64_t>& versions) {
    for (const auto& e : fs::recursive_directory_iterator(root_)) {
      const std::string name = e.path().filename().string();
      EXPECT_EQ(name.find(".tmp"), std::string::npos) << "left behind: " << e.path();
      EXPECT_EQ(name.find(".shardps-probe"), std::string::npos) << "left behind: " << e.path();
    }
    std::vector<uint64_t> present;
    for (const auto& v : ListCheckpoints(dir_, false)) present.push_back(v.version);
    EXPECT_EQ(present, versions);
  }

  // The shape WriteVersion records for "w"; none: a manifest as versions before shapes wrote it.
  std::vector<uint64_t> shape_;
  PosixFileSystem posix_;
  testing::ScratchDir scratch_{"shardps_storage"};
  std::string root_ = scratch_.string();
  std::string dir_ = root_ + "/ckpt";
};

TEST_F(StorageTest, WritesAndReadsThroughTheFileSystem) {
  ASSERT_TRUE(WriteVersion(posix_, 10, 1.5f).ok());
  ExpectNewest(1, 10, 1.5f);
  ExpectClean({1});
}

TEST_F(StorageTest, ManifestsRecordTableShapes) {
  // Every table gets a shape: its own, or one dimension.
  const ckpt::TableInfo b = CheckpointTableInfo(TableSpec{.name = "l0.b", .size = 5});
  EXPECT_EQ(std::vector<uint64_t>(b.shape().begin(), b.shape().end()), std::vector<uint64_t>{5});
  const ckpt::TableInfo w = CheckpointTableInfo(TableSpec{.name = "l0.w", .size = 15, .shape = {3, 5}});
  EXPECT_EQ(std::vector<uint64_t>(w.shape().begin(), w.shape().end()), (std::vector<uint64_t>{3, 5}));
  EXPECT_EQ(w.size(), 15u);
  EXPECT_EQ(w.name(), "l0.w");

  // A manifest without shapes (older versions) stays valid.
  ASSERT_TRUE(WriteVersion(posix_, 1, 1.0f).ok());
  auto v1 = ResolveCheckpoint(dir_ + "@1", nullptr);
  ASSERT_TRUE(v1.ok()) << v1.status().ToString();
  EXPECT_TRUE(v1->manifest.tables().at(0).shape.empty());

  shape_ = {2, 4};
  ASSERT_TRUE(WriteVersion(posix_, 2, 2.0f).ok());
  auto v2 = ResolveCheckpoint(dir_ + "@2", nullptr);
  ASSERT_TRUE(v2.ok()) << v2.status().ToString();
  EXPECT_EQ(v2->manifest.tables().at(0).shape, (std::vector<uint64_t>{2, 4}));

  // A shape that does not hold the table's size makes the version invalid, naming the table.
  shape_ = {3, 3};
  ASSERT_TRUE(WriteVersion(posix_, 3, 3.0f).ok());
  auto v3 = ResolveCheckpoint(dir_ + "@3", nullptr);
  ASSERT_FALSE(v3.ok());
  EXPECT_EQ(v3.status().code(), StatusCode::kDataLoss);
  EXPECT_MSG_HAS(v3.status(), "table 'w' of 8 elements the shape 3 x 3");
  std::vector<std::string> warnings;
  auto newest = ResolveCheckpoint(dir_, [&](const std::string& w) { warnings.push_back(w); });
  ASSERT_TRUE(newest.ok()) << newest.status().ToString();
  EXPECT_EQ(newest->version, 2u);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("3 x 3"), std::string::npos) << warnings[0];
}

class StorageFaultTest : public StorageTest {
 protected:
  // A valid version 1, then version 2 written through `faults`; the write must fail, and leave
  // version 1 the newest, intact, and nothing else.
  void ExpectCleanFailure(std::vector<FsFault> faults, const std::string& text) {
    ASSERT_TRUE(WriteVersion(posix_, 10, 1.0f).ok());
    FaultInjectingFileSystem faulty(posix_, std::move(faults));
    Status s = WriteVersion(faulty, 20, 2.0f);
    ASSERT_FALSE(s.ok()) << "the injected fault did not make the write fail; calls:\n" << Log(faulty);
    EXPECT_GE(faulty.fired(), 1);
    EXPECT_EQ(s.code(), StatusCode::kIoError) << s.ToString();
    EXPECT_MSG_HAS(s, text);
    EXPECT_MSG_HAS(s, dir_);  // names the file
    ExpectNewest(1, 10, 1.0f);
    ExpectClean({1});
  }
  static std::string Log(const FaultInjectingFileSystem& f) {
    std::string out;
    for (const auto& l : f.log()) out += "  " + l + "\n";
    return out;
  }
};

TEST_F(StorageFaultTest, DiskFullOnWrite) { ExpectCleanFailure({{.op = FsOp::kWrite, .nth = 1, .error = ENOSPC}}, "No space left on device"); }

TEST_F(StorageFaultTest, DiskFullOnTheManifest) {
  // Writes: shard 0 .bin (1) and .info (2: CRC, message), shard 1 the same, then the MANIFEST's 2.
  ExpectCleanFailure({{.op = FsOp::kWrite, .nth = 7, .error = ENOSPC}}, "No space left on device");
}

TEST_F(StorageFaultTest, IoErrorOnWrite) { ExpectCleanFailure({{.op = FsOp::kWrite, .nth = 3, .error = EIO}}, "Input/output error"); }

TEST_F(StorageFaultTest, ShortWriteThenDiskFull) {
  ExpectCleanFailure({{.op = FsOp::kWrite, .nth = 1, .short_write = true}, {.op = FsOp::kWrite, .nth = 2, .error = ENOSPC}},
                     "No space left on device");
}

TEST_F(StorageFaultTest, FsyncFails) { ExpectCleanFailure({{.op = FsOp::kSync, .nth = 2, .error = EIO}}, "cannot fsync"); }

TEST_F(StorageFaultTest, RenameFails) { ExpectCleanFailure({{.op = FsOp::kRename, .nth = 1, .error = EIO}}, "cannot rename"); }

TEST_F(StorageFaultTest, RenameOfTheManifestFails) {
  ExpectCleanFailure({{.op = FsOp::kRename, .nth = 5, .error = EXDEV}}, "cannot rename");
}

TEST_F(StorageFaultTest, CloseFails) { ExpectCleanFailure({{.op = FsOp::kClose, .nth = 1, .error = EIO}}, "cannot close"); }

TEST_F(StorageFaultTest, DirectoryFsyncFails) {
  ExpectCleanFailure({{.op = FsOp::kSyncDir, .nth = 3, .error = EIO}}, "fsync directory");
}

TEST_F(StorageFaultTest, VersionDirectoryCannotBeCreated) {
  ExpectCleanFailure({{.op = FsOp::kMakeDir, .nth = 1, .error = ENOSPC}}, "No space left on device");
}

TEST_F(StorageFaultTest, ShortWritesAreCompleted) {
  // A short write is not an error: the rest is written, the checkpoint is complete and right.
  ASSERT_TRUE(WriteVersion(posix_, 10, 1.0f).ok());
  FaultInjectingFileSystem faulty(posix_, {{.op = FsOp::kWrite, .nth = 1, .short_write = true},
                                           {.op = FsOp::kWrite, .nth = 4, .short_write = true}});
  Status s = WriteVersion(faulty, 20, 2.0f);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(faulty.fired(), 2);
  ExpectNewest(2, 20, 2.0f);
  ExpectClean({1, 2});
}

// Every I/O call of a checkpoint write fails in turn, with each error: the previous version stays
// the newest and intact, and no temporary file or partial version is left.
TEST_F(StorageTest, EveryCallOfACheckpointWriteFailsInTurn) {
  ASSERT_TRUE(WriteVersion(posix_, 10, 1.0f).ok());
  for (int error : {EIO, ENOSPC, EROFS}) {
    uint64_t n = 1;
    for (;; ++n) {
      SCOPED_TRACE("error " + ErrnoText(error) + ", failing call " + std::to_string(n));
      FaultInjectingFileSystem faulty(posix_, {{.op = FsOp::kAny, .nth = n, .error = error}});
      Status s = WriteVersion(faulty, 20, 2.0f);
      if (faulty.fired() == 0) {
        // Past the last call: the write went through untouched; undo it for the next error.
        ASSERT_TRUE(s.ok()) << s.ToString();
        ExpectNewest(2, 20, 2.0f);
        ASSERT_TRUE(AbandonCheckpointVersion(posix_, CheckpointVersionDir(dir_, 2)).ok());
        break;
      }
      ASSERT_FALSE(s.ok()) << "call " << n << " failed and the write reported success:\n" << faulty.log()[n - 1];
      EXPECT_MSG_HAS(s, ErrnoText(error));
      ExpectNewest(1, 10, 1.0f);
      ExpectClean({1});
      if (HasFatalFailure()) return;
    }
    EXPECT_GT(n, 20u) << "a checkpoint write of two shards makes more I/O calls than that";
  }
}

// The same for a model file written as safetensors: the old file stays as it was.
TEST_F(StorageTest, EveryCallOfAModelWriteFailsInTurn) {
  fs::create_directories(dir_);
  const std::string path = dir_ + "/model.safetensors";
  std::vector<float> old_w(16, 1.0f), new_w(16, 2.0f);
  auto tensors = [](const std::vector<float>& w) {
    return std::vector<SafetensorsTensor>{{"w", "F32", {4, 4}, {reinterpret_cast<const uint8_t*>(w.data()), w.size() * 4}}};
  };
  ASSERT_TRUE(WriteSafetensors(posix_, path, tensors(old_w)).ok());
  for (uint64_t n = 1;; ++n) {
    SCOPED_TRACE("failing call " + std::to_string(n));
    FaultInjectingFileSystem faulty(posix_, {{.op = FsOp::kAny, .nth = n, .error = ENOSPC}});
    Status s = WriteSafetensors(faulty, path, tensors(new_w));
    if (faulty.fired() == 0) {
      ASSERT_TRUE(s.ok());
      break;
    }
    EXPECT_FALSE(s.ok());
    // A failure before the rename keeps the old file; after it (the directory fsync) the new one
    // is complete. Either way the file is whole and nothing else is left.
    auto f = SafetensorsFile::Open(path);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    auto w = f->ReadFloats("w");
    ASSERT_TRUE(w.ok());
    const bool renamed = faulty.log()[n - 1].rfind("fsync-dir", 0) == 0;
    EXPECT_EQ(*w, renamed ? new_w : old_w);
    ExpectClean({});
  }
}

// ---- output paths ----

TEST_F(StorageTest, DevicesAndOtherNonRegularFilesAreNeverReplaced) {
  fs::create_directories(dir_);
  const std::string fifo = dir_ + "/fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  for (const std::string& path : {std::string("/dev/null"), std::string("/dev/full"), fifo, dir_}) {
    SCOPED_TRACE(path);
    struct stat before {};
    ASSERT_EQ(::stat(path.c_str(), &before), 0);
    Status check = CheckOutputFile(posix_, path, "--out");
    ASSERT_FALSE(check.ok());
    EXPECT_MSG_HAS(check, path);
    EXPECT_MSG_HAS(check, "not a regular file");
    const uint8_t byte = 1;
    Status s = WriteFileAtomically(posix_, path, {std::span<const uint8_t>(&byte, 1)});
    ASSERT_FALSE(s.ok());
    EXPECT_MSG_HAS(s, "not a regular file");
    struct stat after {};
    ASSERT_EQ(::stat(path.c_str(), &after), 0);
    EXPECT_EQ(after.st_mode & S_IFMT, before.st_mode & S_IFMT) << "the file type changed";
    EXPECT_EQ(after.st_rdev, before.st_rdev);
  }
  // A link to a device is refused as well.
  const std::string link = dir_ + "/link";
  ASSERT_EQ(::symlink("/dev/null", link.c_str()), 0);
  EXPECT_FALSE(CheckOutputFile(posix_, link, "--out").ok());
  ExpectClean({});
}

TEST_F(StorageTest, OutputLocationsAreCheckedBeforeAnyWork) {
  // A missing directory.
  Status s = CheckOutputFile(posix_, root_ + "/no/such/dir/model.safetensors", "final model");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_MSG_HAS(s, root_ + "/no/such/dir");
  // A file where a directory should be.
  std::ofstream(root_ + "/plain") << "x";
  s = CheckOutputFile(posix_, root_ + "/plain/model.safetensors", "final model");
  EXPECT_FALSE(s.ok());
  s = EnsureWritableDirectory(posix_, root_ + "/plain/sub", "checkpoint directory");
  ASSERT_FALSE(s.ok());
  EXPECT_MSG_HAS(s, "is not a directory");
  // A directory that refuses new files (a read-only file system, as the probe sees it).
  FaultInjectingFileSystem ro(posix_, {{.op = FsOp::kCreate, .nth = 1, .error = EROFS}});
  s = CheckOutputFile(ro, root_ + "/model.safetensors", "final model");
  ASSERT_FALSE(s.ok());
  EXPECT_MSG_HAS(s, "Read-only file system");
  EXPECT_MSG_HAS(s, root_);
  // A regular file or an absent one in a writable directory is fine; the probe leaves nothing.
  EXPECT_TRUE(CheckOutputFile(posix_, root_ + "/plain", "summary").ok());
  EXPECT_TRUE(CheckOutputFile(posix_, root_ + "/new.json", "summary").ok());
  EXPECT_TRUE(EnsureWritableDirectory(posix_, root_ + "/a/b/c", "output directory").ok());
  EXPECT_TRUE(fs::is_directory(root_ + "/a/b/c"));
  ExpectClean({});
}

// ---- locks ----

TEST_F(StorageTest, ASecondWriterIsRefusedNamingTheHolder) {
  fs::create_directories(dir_);
  auto first = CheckpointDirLock::Acquire(dir_, CheckpointDirLock::Kind::kWriter, "job one", std::chrono::milliseconds(0));
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->taken_over_from(), "");
  auto second = CheckpointDirLock::Acquire(dir_, CheckpointDirLock::Kind::kWriter, "job two", std::chrono::milliseconds(0));
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_MSG_HAS(second.status(), "pid " + std::to_string(::getpid()));
  EXPECT_MSG_HAS(second.status(), "job one");
  EXPECT_MSG_HAS(second.status(), "since ");
  EXPECT_MSG_HAS(second.status(), dir_);
  EXPECT_NE(CheckpointDirLock::Holder(dir_, CheckpointDirLock::Kind::kWriter).find("job one"), std::string::npos);
  // The registry lock is another lock.
  auto registry = CheckpointDirLock::Acquire(dir_, CheckpointDirLock::Kind::kRegistry, "gc", std::chrono::milliseconds(0));
  EXPECT_TRUE(registry.ok());
  // Released cleanly: the next holder takes it without a take-over.
  { CheckpointDirLock gone = std::move(*first); }
  EXPECT_EQ(CheckpointDirLock::Holder(dir_, CheckpointDirLock::Kind::kWriter), "");
  auto third = CheckpointDirLock::Acquire(dir_, CheckpointDirLock::Kind::kWriter, "job three", std::chrono::milliseconds(0));
  ASSERT_TRUE(third.ok()) << third.status().ToString();
  EXPECT_EQ(third->taken_over_from(), "");
}

TEST_F(StorageTest, ALockLeftByADeadProcessIsTakenOver) {
  fs::create_directories(dir_);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto lock = CheckpointDirLock::Acquire(dir_, CheckpointDirLock::Kind::kWriter, "doomed job", std::chrono::milliseconds(0));
    ::_exit(lock.ok() ? 0 : 1);  // dies holding it: no release, the record stays
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  auto lock = CheckpointDirLock::Acquire(dir_, CheckpointDirLock::Kind::kWriter, "next job", std::chrono::milliseconds(0));
  ASSERT_TRUE(lock.ok()) << lock.status().ToString();
  EXPECT_NE(lock->taken_over_from().find("pid " + std::to_string(child)), std::string::npos) << lock->taken_over_from();
  EXPECT_NE(lock->taken_over_from().find("doomed job"), std::string::npos);
}

TEST_F(StorageTest, RegistryLockWaitsForTheHolderWithADeadline) {
  fs::create_directories(dir_);
  auto held = CheckpointDirLock::Acquire(dir_, CheckpointDirLock::Kind::kRegistry, "committing", std::chrono::milliseconds(0));
  ASSERT_TRUE(held.ok());
  auto refused = CheckpointDirLock::Acquire(dir_, CheckpointDirLock::Kind::kRegistry, "gc", std::chrono::milliseconds(50));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_MSG_HAS(refused.status(), "committing");
  // A waiter gets the lock once the holder lets go.
  std::thread releaser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    CheckpointDirLock gone = std::move(*held);
  });
  auto waited = CheckpointDirLock::Acquire(dir_, CheckpointDirLock::Kind::kRegistry, "gc", std::chrono::seconds(60));
  releaser.join();
  EXPECT_TRUE(waited.ok()) << waited.status().ToString();
}

// ---- retention ----

// Deletes a whole version directory the first time anything in it is removed: another process
// (an operator's gc) got there first.
class VanishingFileSystem final : public FileSystem {
 public:
  explicit VanishingFileSystem(FileSystem& base) : base_(base) {}
  int CreateExclusive(const std::string& p, int* fd) override { return base_.CreateExclusive(p, fd); }
  int Write(int fd, const uint8_t* d, size_t n, size_t* w) override { return base_.Write(fd, d, n, w); }
  int Sync(int fd) override { return base_.Sync(fd); }
  int Close(int fd) override { return base_.Close(fd); }
  int Rename(const std::string& a, const std::string& b) override { return base_.Rename(a, b); }
  int Remove(const std::string& p) override {
    const fs::path vdir = fs::path(p).parent_path();
    if (vdir.filename().string().rfind("v0", 0) == 0) {
      std::error_code ec;
      fs::remove_all(vdir, ec);
      ++vanished;
    }
    return base_.Remove(p);
  }
  int MakeDir(const std::string& p) override { return base_.MakeDir(p); }
  int SyncDir(const std::string& p) override { return base_.SyncDir(p); }
  int vanished = 0;

 private:
  FileSystem& base_;
};

TEST_F(StorageTest, RetentionToleratesVersionsAlreadyGone) {
  for (int i = 1; i <= 4; ++i) ASSERT_TRUE(WriteVersion(posix_, 10 * i, static_cast<float>(i)).ok());
  VanishingFileSystem racing(posix_);
  auto r = CollectCheckpointGarbage(racing, dir_, 1, 0);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_GE(racing.vanished, 1);
  EXPECT_EQ(r->deleted, (std::vector<uint64_t>{1, 2, 3}));
  ExpectNewest(4, 40, 4.0f);
  ExpectClean({4});
  // Deleting what is not there at all is fine too.
  EXPECT_TRUE(RemoveTree(posix_, dir_ + "/v00000001").ok());
}

// ---- resume specs ----

TEST_F(StorageTest, CheckpointPathsMayContainAt) {
  dir_ = root_ + "/run@2";
  ASSERT_TRUE(WriteVersion(posix_, 10, 1.0f).ok());
  ASSERT_TRUE(WriteVersion(posix_, 20, 2.0f).ok());
  EXPECT_EQ(ParseCheckpointSpec(dir_).dir, dir_);
  EXPECT_EQ(ParseCheckpointSpec(dir_).which, "");
  EXPECT_EQ(ParseCheckpointSpec(dir_ + "@1").dir, dir_);
  EXPECT_EQ(ParseCheckpointSpec(dir_ + "@1").which, "1");
  EXPECT_EQ(ParseCheckpointSpec(dir_ + "@best").which, "best");
  auto whole = ResolveCheckpoint(dir_, nullptr);
  ASSERT_TRUE(whole.ok()) << whole.status().ToString();
  EXPECT_EQ(whole->version, 2u);
  auto first = ResolveCheckpoint(dir_ + "@1", nullptr);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->version, 1u);
  ASSERT_TRUE(TagCheckpoint(posix_, dir_, 1, "best").ok());
  auto tagged = ResolveCheckpoint(dir_ + "@best", nullptr);
  ASSERT_TRUE(tagged.ok()) << tagged.status().ToString();
  EXPECT_EQ(tagged->version, 1u);
  // A missing directory is named as such, with how the spec was read.
  auto missing = ResolveCheckpoint(root_ + "/other@3", nullptr);
  ASSERT_FALSE(missing.ok());
  EXPECT_MSG_HAS(missing.status(), root_ + "/other' does not exist");
}

TEST_F(StorageTest, ResumeAutoStartsFreshOnlyWithoutCommittedCheckpoints) {
  // Missing directory.
  auto a = ResolveCheckpointAuto(dir_, nullptr);
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE(a->version.has_value());
  EXPECT_NE(a->why.find("does not exist"), std::string::npos) << a->why;
  // Empty directory.
  fs::create_directories(dir_);
  a = ResolveCheckpointAuto(dir_, nullptr);
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE(a->version.has_value());
  EXPECT_NE(a->why.find("holds no checkpoint"), std::string::npos) << a->why;
  // Only an incomplete first version (preempted while writing it): a shard but no MANIFEST.
  const std::string v1 = CheckpointVersionDir(dir_, 1);
  ASSERT_TRUE(CreateCheckpointVersionDir(posix_, v1).ok());
  ChunkToSave c;
  c.end = 4;
  c.data.assign(4, 1.0f);
  ASSERT_TRUE(WriteShard(posix_, v1, 0, 5, {c}).ok());
  a = ResolveCheckpointAuto(dir_, nullptr);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_FALSE(a->version.has_value());
  EXPECT_NE(a->why.find("only incomplete versions (v00000001"), std::string::npos) << a->why;
  // A valid version after it is taken, whatever incomplete one follows.
  ASSERT_TRUE(WriteVersion(posix_, 10, 1.0f).ok());                  // v2
  ASSERT_TRUE(CreateCheckpointVersionDir(posix_, CheckpointVersionDir(dir_, 3)).ok());  // v3, incomplete
  std::vector<std::string> warnings;
  a = ResolveCheckpointAuto(dir_, [&](const std::string& w) { warnings.push_back(w); });
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(a->version.has_value());
  EXPECT_EQ(a->version->version, 2u);
  EXPECT_EQ(warnings.size(), 1u);
  // Committed but damaged, and nothing valid: never silently trained over.
  std::filesystem::remove_all(CheckpointVersionDir(dir_, 1));
  std::filesystem::remove_all(CheckpointVersionDir(dir_, 3));
  {
    std::fstream f(CheckpointVersionDir(dir_, 2) + "/shard-00001.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(2);
    f.put('\x7f');
  }
  a = ResolveCheckpointAuto(dir_, nullptr);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), StatusCode::kDataLoss);
  EXPECT_MSG_HAS(a.status(), "refusing to start fresh");
  EXPECT_MSG_HAS(a.status(), "v00000002");
}

// ---- data files ----

std::string GzipFile(const std::string& path, const std::vector<uint8_t>& bytes, const std::string& trailer = "") {
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(f);
  if (!trailer.empty()) std::ofstream(path, std::ios::app | std::ios::binary) << trailer;
  return path;
}

std::vector<uint8_t> Idx(const std::vector<uint32_t>& dims, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> b = {0, 0, 0x08, static_cast<uint8_t>(dims.size())};
  for (uint32_t d : dims) {
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(d >> s));
  }
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

TEST_F(StorageTest, GzipWithTrailingGarbageIsRefusedNamingTheFile) {
  fs::create_directories(dir_);
  const auto images = Idx({2, 2, 2}, {1, 2, 3, 4, 5, 6, 7, 8});
  const auto labels = Idx({2}, {0, 1});
  const std::string lb = GzipFile(dir_ + "/lb.gz", labels);
  ASSERT_TRUE(worker::ReadIdx(GzipFile(dir_ + "/ok.gz", images), lb, 10).ok());
  for (const std::string& trailer : {std::string("garbage"), std::string(16, '\0'), std::string("\x1f")}) {
    SCOPED_TRACE("trailer of " + std::to_string(trailer.size()) + " bytes");
    const std::string im = GzipFile(dir_ + "/bad.gz", images, trailer);
    auto r = worker::ReadIdx(im, lb, 10);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << r.status().ToString();
    EXPECT_MSG_HAS(r.status(), im);
  }
  auto r = worker::ReadIdx(GzipFile(dir_ + "/bad.gz", images, "garbage"), lb, 10);
  EXPECT_MSG_HAS(r.status(), "trailing garbage");
  // Concatenated gzip members are one valid gzip file.
  const std::string two = dir_ + "/two.gz";
  GzipFile(two, std::vector<uint8_t>(images.begin(), images.begin() + 10));
  GzipFile(dir_ + "/rest.gz", std::vector<uint8_t>(images.begin() + 10, images.end()));
  {
    std::ifstream rest(dir_ + "/rest.gz", std::ios::binary);
    std::ofstream(two, std::ios::app | std::ios::binary) << rest.rdbuf();
  }
  auto ok = worker::ReadIdx(two, lb, 10);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->num_samples, 2);
}

}  // namespace
}  // namespace shardps
