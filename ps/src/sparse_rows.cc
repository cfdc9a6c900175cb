#include "sparse_rows.h"

#include <cassert>
#include <cstring>

#include "shardps/base/random.h"

namespace shardps::ps {

namespace {
uint64_t Slot(uint64_t key, uint64_t mask) { return SplitMix64(key) & mask; }
}  // namespace

SparseRows::SparseRows(const TableSpec& spec, uint32_t table_id)
    : spec_(spec),
      table_id_(table_id),
      dim_(spec.row_dim),
      row_floats_(spec.row_dim * static_cast<uint32_t>(1 + OptimizerSlots(spec.optimizer.kind))),
      stride_(row_floats_ + 2),
      index_(1024, 0),
      mask_(1023) {
  assert(dim_ > 0);
}

uint64_t SparseRows::bytes() const {
  return blocks_.size() * uint64_t{kBlockRows} * stride_ * sizeof(float) + index_.size() * sizeof(uint32_t);
}

uint64_t SparseRows::KeyAt(uint64_t i) const {
  uint64_t key;
  std::memcpy(&key, RowAt(i) - 2, sizeof(key));
  return key;
}

const float* SparseRows::Find(uint64_t key) const {
  for (uint64_t s = Slot(key, mask_);; s = (s + 1) & mask_) {
    const uint32_t r = index_[s];
    if (r == 0) return nullptr;
    if (KeyAt(r - 1) == key) return RowAt(r - 1);
  }
}

float* SparseRows::FindOrCreate(uint64_t key) {
  uint64_t s = Slot(key, mask_);
  for (;; s = (s + 1) & mask_) {
    const uint32_t r = index_[s];
    if (r == 0) break;
    if (KeyAt(r - 1) == key) return RowAt(r - 1);
  }
  // A new row: at the end of the last block (a new block when it is full).
  assert(rows_ < kMaxRows);  // SparseTable::ResolveKeys refuses lists that could pass it
  if (rows_ == blocks_.size() * uint64_t{kBlockRows}) {
    blocks_.push_back(std::make_unique<float[]>(uint64_t{kBlockRows} * stride_));
  }
  const uint64_t i = rows_++;
  float* row = RowAt(i);
  std::memcpy(row - 2, &key, sizeof(key));
  InitializeRow(spec_.init, table_id_, key, std::span<float>(row, dim_));
  std::fill(row + dim_, row + row_floats_, 0.0f);
  index_[s] = static_cast<uint32_t>(i + 1);
  if (rows_ * 10 > index_.size() * 7) Grow();
  return row;
}

void SparseRows::Grow() {
  std::vector<uint32_t> bigger(index_.size() * 2, 0);
  const uint64_t mask = bigger.size() - 1;
  for (uint64_t i = 0; i < rows_; ++i) {
    uint64_t s = Slot(KeyAt(i), mask);
    while (bigger[s] != 0) s = (s + 1) & mask;
    bigger[s] = static_cast<uint32_t>(i + 1);
  }
  index_ = std::move(bigger);
  mask_ = mask;
}

}  // namespace shardps::ps
