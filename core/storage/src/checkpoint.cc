#include "shardps/storage/checkpoint.h"

#include "shardps/base/codec.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <optional>
#include <cctype>
#include <ctime>
#include <thread>
#include <utility>

#include "checkpoint_io.h"
#include "shardps/base/crc32c.h"
#include "shardps/storage/file_system.h"

namespace shardps {

namespace fs = std::filesystem;

namespace storage_internal {

std::string Errno(const std::string& what) { return what + ": " + std::strerror(errno); }

Status SyncDir(FileSystem& fsys, const std::string& dir) {
  const int e = fsys.SyncDir(dir);
  return e == 0 ? Status::Ok() : IoError("fsync directory '" + dir + "': " + ErrnoText(e));
}

Result<std::string> ReadFile(const std::string& path, uint64_t max_bytes) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  if (ec) return NotFound("'" + path + "': " + ec.message());
  if (size > max_bytes) return DataLoss("'" + path + "' has " + std::to_string(size) + " bytes, more than " + std::to_string(max_bytes));
  std::string out(size, '\0');
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return IoError(Errno("open '" + path + "'"));
  size_t done = 0;
  while (done < size) {
    ssize_t n = ::read(fd, out.data() + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      return IoError(Errno("read '" + path + "'"));
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  return out;
}

}  // namespace storage_internal

namespace {

using storage_internal::Errno;
using storage_internal::ReadFile;
using storage_internal::SyncDir;

// [CRC32C little-endian][message]
Status WriteMessage(FileSystem& fsys, const std::string& path, const google::protobuf::MessageLite& m,
                    const CheckpointFaultHook& fault = nullptr) {
  std::string body = m.SerializeAsString();
  uint32_t crc = Crc32c(body.data(), body.size());
  uint8_t head[4] = {uint8_t(crc), uint8_t(crc >> 8), uint8_t(crc >> 16), uint8_t(crc >> 24)};
  return WriteFileAtomically(fsys, path, {std::span<const uint8_t>(head, 4),
                                std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(body.data()), body.size())},
                         fault);
}

template <typename M>
Result<M> ReadMessage(const std::string& path) {
  SHARDPS_ASSIGN_OR_RETURN(std::string raw, ReadFile(path, uint64_t{64} << 20));
  if (raw.size() < 4) return DataLoss("'" + path + "' is truncated (" + std::to_string(raw.size()) + " bytes)");
  const auto* p = reinterpret_cast<const uint8_t*>(raw.data());
  const uint32_t crc = p[0] | (p[1] << 8) | (p[2] << 16) | (uint32_t{p[3]} << 24);
  if (Crc32c(raw.data() + 4, raw.size() - 4) != crc) return DataLoss("'" + path + "': CRC32C mismatch");
  M m;
  if (!m.ParseFromArray(raw.data() + 4, static_cast<int>(raw.size() - 4))) return DataLoss("'" + path + "' does not parse");
  return m;
}

bool ParseVersionName(const std::string& name, uint64_t* v) {
  if (name.size() != 9 || name[0] != 'v') return false;
  uint64_t x = 0;
  for (size_t i = 1; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return false;
    x = x * 10 + (name[i] - '0');
  }
  *v = x;
  return true;
}

std::string ShardName(uint32_t server, const char* ext) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "shard-%05u.%s", server, ext);
  return buf;
}

}  // namespace

std::string CheckpointVersionDir(const std::string& dir, uint64_t version) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "v%08llu", static_cast<unsigned long long>(version));
  return (fs::path(dir) / buf).string();
}

Result<uint64_t> NextCheckpointVersion(FileSystem& fsys, const std::string& dir) {
  SHARDPS_RETURN_IF_ERROR(EnsureDirectory(fsys, dir, "checkpoint directory"));
  std::error_code ec;
  uint64_t next = 1;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    uint64_t v;
    if (ParseVersionName(e.path().filename().string(), &v)) next = std::max(next, v + 1);
  }
  if (ec) return IoError("cannot list '" + dir + "': " + ec.message());
  return next;
}

