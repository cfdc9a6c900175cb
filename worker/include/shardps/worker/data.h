// Datasets and how workers share them.
//
//   SHARDPS_ASSIGN_OR_RETURN(Dataset train, ReadIdx("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz",
//                                                   "/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz", 10));
//   EpochOrder order(train.num_samples, /*seed=*/1);
//   std::vector<int64_t> perm = order.Permutation(/*epoch=*/0);
//   BatchSlice s = SliceOfBatch(/*global_batch=*/64, /*workers=*/2, /*worker=*/1);   // rows [32, 64) of each batch
//
// Every reader checks what it reads: a malformed file gives an INVALID_ARGUMENT / DATA_LOSS
// status naming the file and the line (text formats) or byte offset (IDX), never a crash, and
// sizes announced by a file are checked against the bytes actually present before allocating.
// Thread safety: Dataset is a value; the functions are pure.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "shardps/base/status.h"

namespace shardps::worker {

struct Dataset {
  std::string source;        // file name(s), for messages
  int64_t num_samples = 0;
  int64_t num_features = 0;
  int num_classes = 0;
  std::vector<float> features;   // row-major, num_samples x num_features
  std::vector<int32_t> labels;   // each in [0, num_classes)

  const float* row(int64_t i) const { return features.data() + i * num_features; }
};

// IDX files as LeCun's MNIST and Fashion-MNIST ship them, gzip-compressed or not (detected by
// the gzip magic). Images must be unsigned-byte IDX with 3 dimensions (n, rows, cols); pixels are
// scaled to [0, 1]. Labels must be unsigned-byte IDX with 1 dimension and values < num_classes.
Result<Dataset> ReadIdx(const std::string& images_path, const std::string& labels_path, int num_classes);

// libsvm text format: "<label> <index>:<value> ..." with 1-based, strictly increasing indices.
// Labels are integers in [0, num_classes). num_features = 0 takes the largest index seen.
Result<Dataset> ReadLibsvm(const std::string& path, int64_t num_features, int num_classes);

// CSV: one sample per line, the label (integer in [0, num_classes)) in column `label_column`,
// every other column a feature. `has_header` skips the first line.
Result<Dataset> ReadCsv(const std::string& path, int num_classes, bool has_header, int label_column = 0);

// The seeded, shuffled sample order of each epoch: the same on every worker, a pure function of
// (n, seed, epoch). Fisher-Yates over a SplitMix64 stream, fully specified (no std::shuffle, whose
// algorithm is up to the standard library).
class EpochOrder {
 public:
  EpochOrder(int64_t n, uint64_t seed) : n_(n), seed_(seed) {}
  std::vector<int64_t> Permutation(uint64_t epoch) const;

 private:
  int64_t n_;
  uint64_t seed_;
};

// Worker `worker` of `workers` takes rows [begin, end) of every global batch of `global_batch`
// samples. Requires global_batch % workers == 0, so every worker gets the same share and the sum
// of the workers' gradients (each scaled by 1 / global_batch) is the full-batch gradient.
struct BatchSlice {
  int64_t begin = 0;
  int64_t end = 0;
};
Result<BatchSlice> SliceOfBatch(int64_t global_batch, int workers, int worker);

// Rows [begin, end) of the test set that worker `worker` of `workers` evaluates: contiguous,
// sizes differing by at most one.
BatchSlice ShardOfRows(int64_t rows, int workers, int worker);

// Gathers rows `order[begin..end)` of `data` into contiguous buffers (features row-major).
void GatherRows(const Dataset& data, std::span<const int64_t> order, std::vector<float>* features,
                std::vector<int32_t>* labels);

}  // namespace shardps::worker
