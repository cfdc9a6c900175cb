// Tables and how they are cut into chunks and spread over servers.
//
//   std::vector<TableSpec> specs = {{.name = "w", .size = 1'000'000}};
//   SHARDPS_ASSIGN_OR_RETURN(TableLayout layout, TableLayout::Create(specs, /*num_servers=*/2));
//   for (const ChunkInfo& c : layout.ChunksIn(0, 0, 1'000'000)) { ... c.server ... }
//
// A dense table of n floats is cut into chunks of at most `chunk_floats` elements. Chunks of all
// tables, in declaration order, go one by one to the server that holds the fewest bytes so far
// (lowest index on a tie): bytes are balanced to within one chunk, a tiny table lives on one
// server and a big one spreads over all. A sparse table (row_dim > 0) has no chunks: its rows,
// addressed by any uint64 key, are created on first touch by the server SparseServerOf(key)
// names. Every rank computes the same layout from the same specs; workers prove it to servers with
// digest().
// Thread safety: immutable after construction.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "shardps/base/optimizer.h"
#include "shardps/base/status.h"

namespace shardps {

// kFirstPush: the weights are what the workers push at step 0 (their sum, as an optimizer "sum"
// table would hold), not an update: a trainer whose model is built elsewhere (a PyTorch worker's
// parameters) hands its initial weights to the servers by pushing them as step 0 from one worker
// (the others push zeros), and every pull of version 1 returns them. The optimizer applies from
// step 1 on and counts its steps from 1 there (Adam's bias correction sees 1, 2, ...). Zeros until
// then; dense tables only.
enum class InitKind { kZeros, kConstant, kUniform, kNormal, kFirstPush };

// Initial weights, a pure function of (seed, table id, global index): the same on any number of
// servers (kFirstPush: zeros until the first push replaces them).
struct TableInit {
  InitKind kind = InitKind::kZeros;
  float value = 0.0f;                 // kConstant
  float low = -0.05f, high = 0.05f;   // kUniform
  float stddev = 0.01f;               // kNormal
  uint64_t seed = 0;
};

struct TableSpec {
  std::string name;
  uint64_t size = 0;  // floats (dense tables; 0 for a sparse one)
  // A sparse table: rows of row_dim floats addressed by uint64 keys (feature ids), created on
  // first touch with InitializeRow's values. 0: a dense table of `size` floats.
  uint32_t row_dim = 0;
  // The tensor's dimensions, row-major, for what reads the weights as tensors (model files,
  // `shardps ckpt export`): their product is `size`. Empty means one dimension of `size`.
  std::vector<uint64_t> shape;
  TableInit init;
  OptimizerConfig optimizer;
  // Saved in checkpoints and exported. False for tables that only carry a run's bookkeeping
  // (reductions of metrics or sample counts), which a resumed run starts afresh.
  bool checkpointed = true;

  bool sparse() const { return row_dim > 0; }
};

// The server index, in [0, num_servers), that holds key `key` of every sparse table: the high 64
// bits of SplitMix64(key) * num_servers (SplitMix64: shardps/base/random.h). A fixed function of
// the key and the server count, the same on every run and machine; balanced for any key set,
// sequential ids included.
int SparseServerOf(uint64_t key, int num_servers);

// A 64-bit signature of a key list (its length, and each key at its position), by which a worker
// and a server agree on a cached key list (the wire protocol's key caching).
uint64_t SparseKeySignature(std::span<const uint64_t> keys);

// The number of elements a tensor of `shape` holds (1 for no dimensions); 0 if a dimension is 0
// or the product overflows. ShapeText: "784 x 128".
uint64_t ShapeElements(std::span<const uint64_t> shape);
std::string ShapeText(std::span<const uint64_t> shape);

struct ChunkInfo {
  uint32_t table = 0;
  uint32_t index = 0;   // chunk index within its table
  uint64_t begin = 0;   // global element offsets in the table, half-open
  uint64_t end = 0;
  int server = 0;       // server index (not rank)
  uint64_t size() const { return end - begin; }
};

struct LayoutOptions {
  uint64_t chunk_floats = 256 * 1024;  // 1 MiB chunks
};

class TableLayout {
 public:
  static Result<TableLayout> Create(std::vector<TableSpec> specs, int num_servers,
                                    const LayoutOptions& options = {});

  int num_servers() const { return num_servers_; }
  uint64_t chunk_floats() const { return chunk_floats_; }
  size_t num_tables() const { return specs_.size(); }
  const TableSpec& table(uint32_t id) const { return specs_.at(id); }
  const std::vector<TableSpec>& tables() const { return specs_; }
  Result<uint32_t> FindTable(const std::string& name) const;

  // All chunks of table `id`, in key order.
  std::span<const ChunkInfo> chunks(uint32_t table) const;
  // The chunks overlapping [begin, end) of `table` (their full extents).
  std::span<const ChunkInfo> ChunksIn(uint32_t table, uint64_t begin, uint64_t end) const;
  // Index of the chunk of `table` that holds element `key`.
  uint32_t ChunkOf(uint32_t table, uint64_t key) const { return static_cast<uint32_t>(key / chunk_floats_); }
  // Bytes of weights each server holds (optimizer state not counted).
  std::vector<uint64_t> BytesPerServer() const;
  // A digest of specs, chunking and assignment; two ranks agree on the layout iff digests match.
  uint64_t digest() const { return digest_; }

 private:
  int num_servers_ = 0;
  uint64_t chunk_floats_ = 0;
  uint64_t digest_ = 0;
  std::vector<TableSpec> specs_;
  std::vector<std::vector<ChunkInfo>> chunks_;
};

// Writes the initial values of elements [begin, begin + out.size()) of table `table_id`.
void InitializeWeights(const TableInit& init, uint32_t table_id, uint64_t begin, std::span<float> out);
// Writes the initial values of row `key` (out.size() = row_dim) of sparse table `table_id`: a pure
// function of (init, table id, key), whichever server creates the row and whenever.
void InitializeRow(const TableInit& init, uint32_t table_id, uint64_t key, std::span<float> out);

}  // namespace shardps