Status CreateCheckpointVersionDir(FileSystem& fsys, const std::string& version_dir) {
  const int e = fsys.MakeDir(version_dir);
  if (e != 0) return IoError("cannot create '" + version_dir + "': " + ErrnoText(e));
  Status s = SyncDir(fsys, fs::path(version_dir).parent_path().string());
  if (!s.ok()) fsys.Remove(version_dir);
  return s;
}

Status AbandonCheckpointVersion(FileSystem& fsys, const std::string& version_dir) {
  SHARDPS_RETURN_IF_ERROR(RemoveTree(fsys, version_dir));
  return SyncDir(fsys, fs::path(version_dir).parent_path().string());
}

Result<ckpt::ShardInfo> WriteShard(const std::string& version_dir, uint32_t server, uint64_t step,
                                   const std::vector<ChunkToSave>& chunks, const CheckpointFaultHook& fault) {
  PosixFileSystem posix;
  return WriteShard(posix, version_dir, server, step, chunks, fault);
}

Result<ckpt::ShardInfo> WriteShard(FileSystem& fsys, const std::string& version_dir, uint32_t server, uint64_t step,
                                   const std::vector<ChunkToSave>& chunks, const CheckpointFaultHook& fault) {
  ckpt::ShardInfo info;
  info.set_server(server);
  info.set_file(ShardName(server, "bin"));
  info.set_step(step);
  std::vector<std::span<const uint8_t>> parts;
  uint64_t offset = 0;
  uint32_t file_crc = 0;
  for (const ChunkToSave& c : chunks) {
    auto bytes = std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(c.data.data()), c.data.size() * sizeof(float));
    ckpt::ChunkEntry* e = info.add_chunks();
    e->set_table(c.table);
    e->set_begin(c.begin);
    e->set_end(c.end);
    e->set_offset(offset);
    if (c.replica) e->set_replica(true);
    uint32_t crc = 0;
    if (c.sparse) {  // the keys first, then the rows
      auto keys = std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(c.keys.data()), c.keys.size() * sizeof(uint64_t));
      e->set_rows(c.keys.size());
      crc = Crc32cExtend(crc, keys.data(), keys.size());
      file_crc = Crc32cExtend(file_crc, keys.data(), keys.size());
      parts.push_back(keys);
      offset += keys.size();
    }
    e->set_bytes(offset - e->offset() + bytes.size());
    e->set_crc32c(Crc32cExtend(crc, bytes.data(), bytes.size()));
    file_crc = Crc32cExtend(file_crc, bytes.data(), bytes.size());
    parts.push_back(bytes);
    offset += bytes.size();
  }
  info.set_bytes(offset);
  info.set_crc32c(file_crc);
  const std::string dir = version_dir;
  const auto t0 = std::chrono::steady_clock::now();
  SHARDPS_RETURN_IF_ERROR(WriteFileAtomically(fsys, (fs::path(dir) / info.file()).string(), parts, fault));
  info.set_write_micros(static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count()));
  SHARDPS_RETURN_IF_ERROR(WriteMessage(fsys, (fs::path(dir) / ShardName(server, "info")).string(), info, fault));
  if (fault) fault("shard-written:" + version_dir);
  return info;
}

