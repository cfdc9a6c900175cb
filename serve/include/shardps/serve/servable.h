// A servable: one checkpoint version loaded into memory for inference -- the model its tables
// describe, its weights, and where it came from.
//
//   SHARDPS_ASSIGN_OR_RETURN(CheckpointVersion v, ResolveCheckpoint("runs/mlp@best", warn));
//   SHARDPS_ASSIGN_OR_RETURN(std::shared_ptr<const Servable> s, LoadServable(std::move(v), "primary"));
//   std::vector<float> logits(rows * s->num_classes());
//   s->Logits(x, rows, logits.data());
//
// The model is told from the saved tables alone (the serving side needs no training config): a
// chain of layers "l<k>.w" ([in, out], row-major) and "l<k>.b" ([out]) from k = 0, each layer's in
// the previous one's out; manifests written before shapes were recorded give out from the bias
// size. Every chunk read is checked against its CRC32C (CheckpointReader), so a servable holds
// exactly what training committed. Sparse tables and other layouts are refused with the table
// named.
// Thread safety: a Servable is immutable once loaded; Logits may run concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "shardps/base/status.h"
#include "shardps/storage/checkpoint_registry.h"
#include "shardps/worker/model.h"

namespace shardps::serve {

// A float array in its own anonymous mapping (mmap/munmap) rather than malloc's heap: when a
// swapped-out version is freed its pages go back to the system at once, whatever the allocator's
// thresholds (glibc raises its mmap threshold after freeing a large block, after which later
// versions would land in the heap and stay in the process's memory when freed).
class MappedFloats {
 public:
  static Result<MappedFloats> Allocate(size_t n);
  MappedFloats() = default;
  MappedFloats(MappedFloats&& o) noexcept : data_(o.data_), size_(o.size_) { o.data_ = nullptr, o.size_ = 0; }
  MappedFloats& operator=(MappedFloats&& o) noexcept;
  MappedFloats(const MappedFloats&) = delete;
  MappedFloats& operator=(const MappedFloats&) = delete;
  ~MappedFloats();
  float* data() const { return data_; }
  size_t size() const { return size_; }
  std::span<float> span() const { return {data_, size_}; }

 private:
  float* data_ = nullptr;
  size_t size_ = 0;
};

struct Servable {
  std::string registry;  // the checkpoint directory it was loaded from
  std::string source;    // "primary" or "fallback"
  uint64_t version = 0;
  uint64_t step = 0;
  uint64_t bytes = 0;    // weights held in memory
  std::unique_ptr<worker::Model> model;
  std::vector<MappedFloats> params;             // one per table, in Model::Tables order
  std::vector<std::span<const float>> views;    // spans over params

  int64_t input_dim() const { return model->spec().input_dim; }
  int num_classes() const { return model->spec().num_classes; }
  // logits: rows x num_classes, row-major.
  void Logits(const float* x, int64_t rows, float* logits) const { model->Logits(views, x, rows, logits); }
};

// The model a manifest's tables describe (see the top of this file).
Result<worker::ModelSpec> ModelSpecFromManifest(const CheckpointManifest& m, const std::string& where);

// Reads and verifies `v`'s weights (optimizer state is not read).
Result<std::shared_ptr<const Servable>> LoadServable(CheckpointVersion v, const std::string& source);

}  // namespace shardps::serve
