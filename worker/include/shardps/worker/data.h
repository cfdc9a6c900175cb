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
#include <utility>
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
// every other column a feature. `has_header` skips the first line. label_column = kNoLabelColumn:
// every column is a feature and `labels` stays empty (data to predict on).
inline constexpr int kNoLabelColumn = -1;
Result<Dataset> ReadCsv(const std::string& path, int num_classes, bool has_header, int label_column = 0);

// ---------------------------------------------------------------------------------------------
// Sparse data: libsvm rows kept sparse (CSR), for models whose keys are feature ids (2^24 of them
// and far beyond; nothing is densified).
//
//   SHARDPS_ASSIGN_OR_RETURN(SparseDataset train, ReadLibsvmSparse("gen/train.svm"));
//   SparseBatch batch;
//   SHARDPS_RETURN_IF_ERROR(MakeSparseBatch(train, rows_of_this_step, {}, &batch));
//   // pull batch.keys (sorted, unique), compute with batch.slots, push gradients in keys' order
//
// A feature id is the index exactly as the file writes it (1-based, so 0 never occurs in a file;
// key 0 is free for the bias, kSparseBiasKey). Within a line the indices must be strictly
// increasing: an unsorted or repeated index is refused, naming the file, the line and the pair's
// position, never silently sorted or merged.

// How a file writes its binary labels. Labels are stored as 0.0f / 1.0f whatever the file used.
enum class LabelFormat {
  kAuto,          // 0/1 or -1/+1, as the file uses them; 0 and -1 in one file is refused
  kZeroOne,       // 0 or 1
  kPlusMinusOne,  // -1 or +1 (+1 may be written "1")
};

struct SparseDataset {
  std::string source;                    // file name, for messages
  std::vector<uint64_t> row_offsets{0};  // num_rows() + 1 entries: row i is [row_offsets[i], row_offsets[i + 1])
  std::vector<uint64_t> ids;             // per nonzero: the feature id (>= 1), strictly increasing within a row
  std::vector<float> values;             // per nonzero
  std::vector<float> labels;             // per row: 0 or 1
  uint64_t max_id = 0;                   // the largest id present (0 if there is none)

  int64_t num_rows() const { return static_cast<int64_t>(labels.size()); }
  uint64_t nnz() const { return ids.size(); }
};

struct SparseReadOptions {
  uint64_t max_feature_id = 0;  // 0: any id in [1, 2^64 - 1]; otherwise larger ids are refused
  LabelFormat labels = LabelFormat::kAuto;
};

// libsvm text (gzip or not, as ReadLibsvm): "<label> <id>:<value> ...", '#' starts a comment,
// blank lines are skipped. Errors name the file and line ("train.svm:12: pair 3 ('7:x'): ...").
Result<SparseDataset> ReadLibsvmSparse(const std::string& path, const SparseReadOptions& options = {});

// The bias's key: every file id is >= 1, so key 0 is never a feature.
inline constexpr uint64_t kSparseBiasKey = 0;

// The rows of one step in the form a sparse model pulls and pushes: `keys` is the sorted, unique
// list of the feature ids the rows touch, and every nonzero carries the index of its id in `keys`
// (its slot), so a model reads weights[slots[j]] and adds gradients into grad[slots[j]].
struct SparseBatch {
  std::vector<uint64_t> keys;         // sorted ascending, unique
  std::vector<uint64_t> row_offsets;  // num_rows() + 1 entries, into slots / values
  std::vector<uint32_t> slots;        // per nonzero: index into keys
  std::vector<float> values;          // per nonzero
  std::vector<float> labels;          // per row: 0 or 1

  int64_t num_rows() const { return static_cast<int64_t>(labels.size()); }
  // Reused between calls so a training loop does not allocate per step.
  std::vector<std::pair<uint64_t, uint64_t>> scratch;
};

struct SparseBatchOptions {
  // Adds key 0 (kSparseBiasKey) to the batch and one nonzero of value 1 at the start of every
  // row, so the bias is an ordinary key: keys[0] == 0 and its gradient is the bias's gradient.
  bool bias_key = true;
};

// Builds the batch of rows `rows` (indices into `data`, in the order given; repeats allowed).
// A row index outside [0, data.num_rows()) is refused. Deterministic: the same rows give the same
// batch. O(nnz log nnz).
Status MakeSparseBatch(const SparseDataset& data, std::span<const int64_t> rows, const SparseBatchOptions& options,
                       SparseBatch* out);

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