Status CommitManifest(FileSystem& fsys, const std::string& version_dir, ckpt::Manifest* m, uint32_t expected_shards,
                      const CheckpointFaultHook& fault) {
  ckpt::Manifest& manifest = *m;
  manifest.clear_shards();
  for (uint32_t s = 0; s < expected_shards; ++s) {
    SHARDPS_ASSIGN_OR_RETURN(ckpt::ShardInfo info,
                             ReadMessage<ckpt::ShardInfo>((fs::path(version_dir) / ShardName(s, "info")).string()));
    if (info.step() != manifest.step()) {
      return DataLoss("shard " + std::to_string(s) + " of '" + version_dir + "' is at step " + std::to_string(info.step()) +
                      ", the checkpoint at step " + std::to_string(manifest.step()));
    }
    *manifest.add_shards() = std::move(info);
  }
  manifest.set_created_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch()).count());
  return WriteMessage(fsys, (fs::path(version_dir) / "MANIFEST").string(), manifest, fault);
}

ckpt::TableInfo CheckpointTableInfo(const TableSpec& table) {
  ckpt::TableInfo ti;
  ti.set_name(table.name);
  ti.set_size(table.size);
  ti.set_row_dim(table.row_dim);
  if (table.sparse()) {
    // no shape: the rows a sparse table holds vary; the export gives ids and values
  } else if (table.shape.empty()) {
    ti.add_shape(table.size);
  } else {
    for (uint64_t d : table.shape) ti.add_shape(d);
  }
  ti.set_optimizer(std::string(OptimizerKindName(table.optimizer.kind)));
  ti.set_slots(static_cast<uint32_t>(OptimizerSlots(table.optimizer.kind)));
  return ti;
}

namespace {
bool LossyCodec(const std::string& codec) {
  const Codec* c = FindCodec(codec);
  return c != nullptr && !c->raw();
}
}  // namespace

uint32_t WorkerStateArrays(const TableSpec& table, const WorkerState& state) {
  if (table.sparse() || table.optimizer.kind == OptimizerKind::kSum) return 0;
  const Optimizer* optimizer = state.optimizer.empty() ? nullptr : FindOptimizer(state.optimizer);  // validated by the options
  const uint32_t slots = optimizer ? static_cast<uint32_t>(optimizer->slots()) : 0;
  return (LossyCodec(state.codec) ? 1 : 0) + slots;
}

uint32_t CodecStateArrays(const TableSpec& table, const WorkerState& state) {
  const uint32_t per_worker = WorkerStateArrays(table, state);
  if (per_worker == 0) return 0;
  return (LossyCodec(state.codec) ? 1 : 0) + state.workers * per_worker;
}

uint32_t CodecStateArrays(const TableSpec& table, const std::string& codec, uint32_t workers) {
  return LossyCodec(codec) ? CodecStateArrays(table, WorkerState{.codec = codec, .optimizer = "", .workers = workers}) : 0;
}

ckpt::TableInfo CheckpointTableInfo(const TableSpec& table, const WorkerState& state) {
  ckpt::TableInfo ti = CheckpointTableInfo(table);
  if (const uint32_t arrays = CodecStateArrays(table, state); arrays > 0) {
    ti.set_codec_arrays(arrays);
    ti.set_codec(state.codec);
    ti.set_worker_arrays(WorkerStateArrays(table, state));
    ti.set_worker_optimizer(state.optimizer);
  }
  return ti;
}

uint32_t SavedWorkerArrays(const ckpt::TableInfo& table) {
  if (table.codec_arrays() == 0) return 0;
  return table.worker_arrays() > 0 ? table.worker_arrays() : 1;
}

bool SavedReplica(const ckpt::TableInfo& table) { return table.codec_arrays() > 0 && LossyCodec(table.codec()); }

CheckpointManifest::CheckpointManifest() : m_(std::make_unique<ckpt::Manifest>()) {}
CheckpointManifest::CheckpointManifest(ckpt::Manifest m) : m_(std::make_unique<ckpt::Manifest>(std::move(m))) {}
CheckpointManifest::CheckpointManifest(const CheckpointManifest& o) : m_(std::make_unique<ckpt::Manifest>(*o.m_)) {}
CheckpointManifest& CheckpointManifest::operator=(const CheckpointManifest& o) {
  if (this != &o) *m_ = *o.m_;
  return *this;
}
// A moved-from manifest stays usable (empty), as a moved-from protobuf message is.
CheckpointManifest::CheckpointManifest(CheckpointManifest&& o) noexcept
    : m_(std::exchange(o.m_, std::make_unique<ckpt::Manifest>())) {}
