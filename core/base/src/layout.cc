#include "shardps/base/layout.h"

#include "shardps/base/random.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

namespace shardps {
namespace {

// Counter-based: value i depends only on (seed, stream, i).
uint64_t Mix(uint64_t x) { return SplitMix64(x); }
uint64_t Counter(uint64_t seed, uint64_t stream, uint64_t i) { return Mix(Mix(seed ^ Mix(stream)) ^ i); }
// Uniform in (0, 1), 24 random bits: exactly representable as float.
double Unit(uint64_t bits) { return (static_cast<double>(bits >> 40) + 0.5) / 16777216.0; }

void HashBytes(uint64_t& h, const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001B3ull;  // FNV-1a
}
template <typename T>
void HashValue(uint64_t& h, const T& v) { HashBytes(h, &v, sizeof(v)); }

}  // namespace

uint64_t ShapeElements(std::span<const uint64_t> shape) {
  uint64_t n = 1;
  for (uint64_t d : shape) {
    if (d == 0 || n > UINT64_MAX / d) return 0;
    n *= d;
  }
  return n;
}

std::string ShapeText(std::span<const uint64_t> shape) {
  std::string s;
  for (uint64_t d : shape) s += (s.empty() ? "" : " x ") + std::to_string(d);
  return s;
}

Result<TableLayout> TableLayout::Create(std::vector<TableSpec> specs, int num_servers,
                                        const LayoutOptions& options) {
  if (num_servers < 1) return InvalidArgument("a layout needs at least one server");
  if (options.chunk_floats < 1) return InvalidArgument("chunk_floats must be at least 1");
  if (specs.size() > UINT32_MAX) return InvalidArgument("too many tables");
  std::set<std::string> names;
  for (const TableSpec& s : specs) {
    if (s.name.empty()) return InvalidArgument("a table needs a name");
    if (!names.insert(s.name).second) return InvalidArgument("table name '" + s.name + "' declared twice");
    if (s.sparse()) {
      if (s.size != 0 || !s.shape.empty()) {
        return InvalidArgument("table '" + s.name + "' is sparse (row_dim " + std::to_string(s.row_dim) +
                               "): its size and shape must be left empty, rows are created on first touch");
      }
      if (s.optimizer.kind == OptimizerKind::kSum) {
        return InvalidArgument("table '" + s.name + "' is sparse: optimizer 'sum' is for dense reduction tables");
      }
      if (s.init.kind == InitKind::kFirstPush) {
        return InvalidArgument("table '" + s.name + "' is sparse: initial weights from the first push are for dense tables");
      }
    } else if (s.size == 0) {
      return InvalidArgument("table '" + s.name + "' has size 0");
    }
    if (auto o = LookupOptimizer(s.optimizer.kind); !o.ok()) {
      return InvalidArgument("table '" + s.name + "': " + o.status().message());
    }
    if (!s.shape.empty() && ShapeElements(s.shape) != s.size) {
      return InvalidArgument("table '" + s.name + "' has shape " + ShapeText(s.shape) + ", which does not hold its " +
                             std::to_string(s.size) + " elements");
    }
    if (s.size / options.chunk_floats + (s.size % options.chunk_floats != 0) > UINT32_MAX) {
      return InvalidArgument("table '" + s.name + "' has more than 2^32 chunks; raise chunk_floats");
    }
  }
  TableLayout l;
  l.num_servers_ = num_servers;
  l.chunk_floats_ = options.chunk_floats;
  l.specs_ = std::move(specs);
  std::vector<uint64_t> load(num_servers, 0);
  uint64_t h = 0xCBF29CE484222325ull;
  HashValue(h, num_servers);
  HashValue(h, l.chunk_floats_);
  for (uint32_t t = 0; t < l.specs_.size(); ++t) {
    const TableSpec& s = l.specs_[t];
    HashBytes(h, s.name.data(), s.name.size());
    HashValue(h, s.size);
    if (s.sparse()) HashValue(h, s.row_dim);  // dense tables' digests stay what they were
    HashValue(h, s.optimizer.kind.size());
    HashBytes(h, s.optimizer.kind.data(), s.optimizer.kind.size());
    // Every setting the servers act on, so a worker started with another config is refused.
    for (float v : {s.optimizer.learning_rate, s.optimizer.momentum, s.optimizer.beta1, s.optimizer.beta2,
                    s.optimizer.epsilon, s.optimizer.weight_decay, s.optimizer.initial_accumulator,
                    s.optimizer.ftrl_beta, s.optimizer.l1, s.optimizer.l2, s.init.value, s.init.low, s.init.high,
                    s.init.stddev}) {
      HashValue(h, v);
    }
    HashValue(h, s.init.kind);
    HashValue(h, s.init.seed);
    HashValue(h, s.checkpointed);
    HashValue(h, s.shape.size());
    for (uint64_t d : s.shape) HashValue(h, d);
    std::vector<ChunkInfo> cs;
    const uint64_t n = s.size / l.chunk_floats_ + (s.size % l.chunk_floats_ != 0);  // no overflow near 2^64
    cs.reserve(n);
    for (uint64_t i = 0; i < n; ++i) {
      ChunkInfo c;
      c.table = t;
      c.index = static_cast<uint32_t>(i);
      c.begin = i * l.chunk_floats_;
      c.end = std::min(s.size, c.begin + l.chunk_floats_);
      int best = 0;
      for (int sv = 1; sv < num_servers; ++sv) if (load[sv] < load[best]) best = sv;
      c.server = best;
      load[best] += c.size() * sizeof(float);
      HashValue(h, c.server);
      cs.push_back(c);
    }
    l.chunks_.push_back(std::move(cs));
  }
  l.digest_ = h;
  return l;
}

Result<uint32_t> TableLayout::FindTable(const std::string& name) const {
  for (uint32_t t = 0; t < specs_.size(); ++t) if (specs_[t].name == name) return t;
  return NotFound("no table named '" + name + "'");
}

std::span<const ChunkInfo> TableLayout::chunks(uint32_t table) const { return chunks_.at(table); }

std::span<const ChunkInfo> TableLayout::ChunksIn(uint32_t table, uint64_t begin, uint64_t end) const {
  const auto& cs = chunks_.at(table);
  if (begin >= end || begin >= specs_[table].size) return {};
  end = std::min(end, specs_[table].size);
  const size_t first = begin / chunk_floats_;
  const size_t last = (end - 1) / chunk_floats_;
  return std::span<const ChunkInfo>(cs).subspan(first, last - first + 1);
}

std::vector<uint64_t> TableLayout::BytesPerServer() const {
  std::vector<uint64_t> b(num_servers_, 0);
  for (const auto& cs : chunks_) for (const ChunkInfo& c : cs) b[c.server] += c.size() * sizeof(float);
  return b;
}

int SparseServerOf(uint64_t key, int num_servers) {
  return static_cast<int>((static_cast<unsigned __int128>(SplitMix64(key)) * static_cast<uint64_t>(num_servers)) >> 64);
}

uint64_t SparseKeySignature(std::span<const uint64_t> keys) {
  // A sum of independent terms (no dependency from one key to the next), so it runs at memory
  // speed; each term mixes the key with its position.
  uint64_t h = Mix(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) h += Mix(keys[i] ^ (i * 0x9E3779B97F4A7C15ull));
  return h;
}

void InitializeRow(const TableInit& init, uint32_t table_id, uint64_t key, std::span<float> out) {
  // The row's counters: a random 64-bit start per key (SplitMix64 is a bijection, so two keys
  // never share a start), element i at start + i.
  InitializeWeights(init, table_id, Mix(key ^ 0x5DEECE66Dull), out);
}

void InitializeWeights(const TableInit& init, uint32_t table_id, uint64_t begin, std::span<float> out) {
  switch (init.kind) {
    case InitKind::kZeros:
    case InitKind::kFirstPush:
      std::fill(out.begin(), out.end(), 0.0f);  // not memset: out may be empty with a null data()
      return;
    case InitKind::kConstant:
      for (float& v : out) v = init.value;
      return;
    case InitKind::kUniform:
      for (size_t i = 0; i < out.size(); ++i) {
        const double u = Unit(Counter(init.seed, table_id, begin + i));
        out[i] = static_cast<float>(init.low + (init.high - init.low) * u);
      }
      return;
    case InitKind::kNormal:
      for (size_t i = 0; i < out.size(); ++i) {
        // Box-Muller on two counter draws of the same index.
        const uint64_t k = begin + i;
        const double u1 = Unit(Counter(init.seed, table_id, 2 * k));
        const double u2 = Unit(Counter(init.seed, table_id, 2 * k + 1));
        const double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
        out[i] = static_cast<float>(init.stddev * z);
      }
      return;
  }
}

}  // namespace shardps
