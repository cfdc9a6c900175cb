// Tests of the sparse side of shardps/worker/data.h: ReadLibsvmSparse (good files, label
// conventions, every kind of malformed line named by file:line and pair) and MakeSparseBatch (the
// sorted unique keys of a batch and every nonzero's slot).
#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdint>
#include <fstream>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "common/scratch_dir.h"
#include "shardps/worker/data.h"

namespace shardps::worker {
namespace {

class SparseDataTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& name, const std::string& text) {
    const std::string p = scratch_.string() + "/" + name;
    std::ofstream f(p, std::ios::binary);
    f << text;
    EXPECT_TRUE(f.good()) << p;
    return p;
  }
  testing::ScratchDir scratch_{"shardps_sparse_data_test"};
};

TEST_F(SparseDataTest, ReadsIdsBeyondAnyDenseWidthWithoutDensifying) {
  const std::string p = Write("a.svm",
                              "# a comment line\n"
                              "1 3:1 16777216:0.5 1099511627776:2\r\n"
                              "\n"
                              "0 18446744073709551615:-1.25   # trailing comment\n"
                              "1\n"
                              "0\t7:1e-3\t9:+4");  // no final newline, tabs
  auto r = ReadLibsvmSparse(p);
  ASSERT_TRUE(r.ok()) << r.status().message();
  const SparseDataset& d = *r;
  EXPECT_EQ(d.source, p);
  ASSERT_EQ(d.num_rows(), 4);
  EXPECT_EQ(d.labels, (std::vector<float>{1, 0, 1, 0}));
  EXPECT_EQ(d.row_offsets, (std::vector<uint64_t>{0, 3, 4, 4, 6}));
  EXPECT_EQ(d.ids, (std::vector<uint64_t>{3, 16777216, uint64_t{1} << 40, std::numeric_limits<uint64_t>::max(), 7, 9}));
  EXPECT_EQ(d.values, (std::vector<float>{1, 0.5f, 2, -1.25f, 1e-3f, 4}));
  EXPECT_EQ(d.max_id, std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(d.nnz(), 6u);
}

TEST_F(SparseDataTest, ReadsGzip) {
  const std::string p = scratch_.string() + "/a.svm.gz";
  gzFile f = gzopen(p.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  const std::string text = "1 2:1 5:1\n0 4:3\n";
  ASSERT_EQ(gzwrite(f, text.data(), static_cast<unsigned>(text.size())), static_cast<int>(text.size()));
  ASSERT_EQ(gzclose(f), Z_OK);
  auto r = ReadLibsvmSparse(p);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->ids, (std::vector<uint64_t>{2, 5, 4}));
  EXPECT_EQ(r->labels, (std::vector<float>{1, 0}));
}

TEST_F(SparseDataTest, LabelConventions) {
  const std::string zero_one = Write("01.svm", "1 1:1\n0 1:1\n1 2:1\n");
  const std::string pm1 = Write("pm1.svm", "+1 1:1\n-1 1:1\n1 2:1\n");
  for (const auto& p : {zero_one, pm1}) {
    auto r = ReadLibsvmSparse(p);
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_EQ(r->labels, (std::vector<float>{1, 0, 1})) << p;
  }
  // Explicit conventions accept their own files and refuse the other's.
  EXPECT_TRUE(ReadLibsvmSparse(zero_one, {.labels = LabelFormat::kZeroOne}).ok());
  EXPECT_TRUE(ReadLibsvmSparse(pm1, {.labels = LabelFormat::kPlusMinusOne}).ok());
  auto a = ReadLibsvmSparse(zero_one, {.labels = LabelFormat::kPlusMinusOne});
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find(zero_one + ":2: label '0'"), std::string::npos) << a.status().message();
  auto b = ReadLibsvmSparse(pm1, {.labels = LabelFormat::kZeroOne});
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find(pm1 + ":2: label '-1'"), std::string::npos) << b.status().message();
  // A file mixing the two: the error names both lines.
  const std::string mixed = Write("mixed.svm", "1 1:1\n\n-1 1:1\n0 2:1\n");
  auto m = ReadLibsvmSparse(mixed);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(m.status().message().find(mixed + ":4: label '0' but line 3 uses -1/+1"), std::string::npos)
      << m.status().message();
}