CheckpointManifest& CheckpointManifest::operator=(CheckpointManifest&& o) noexcept {
  if (this != &o) m_.swap(o.m_);
  return *this;
}
CheckpointManifest::~CheckpointManifest() = default;

uint64_t CheckpointManifest::version() const { return m_->version(); }
uint64_t CheckpointManifest::step() const { return m_->step(); }
uint64_t CheckpointManifest::epoch() const { return m_->epoch(); }
uint64_t CheckpointManifest::step_in_epoch() const { return m_->step_in_epoch(); }
uint64_t CheckpointManifest::seed() const { return m_->seed(); }
int64_t CheckpointManifest::global_batch() const { return m_->global_batch(); }
const std::string& CheckpointManifest::config() const { return m_->config(); }
uint32_t CheckpointManifest::num_servers() const { return m_->num_servers(); }
uint32_t CheckpointManifest::num_workers() const { return m_->num_workers(); }
int64_t CheckpointManifest::created_unix_ms() const { return m_->created_unix_ms(); }
uint64_t CheckpointManifest::train_samples() const { return m_->train_samples(); }
uint32_t CheckpointManifest::train_data_crc32c() const { return m_->train_data_crc32c(); }
const ckpt::Manifest& CheckpointManifest::proto() const { return *m_; }

std::vector<CheckpointManifest::Table> CheckpointManifest::tables() const {
  std::vector<Table> out;
  for (const auto& t : m_->tables()) {
    out.push_back({.name = t.name(), .size = t.size(), .shape = {t.shape().begin(), t.shape().end()},
                   .optimizer = t.optimizer(), .slots = t.slots(), .row_dim = t.row_dim()});
  }
  return out;
}

// Files are checked in blocks of this size (256 KiB), so verifying or reading a version never holds a whole
// shard (weights and optimizer state) in memory: what a model server loading a version beside the
// one it serves must not do.
namespace {

constexpr size_t kCrcBlockBytes = size_t{256} << 10;

// The CRC32C of bytes [offset, offset + n) of `fd`, read in blocks; false on a short read.
bool StreamCrc32c(int fd, uint64_t offset, uint64_t n, uint32_t* crc, std::vector<char>* block) {
  block->resize(kCrcBlockBytes);
  uint32_t c = 0;
  while (n > 0) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(n, kCrcBlockBytes));
    const ssize_t got = ::pread(fd, block->data(), want, static_cast<off_t>(offset));
    if (got != static_cast<ssize_t>(want)) return false;
    c = Crc32cExtend(c, block->data(), want);
    offset += want;
    n -= want;
  }
  *crc = c;
  return true;
}

}  // namespace

