// shardps datagen: synthetic click-style libsvm data with a known true model (datagen.h).
#include "datagen.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <utility>

#include "commands.h"
#include "shardps/base/json.h"
#include "shardps/base/random.h"
#include "shardps/worker/sparse_lr.h"

namespace shardps::tools {
namespace {

namespace po = boost::program_options;

constexpr int kMaxFeatureBits = 52;        // ranks stay exact in a double
constexpr int kMaxNnz = 100'000;
constexpr int64_t kMaxRows = int64_t{1} << 40;
constexpr uint64_t kCachedRanks = uint64_t{1} << 16;  // weights of the most frequent ranks, precomputed
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

// A counter-based stream: the output is SplitMix64 of the state, the state advances by the
// golden gamma (as the epoch order in worker/src/data.cc).
uint64_t Next(uint64_t* state) {
  const uint64_t out = SplitMix64(*state);
  *state += kGolden;
  return out;
}
double Uniform01(uint64_t* state) { return static_cast<double>(Next(state) >> 11) * 0x1.0p-53; }  // [0, 1)

// Unbiased integer in [0, bound), bound >= 1 (multiply-shift with rejection).
uint64_t Bounded(uint64_t* state, uint64_t bound) {
  unsigned __int128 m = static_cast<unsigned __int128>(Next(state)) * bound;
  uint64_t low = static_cast<uint64_t>(m);
  if (low < bound) {
    const uint64_t threshold = (0 - bound) % bound;
    while (low < threshold) {
      m = static_cast<unsigned __int128>(Next(state)) * bound;
      low = static_cast<uint64_t>(m);
    }
  }
  return static_cast<uint64_t>(m >> 64);
}

// expm1(t) / t and log1p(t) / t, continuous at 0.
double Expm1Over(double t) { return std::fabs(t) > 1e-8 ? std::expm1(t) / t : 1.0 + t / 2.0; }
double Log1pOver(double t) { return std::fabs(t) > 1e-8 ? std::log1p(t) / t : 1.0 - t / 2.0; }

// The inverse of an odd number modulo 2^64 (Newton's iteration doubles the correct bits).
uint64_t OddInverse(uint64_t a) {
  uint64_t x = a;  // correct to 3 bits
  for (int i = 0; i < 5; ++i) x *= 2 - a * x;
  return x;
}

constexpr uint64_t kMul1 = 0xD6E8FEB86659FD93ull, kMul2 = 0xA0761D6478BD642Full;

std::string Flag(const char* name) { return std::string("--") + name; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Options.

Status ValidateDatagenOptions(const DatagenOptions& o) {
  if (o.out_dir.empty()) return InvalidArgument("--out DIR is required");
  if (o.feature_bits < 1 || o.feature_bits > kMaxFeatureBits) {
    return InvalidArgument(Flag("feature-bits") + " must be in [1, " + std::to_string(kMaxFeatureBits) + "], got " +
                           std::to_string(o.feature_bits));
  }
  if (o.nnz < 1 || o.nnz > kMaxNnz) {
    return InvalidArgument(Flag("nnz") + " must be in [1, " + std::to_string(kMaxNnz) + "], got " + std::to_string(o.nnz));
  }
  if (o.feature_bits < 20 && static_cast<uint64_t>(o.nnz) > (uint64_t{1} << o.feature_bits)) {
    return InvalidArgument(Flag("nnz") + " " + std::to_string(o.nnz) + " exceeds the " +
                           std::to_string(uint64_t{1} << o.feature_bits) + " features of --feature-bits " +
                           std::to_string(o.feature_bits));
  }
  if (o.train_rows < 1 || o.train_rows > kMaxRows) {
    return InvalidArgument(Flag("train-rows") + " must be in [1, 2^40], got " + std::to_string(o.train_rows));
  }
  if (o.test_rows < 1 || o.test_rows > kMaxRows) {
    return InvalidArgument(Flag("test-rows") + " must be in [1, 2^40], got " + std::to_string(o.test_rows));
  }
  auto in = [](double v, double lo, double hi) { return std::isfinite(v) && v >= lo && v <= hi; };
  if (!in(o.zipf_exponent, 0, 10) || o.zipf_exponent == 0) {
    return InvalidArgument(Flag("zipf-exponent") + " must be in (0, 10], got " + std::to_string(o.zipf_exponent));
  }
  if (!in(o.weight_scale, 0, 100)) {
    return InvalidArgument(Flag("weight-scale") + " must be in [0, 100], got " + std::to_string(o.weight_scale));
  }
  if (!in(o.weight_decay, 0, 10)) {
    return InvalidArgument(Flag("weight-decay") + " must be in [0, 10], got " + std::to_string(o.weight_decay));
  }
  if (!in(o.bias, -50, 50)) return InvalidArgument(Flag("bias") + " must be in [-50, 50], got " + std::to_string(o.bias));
  return Status::Ok();
}

Result<DatagenOptions> ParseDatagenFlags(int argc, char** argv) {
  DatagenOptions o;
  std::string values = "binary", ids = "hashed", labels = "01", seed = std::to_string(o.seed);
  po::options_description desc(
      "usage: shardps datagen --out DIR [flags]\n"
      "writes DIR/train.svm, DIR/test.svm (libsvm) and DIR/meta.json (the true model's log-losses)\nflags");
  desc.add_options()("help", "this text")                                                              //
      ("out", po::value(&o.out_dir), "output directory (created if missing)")                          //
      ("seed", po::value(&seed)->default_value(seed), "the seed (0..2^64-1): same seed and flags, same bytes")  //
      ("feature-bits", po::value(&o.feature_bits)->default_value(o.feature_bits),
       "k: feature ids in [1, 2^k], k in [1, 52]")                                                      //
      ("nnz", po::value(&o.nnz)->default_value(o.nnz), "distinct features a row (Zipf draws, repeats merged)")          //
      ("train-rows", po::value(&o.train_rows)->default_value(o.train_rows), "rows of train.svm")      //
      ("test-rows", po::value(&o.test_rows)->default_value(o.test_rows), "rows of test.svm")          //
      ("zipf-exponent", po::value(&o.zipf_exponent)->default_value(o.zipf_exponent, "1.1"),
       "s: P(rank r) proportional to r^-s")                                                             //
      ("weight-scale", po::value(&o.weight_scale)->default_value(o.weight_scale, "0.5"),
       "true weight of rank r: scale * r^-decay * N(0,1)")                                              //
      ("weight-decay", po::value(&o.weight_decay)->default_value(o.weight_decay, "0.25"), "decay, above")  //
      ("bias", po::value(&o.bias)->default_value(o.bias, "-1.5"), "the true model's bias")             //
      ("values", po::value(&values)->default_value(values), "binary (every value 1) | real (0.25..1.75)")  //
      ("ids", po::value(&ids)->default_value(ids), "hashed (rank -> id by a seeded bijection) | rank")     //
      ("labels", po::value(&labels)->default_value(labels), "01 | pm1 (-1/+1)")                           //
      ("force", po::bool_switch(&o.force), "replace existing train.svm, test.svm, meta.json");
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    return InvalidArgument(e.what());
  }
  if (vm.count("help")) {
    std::ostringstream s;
    s << desc;
    return OutOfRange(s.str());
  }
  {
    // Digits only: the option parser would wrap "-1" around to 2^64 - 1.
    const auto [p, ec] = std::from_chars(seed.data(), seed.data() + seed.size(), o.seed);
    if (seed.empty() || seed.front() == '-' || seed.front() == '+' || ec != std::errc() || p != seed.data() + seed.size()) {
      return InvalidArgument("--seed must be an integer in [0, 2^64 - 1], got '" + seed + "'");
    }
  }
  if (values == "binary") {
    o.real_values = false;
  } else if (values == "real") {
    o.real_values = true;
  } else {
    return InvalidArgument("--values must be binary or real, got '" + values + "'");
  }
  if (ids == "hashed") {
    o.hashed_ids = true;
  } else if (ids == "rank") {
    o.hashed_ids = false;
  } else {
    return InvalidArgument("--ids must be hashed or rank, got '" + ids + "'");
  }
  if (labels == "01") {
    o.plus_minus_labels = false;
  } else if (labels == "pm1") {
    o.plus_minus_labels = true;
  } else {
    return InvalidArgument("--labels must be 01 or pm1, got '" + labels + "'");
  }
  SHARDPS_RETURN_IF_ERROR(ValidateDatagenOptions(o));
  return o;
}

// ---------------------------------------------------------------------------------------------
// The model.
//
// Zipf by rejection-inversion: with h(x) = x^-s and H an antiderivative, draw u uniformly from
// (H(1.5) - h(1), H(n + 0.5)], take x = H^-1(u) and k = round(x) (clamped to [1, n]), and accept
// when u >= H(k + 0.5) - h(k). The accepted part of k's interval has width h(k) exactly, and fits
// in it because h is convex, so P(k) is proportional to k^-s for any n without a table.
// H(x) = (x^(1-s) - 1) / (1-s), written as ln x * expm1((1-s) ln x) / ((1-s) ln x) so s = 1 (ln x)
// needs no special case.

SyntheticClicks::SyntheticClicks(const DatagenOptions& o) : o_(o) {
  n_ = uint64_t{1} << o.feature_bits;
  mask_ = n_ - 1;
  shift_ = std::max(1, (o.feature_bits + 1) / 2);
  const uint64_t root = SplitMix64(o.seed ^ 0x5348415244505331ull);  // "SHARDPS1"
  id_key0_ = SplitMix64(root + 1);
  id_key1_ = SplitMix64(root + 2);
  weight_key_ = SplitMix64(root + 3);
  split_key_[0] = SplitMix64(root + 4);
  split_key_[1] = SplitMix64(root + 5);
  bias_ = o.bias;
  h_x1_ = H(1.5) - 1.0;
  h_n_ = H(static_cast<double>(n_) + 0.5);
  const uint64_t cached = std::min(n_, kCachedRanks);
  id_of_rank_.resize(cached);
  weight_of_rank_.resize(cached);
  for (uint64_t r = 1; r <= cached; ++r) {
    const uint64_t id = RankToId(r);
    id_of_rank_[r - 1] = id;
    weight_of_rank_[r - 1] = WeightOfRankAndId(r, id);
  }
}

double SyntheticClicks::H(double x) const {
  const double lx = std::log(x);
  return Expm1Over((1.0 - o_.zipf_exponent) * lx) * lx;
}

double SyntheticClicks::HInverse(double y) const { return std::exp(Log1pOver((1.0 - o_.zipf_exponent) * y) * y); }

uint64_t SyntheticClicks::SampleRank(uint64_t* state) const {
  for (;;) {
    const double u = h_n_ + Uniform01(state) * (h_x1_ - h_n_);
    const double x = HInverse(u);
    double kd = std::floor(x + 0.5);
    if (!(kd >= 1)) kd = 1;  // also catches NaN
    if (kd > static_cast<double>(n_)) kd = static_cast<double>(n_);
    if (u >= H(kd + 0.5) - std::pow(kd, -o_.zipf_exponent)) return static_cast<uint64_t>(kd);
  }
}

// A bijection of [0, 2^k): add a key, multiply by an odd number, xor-shift, multiply, xor-shift,
// add a key (every step invertible modulo 2^k).
uint64_t SyntheticClicks::RankToId(uint64_t rank) const {
  if (!o_.hashed_ids) return rank;
  uint64_t x = (rank - 1 + id_key0_) & mask_;
  x = (x * kMul1) & mask_;
  x ^= x >> shift_;
  x = (x * kMul2) & mask_;
  x ^= x >> shift_;
  x = (x + id_key1_) & mask_;
  return x + 1;
}

uint64_t SyntheticClicks::IdToRank(uint64_t id) const {
  if (!o_.hashed_ids) return id;
  auto unxorshift = [&](uint64_t y) {
    uint64_t x = y;
    for (int covered = shift_; covered < o_.feature_bits; covered += shift_) x = y ^ (x >> shift_);
    return x;
  };
  uint64_t x = (id - 1 - id_key1_) & mask_;
  x = unxorshift(x);
  x = (x * OddInverse(kMul2)) & mask_;
  x = unxorshift(x);
  x = (x * OddInverse(kMul1)) & mask_;
  return ((x - id_key0_) & mask_) + 1;
}

double SyntheticClicks::WeightOfRankAndId(uint64_t rank, uint64_t id) const {
  // g ~ N(0, 1) by Box-Muller from two hashes of (seed, id).
  const uint64_t h1 = SplitMix64(weight_key_ ^ id);
  const uint64_t h2 = SplitMix64(h1);
  const double u1 = static_cast<double>((h1 >> 11) + 1) * 0x1.0p-53;  // (0, 1]
  const double u2 = static_cast<double>(h2 >> 11) * 0x1.0p-53;
  const double g = std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  return o_.weight_scale * std::pow(static_cast<double>(rank), -o_.weight_decay) * g;
}

double SyntheticClicks::TrueWeight(uint64_t id) const {
  const uint64_t rank = IdToRank(id);
  if (rank <= weight_of_rank_.size()) return weight_of_rank_[rank - 1];
  return WeightOfRankAndId(rank, id);
}

void SyntheticClicks::MakeRow(Split split, uint64_t row, Row* out) const {
  uint64_t state = SplitMix64(split_key_[static_cast<int>(split)] ^ SplitMix64(row));
  // (id, rank) pairs, sorted by id. Draw until the row has nnz distinct features: draw the
  // missing number, sort, merge repeats, repeat.
  // A Zipf law too steep (or an id space too small) to give them within the draw budget leaves
  // the row shorter rather than looping for ever.
  std::vector<std::pair<uint64_t, uint64_t>>& draws = out->draws;
  const size_t want = static_cast<size_t>(o_.nnz);
  const uint64_t budget = 16 * static_cast<uint64_t>(o_.nnz) + 64;
  uint64_t drawn = 0;
  draws.clear();
  while (draws.size() < want && drawn < budget) {
    const size_t missing = std::min<uint64_t>(want - draws.size(), budget - drawn);
    for (size_t i = 0; i < missing; ++i) {
      const uint64_t r = SampleRank(&state);
      draws.emplace_back(r <= id_of_rank_.size() ? id_of_rank_[r - 1] : RankToId(r), r);
    }
    drawn += missing;
    std::sort(draws.begin(), draws.end());
    draws.erase(std::unique(draws.begin(), draws.end()), draws.end());
  }
  out->ids.resize(draws.size());
  out->values.resize(draws.size());
  double z = bias_;
  for (size_t i = 0; i < draws.size(); ++i) {
    const auto [id, r] = draws[i];
    const float v = o_.real_values ? static_cast<float>(25 + Bounded(&state, 151)) / 100.0f : 1.0f;
    const double w = r <= weight_of_rank_.size() ? weight_of_rank_[r - 1] : WeightOfRankAndId(r, id);
    out->ids[i] = id;
    out->values[i] = v;
    z += w * static_cast<double>(v);
  }
  out->logit = z;
  out->label = Uniform01(&state) < worker::Sigmoid(z) ? 1 : 0;
}

// ---------------------------------------------------------------------------------------------
// Writing.

void AppendLibsvmRow(const SyntheticClicks::Row& row, bool plus_minus_labels, bool real_values, std::string* out) {
  char buf[64];
  if (row.label == 1) {
    out->append(plus_minus_labels ? "+1" : "1");
  } else {
    out->append(plus_minus_labels ? "-1" : "0");
  }
  for (size_t i = 0; i < row.ids.size(); ++i) {
    buf[0] = ' ';
    char* p = std::to_chars(buf + 1, buf + sizeof(buf), row.ids[i]).ptr;
    *p++ = ':';
    if (real_values) {
      p = std::to_chars(p, buf + sizeof(buf), row.values[i]).ptr;  // shortest text that reads back as the same float
    } else {
      *p++ = '1';
    }
    out->append(buf, static_cast<size_t>(p - buf));
  }
  out->push_back('\n');
}

namespace {

// A file written under a temporary name and renamed into place when complete.
class AtomicFile {
 public:
  static Result<AtomicFile> Create(const std::string& final_path) {
    AtomicFile f;
    f.final_ = final_path;
    const std::filesystem::path p(final_path);
    f.tmp_ = (p.parent_path() / ("." + p.filename().string() + ".tmp." + std::to_string(::getpid()))).string();
    f.fd_ = ::open(f.tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f.fd_ < 0) return IoError("cannot create '" + f.tmp_ + "': " + std::strerror(errno));
    return f;
  }
  AtomicFile() = default;
  AtomicFile(AtomicFile&& o) noexcept { *this = std::move(o); }
  AtomicFile& operator=(AtomicFile&& o) noexcept {
    std::swap(fd_, o.fd_);
    std::swap(tmp_, o.tmp_);
    std::swap(final_, o.final_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~AtomicFile() {
    if (fd_ >= 0) {  // not committed: leave nothing behind
      ::close(fd_);
      ::unlink(tmp_.c_str());
    }
  }
  Status Write(std::string_view data) {
    while (!data.empty()) {
      const ssize_t w = ::write(fd_, data.data(), data.size());
      if (w < 0) {
        if (errno == EINTR) continue;
        return IoError("writing '" + tmp_ + "' failed after " + std::to_string(bytes_) + " bytes: " + std::strerror(errno));
      }
      bytes_ += static_cast<uint64_t>(w);
      data.remove_prefix(static_cast<size_t>(w));
    }
    return Status::Ok();
  }
  Status Commit() {
    if (::fsync(fd_) != 0) return IoError("fsync of '" + tmp_ + "' failed: " + std::strerror(errno));
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) {
      ::unlink(tmp_.c_str());
      return IoError("closing '" + tmp_ + "' failed: " + std::strerror(errno));
    }
    if (::rename(tmp_.c_str(), final_.c_str()) != 0) {
      const int e = errno;
      ::unlink(tmp_.c_str());
      return IoError("cannot rename '" + tmp_ + "' to '" + final_ + "': " + std::strerror(e));
    }
    return Status::Ok();
  }
  uint64_t bytes() const { return bytes_; }

 private:
  int fd_ = -1;
  std::string tmp_, final_;
  uint64_t bytes_ = 0;
};

Status SyncDirectory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return IoError("cannot open directory '" + dir + "': " + std::strerror(errno));
  const int r = ::fsync(fd);
  const int e = errno;
  ::close(fd);
  if (r != 0) return IoError("fsync of directory '" + dir + "' failed: " + std::strerror(e));
  return Status::Ok();
}

// Generates one split into `file`, accumulating the summary.
Status WriteSplit(const SyntheticClicks& model, const DatagenOptions& o, SyntheticClicks::Split split, int64_t rows,
                  const std::string& path, DatagenSplitSummary* sum) {
  SHARDPS_ASSIGN_OR_RETURN(AtomicFile f, AtomicFile::Create(path));
  constexpr size_t kFlush = size_t{4} << 20;
  std::string buf;
  buf.reserve(kFlush + 65536);
  SyntheticClicks::Row row;
  double bayes = 0, truth = 0;
  for (int64_t i = 0; i < rows; ++i) {
    model.MakeRow(split, static_cast<uint64_t>(i), &row);
    AppendLibsvmRow(row, o.plus_minus_labels, o.real_values, &buf);
    sum->nonzeros += row.ids.size();
    sum->positives += row.label;
    bayes += worker::BernoulliEntropyOfLogit(row.logit);
    truth += worker::LogisticLoss(row.logit, row.label);
    if (buf.size() >= kFlush) {
      SHARDPS_RETURN_IF_ERROR(f.Write(buf));
      buf.clear();
    }
  }
  SHARDPS_RETURN_IF_ERROR(f.Write(buf));
  sum->rows = rows;
  sum->bytes = f.bytes();
  sum->bayes_logloss = bayes / static_cast<double>(rows);
  sum->true_model_logloss = truth / static_cast<double>(rows);
  return f.Commit();
}

std::string Num(double v) {
  char b[40];
  std::snprintf(b, sizeof(b), "%.17g", v);
  return b;
}

std::string SplitJson(const DatagenSplitSummary& s) {
  return "{\"file\": " + JsonQuote(s.file) + ", \"rows\": " + std::to_string(s.rows) +
         ", \"nonzeros\": " + std::to_string(s.nonzeros) + ", \"bytes\": " + std::to_string(s.bytes) +
         ", \"positives\": " + std::to_string(s.positives) +
         ", \"positive_rate\": " + Num(static_cast<double>(s.positives) / static_cast<double>(s.rows)) +
         ", \"bayes_logloss\": " + Num(s.bayes_logloss) + ", \"true_model_logloss\": " + Num(s.true_model_logloss) + "}";
}

}  // namespace

Result<DatagenSummary> RunDatagen(const DatagenOptions& o) {
  SHARDPS_RETURN_IF_ERROR(ValidateDatagenOptions(o));
  const auto start = std::chrono::steady_clock::now();
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path dir(o.out_dir);
  if (fs::exists(dir, ec) && !fs::is_directory(dir, ec)) {
    return InvalidArgument("--out '" + o.out_dir + "' exists and is not a directory");
  }
  const std::string names[3] = {"train.svm", "test.svm", "meta.json"};
  if (!o.force) {
    for (const auto& n : names) {
      if (fs::exists(dir / n, ec)) {
        return FailedPrecondition("'" + (dir / n).string() + "' exists; pass --force to replace it");
      }
    }
  }
  // An upper bound of the bytes (ids are often shorter than the longest).
  {
    const double id_chars = std::ceil(static_cast<double>(o.feature_bits) * std::log10(2.0)) + 1;
    const double per_nnz = 1 + id_chars + 1 + (o.real_values ? 4 : 1);
    const double estimate =
        static_cast<double>(o.train_rows + o.test_rows) * (3 + static_cast<double>(o.nnz) * per_nnz);
    // The file system DIR is on (or will be: its nearest existing ancestor).
    fs::path on = fs::absolute(dir, ec);
    while (!on.empty() && !fs::exists(on, ec) && on.has_parent_path() && on.parent_path() != on) on = on.parent_path();
    struct statvfs vfs {};
    if (::statvfs(on.c_str(), &vfs) == 0) {
      const double avail = static_cast<double>(vfs.f_bavail) * static_cast<double>(vfs.f_frsize);
      if (estimate > avail) {
        return ResourceExhausted("the files may need up to " + std::to_string(static_cast<uint64_t>(estimate)) +
                                 " bytes, but '" + o.out_dir + "' has " + std::to_string(static_cast<uint64_t>(avail)) +
                                 " bytes free");
      }
    }
  }
  fs::create_directories(dir, ec);
  if (ec) return IoError("cannot create directory '" + o.out_dir + "': " + ec.message());
  // Replacing a set: its meta.json goes first, so a meta.json present always belongs to the
  // train.svm and test.svm beside it, even if this run is interrupted.
  if (fs::remove(dir / names[2], ec); ec) {
    return IoError("cannot remove the old '" + (dir / names[2]).string() + "': " + ec.message());
  }
  const SyntheticClicks model(o);
  DatagenSummary s;
  s.train.file = names[0];
  s.test.file = names[1];
  SHARDPS_RETURN_IF_ERROR(
      WriteSplit(model, o, SyntheticClicks::Split::kTrain, o.train_rows, (dir / names[0]).string(), &s.train));
  SHARDPS_RETURN_IF_ERROR(WriteSplit(model, o, SyntheticClicks::Split::kTest, o.test_rows, (dir / names[1]).string(), &s.test));
  // The constant predictor at the train positive rate, on the test labels.
  const double rate = static_cast<double>(s.train.positives) / static_cast<double>(s.train.rows);
  const double clipped = std::clamp(rate, 1e-15, 1 - 1e-15);
  const double test_pos = static_cast<double>(s.test.positives);
  s.constant_logloss =
      -(test_pos * std::log(clipped) + (static_cast<double>(s.test.rows) - test_pos) * std::log1p(-clipped)) /
      static_cast<double>(s.test.rows);

  std::string meta = "{\n";
  meta += "  \"generator\": \"shardps datagen\",\n  \"format\": 1,\n";
  meta += "  \"seed\": " + std::to_string(o.seed) + ",\n";
  meta += "  \"feature_bits\": " + std::to_string(o.feature_bits) + ",\n";
  meta += "  \"num_features\": " + std::to_string(model.num_features()) + ",\n";
  meta += "  \"nnz_per_row\": " + std::to_string(o.nnz) + ",\n";
  meta += "  \"zipf_exponent\": " + Num(o.zipf_exponent) + ",\n";
  meta += "  \"weight_scale\": " + Num(o.weight_scale) + ",\n";
  meta += "  \"weight_decay\": " + Num(o.weight_decay) + ",\n";
  meta += "  \"bias\": " + Num(o.bias) + ",\n";
  meta += std::string("  \"values\": \"") + (o.real_values ? "real" : "binary") + "\",\n";
  meta += std::string("  \"ids\": \"") + (o.hashed_ids ? "hashed" : "rank") + "\",\n";
  meta += std::string("  \"labels\": \"") + (o.plus_minus_labels ? "pm1" : "01") + "\",\n";
  meta += "  \"train\": " + SplitJson(s.train) + ",\n";
  meta += "  \"test\": " + SplitJson(s.test) + ",\n";
  meta += "  \"bayes_logloss\": " + Num(s.test.bayes_logloss) + ",\n";
  meta += "  \"true_model_logloss\": " + Num(s.test.true_model_logloss) + ",\n";
  meta += "  \"constant_logloss\": " + Num(s.constant_logloss) + "\n}\n";
  SHARDPS_ASSIGN_OR_RETURN(AtomicFile mf, AtomicFile::Create((dir / names[2]).string()));
  SHARDPS_RETURN_IF_ERROR(mf.Write(meta));
  SHARDPS_RETURN_IF_ERROR(mf.Commit());
  SHARDPS_RETURN_IF_ERROR(SyncDirectory(o.out_dir));
  s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return s;
}

int DatagenMain(int argc, char** argv) {
  Result<DatagenOptions> o = ParseDatagenFlags(argc, argv);
  if (!o.ok()) {
    if (o.status().code() == StatusCode::kOutOfRange) {  // --help
      std::cout << o.status().message();
      return 0;
    }
    std::cerr << "shardps datagen: " << o.status().message() << "\n";
    return 2;
  }
  Result<DatagenSummary> s = RunDatagen(*o);
  if (!s.ok()) {
    std::cerr << "shardps datagen: " << s.status().message() << "\n";
    return 1;
  }
  std::printf(
      "wrote %s: train %lld rows (%.2f nonzeros a row, positive rate %.4f), test %lld rows, in %.2f s\n"
      "test log-loss: Bayes-optimal %.6f, true model on the drawn labels %.6f, constant predictor %.6f\n",
      o->out_dir.c_str(), static_cast<long long>(s->train.rows),
      static_cast<double>(s->train.nonzeros) / static_cast<double>(s->train.rows),
      static_cast<double>(s->train.positives) / static_cast<double>(s->train.rows), static_cast<long long>(s->test.rows),
      s->seconds, s->test.bayes_logloss, s->test.true_model_logloss, s->constant_logloss);
  return 0;
}

}  // namespace shardps::tools