TEST_F(SparseDataTest, MalformedLinesAreNamedByFileLineAndPair) {
  struct Case {
    std::string line;
    std::string expect;  // after "<path>:2: "
  };
  const std::vector<Case> cases = {
      {"1 3:1 x:1", "pair 2 ('x:1'): feature id 'x' is not an integer"},
      {"1 3:1 -4:1", "pair 2 ('-4:1'): feature id '-4' is not an integer"},
      {"1 18446744073709551616:1", "pair 1 ('18446744073709551616:1'): feature id '18446744073709551616' is not an integer"},
      {"1 0:1", "pair 1 ('0:1'): feature id 0: ids are 1-based"},
      {"1 3:1 7:1 5:1", "pair 3 ('5:1'): feature id 5 is below the id of pair 2 (7)"},
      {"1 3:1 3:2", "pair 2 ('3:2'): feature id 3 repeats the id of pair 1 (3)"},
      {"1 3:abc", "pair 1 ('3:abc'): value 'abc' is not a finite number"},
      {"1 3:nan", "pair 1 ('3:nan'): value 'nan' is not a finite number"},
      {"1 3:1e999", "pair 1 ('3:1e999'): value '1e999' is not a finite number"},
      {"1 3:", "pair 1 ('3:'): value '' is not a finite number"},
      {"1 3:1 4", "pair 2 ('4'): not <id>:<value>"},
      {"2 3:1", "label '2' is not a binary label"},
      {"yes 3:1", "label 'yes' is not a binary label"},
  };
  for (const auto& c : cases) {
    const std::string p = Write("bad.svm", "1 1:1\n" + c.line + "\n1 2:1\n");
    auto r = ReadLibsvmSparse(p);
    ASSERT_FALSE(r.ok()) << c.line;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << c.line;
    EXPECT_NE(r.status().message().find(p + ":2: " + c.expect), std::string::npos)
        << "line '" << c.line << "' gave: " << r.status().message();
  }
  const std::string big = Write("big.svm", "1 5:1\n0 4:1 17:1\n");
  auto r = ReadLibsvmSparse(big, {.max_feature_id = 16});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find(big + ":2: pair 2 ('17:1'): feature id 17 exceeds the largest allowed id 16"),
            std::string::npos)
      << r.status().message();
  EXPECT_TRUE(ReadLibsvmSparse(big, {.max_feature_id = 17}).ok());
}

TEST_F(SparseDataTest, WholeFileErrors) {
  auto missing = ReadLibsvmSparse(scratch_.string() + "/none.svm");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  const std::string empty = Write("empty.svm", "# only a comment\n\n");
  auto e = ReadLibsvmSparse(empty);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("holds no samples"), std::string::npos) << e.status().message();
}

SparseDataset Small() {
  SparseDataset d;
  d.source = "small";
  // row 0: y=1 {9:1, 100:2}; row 1: y=0 {}; row 2: y=0 {4:0.5, 9:3}; row 3: y=1 {2^40: 1}
  d.ids = {9, 100, 4, 9, uint64_t{1} << 40};
  d.values = {1, 2, 0.5f, 3, 1};
  d.row_offsets = {0, 2, 2, 4, 5};
  d.labels = {1, 0, 0, 1};
  d.max_id = uint64_t{1} << 40;
  return d;
}

// Every nonzero of the batch, looked up through keys[slot], is the nonzero of the source row.
void ExpectBatchMatches(const SparseDataset& d, const std::vector<int64_t>& rows, bool bias, const SparseBatch& b) {
  ASSERT_EQ(b.num_rows(), static_cast<int64_t>(rows.size()));
  ASSERT_EQ(b.row_offsets.size(), rows.size() + 1);
  EXPECT_TRUE(std::is_sorted(b.keys.begin(), b.keys.end()));
  EXPECT_EQ(std::set<uint64_t>(b.keys.begin(), b.keys.end()).size(), b.keys.size()) << "keys not unique";
  std::set<uint64_t> touched;
  for (size_t i = 0; i < rows.size(); ++i) {
    const size_t r = static_cast<size_t>(rows[i]);
    EXPECT_EQ(b.labels[i], d.labels[r]);
    uint64_t j = b.row_offsets[i];
    if (bias) {
      ASSERT_LT(j, b.row_offsets[i + 1]);
      EXPECT_EQ(b.keys[b.slots[j]], kSparseBiasKey);
      EXPECT_EQ(b.values[j], 1.0f);
      touched.insert(kSparseBiasKey);
      ++j;
    }
    ASSERT_EQ(b.row_offsets[i + 1] - j, d.row_offsets[r + 1] - d.row_offsets[r]);
    for (uint64_t k = d.row_offsets[r]; k < d.row_offsets[r + 1]; ++k, ++j) {
      ASSERT_LT(b.slots[j], b.keys.size());
      EXPECT_EQ(b.keys[b.slots[j]], d.ids[k]);
      EXPECT_EQ(b.values[j], d.values[k]);
      touched.insert(d.ids[k]);
    }
  }
  EXPECT_EQ(std::vector<uint64_t>(touched.begin(), touched.end()), b.keys) << "keys are exactly the ids touched";
}