Status VerifyCheckpoint(CheckpointVersion* v) {
  auto m = ReadMessage<ckpt::Manifest>((fs::path(v->path) / "MANIFEST").string());
  if (!m.ok()) return m.status().code() == StatusCode::kNotFound ? NotFound("no MANIFEST (incomplete checkpoint)") : m.status();
  v->manifest = CheckpointManifest(std::move(*m));
  v->bytes = 0;
  const ckpt::Manifest& manifest = v->manifest.proto();
  if (manifest.version() != v->version) {
    return DataLoss("MANIFEST names version " + std::to_string(manifest.version()));
  }
  for (const auto& t : manifest.tables()) {
    const std::span<const uint64_t> shape(t.shape().data(), static_cast<size_t>(t.shape_size()));
    // An empty shape: a manifest written before shapes were recorded.
    if (!shape.empty() && ShapeElements(shape) != t.size()) {
      return DataLoss("MANIFEST gives table '" + t.name() + "' of " + std::to_string(t.size()) + " elements the shape " +
                      ShapeText(shape));
    }
  }
  for (const auto& shard : manifest.shards()) {
    if (shard.step() != manifest.step()) {
      return DataLoss("shard " + shard.file() + " is at step " + std::to_string(shard.step()) + ", the manifest at step " +
                      std::to_string(manifest.step()));
    }
    const std::string path = (fs::path(v->path) / shard.file()).string();
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      return errno == ENOENT ? NotFound("'" + path + "': " + std::strerror(errno)) : IoError(Errno("open '" + path + "'"));
    }
    struct FdCloser {
      int fd;
      ~FdCloser() { ::close(fd); }
    } closer{fd};
    struct stat st{};
    if (::fstat(fd, &st) != 0) return IoError(Errno("stat '" + path + "'"));
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    if (size != shard.bytes()) {
      return DataLoss("'" + path + "' has " + std::to_string(size) + " bytes, the manifest says " + std::to_string(shard.bytes()));
    }
    for (const auto& c : shard.chunks()) {
      if (c.offset() > size || c.bytes() > size - c.offset()) {
        return DataLoss("'" + path + "': chunk [" + std::to_string(c.begin()) + "," + std::to_string(c.end()) + ") of table " +
                        std::to_string(c.table()) + " at byte offset " + std::to_string(c.offset()) + " lies outside the file");
      }
    }
    std::vector<char> block;
    uint32_t crc = 0;
    if (!StreamCrc32c(fd, 0, size, &crc, &block)) return DataLoss("'" + path + "': short read");
    if (crc != shard.crc32c()) {
      // Name the chunk that is damaged when one is.
      for (const auto& c : shard.chunks()) {
        uint32_t chunk_crc = 0;
        if (!StreamCrc32c(fd, c.offset(), c.bytes(), &chunk_crc, &block) || chunk_crc != c.crc32c()) {
          return DataLoss("'" + path + "': chunk [" + std::to_string(c.begin()) + "," + std::to_string(c.end()) + ") of table " +
                          std::to_string(c.table()) + " at byte offset " + std::to_string(c.offset()) + " fails its CRC32C");
        }
      }
      return DataLoss("'" + path + "' fails its CRC32C");
    }
    v->bytes += size;
  }
  return Status::Ok();
}

std::vector<CheckpointVersion> ListCheckpoints(const std::string& dir, bool verify) {
  std::vector<CheckpointVersion> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    uint64_t v;
    if (!e.is_directory() || !ParseVersionName(e.path().filename().string(), &v)) continue;
    CheckpointVersion cv;
    cv.version = v;
    cv.path = e.path().string();
    if (verify) {
      cv.status = VerifyCheckpoint(&cv);
    } else {
      auto m = ReadMessage<ckpt::Manifest>((e.path() / "MANIFEST").string());
      if (m.ok()) cv.manifest = CheckpointManifest(std::move(*m));
      else cv.status = m.status();
    }
    out.push_back(std::move(cv));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.version < b.version; });
  return out;
}

const ckpt::Manifest& CheckpointReader::manifest() const { return v_.manifest.proto(); }

Result<uint32_t> CheckpointReader::FindTable(const std::string& name, uint64_t size, uint32_t slots) const {
  for (int t = 0; t < manifest().tables_size(); ++t) {
    const auto& ti = manifest().tables(t);
    if (ti.name() != name) continue;
    if (ti.row_dim() != 0) return InvalidArgument("checkpoint table '" + name + "' is sparse, the model's is dense");
    if (ti.size() != size) {
      return InvalidArgument("checkpoint table '" + name + "' has " + std::to_string(ti.size()) + " elements, the model " +
                             std::to_string(size));
    }
    if (ti.slots() != slots) {
      return InvalidArgument("checkpoint table '" + name + "' was saved with " + std::to_string(ti.slots()) +
                             " optimizer slots per weight (" + ti.optimizer() + "), this run has " + std::to_string(slots));
    }
    return static_cast<uint32_t>(t);
  }
  return NotFound("checkpoint " + v_.path + " has no table '" + name + "'");
}

