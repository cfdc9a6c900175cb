// SparseRows: the rows of one sparse table that one server holds. A row is created on first touch
// with its initial values (InitializeRow: a pure function of the table's init, its id and the
// key, so a row starts the same on any server) and zeroed optimizer state.
//
//   SparseRows rows(spec, table_id);
//   float* r = rows.FindOrCreate(key);      // r[0, dim): weights; then OptimizerSlots arrays of dim
//   rows.ForEach([](uint64_t key, const float* row) { ... });   // in creation order
//
// Memory: rows live in blocks of kBlockRows (allocated whole, never moved: a row's address is
// stable), each row prefixed by its key (8 bytes); an open-addressing index of 4-byte row numbers
// with linear probing, kept at most 70% full, finds a key's row. Overhead per row beyond its
// floats: the 8-byte key plus 4 / load bytes of index (about 6-12), i.e. about 14-20 bytes.
// Hashing: the index uses the low bits of SplitMix64(key); server placement (SparseServerOf) uses
// the high bits, so the keys of one server still spread over its whole index.
// Thread safety: none; the server's communication thread owns it.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "shardps/base/layout.h"

namespace shardps::ps {

class SparseRows {
 public:
  static constexpr uint32_t kBlockRows = 1u << 14;
  // Rows are numbered in 32 bits (the index holds row + 1).
  static constexpr uint64_t kMaxRows = UINT32_MAX - 1;

  SparseRows(const TableSpec& spec, uint32_t table_id);

  uint32_t dim() const { return dim_; }
  // Floats of one row: dim weights, then `slots` arrays of dim (the optimizer's state).
  uint32_t row_floats() const { return row_floats_; }
  uint64_t size() const { return rows_; }
  // Bytes held: row blocks (keys, weights, state) and the index.
  uint64_t bytes() const;

  // The row of `key`, created when absent.
  float* FindOrCreate(uint64_t key);
  // The row of `key`, or null.
  const float* Find(uint64_t key) const;

  // Calls f(key, row) for every row, in creation order.
  template <typename F>
  void ForEach(F&& f) const {
    for (uint64_t i = 0; i < rows_; ++i) f(KeyAt(i), RowAt(i));
  }

 private:
  float* RowAt(uint64_t i) const { return blocks_[i / kBlockRows].get() + (i % kBlockRows) * stride_ + 2; }
  uint64_t KeyAt(uint64_t i) const;
  void Grow();

  const TableSpec spec_;
  const uint32_t table_id_;
  const uint32_t dim_;
  const uint32_t row_floats_;
  const uint32_t stride_;  // row_floats_ + 2 (the key)
  uint64_t rows_ = 0;
  std::vector<std::unique_ptr<float[]>> blocks_;
  std::vector<uint32_t> index_;  // row number + 1; 0 = empty
  uint64_t mask_ = 0;
};

}  // namespace shardps::ps
