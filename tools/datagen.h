// shardps datagen: seeded synthetic click-style data for sparse logistic regression, written as
// libsvm, with the true model known, so a trained model's test log-loss can be set beside the
// Bayes-optimal one (docs/data.md).
//
// The data, a pure function of the options (same options, same bytes):
//   - feature ranks r in [1, 2^k] drawn Zipf(s): P(r) proportional to r^-s (rejection-inversion,
//     exact for any k), drawn until a row has `nnz` distinct features (a law too steep to give them
//     within 16 nnz + 64 draws leaves the row shorter);
//   - a feature's id is a seeded bijection of its rank onto [1, 2^k] ("hashed", the default: the
//     frequent features are spread over the id space) or the rank itself ("rank");
//   - the true weight of a feature: w = scale * r^-decay * g, g ~ N(0, 1) drawn from a hash of
//     (seed, id), so no table of 2^k weights exists anywhere; and a bias b;
//   - a value per nonzero: 1 ("binary"), or a multiple of 0.01 in [0.25, 1.75] ("real");
//   - a label y ~ Bernoulli(sigmoid(b + sum w * value)).
// Row i of each split comes from its own counter-based stream (seed, split, i).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "shardps/base/status.h"

namespace shardps::tools {

struct DatagenOptions {
  std::string out_dir;
  uint64_t seed = 1;
  int feature_bits = 24;        // features: ids in [1, 2^feature_bits]
  int nnz = 30;                 // distinct features a row
  int64_t train_rows = 1'000'000;
  int64_t test_rows = 100'000;
  double zipf_exponent = 1.1;   // s
  double weight_scale = 0.5;
  double weight_decay = 0.25;   // a feature of rank r has weight scale * r^-decay * N(0, 1)
  double bias = -1.5;
  bool real_values = false;     // --values real
  bool hashed_ids = true;       // --ids hashed (default) | rank
  bool plus_minus_labels = false;  // --labels pm1: -1/+1 instead of 0/1
  bool force = false;           // replace existing files
};

// Every range checked; the message names the flag.
Status ValidateDatagenOptions(const DatagenOptions& o);

// argv[0] is the command name. --help gives OutOfRange with the usage as its message.
Result<DatagenOptions> ParseDatagenFlags(int argc, char** argv);

// The true model and the row generator. Construct from validated options.
class SyntheticClicks {
 public:
  enum class Split { kTrain = 0, kTest = 1 };
  struct Row {
    std::vector<uint64_t> ids;  // sorted, unique, in [1, 2^k]
    std::vector<float> values;
    double logit = 0;           // the true logit b + sum w * value
    int label = 0;              // 0 or 1
    std::vector<std::pair<uint64_t, uint64_t>> draws;  // scratch, reused between rows
  };

  explicit SyntheticClicks(const DatagenOptions& o);

  uint64_t num_features() const { return n_; }
  uint64_t RankToId(uint64_t rank) const;  // rank in [1, 2^k] -> id in [1, 2^k], a bijection
  uint64_t IdToRank(uint64_t id) const;    // its inverse
  double TrueWeight(uint64_t id) const;    // w of feature `id` in [1, 2^k]
  double bias() const { return bias_; }
  // A Zipf-distributed rank from the stream `state`.
  uint64_t SampleRank(uint64_t* state) const;
  void MakeRow(Split split, uint64_t row, Row* out) const;

 private:
  double WeightOfRankAndId(uint64_t rank, uint64_t id) const;
  double H(double x) const;
  double HInverse(double y) const;

  DatagenOptions o_;
  uint64_t n_ = 0, mask_ = 0;
  int shift_ = 1;
  uint64_t id_key0_ = 0, id_key1_ = 0, weight_key_ = 0, split_key_[2] = {0, 0};
  double bias_ = 0;
  double h_x1_ = 0, h_n_ = 0;           // the sampler's range of H
  std::vector<double> weight_of_rank_;  // the weights of the most frequent ranks, precomputed
  std::vector<uint64_t> id_of_rank_;
};

struct DatagenSplitSummary {
  std::string file;
  int64_t rows = 0;
  uint64_t nonzeros = 0;
  uint64_t bytes = 0;
  int64_t positives = 0;
  double bayes_logloss = 0;       // mean entropy of the rows' labels under the true model
  double true_model_logloss = 0;  // mean log-loss of the true model on the drawn labels
};

struct DatagenSummary {
  DatagenSplitSummary train, test;
  double constant_logloss = 0;  // the test log-loss of predicting the train positive rate
  double seconds = 0;
};

// Writes DIR/train.svm, DIR/test.svm and DIR/meta.json, each atomically (temporary file, fsync,
// rename); meta.json last. Refuses (before writing anything) invalid options, existing files
// without `force`, and an estimate of the size beyond the free space.
Result<DatagenSummary> RunDatagen(const DatagenOptions& o);

// The libsvm text of one row ("1 5:1 17:1\n"), as RunDatagen writes it.
void AppendLibsvmRow(const SyntheticClicks::Row& row, bool plus_minus_labels, bool real_values, std::string* out);

}  // namespace shardps::tools