Status CheckpointReader::Read(uint32_t table, uint64_t begin, uint64_t end, std::span<float> weights, std::span<float> slots) {
  const uint32_t nslots = manifest().tables(table).slots();
  SHARDPS_RETURN_IF_ERROR(ReadArrays(table, begin, end, 0, 1, weights));
  if (nslots == 0 || slots.empty()) return Status::Ok();
  return ReadArrays(table, begin, end, 1, nslots, slots);
}

Status CheckpointReader::ReadCodecState(uint32_t table, uint64_t begin, uint64_t end, std::span<float> arrays,
                                        bool* replica) {
  const auto& ti = manifest().tables(table);
  *replica = false;
  if (ti.codec_arrays() == 0) return Status::Ok();
  return ReadArrays(table, begin, end, 1 + ti.slots(), ti.codec_arrays(), arrays, replica);
}

Status CheckpointReader::ReadArrays(uint32_t table, uint64_t begin, uint64_t end, uint32_t first, uint32_t count,
                                    std::span<float> out, bool* replica) {
  const auto& ti = manifest().tables(table);
  const uint64_t arrays = 1 + uint64_t{ti.slots()} + ti.codec_arrays();
  const uint64_t n = end - begin;
  assert(out.size() == n * count && first + count <= arrays);
  uint64_t covered = 0;
  for (const auto& shard : manifest().shards()) {
    const std::string path = (fs::path(v_.path) / shard.file()).string();
    for (const auto& c : shard.chunks()) {
      if (c.table() != table || c.end() <= begin || c.begin() >= end) continue;
      const uint64_t size = c.end() - c.begin();
      // Sizes from the manifest: checked without overflow before anything is allocated.
      if (c.end() < c.begin() || size > (uint64_t{1} << 40) / arrays || c.bytes() != size * 4 * arrays) {
        return DataLoss("'" + path + "': the chunk entry of table " + std::to_string(table) + " [" +
                        std::to_string(c.begin()) + "," + std::to_string(c.end()) + ") declares " +
                        std::to_string(c.bytes()) + " bytes; " + std::to_string(arrays) +
                        " float arrays of that range take " + std::to_string(size * 4 * arrays));
      }
      // The chunk is read in blocks: each block goes through the CRC, and the parts of the
      // requested arrays it holds are copied out; nothing the size of the chunk is allocated.
      const uint64_t lo = std::max(begin, c.begin()), hi = std::min(end, c.end());
      int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) return IoError(Errno("open '" + path + "'"));
      std::vector<char> block(static_cast<size_t>(std::min<uint64_t>(c.bytes(), kCrcBlockBytes)));
      uint32_t crc = 0;
      bool short_read = false;
      for (uint64_t pos = 0; pos < c.bytes();) {  // pos: byte offset within the chunk
        const size_t want = static_cast<size_t>(std::min<uint64_t>(c.bytes() - pos, block.size()));
        if (::pread(fd, block.data(), want, static_cast<off_t>(c.offset() + pos)) != static_cast<ssize_t>(want)) {
          short_read = true;
          break;
        }
        crc = Crc32cExtend(crc, block.data(), want);
        // Array a's elements [lo, hi) are chunk bytes [(a * size + lo - c.begin()) * 4, ... + (hi - lo) * 4).
        for (uint32_t k = 0; k < count; ++k) {
          const uint64_t a0 = ((first + k) * size + (lo - c.begin())) * sizeof(float);
          const uint64_t a1 = a0 + (hi - lo) * sizeof(float);
          const uint64_t b0 = std::max(a0, pos), b1 = std::min(a1, pos + want);
          if (b0 >= b1) continue;
          std::memcpy(reinterpret_cast<char*>(out.data() + k * n + (lo - begin)) + (b0 - a0), block.data() + (b0 - pos), b1 - b0);
        }
        pos += want;
      }
      ::close(fd);
      if (short_read) return DataLoss("'" + path + "': short read at byte offset " + std::to_string(c.offset()));
      if (crc != c.crc32c()) {
        return DataLoss("'" + path + "': chunk at byte offset " + std::to_string(c.offset()) + " fails its CRC32C");
      }
      covered += hi - lo;
      if (replica && c.replica()) *replica = true;
    }
  }
  if (covered != n) {
    return DataLoss("checkpoint " + v_.path + " covers " + std::to_string(covered) + " of elements [" + std::to_string(begin) +
                    "," + std::to_string(end) + ") of table " + std::to_string(table));
  }
  return Status::Ok();
}