TEST(SparseBatchTest, KeysAreSortedUniqueAndSlotsPointAtEachNonzerosId) {
  const SparseDataset d = Small();
  SparseBatch b;
  const std::vector<int64_t> rows = {2, 0, 3, 0, 1};  // any order, a repeat, an empty row
  ASSERT_TRUE(MakeSparseBatch(d, rows, {.bias_key = false}, &b).ok());
  EXPECT_EQ(b.keys, (std::vector<uint64_t>{4, 9, 100, uint64_t{1} << 40}));
  EXPECT_EQ(b.slots, (std::vector<uint32_t>{0, 1, 1, 2, 3, 1, 2}));
  ExpectBatchMatches(d, rows, false, b);
  // With the bias key: key 0 first, one nonzero of value 1 leading every row (the empty one too).
  ASSERT_TRUE(MakeSparseBatch(d, rows, {}, &b).ok());
  EXPECT_EQ(b.keys, (std::vector<uint64_t>{0, 4, 9, 100, uint64_t{1} << 40}));
  EXPECT_EQ(b.row_offsets, (std::vector<uint64_t>{0, 3, 6, 8, 11, 12}));
  ExpectBatchMatches(d, rows, true, b);
  // The buffers are reused: a smaller batch after a larger one holds only its own rows.
  ASSERT_TRUE(MakeSparseBatch(d, std::vector<int64_t>{1}, {}, &b).ok());
  EXPECT_EQ(b.keys, (std::vector<uint64_t>{0}));
  EXPECT_EQ(b.slots, (std::vector<uint32_t>{0}));
  ASSERT_TRUE(MakeSparseBatch(d, std::vector<int64_t>{}, {}, &b).ok());
  EXPECT_TRUE(b.keys.empty());
  EXPECT_EQ(b.row_offsets, (std::vector<uint64_t>{0}));
}

TEST(SparseBatchTest, RefusesRowsOutsideTheDataset) {
  const SparseDataset d = Small();
  SparseBatch b;
  for (int64_t bad : {int64_t{-1}, int64_t{4}}) {
    const std::vector<int64_t> rows = {0, bad};
    Status s = MakeSparseBatch(d, rows, {}, &b);
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.message().find("batch entry 1 is row " + std::to_string(bad) + ", outside [0, 4) of 'small'"),
              std::string::npos)
        << s.message();
  }
}

TEST(SparseBatchTest, ManyRowsWithHeavyOverlap) {
  // 500 rows over 64 ids: keys must come out as the exact set, every slot right.
  SparseDataset d;
  d.source = "gen";
  uint64_t x = 12345;
  for (int r = 0; r < 500; ++r) {
    std::set<uint64_t> ids;
    for (int k = 0; k < 10; ++k) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      ids.insert(1 + ((x >> 33) % 64) * 1000003);
    }
    for (uint64_t id : ids) {
      d.ids.push_back(id);
      d.values.push_back(static_cast<float>(id % 7) + 0.5f);
    }
    d.row_offsets.push_back(d.ids.size());
    d.labels.push_back(static_cast<float>(r % 2));
  }
  std::vector<int64_t> rows;
  for (int64_t r = 499; r >= 0; r -= 3) rows.push_back(r);
  SparseBatch a, b;
  ASSERT_TRUE(MakeSparseBatch(d, rows, {}, &a).ok());
  ExpectBatchMatches(d, rows, true, a);
  ASSERT_TRUE(MakeSparseBatch(d, rows, {}, &b).ok());
  EXPECT_EQ(a.keys, b.keys);
  EXPECT_EQ(a.slots, b.slots);
}

}  // namespace
}  // namespace shardps::worker
