// TableLayout: chunking, balancing, ChunksIn, digest, validation; InitializeWeights.
#include "shardps/base/layout.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

namespace shardps {
namespace {

TableSpec Spec(std::string name, uint64_t size) {
  TableSpec s;
  s.name = std::move(name);
  s.size = size;
  return s;
}

TableLayout MustCreate(std::vector<TableSpec> specs, int servers, uint64_t chunk_floats) {
  LayoutOptions o;
  o.chunk_floats = chunk_floats;
  Result<TableLayout> r = TableLayout::Create(std::move(specs), servers, o);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return std::move(r).value();
}

// Chunks of every table tile [0, size) in order, without gaps or overlap; each chunk is at most
// chunk_floats long, only the last may be shorter; servers are valid indices.
void ExpectCoverage(const TableLayout& l) {
  for (uint32_t t = 0; t < l.num_tables(); ++t) {
    SCOPED_TRACE("table " + l.table(t).name);
    const auto cs = l.chunks(t);
    const uint64_t size = l.table(t).size;
    ASSERT_EQ(cs.size(), (size + l.chunk_floats() - 1) / l.chunk_floats());
    uint64_t expect_begin = 0;
    for (size_t i = 0; i < cs.size(); ++i) {
      const ChunkInfo& c = cs[i];
      EXPECT_EQ(c.table, t);
      EXPECT_EQ(c.index, i);
      EXPECT_EQ(c.begin, expect_begin) << "chunk " << i;
      EXPECT_LT(c.begin, c.end);
      EXPECT_LE(c.size(), l.chunk_floats());
      if (i + 1 < cs.size()) {
        EXPECT_EQ(c.size(), l.chunk_floats()) << "chunk " << i;
      }
      EXPECT_GE(c.server, 0);
      EXPECT_LT(c.server, l.num_servers());
      EXPECT_EQ(l.ChunkOf(t, c.begin), i);
      EXPECT_EQ(l.ChunkOf(t, c.end - 1), i);
      expect_begin = c.end;
    }
    EXPECT_EQ(expect_begin, size);
  }
}

// Bytes per server differ by at most one chunk's bytes, and sum to the total.
void ExpectBalance(const TableLayout& l) {
  const std::vector<uint64_t> b = l.BytesPerServer();
  ASSERT_EQ(b.size(), static_cast<size_t>(l.num_servers()));
  uint64_t total = 0;
  for (const TableSpec& s : l.tables()) total += s.size * sizeof(float);
  EXPECT_EQ(std::accumulate(b.begin(), b.end(), uint64_t{0}), total);
  const auto [mn, mx] = std::minmax_element(b.begin(), b.end());
  EXPECT_LE(*mx - *mn, l.chunk_floats() * sizeof(float));
  // Recomputed from the chunks themselves.
  std::vector<uint64_t> mine(l.num_servers(), 0);
  for (uint32_t t = 0; t < l.num_tables(); ++t)
    for (const ChunkInfo& c : l.chunks(t)) mine[c.server] += c.size() * sizeof(float);
  EXPECT_EQ(mine, b);
}

TEST(LayoutTest, CoverageAndBalanceForTableMixes) {
  const std::vector<std::vector<TableSpec>> mixes = {
      {Spec("w", 1000)},
      {Spec("w", 1024)},
      {Spec("a", 1), Spec("b", 2), Spec("c", 3)},
      {Spec("big", 10'000), Spec("tiny", 1), Spec("mid", 333)},
      {Spec("emb", 65'537), Spec("bias", 10), Spec("w1", 4096), Spec("w2", 4095)},
      {Spec("t0", 100), Spec("t1", 100), Spec("t2", 100), Spec("t3", 100), Spec("t4", 100), Spec("t5", 7)},
  };
  for (uint64_t chunk : {uint64_t{1}, uint64_t{7}, uint64_t{64}, uint64_t{1000}, uint64_t{256 * 1024}}) {
    for (size_t m = 0; m < mixes.size(); ++m) {
      for (int servers = 1; servers <= 5; ++servers) {
        SCOPED_TRACE("mix " + std::to_string(m) + " servers " + std::to_string(servers) + " chunk " +
                     std::to_string(chunk));
        const TableLayout l = MustCreate(mixes[m], servers, chunk);
        EXPECT_EQ(l.num_servers(), servers);
        EXPECT_EQ(l.chunk_floats(), chunk);
        ASSERT_EQ(l.num_tables(), mixes[m].size());
        for (uint32_t t = 0; t < l.num_tables(); ++t) {
          EXPECT_EQ(l.table(t).name, mixes[m][t].name);
          EXPECT_EQ(l.table(t).size, mixes[m][t].size);
        }
        ExpectCoverage(l);
        ExpectBalance(l);
      }
    }
  }
}

TEST(LayoutTest, AssignmentFollowsFewestBytesLowestIndex) {
  // chunk 10: "a" = 25 floats -> chunks of 10,10,5 bytes*4; "b" = 10 -> one chunk.
  const TableLayout l = MustCreate({Spec("a", 25), Spec("b", 10)}, 2, 10);
  ASSERT_EQ(l.chunks(0).size(), 3u);
  EXPECT_EQ(l.chunks(0)[0].server, 0);  // tie -> lowest index
  EXPECT_EQ(l.chunks(0)[1].server, 1);  // server 1 holds fewer
  EXPECT_EQ(l.chunks(0)[2].server, 0);  // tie again
  ASSERT_EQ(l.chunks(1).size(), 1u);
  EXPECT_EQ(l.chunks(1)[0].server, 1);  // server 1: 40 bytes < server 0: 60 bytes
  EXPECT_EQ(l.BytesPerServer(), (std::vector<uint64_t>{60, 80}));
}

TEST(LayoutTest, OneFloatTable) {
  for (int servers = 1; servers <= 5; ++servers) {
    const TableLayout l = MustCreate({Spec("scalar", 1)}, servers, 256 * 1024);
    ASSERT_EQ(l.chunks(0).size(), 1u);
    const ChunkInfo& c = l.chunks(0)[0];
    EXPECT_EQ(c.begin, 0u);
    EXPECT_EQ(c.end, 1u);
    EXPECT_EQ(c.size(), 1u);
    EXPECT_EQ(c.server, 0);
    std::vector<uint64_t> expected(servers, 0);
    expected[0] = 4;
    EXPECT_EQ(l.BytesPerServer(), expected);
  }
}

TEST(LayoutTest, MoreChunksThanServersSpreadsOverAll) {
  const TableLayout l = MustCreate({Spec("w", 100)}, 3, 10);
  ASSERT_EQ(l.chunks(0).size(), 10u);
  std::vector<int> per_server(3, 0);
  for (const ChunkInfo& c : l.chunks(0)) per_server[c.server]++;
  // Equal-size chunks go round-robin: 4,3,3.
  EXPECT_EQ(per_server, (std::vector<int>{4, 3, 3}));
  for (size_t i = 0; i < l.chunks(0).size(); ++i) EXPECT_EQ(l.chunks(0)[i].server, static_cast<int>(i % 3));
  EXPECT_EQ(l.BytesPerServer(), (std::vector<uint64_t>{160, 120, 120}));
  ExpectCoverage(l);
}

TEST(LayoutTest, TableLargerThan2GiBIsMetadataOnly) {
  const uint64_t size = 3'000'000'000ull;
  const uint64_t chunk = uint64_t{1} << 20;
  for (int servers : {1, 3, 4}) {
    const TableLayout l = MustCreate({Spec("huge", size)}, servers, chunk);
    const auto cs = l.chunks(0);
    ASSERT_EQ(cs.size(), 2862u);  // ceil(3e9 / 2^20)
    EXPECT_EQ(cs.back().end, size);
    EXPECT_EQ(cs.back().begin, 2861 * chunk);
    EXPECT_EQ(cs.back().size(), size - 2861 * chunk);
    EXPECT_EQ(cs.back().index, 2861u);
    EXPECT_EQ(l.ChunkOf(0, size - 1), 2861u);
    const std::vector<uint64_t> b = l.BytesPerServer();
    EXPECT_EQ(std::accumulate(b.begin(), b.end(), uint64_t{0}), size * 4);
    ExpectCoverage(l);
    ExpectBalance(l);
    // Offsets beyond 2^31 elements (8 GiB into the table) resolve to the right chunks.
    const uint64_t k = uint64_t{1} << 31;
    const auto in = l.ChunksIn(0, k, k + 1);
    ASSERT_EQ(in.size(), 1u);
    EXPECT_EQ(in[0].index, 2048u);
    EXPECT_EQ(in[0].begin, k);
    const auto across = l.ChunksIn(0, k - 1, k + 1);
    ASSERT_EQ(across.size(), 2u);
    EXPECT_EQ(across[0].index, 2047u);
    const auto tail = l.ChunksIn(0, size - 1, ~uint64_t{0});
    ASSERT_EQ(tail.size(), 1u);
    EXPECT_EQ(tail[0].end, size);
  }
}

TEST(LayoutTest, TableSizeNearUint64MaxIsRejected) {
  // Regression: the chunk count once wrapped around for sizes within chunk_floats of 2^64,
  // giving a table with no chunks instead of INVALID_ARGUMENT.
  LayoutOptions o;
  o.chunk_floats = uint64_t{1} << 20;
  Result<TableLayout> r = TableLayout::Create({Spec("w", std::numeric_limits<uint64_t>::max())}, 2, o);
  ASSERT_FALSE(r.ok()) << "created a table with " << r->chunks(0).size() << " chunks";
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
}

TEST(LayoutTest, TooManyChunksIsRejected) {
  LayoutOptions o;
  o.chunk_floats = 1;
  Result<TableLayout> r = TableLayout::Create({Spec("w", (uint64_t{1} << 32) + 1)}, 1, o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("'w'"), std::string::npos) << r.status().message();
}

TEST(LayoutTest, ChunksIn) {
  // 1000 floats, chunks of 100: [0,100) ... [900,1000).
  const TableLayout l = MustCreate({Spec("w", 1000), Spec("v", 250)}, 3, 100);
  auto check = [&](uint32_t t, uint64_t b, uint64_t e, uint32_t first, size_t count) {
    SCOPED_TRACE("[" + std::to_string(b) + "," + std::to_string(e) + ")");
    const auto in = l.ChunksIn(t, b, e);
    ASSERT_EQ(in.size(), count);
    for (size_t i = 0; i < in.size(); ++i) {
      EXPECT_EQ(in[i].table, t);
      EXPECT_EQ(in[i].index, first + i);
      // Each returned chunk overlaps the range.
      EXPECT_LT(in[i].begin, e);
      EXPECT_GT(in[i].end, b);
    }
  };
  // Inside one chunk.
  check(0, 0, 1, 0, 1);
  check(0, 150, 160, 1, 1);
  check(0, 100, 200, 1, 1);  // exactly one chunk
  check(0, 199, 200, 1, 1);
  // Across chunks.
  check(0, 99, 101, 0, 2);
  check(0, 150, 450, 1, 4);
  check(0, 100, 201, 1, 2);
  check(0, 0, 1000, 0, 10);
  // At the ends.
  check(0, 999, 1000, 9, 1);
  check(0, 900, 1000, 9, 1);
  check(0, 950, 5000, 9, 1);  // end clamped to the table size
  check(0, 0, std::numeric_limits<uint64_t>::max(), 0, 10);
  // Second table, short last chunk [200,250).
  check(1, 0, 250, 0, 3);
  check(1, 249, 250, 2, 1);
  check(1, 210, 220, 2, 1);
  // Empty or outside ranges.
  EXPECT_TRUE(l.ChunksIn(0, 5, 5).empty());
  EXPECT_TRUE(l.ChunksIn(0, 10, 5).empty());
  EXPECT_TRUE(l.ChunksIn(0, 1000, 1001).empty());
  EXPECT_TRUE(l.ChunksIn(0, 5000, 6000).empty());
  EXPECT_TRUE(l.ChunksIn(1, 250, 300).empty());
  // The returned spans are views of chunks().
  EXPECT_EQ(l.ChunksIn(0, 0, 1000).data(), l.chunks(0).data());
}

TEST(LayoutTest, FindTable) {
  const TableLayout l = MustCreate({Spec("w", 10), Spec("b", 3)}, 1, 4);
  Result<uint32_t> w = l.FindTable("w");
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(*w, 0u);
  Result<uint32_t> b = l.FindTable("b");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*b, 1u);
  Result<uint32_t> x = l.FindTable("x");
  ASSERT_FALSE(x.ok());
  EXPECT_EQ(x.status().code(), StatusCode::kNotFound);
  EXPECT_NE(x.status().message().find("x"), std::string::npos);
}

TEST(LayoutTest, DigestEqualForEqualInputs) {
  const std::vector<TableSpec> specs = {Spec("w", 1000), Spec("b", 10)};
  const TableLayout a = MustCreate(specs, 3, 64);
  const TableLayout b = MustCreate(specs, 3, 64);
  EXPECT_EQ(a.digest(), b.digest());
  for (int servers = 1; servers <= 5; ++servers)
    EXPECT_EQ(MustCreate(specs, servers, 7).digest(), MustCreate(specs, servers, 7).digest());
}

TEST(LayoutTest, DigestDiffersWhenAnythingDiffers) {
  const std::vector<TableSpec> base = {Spec("w", 1000), Spec("b", 10)};
  const uint64_t d = MustCreate(base, 3, 64).digest();

  std::vector<TableSpec> size = base;
  size[1].size = 11;  // same chunk count, different size
  EXPECT_NE(MustCreate(size, 3, 64).digest(), d);

  std::vector<TableSpec> size0 = base;
  size0[0].size = 1001;
  EXPECT_NE(MustCreate(size0, 3, 64).digest(), d);

  std::vector<TableSpec> name = base;
  name[0].name = "W";
  EXPECT_NE(MustCreate(name, 3, 64).digest(), d);

  std::vector<TableSpec> swapped = {base[1], base[0]};
  EXPECT_NE(MustCreate(swapped, 3, 64).digest(), d);

  std::vector<TableSpec> extra = base;
  extra.push_back(Spec("c", 1));
  EXPECT_NE(MustCreate(extra, 3, 64).digest(), d);

  std::vector<TableSpec> opt = base;
  opt[0].optimizer.kind = OptimizerKind::kAdam;
  EXPECT_NE(MustCreate(opt, 3, 64).digest(), d);

  // Whether a table is checkpointed, and its shape: every rank must see the same.
  std::vector<TableSpec> unsaved = base;
  unsaved[1].checkpointed = false;
  EXPECT_NE(MustCreate(unsaved, 3, 64).digest(), d);
  std::vector<TableSpec> shaped = base;
  shaped[0].shape = {100, 10};
  const uint64_t d_shaped = MustCreate(shaped, 3, 64).digest();
  EXPECT_NE(d_shaped, d);
  shaped[0].shape = {10, 100};
  EXPECT_NE(MustCreate(shaped, 3, 64).digest(), d_shaped);
  shaped[0].shape = {1000};  // the same elements, one dimension given explicitly
  EXPECT_NE(MustCreate(shaped, 3, 64).digest(), d);

  for (int servers : {1, 2, 4, 5}) EXPECT_NE(MustCreate(base, servers, 64).digest(), d) << servers;
  for (uint64_t chunk : {uint64_t{63}, uint64_t{65}, uint64_t{128}, uint64_t{1} << 20})
    EXPECT_NE(MustCreate(base, 3, chunk).digest(), d) << chunk;
  // Even when the chunking yields identical chunks (both tables fit in one chunk either way).
  EXPECT_NE(MustCreate(base, 3, 2000).digest(), MustCreate(base, 3, 3000).digest());
}

TEST(LayoutTest, ErrorCases) {
  auto expect_invalid = [](Result<TableLayout> r, const std::string& what) {
    ASSERT_FALSE(r.ok()) << what;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << what;
    EXPECT_FALSE(r.status().message().empty()) << what;
  };
  expect_invalid(TableLayout::Create({Spec("w", 10)}, 0), "0 servers");
  expect_invalid(TableLayout::Create({Spec("w", 10)}, -1), "-1 servers");
  expect_invalid(TableLayout::Create({Spec("w", 10), Spec("w", 20)}, 1), "duplicate name");
  expect_invalid(TableLayout::Create({Spec("", 10)}, 1), "empty name");
  expect_invalid(TableLayout::Create({Spec("w", 0)}, 1), "size 0");
  expect_invalid(TableLayout::Create({Spec("a", 1), Spec("w", 0)}, 2), "second table size 0");
  LayoutOptions zero;
  zero.chunk_floats = 0;
  expect_invalid(TableLayout::Create({Spec("w", 10)}, 1, zero), "chunk_floats 0");

  Result<TableLayout> dup = TableLayout::Create({Spec("emb", 10), Spec("emb", 20)}, 1);
  ASSERT_FALSE(dup.ok());
  EXPECT_NE(dup.status().message().find("emb"), std::string::npos) << dup.status().message();
  Result<TableLayout> zero_size = TableLayout::Create({Spec("bias", 0)}, 1);
  ASSERT_FALSE(zero_size.ok());
  EXPECT_NE(zero_size.status().message().find("bias"), std::string::npos) << zero_size.status().message();
}

TEST(LayoutTest, AShapeMustHoldTheTableSize) {
  TableSpec w = Spec("l0.w", 12);
  for (std::vector<uint64_t> ok : {std::vector<uint64_t>{}, {12}, {3, 4}, {4, 3}, {2, 3, 2}, {1, 12, 1}}) {
    w.shape = ok;
    EXPECT_TRUE(TableLayout::Create({w}, 2).ok()) << ShapeText(ok);
  }
  for (std::vector<uint64_t> bad : {std::vector<uint64_t>{11}, {3, 5}, {12, 0}, {0}, {uint64_t{1} << 62, 16, 3}}) {
    w.shape = bad;
    Result<TableLayout> r = TableLayout::Create({w}, 2);
    ASSERT_FALSE(r.ok()) << ShapeText(bad);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("'l0.w'"), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find(ShapeText(bad)), std::string::npos) << r.status().message();
  }
  EXPECT_EQ(ShapeElements(std::vector<uint64_t>{}), 1u);
  EXPECT_EQ(ShapeElements(std::vector<uint64_t>{784, 128}), 784u * 128u);
  EXPECT_EQ(ShapeElements(std::vector<uint64_t>{uint64_t{1} << 32, uint64_t{1} << 32}), 0u);  // overflow
  EXPECT_EQ(ShapeText(std::vector<uint64_t>{784, 128}), "784 x 128");
}

TEST(LayoutTest, TablesAreCheckpointedUnlessDeclaredOtherwise) {
  EXPECT_TRUE(TableSpec{}.checkpointed);
  TableSpec metrics{.name = "_metrics", .size = 4, .checkpointed = false};
  const TableLayout l = MustCreate({Spec("_w", 8), metrics}, 1, 16);
  EXPECT_TRUE(l.table(0).checkpointed);  // a name says nothing about it
  EXPECT_FALSE(l.table(1).checkpointed);
}

TEST(LayoutTest, NoTablesIsAValidLayout) {
  const TableLayout l = MustCreate({}, 2, 16);
  EXPECT_EQ(l.num_tables(), 0u);
  EXPECT_EQ(l.BytesPerServer(), (std::vector<uint64_t>{0, 0}));
}

// ---------------------------------------------------------------- InitializeWeights

std::vector<float> Init(const TableInit& init, uint32_t table, uint64_t begin, size_t n) {
  std::vector<float> v(n, -12345.0f);
  InitializeWeights(init, table, begin, v);
  return v;
}

bool BitEqual(const std::vector<float>& a, const std::vector<float>& b) {
  // memcmp of two empty vectors would pass null pointers (undefined behaviour).
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

TEST(InitTest, Zeros) {
  TableInit init;
  init.kind = InitKind::kZeros;
  for (float x : Init(init, 0, 0, 100)) EXPECT_EQ(x, 0.0f);
  for (float x : Init(init, 3, 1'000'000, 17)) EXPECT_EQ(x, 0.0f);
}

TEST(InitTest, Constant) {
  TableInit init;
  init.kind = InitKind::kConstant;
  init.value = 0.125f;
  for (float x : Init(init, 0, 0, 100)) EXPECT_EQ(x, 0.125f);
  init.value = -3.5f;
  for (float x : Init(init, 1, 12345, 33)) EXPECT_EQ(x, -3.5f);
}

TEST(InitTest, EmptyOutputIsFine) {
  for (InitKind k : {InitKind::kZeros, InitKind::kConstant, InitKind::kUniform, InitKind::kNormal}) {
    TableInit init;
    init.kind = k;
    std::vector<float> none;
    InitializeWeights(init, 0, 0, none);
    EXPECT_TRUE(none.empty());
  }
}

TEST(InitTest, UniformWithinBoundsAndSpread) {
  TableInit init;
  init.kind = InitKind::kUniform;
  init.low = -0.5f;
  init.high = 0.25f;
  init.seed = 17;
  const std::vector<float> v = Init(init, 0, 0, 100'000);
  double sum = 0;
  float mn = v[0], mx = v[0];
  for (float x : v) {
    ASSERT_GE(x, init.low);
    ASSERT_LE(x, init.high);
    sum += x;
    mn = std::min(mn, x);
    mx = std::max(mx, x);
  }
  // Not constant, and roughly centred: mean of U(-0.5, 0.25) is -0.125.
  EXPECT_NEAR(sum / v.size(), -0.125, 0.01);
  EXPECT_LT(mn, -0.49f);
  EXPECT_GT(mx, 0.24f);
  // Narrow interval too.
  init.low = 1.0f;
  init.high = 1.0f + 1e-6f;
  for (float x : Init(init, 2, 0, 1000)) {
    EXPECT_GE(x, init.low);
    EXPECT_LE(x, init.high);
  }
}

TEST(InitTest, NormalHasRoughlyTheRequestedStddev) {
  TableInit init;
  init.kind = InitKind::kNormal;
  init.stddev = 0.5f;
  init.seed = 3;
  const std::vector<float> v = Init(init, 1, 0, 100'000);
  double sum = 0, sq = 0;
  for (float x : v) {
    ASSERT_TRUE(std::isfinite(x));
    sum += x;
    sq += double{x} * x;
  }
  const double mean = sum / v.size();
  const double sd = std::sqrt(sq / v.size() - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.01);
  EXPECT_NEAR(sd, 0.5, 0.01);
}

TEST(InitTest, DeterministicAndIndependentOfSplit) {
  for (InitKind k : {InitKind::kUniform, InitKind::kNormal, InitKind::kConstant, InitKind::kZeros}) {
    TableInit init;
    init.kind = k;
    init.value = 2.0f;
    init.seed = 42;
    const std::vector<float> whole = Init(init, 5, 0, 1000);
    EXPECT_TRUE(BitEqual(whole, Init(init, 5, 0, 1000)));  // same call, same values

    std::vector<float> pieces(1000, -1.0f);
    InitializeWeights(init, 5, 0, std::span<float>(pieces).subspan(0, 300));
    InitializeWeights(init, 5, 300, std::span<float>(pieces).subspan(300, 700));
    EXPECT_TRUE(BitEqual(whole, pieces)) << "kind " << static_cast<int>(k);

    // Many small uneven pieces, out of order.
    std::vector<float> shuffled(1000, -1.0f);
    const std::vector<std::pair<uint64_t, uint64_t>> ranges = {
        {997, 1000}, {0, 1}, {500, 997}, {1, 2}, {2, 129}, {129, 500}};
    for (auto [b, e] : ranges)
      InitializeWeights(init, 5, b, std::span<float>(shuffled).subspan(b, e - b));
    EXPECT_TRUE(BitEqual(whole, shuffled)) << "kind " << static_cast<int>(k);

    // A sub-range equals the matching slice of the whole.
    const std::vector<float> mid = Init(init, 5, 123, 456);
    EXPECT_TRUE(BitEqual(mid, std::vector<float>(whole.begin() + 123, whole.begin() + 123 + 456)));
  }
}

TEST(InitTest, RandomInitsDependOnSeedAndTable) {
  for (InitKind k : {InitKind::kUniform, InitKind::kNormal}) {
    TableInit init;
    init.kind = k;
    init.seed = 1;
    const std::vector<float> base = Init(init, 0, 0, 256);
    EXPECT_FALSE(BitEqual(base, Init(init, 1, 0, 256))) << "table id ignored";
    TableInit other = init;
    other.seed = 2;
    EXPECT_FALSE(BitEqual(base, Init(other, 0, 0, 256))) << "seed ignored";
    // Values vary along the table.
    EXPECT_NE(base[0], base[1]);
    // Shifted start gives shifted values.
    const std::vector<float> shifted = Init(init, 0, 1, 255);
    EXPECT_TRUE(BitEqual(shifted, std::vector<float>(base.begin() + 1, base.end())));
  }
}

TEST(InitTest, LargeOffsetsWork) {
  // Offsets beyond 2^32 (tables larger than 16 GiB) are just counters.
  TableInit init;
  init.kind = InitKind::kUniform;
  init.seed = 9;
  const uint64_t far = (uint64_t{1} << 33) + 5;
  const std::vector<float> a = Init(init, 0, far, 64);
  std::vector<float> b(64);
  InitializeWeights(init, 0, far, std::span<float>(b).subspan(0, 10));
  InitializeWeights(init, 0, far + 10, std::span<float>(b).subspan(10));
  EXPECT_TRUE(BitEqual(a, b));
  for (float x : a) {
    EXPECT_GE(x, init.low);
    EXPECT_LE(x, init.high);
  }
  EXPECT_FALSE(BitEqual(a, Init(init, 0, 5, 64)));  // high bits of the index matter
}

}  // namespace
}  // namespace shardps