Result<uint32_t> CheckpointReader::FindSparseTable(const std::string& name, uint32_t row_dim, uint32_t slots) const {
  for (int t = 0; t < manifest().tables_size(); ++t) {
    const auto& ti = manifest().tables(t);
    if (ti.name() != name) continue;
    if (ti.row_dim() != row_dim) {
      return InvalidArgument("checkpoint table '" + name + "' has rows of " + std::to_string(ti.row_dim()) +
                             " floats (0: a dense table), the model's " + std::to_string(row_dim));
    }
    if (ti.slots() != slots) {
      return InvalidArgument("checkpoint table '" + name + "' was saved with " + std::to_string(ti.slots()) +
                             " optimizer slots per weight (" + ti.optimizer() + "), this run has " + std::to_string(slots));
    }
    return static_cast<uint32_t>(t);
  }
  return NotFound("checkpoint " + v_.path + " has no table '" + name + "'");
}

Status CheckpointReader::ReadSparseRows(uint32_t table, const RowBlock& each) {
  const auto& ti = manifest().tables(table);
  const uint64_t row_bytes = uint64_t{ti.row_dim()} * 4 * (1 + ti.slots());
  for (const auto& shard : manifest().shards()) {
    const std::string path = (fs::path(v_.path) / shard.file()).string();
    for (const auto& c : shard.chunks()) {
      if (c.table() != table) continue;
      const uint64_t n = c.rows();
      if (row_bytes == 0 || n > c.bytes() / (8 + row_bytes) || c.bytes() != n * (8 + row_bytes)) {
        return DataLoss("'" + path + "': the entry at byte offset " + std::to_string(c.offset()) + " has " +
                        std::to_string(c.bytes()) + " bytes for " + std::to_string(n) + " rows of " +
                        std::to_string(row_bytes) + " bytes and their keys");
      }
      std::vector<uint64_t> keys(n);
      std::vector<float> rows(n * (row_bytes / 4));
      int fd = ::open(path.c_str(), O_RDONLY);
      if (fd < 0) return IoError(Errno("open '" + path + "'"));
      const ssize_t got_keys = ::pread(fd, keys.data(), n * 8, static_cast<off_t>(c.offset()));
      const ssize_t got_rows = ::pread(fd, rows.data(), n * row_bytes, static_cast<off_t>(c.offset() + n * 8));
      ::close(fd);
      if (got_keys != static_cast<ssize_t>(n * 8) || got_rows != static_cast<ssize_t>(n * row_bytes)) {
        return DataLoss("'" + path + "': short read at byte offset " + std::to_string(c.offset()));
      }
      if (Crc32cExtend(Crc32c(keys.data(), n * 8), rows.data(), n * row_bytes) != c.crc32c()) {
        return DataLoss("'" + path + "': the rows at byte offset " + std::to_string(c.offset()) + " fail their CRC32C");
      }
      SHARDPS_RETURN_IF_ERROR(each(keys, rows));
    }
  }
  return Status::Ok();
}

}  // namespace shardps
