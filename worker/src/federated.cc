#include "shardps/worker/federated.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <optional>
#include <numeric>
#include <span>
#include <sstream>

#include "shardps/base/optimizer.h"
#include "shardps/base/random.h"
#include "shardps/privacy/clip.h"
#include "shardps/privacy/gaussian.h"
#include "shardps/privacy/rdp_accountant.h"
#include "shardps/secagg/fixed_point.h"
#include "shardps/secagg/host.h"
#include "shardps/secagg/random_source.h"
#include "federated_internal.h"
#include "train_internal.h"

namespace shardps::worker {

using internal::DivergedHint;
using internal::FirstNonFinite;
using internal::kClipped;
using internal::kCorrect;
using internal::kNormSum;
using internal::kSecAggClipped;
using internal::kMetricsFloats;
using internal::kTested;
using internal::kTestLoss;
using internal::kTrained;
using internal::kTrainLoss;
using internal::Seconds;
using internal::WaitAll;

namespace {

// What a random draw is for: part of every key, so that two purposes never share a stream.
enum Purpose : uint64_t { kIidOrder = 1, kShardOrder, kLabelOrder, kDirichlet, kSample, kLocalOrder, kDropout };

uint64_t Key(uint64_t seed, uint64_t purpose, uint64_t a = 0, uint64_t b = 0) {
  return SplitMix64(SplitMix64(SplitMix64(SplitMix64(seed) ^ purpose) ^ a) ^ b);
}

// Uniform doubles in (0, 1), 53 bits, the i-th of a key's stream.
class Stream {
 public:
  explicit Stream(uint64_t key) : key_(key) {}
  double Uniform() {
    const uint64_t x = SplitMix64(key_ + 0x9E3779B97F4A7C15ull * ++i_);
    return (static_cast<double>(x >> 11) + 0.5) * 0x1.0p-53;
  }
  // [0, n)
  uint64_t Below(uint64_t n) { return std::min(n - 1, static_cast<uint64_t>(Uniform() * static_cast<double>(n))); }
  double Normal() {  // Box-Muller, one of the pair
    const double u = Uniform(), v = Uniform();
    return std::sqrt(-2.0 * std::log(u)) * std::cos(2.0 * 3.14159265358979323846 * v);
  }
  // Marsaglia & Tsang (2000); shape < 1 through Gamma(shape + 1) x U^(1 / shape).
  double Gamma(double shape) {
    if (shape < 1.0) return Gamma(shape + 1.0) * std::pow(Uniform(), 1.0 / shape);
    const double d = shape - 1.0 / 3.0, c = 1.0 / std::sqrt(9.0 * d);
    for (;;) {
      double x, v;
      do {
        x = Normal();
        v = 1.0 + c * x;
      } while (v <= 0.0);
      v = v * v * v;
      const double u = Uniform();
      if (u < 1.0 - 0.0331 * x * x * x * x || std::log(u) < 0.5 * x * x + d * (1.0 - v + std::log(v))) return d * v;
    }
  }

 private:
  uint64_t key_;
  uint64_t i_ = 0;
};

// A Fisher-Yates shuffle of `v` drawn from `key`.
template <typename T>
void Shuffle(std::vector<T>& v, uint64_t key) {
  Stream s(key);
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[s.Below(i)]);
}

Status CheckLabels(const std::vector<int32_t>& labels, int num_classes) {
  if (num_classes < 1) return InvalidArgument("partitioning needs at least one class, got " + std::to_string(num_classes));
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0 || labels[i] >= num_classes) {
      return InvalidArgument("sample " + std::to_string(i) + " has label " + std::to_string(labels[i]) + ", outside [0, " +
                             std::to_string(num_classes) + ")");
    }
  }
  return Status::Ok();
}

Result<Partition> Iid(const std::vector<int32_t>& labels, int, const PartitionOptions& o) {
  const int64_t n = static_cast<int64_t>(labels.size());
  std::vector<int64_t> order(labels.size());
  std::iota(order.begin(), order.end(), int64_t{0});
  Shuffle(order, Key(o.seed, kIidOrder));
  Partition p;
  p.clients.resize(static_cast<size_t>(o.clients));
  for (int k = 0; k < o.clients; ++k) {
    const BatchSlice s = ShardOfRows(n, o.clients, k);
    p.clients[k].assign(order.begin() + s.begin, order.begin() + s.end);
  }
  return p;
}

Result<Partition> Shards(const std::vector<int32_t>& labels, int, const PartitionOptions& o) {
  if (o.shards_per_client < 1) {
    return InvalidArgument("shards_per_client is " + std::to_string(o.shards_per_client) + ": at least 1");
  }
  const int64_t shards = int64_t{o.clients} * o.shards_per_client;
  const int64_t size = static_cast<int64_t>(labels.size()) / shards;
  if (size < 1) {
    return InvalidArgument(std::to_string(o.clients) + " clients x " + std::to_string(o.shards_per_client) + " shards need at least " +
                           std::to_string(shards) + " samples, there are " + std::to_string(labels.size()));
  }
  std::vector<int64_t> by_label(labels.size());
  std::iota(by_label.begin(), by_label.end(), int64_t{0});
  std::stable_sort(by_label.begin(), by_label.end(), [&](int64_t a, int64_t b) { return labels[a] < labels[b]; });
  std::vector<int64_t> shard(static_cast<size_t>(shards));
  std::iota(shard.begin(), shard.end(), int64_t{0});
  Shuffle(shard, Key(o.seed, kShardOrder));
  Partition p;
  p.clients.resize(static_cast<size_t>(o.clients));
  for (int64_t j = 0; j < shards; ++j) {
    auto& c = p.clients[static_cast<size_t>(j / o.shards_per_client)];
    c.insert(c.end(), by_label.begin() + shard[j] * size, by_label.begin() + (shard[j] + 1) * size);
  }
  return p;
}

Result<Partition> Dirichlet(const std::vector<int32_t>& labels, int num_classes, const PartitionOptions& o) {
  if (!(o.dirichlet_alpha > 0) || !std::isfinite(o.dirichlet_alpha)) {
    return InvalidArgument("dirichlet_alpha is " + std::to_string(o.dirichlet_alpha) + ": it must be a positive number");
  }
  std::vector<std::vector<int64_t>> of_label(static_cast<size_t>(num_classes));
  for (size_t i = 0; i < labels.size(); ++i) of_label[labels[i]].push_back(static_cast<int64_t>(i));
  for (int c = 0; c < num_classes; ++c) Shuffle(of_label[c], Key(o.seed, kLabelOrder, static_cast<uint64_t>(c)));
  constexpr int kAttempts = 100;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    Partition p;
    p.clients.resize(static_cast<size_t>(o.clients));
    for (int c = 0; c < num_classes; ++c) {
      Stream s(Key(o.seed, kDirichlet, static_cast<uint64_t>(attempt), static_cast<uint64_t>(c)));
      std::vector<double> g(static_cast<size_t>(o.clients));
      double sum = 0;
      for (double& x : g) sum += (x = s.Gamma(o.dirichlet_alpha));
      const int64_t n = static_cast<int64_t>(of_label[c].size());
      double cum = 0;
      int64_t from = 0;
      for (int k = 0; k < o.clients; ++k) {
        cum += g[k];
        const int64_t to = k + 1 == o.clients ? n : std::min<int64_t>(n, std::llround(cum / sum * static_cast<double>(n)));
        p.clients[k].insert(p.clients[k].end(), of_label[c].begin() + from, of_label[c].begin() + std::max(from, to));
        from = std::max(from, to);
      }
    }
    if (std::all_of(p.clients.begin(), p.clients.end(), [](const auto& c) { return !c.empty(); })) {
      for (auto& c : p.clients) std::sort(c.begin(), c.end());
      return p;
    }
  }
  return FailedPrecondition("Dirichlet(" + std::to_string(o.dirichlet_alpha) + ") over " + std::to_string(o.clients) + " clients left a client without samples in " +
                            std::to_string(kAttempts) + " draws: raise dirichlet_alpha or use fewer clients");
}

struct Partitioner {
  const char* name;
  std::function<Result<Partition>(const std::vector<int32_t>&, int, const PartitionOptions&)> make;
};

// The registry: a new partitioner is a function above and a line here.
const std::vector<Partitioner>& Partitioners() {
  static const std::vector<Partitioner> all = {{"iid", Iid}, {"shards", Shards}, {"dirichlet", Dirichlet}};
  return all;
}

}  // namespace

int64_t Partition::samples() const {
  int64_t n = 0;
  for (const auto& c : clients) n += static_cast<int64_t>(c.size());
  return n;
}

std::string RegisteredPartitioners() {
  std::string s;
  for (const Partitioner& p : Partitioners()) s += (s.empty() ? "" : ", ") + std::string(p.name);
  return s;
}

bool IsPartitioner(const std::string& name) {
  return std::any_of(Partitioners().begin(), Partitioners().end(), [&](const Partitioner& p) { return name == p.name; });
}

Result<Partition> MakePartition(const std::vector<int32_t>& labels, int num_classes, const PartitionOptions& options) {
  if (options.clients < 1) return InvalidArgument("clients is " + std::to_string(options.clients) + ": at least 1");
  if (static_cast<int64_t>(labels.size()) < options.clients) {
    return InvalidArgument(std::to_string(options.clients) + " clients need at least as many samples, there are " +
                           std::to_string(labels.size()));
  }
  SHARDPS_RETURN_IF_ERROR(CheckLabels(labels, num_classes));
  for (const Partitioner& p : Partitioners()) {
    if (options.partitioner != p.name) continue;
    SHARDPS_ASSIGN_OR_RETURN(Partition out, p.make(labels, num_classes, options));
    for (auto& c : out.clients) std::sort(c.begin(), c.end());
    return out;
  }
  return InvalidArgument("partitioner '" + options.partitioner + "' is not one of " + RegisteredPartitioners());
}

std::vector<std::vector<int64_t>> LabelHistogram(const Partition& p, const std::vector<int32_t>& labels, int num_classes) {
  std::vector<std::vector<int64_t>> counts(p.clients.size(), std::vector<int64_t>(static_cast<size_t>(num_classes), 0));
  for (size_t k = 0; k < p.clients.size(); ++k) {
    for (int64_t i : p.clients[k]) ++counts[k][labels[i]];
  }
  return counts;
}

std::string FormatLabelHistogram(const Partition& p, const std::vector<int32_t>& labels, int num_classes) {
  const auto counts = LabelHistogram(p, labels, num_classes);
  std::ostringstream out;
  out << "client  samples  per label 0.." << num_classes - 1 << "\n";
  std::vector<int64_t> sizes;
  std::vector<int> seen;
  for (size_t k = 0; k < counts.size(); ++k) {
    char head[32];
    std::snprintf(head, sizeof(head), "%6zu  %7zu ", k, p.clients[k].size());
    out << head;
    int labels_seen = 0;
    for (int64_t c : counts[k]) {
      out << " " << c;
      labels_seen += c > 0;
    }
    out << "\n";
    sizes.push_back(static_cast<int64_t>(p.clients[k].size()));
    seen.push_back(labels_seen);
  }
  std::sort(sizes.begin(), sizes.end());
  std::sort(seen.begin(), seen.end());
  out << "samples per client: min " << sizes.front() << ", median " << sizes[sizes.size() / 2] << ", max " << sizes.back()
      << "; labels per client: median " << seen[seen.size() / 2] << " (min " << seen.front() << ", max " << seen.back() << ")\n";
  return out.str();
}

std::vector<int> SampleClients(int clients, double fraction, uint64_t seed, uint64_t round) {
  const int m = std::clamp(static_cast<int>(std::llround(fraction * clients)), 1, std::max(1, clients));
  std::vector<int> all(static_cast<size_t>(clients));
  std::iota(all.begin(), all.end(), 0);
  Stream s(Key(seed, kSample, round));
  for (int i = 0; i < m; ++i) std::swap(all[i], all[i + s.Below(static_cast<uint64_t>(clients - i))]);  // partial Fisher-Yates
  all.resize(static_cast<size_t>(m));
  std::sort(all.begin(), all.end());
  return all;
}


namespace internal {

Result<LocalResult> LocalUpdate(const Model& model, const Dataset& train, const std::vector<int64_t>& mine, const RunOptions& run,
                                const FederatedOptions& fed, int round, int k, const std::vector<std::vector<float>>& w,
                                LocalScratch& s) {
  const size_t M = w.size();
  s.Size(w, OptimizerSlots(run.optimizer.kind));
  const int64_t nk = static_cast<int64_t>(mine.size());
  const int64_t Bk = fed.local_batch == 0 ? nk : std::min(fed.local_batch, nk);
  for (size_t t = 0; t < M; ++t) {
    s.local[t] = w[t];
    std::fill(s.slots[t].begin(), s.slots[t].end(), 0.0f);  // a client's optimizer starts fresh every round
  }
  LocalResult r;
  uint64_t local_step = 0;
  for (int e = 0; e < fed.local_epochs; ++e) {
    std::vector<int64_t> order(mine);
    Shuffle(order, Key(run.seed, kLocalOrder, static_cast<uint64_t>(round) << 32 | static_cast<uint64_t>(k), static_cast<uint64_t>(e)));
    for (int64_t b = 0; b < nk; b += Bk) {
      const int64_t rows = std::min(Bk, nk - b);
      GatherRows(train, std::span<const int64_t>(order).subspan(static_cast<size_t>(b), static_cast<size_t>(rows)), &s.xb, &s.yb);
      for (size_t t = 0; t < M; ++t) {
        s.wspans[t] = s.local[t];
        s.gspans[t] = s.g[t];
      }
      const double loss = model.Gradient(s.wspans, s.xb.data(), s.yb.data(), rows, 1.0f / static_cast<float>(rows), s.gspans, nullptr, 0, nullptr);
      if (!std::isfinite(loss)) {
        return FailedPrecondition("round " + std::to_string(round) + ": client " + std::to_string(k) + "'s loss is " +
                                  std::to_string(loss) + " in local epoch " + std::to_string(e) + DivergedHint(run));
      }
      ++local_step;
      for (size_t t = 0; t < M; ++t) ApplyOptimizer(run.optimizer, local_step, s.local[t], s.slots[t], s.g[t]);
      if (e + 1 == fed.local_epochs) {
        r.loss_sum += loss;
        r.loss_rows += rows;
      }
    }
  }
  for (size_t t = 0; t < M; ++t) {
    for (size_t i = 0; i < w[t].size(); ++i) s.local[t][i] = w[t][i] - s.local[t][i];  // the change, in place
  }
  return r;
}

Status SpreadSum(std::span<const uint64_t> sum, size_t survivors, const secagg::FixedPoint& fp,
                 const std::function<double(uint64_t count)>& scale, std::vector<std::vector<float>>& push) {
  uint64_t floats = 0;
  for (const auto& p : push) floats += p.size();
  if (sum.size() != floats + 1 || survivors == 0) {
    return DataLoss("the aggregator's sum has " + std::to_string(sum.size()) + " elements for " + std::to_string(survivors) +
                    " survivors; expected " + std::to_string(floats + 1));
  }
  SHARDPS_ASSIGN_OR_RETURN(const std::vector<float> values, secagg::Dequantize(sum.first(floats), survivors, fp));
  const uint64_t count = sum[floats];
  if (count == 0 || count >= (uint64_t{1} << (fp.ring_bits - 1))) {
    return DataLoss("the survivors' count in the sum is " + std::to_string(count));
  }
  const double k = scale(count);
  size_t at = 0;
  for (auto& p : push) {
    for (float& v : p) v = static_cast<float>(static_cast<double>(values[at++]) * k);
  }
  return Status::Ok();
}

Progress RoundProgress(int round, int rounds, double test_accuracy, int clients) {
  Progress p;
  p.epoch = round;
  p.epochs = rounds;
  p.step = round + 1;
  p.total_steps = rounds;
  p.test_accuracy = test_accuracy;
  p.clients = clients;
  return p;
}

}  // namespace internal

namespace {

Status CheckSecureAggregation(const FederatedOptions& fed) {
  if (!fed.secure_aggregation) return Status::Ok();
  if (fed.secagg_bits < secagg::kMinQuantizationBits || fed.secagg_bits > secagg::kMaxQuantizationBits) {
    return InvalidArgument("secagg_bits is " + std::to_string(fed.secagg_bits) + ": in [" +
                           std::to_string(secagg::kMinQuantizationBits) + ", " + std::to_string(secagg::kMaxQuantizationBits) + "]");
  }
  if (!(fed.secagg_clip > 0) || !std::isfinite(fed.secagg_clip)) {
    return InvalidArgument("secagg_clip is " + std::to_string(fed.secagg_clip) + ": a positive bound on each update element");
  }
  if (fed.secagg_threshold < 0) return InvalidArgument("secagg_threshold is " + std::to_string(fed.secagg_threshold) + ": 0 (automatic) or at least 2");
  if (fed.secagg_dropouts < 0) return InvalidArgument("secagg_dropouts is " + std::to_string(fed.secagg_dropouts) + ": 0 or more");
  if (fed.secagg_drop_phase < 0 || fed.secagg_drop_phase > 3) {
    return InvalidArgument("secagg_drop_phase is " + std::to_string(fed.secagg_drop_phase) + ": 0 to 3");
  }
  return Status::Ok();
}

// One round's secure aggregation for this worker's clients (`hosted`, ids 1..m by position in
// the sample), through the store's aggregator. Sets `push`: on the lead worker the average of the
// survivors' updates (their sum over their samples; with clip_norm, over m_dp), zeros elsewhere
// and when the round aborts. Returns the survivors (0: aborted).
Result<int> SecureSum(ParamStore& params, const RunOptions& run, const FederatedOptions& fed, const secagg::FixedPoint& fp,
                      uint32_t threshold, uint64_t round, int m, const std::vector<secagg::HostedClient>& hosted,
                      double n_bar, int m_dp, std::vector<std::vector<float>>& push, const TrainHooks& hooks) {
  uint64_t floats = 0;
  for (const auto& p : push) floats += p.size();
  secagg::RoundConfig config{.round_id = round, .threshold = threshold, .participants = {}, .vector_length = floats + 1,
                             .ring_bits = fp.ring_bits};
  for (int i = 1; i <= m; ++i) config.participants.push_back(static_cast<secagg::ClientId>(i));
  secagg::SystemRandomSource rng;
  const std::string where = "secure aggregation of round " + std::to_string(round);
  auto exchange = [&](secagg::Phase phase, std::vector<uint8_t> bundle) -> Result<std::vector<uint8_t>> {
    auto out = std::make_shared<std::vector<uint8_t>>(std::move(bundle));
    auto reply = std::make_shared<std::vector<uint8_t>>();
    Handle h = params.SecAgg(round, static_cast<uint32_t>(phase), *out, reply.get());
    Status s = h.wait(run.timeout);
    if (!s.ok()) {
      if (!h.Cancel().ok()) {  // a transport still holds the buffers: keep them until it stops
        params.Retain(out);
        params.Retain(reply);
      }
      return s.WithContext(where);
    }
    return std::move(*reply);
  };
  SHARDPS_ASSIGN_OR_RETURN(const secagg::OutcomeMessage o, secagg::RunHostedRound(config, hosted, rng, exchange));
  for (auto& p : push) std::fill(p.begin(), p.end(), 0.0f);
  if (o.aborted) {
    if (run.worker == 0 && hooks.on_notice) hooks.on_notice(where + " aborted, the model is left as it was: " + o.reason);
    return 0;
  }
  if (run.worker != 0) return static_cast<int>(o.survivors.size());
  const bool dp = fed.clip_norm > 0;
  SHARDPS_RETURN_IF_ERROR(internal::SpreadSum(o.sum, o.survivors.size(), fp,
                                              [&](uint64_t count) { return dp ? 1.0 / m_dp : n_bar / static_cast<double>(count); },
                                              push)
                              .WithContext(where));
  return static_cast<int>(o.survivors.size());
}

}  // namespace

Result<TrainResult> TrainFederated(const Model& model, const Dataset& train, const Dataset& test, ParamStore& params,
                                   const RunOptions& run, const FederatedOptions& fed, const TrainHooks& hooks) {
  const auto start = std::chrono::steady_clock::now();
  const ModelSpec& ms = model.spec();
  if (run.mode != "fedavg") return InvalidArgument("TrainFederated runs mode fedavg, not '" + run.mode + "'");
  for (const Dataset* d : {&train, &test}) {
    if (d->num_features != ms.input_dim) {
      return InvalidArgument(d->source + " has " + std::to_string(d->num_features) + " features, the model expects " +
                             std::to_string(ms.input_dim));
    }
  }
  if (fed.rounds < 1) return InvalidArgument("fed_rounds is " + std::to_string(fed.rounds) + ": at least 1");
  if (!(fed.fraction > 0 && fed.fraction <= 1)) return InvalidArgument("fed_fraction is " + std::to_string(fed.fraction) + ": it must be in (0, 1]");
  if (fed.local_epochs < 1) return InvalidArgument("fed_local_epochs is " + std::to_string(fed.local_epochs) + ": at least 1");
  if (fed.local_batch < 0) return InvalidArgument("fed_local_batch is " + std::to_string(fed.local_batch) + ": 0 (whole partition) or more");
  if (fed.eval_every_rounds < 1) return InvalidArgument("eval_every_rounds is " + std::to_string(fed.eval_every_rounds) + ": at least 1");
  if (static_cast<int64_t>(run.start_step) > fed.rounds) {
    return InvalidArgument("the checkpoint is at round " + std::to_string(run.start_step) + "; this run has only " +
                           std::to_string(fed.rounds) + " rounds");
  }
  const bool dp = fed.clip_norm > 0;
  if (!(fed.clip_norm >= 0) || !std::isfinite(fed.clip_norm)) {
    return InvalidArgument("clip_norm is " + std::to_string(fed.clip_norm) + ": 0 (no clipping) or a positive L2 norm");
  }
  if (!(fed.noise_multiplier >= 0) || !std::isfinite(fed.noise_multiplier)) {
    return InvalidArgument("noise_multiplier is " + std::to_string(fed.noise_multiplier) + ": 0 or more");
  }
  if (fed.noise_multiplier > 0 && !dp) {
    return InvalidArgument("noise_multiplier " + std::to_string(fed.noise_multiplier) + " needs clip_norm > 0 (the noise is scaled by it)");
  }
  if (dp && !(fed.dp_delta > 0 && fed.dp_delta < 1)) return InvalidArgument("dp_delta is " + std::to_string(fed.dp_delta) + ": in (0, 1)");
  SHARDPS_RETURN_IF_ERROR(LookupOptimizer(run.optimizer.kind).status());
  SHARDPS_RETURN_IF_ERROR(CheckSecureAggregation(fed));
  PartitionOptions po = fed.partition;
  po.seed = run.seed;
  SHARDPS_ASSIGN_OR_RETURN(const Partition part, MakePartition(train.labels, train.num_classes, po));

  // Differential privacy: the round's clients m is fixed by N and C, so the sampling rate is m / N.
  const int m = static_cast<int>(SampleClients(po.clients, fed.fraction, run.seed, 0).size());
  std::optional<privacy::RdpAccountant> accountant;
  if (dp && fed.noise_multiplier > 0) {
    SHARDPS_ASSIGN_OR_RETURN(privacy::RdpAccountant a,
                             privacy::RdpAccountant::Create(static_cast<double>(m) / po.clients, fed.noise_multiplier));
    a.Step(run.start_step);  // the rounds before a resume spent privacy too
    accountant = std::move(a);
  }
  // Secure aggregation: the ring holds the sum of m updates of secagg_bits and the sum of the
  // counts (at most every training sample).
  const bool secure = fed.secure_aggregation;
  secagg::FixedPoint fp;
  uint32_t threshold = 0;
  if (secure) {
    if (m < 2 || m > static_cast<int>(secagg::kMaxClients)) {
      return InvalidArgument("secure aggregation needs 2 to " + std::to_string(secagg::kMaxClients) +
                             " clients per round; fraction " + std::to_string(fed.fraction) + " of " +
                             std::to_string(po.clients) + " clients gives " + std::to_string(m));
    }
    threshold = fed.secagg_threshold > 0 ? static_cast<uint32_t>(fed.secagg_threshold) : static_cast<uint32_t>(2 * m / 3 + 1);
    if (threshold < 2 || threshold > static_cast<uint32_t>(m)) {
      return InvalidArgument("secagg_threshold " + std::to_string(threshold) + " must be in [2, " + std::to_string(m) +
                             "] (the round's clients)");
    }
    if (fed.secagg_dropouts > m) {
      return InvalidArgument("secagg_dropouts " + std::to_string(fed.secagg_dropouts) + " exceeds the round's " +
                             std::to_string(m) + " clients");
    }
    const int count_bits = std::bit_width(static_cast<uint64_t>(part.samples())) + 1;  // + sign
    fp = {.clip = static_cast<float>(fed.secagg_clip), .bits = fed.secagg_bits,
          .ring_bits = std::max(secagg::RingBits(static_cast<uint64_t>(m), fed.secagg_bits), count_bits)};
    SHARDPS_RETURN_IF_ERROR(secagg::CheckRing(static_cast<uint64_t>(m), fp.bits, fp.ring_bits));
  }
  // n-bar: the updates are weighted n_k / n-bar, near 1, so that one clip fits every client.
  const double n_bar = static_cast<double>(part.samples()) / po.clients;
  auto epsilon = [&]() -> Result<privacy::PrivacySpent> {
    if (!accountant) return privacy::PrivacySpent{.epsilon = std::numeric_limits<double>::infinity(), .order = 0};
    return accountant->Epsilon(fed.dp_delta);
  };

  const size_t M = model.num_tables();
  const uint32_t metrics_table = static_cast<uint32_t>(M);
  const std::vector<TableSpec> tables = TrainingTables(model, run);
  uint64_t vector_floats = 0;  // every model table's weights, one after another
  for (size_t t = 0; t < M; ++t) vector_floats += tables[t].size;
  const auto timeout = run.timeout;
  std::vector<std::vector<float>> w(M), next(M), push(M);
  for (size_t t = 0; t < M; ++t) {
    w[t].resize(tables[t].size);
    next[t].resize(tables[t].size);
    push[t].resize(tables[t].size);
  }
  internal::LocalScratch scratch;
  {
    std::vector<Handle> hs;
    for (size_t t = 0; t < M; ++t) hs.push_back(params.Pull(static_cast<uint32_t>(t), w[t], run.start_step));
    SHARDPS_RETURN_IF_ERROR(WaitAll(params, hs, timeout, w).WithContext("pulling the model at round " + std::to_string(run.start_step)));
  }
  const BatchSlice test_shard = ShardOfRows(test.num_samples, run.workers, run.worker);
  uint64_t reduce_round = 0;
  TrainResult result;
  double train_seconds = 0;
  int64_t samples = 0;  // local samples processed by every client of every round so far
  double last_accuracy = -1;
  for (int r = 0; r < static_cast<int>(run.start_step); ++r) {
    for (int k : SampleClients(po.clients, fed.fraction, run.seed, static_cast<uint64_t>(r))) {
      samples += static_cast<int64_t>(part.clients[k].size()) * fed.local_epochs;
    }
  }
  const int64_t first_samples = samples;

  for (int round = static_cast<int>(run.start_step); round < fed.rounds; ++round) {
    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<int> sampled = SampleClients(po.clients, fed.fraction, run.seed, static_cast<uint64_t>(round));
    int64_t n_round = 0;
    for (int k : sampled) n_round += static_cast<int64_t>(part.clients[k].size());
    for (auto& p : push) std::fill(p.begin(), p.end(), 0.0f);
    double loss_sum = 0;
    int64_t loss_rows = 0;
    int clipped = 0;
    double norm_sum = 0;
    int64_t sa_clipped = 0;
    std::vector<secagg::HostedClient> hosted;  // secure aggregation: this worker's clients
    std::vector<secagg::Phase> drop_before(sampled.size(), secagg::Phase::kDone);
    if (secure && fed.secagg_dropouts > 0) {
      std::vector<size_t> pos(sampled.size());
      std::iota(pos.begin(), pos.end(), size_t{0});
      Stream ds(Key(run.seed, kDropout, static_cast<uint64_t>(round)));
      for (int i = 0; i < fed.secagg_dropouts; ++i) {
        std::swap(pos[static_cast<size_t>(i)], pos[static_cast<size_t>(i) + ds.Below(pos.size() - static_cast<size_t>(i))]);
        drop_before[pos[static_cast<size_t>(i)]] = static_cast<secagg::Phase>(fed.secagg_drop_phase);
      }
    }
    for (size_t position = 0; position < sampled.size(); ++position) {
      const int k = sampled[position];
      if (k % run.workers != run.worker) continue;  // hosted by another worker
      const std::vector<int64_t>& mine = part.clients[k];
      const int64_t nk = static_cast<int64_t>(mine.size());
      SHARDPS_ASSIGN_OR_RETURN(const internal::LocalResult lr, internal::LocalUpdate(model, train, mine, run, fed, round, k, w, scratch));
      loss_sum += lr.loss_sum;
      loss_rows += lr.loss_rows;
      auto& local = scratch.local;
      float weight = static_cast<float>(static_cast<double>(nk) / (secure ? n_bar : static_cast<double>(n_round)));
      if (dp) {
        double sq = 0;
        for (size_t t = 0; t < M; ++t) {
          const double n = privacy::L2Norm(local[t]);
          sq += n * n;
        }
        const double norm = std::sqrt(sq);
        norm_sum += norm;
        clipped += norm > fed.clip_norm;
        weight = static_cast<float>((norm > fed.clip_norm ? fed.clip_norm / norm : 1.0) / (secure ? 1 : m));
      }
      if (secure) {
        // The client's vector: its weighted change, quantized into the ring, then its count.
        std::vector<float> flat;
        flat.reserve(static_cast<size_t>(vector_floats));
        for (size_t t = 0; t < M; ++t) {
          for (float d : local[t]) {
            const float x = d * weight;
            sa_clipped += std::fabs(x) > fp.clip;
            flat.push_back(x);
          }
        }
        const auto id = static_cast<secagg::ClientId>(position + 1);
        SHARDPS_ASSIGN_OR_RETURN(std::vector<uint64_t> q,
                                 secagg::Quantize(flat, fp, {.seed = run.seed, .round = static_cast<uint64_t>(round), .client = id}));
        q.push_back(static_cast<uint64_t>(dp ? 1 : nk));
        hosted.push_back({.id = id, .input = std::move(q), .drop_before = drop_before[position]});
        continue;
      }
      for (size_t t = 0; t < M; ++t) {
        for (size_t i = 0; i < w[t].size(); ++i) push[t][i] += local[t][i] * weight;
      }
    }
    int survivors = -1;
    if (secure) {
      SHARDPS_ASSIGN_OR_RETURN(survivors, SecureSum(params, run, fed, fp, threshold, static_cast<uint64_t>(round),
                                                    static_cast<int>(sampled.size()), hosted, n_bar, m, push, hooks));
    }
    if (dp && fed.noise_multiplier > 0 && run.worker == 0 && survivors != 0) {
      // The noise of the average, once (the lead worker's push), keyed by (seed, round, table).
      for (size_t t = 0; t < M; ++t) {
        SHARDPS_RETURN_IF_ERROR(privacy::AddGaussianNoise(push[t], fed.noise_multiplier * fed.clip_norm / m,
                                                          {.seed = run.seed, .round = static_cast<uint64_t>(round), .stream = t}));
      }
    }
    {
      std::vector<Handle> hs;
      for (size_t t = 0; t < M; ++t) hs.push_back(params.PushPull(static_cast<uint32_t>(t), push[t], next[t], static_cast<uint64_t>(round), {}));
      SHARDPS_RETURN_IF_ERROR(WaitAll(params, hs, timeout, push, next).WithContext("round " + std::to_string(round)));
      std::swap(w, next);
    }
    if (auto bad = FirstNonFinite(w)) {
      return FailedPrecondition("after round " + std::to_string(round) + ": weight " + std::to_string(bad->second) + " of table '" +
                                tables[bad->first].name + "' is " + std::to_string(w[bad->first][bad->second]) + DivergedHint(run));
    }
    samples += n_round * fed.local_epochs;
    train_seconds += Seconds(std::chrono::steady_clock::now() - t0).count();
    const bool last = round + 1 == fed.rounds;
    const bool eval = last || (round + 1) % fed.eval_every_rounds == 0;
    // Every round: the clients' training loss summed over the workers; on evaluation rounds the
    // test set too, split over the workers.
    std::vector<float> mine(kMetricsFloats, 0.0f), total(kMetricsFloats);
    if (eval) internal::AddTestCounts(model, w, test, test_shard, mine);
    mine[kTrainLoss] = static_cast<float>(loss_sum);
    mine[kTrained] = static_cast<float>(loss_rows);
    mine[kClipped] = static_cast<float>(clipped);
    mine[kNormSum] = static_cast<float>(norm_sum);
    mine[kSecAggClipped] = static_cast<float>(sa_clipped);
    {
      std::vector<Handle> hs{params.PushPull(metrics_table, mine, total, reduce_round++, {})};
      SHARDPS_RETURN_IF_ERROR(WaitAll(params, hs, timeout, mine, total).WithContext("metrics of round " + std::to_string(round)));
    }
    if (total[kTrained] > 0) result.train_loss = total[kTrainLoss] / total[kTrained];
    if (accountant) accountant->Step();
    privacy::PrivacySpent spent;
    if (dp) {
      SHARDPS_ASSIGN_OR_RETURN(spent, epsilon());
      result.clipped += static_cast<int64_t>(total[kClipped]);
      result.client_updates += static_cast<int64_t>(sampled.size());
      result.epsilon = spent.epsilon;
      result.epsilon_order = spent.order;
    }
    if (secure) {
      result.secagg_aborted += survivors == 0;
      result.secagg_survivors += survivors;
      result.secagg_clipped += static_cast<int64_t>(total[kSecAggClipped]);
    }
    if (eval) {
      result.test_accuracy = total[kTested] > 0 ? total[kCorrect] / total[kTested] : 0.0;
      result.test_loss = total[kTested] > 0 ? total[kTestLoss] / total[kTested] : 0.0;
      last_accuracy = result.test_accuracy;
    }
    const double sps = train_seconds > 0 ? static_cast<double>(samples - first_samples) / train_seconds : 0;
    if (hooks.on_metrics) {
      MetricsRow row;
      row.epoch = round;
      row.step = round + 1;
      row.samples = samples;
      row.train_loss = result.train_loss;
      row.test_loss = eval ? result.test_loss : -1;
      row.test_accuracy = eval ? result.test_accuracy : -1;
      row.samples_per_second = sps;
      row.wall_seconds = Seconds(std::chrono::steady_clock::now() - start).count();
      row.push_bytes = params.wire().push_bytes;
      row.pull_bytes = params.wire().pull_bytes;
      row.clients = static_cast<int>(sampled.size());
      if (dp) {
        row.epsilon = spent.epsilon;
        row.clipped = static_cast<int>(total[kClipped]);
        row.update_norm = total[kNormSum] / static_cast<double>(sampled.size());
      }
      if (secure) {
        row.survivors = survivors;
        row.secagg_clipped = static_cast<int64_t>(total[kSecAggClipped]);
      }
      hooks.on_metrics(row);
    }
    if (hooks.on_progress) {
      Progress p = internal::RoundProgress(round, fed.rounds, last_accuracy, static_cast<int>(sampled.size()));
      p.loss = result.train_loss;
      p.samples_per_second = sps;
      const double per_round = train_seconds / static_cast<double>(round + 1 - static_cast<int>(run.start_step));
      p.eta_seconds = per_round * (fed.rounds - round - 1);
      hooks.on_progress(p);
    }
    if (hooks.on_step_end) {
      const Cursor c{static_cast<uint64_t>(round + 1), static_cast<uint64_t>(round + 1), 0};
      SHARDPS_RETURN_IF_ERROR(hooks.on_step_end(c, false));
    }
  }
  if (dp && result.epsilon < 0) {  // resumed from the end: what the rounds before spent
    SHARDPS_ASSIGN_OR_RETURN(const privacy::PrivacySpent spent, epsilon());
    result.epsilon = spent.epsilon;
    result.epsilon_order = spent.order;
  }
  if (static_cast<int64_t>(run.start_step) == fed.rounds) {
    // Resumed from the end: evaluate the model as it is.
    std::vector<float> mine(kMetricsFloats, 0.0f), total(kMetricsFloats);
    internal::AddTestCounts(model, w, test, test_shard, mine);
    std::vector<Handle> hs{params.PushPull(metrics_table, mine, total, reduce_round++, {})};
    SHARDPS_RETURN_IF_ERROR(WaitAll(params, hs, timeout, mine, total).WithContext("evaluating the resumed model"));
    result.test_accuracy = total[kTested] > 0 ? total[kCorrect] / total[kTested] : 0.0;
    result.test_loss = total[kTested] > 0 ? total[kTestLoss] / total[kTested] : 0.0;
  }
  if (hooks.on_step_end) {
    const Cursor c{static_cast<uint64_t>(fed.rounds), static_cast<uint64_t>(fed.rounds), 0};
    SHARDPS_RETURN_IF_ERROR(hooks.on_step_end(c, true));
  }
  result.epochs = fed.rounds;
  result.steps = fed.rounds;
  result.wall_seconds = Seconds(std::chrono::steady_clock::now() - start).count();
  result.samples_per_second = train_seconds > 0 ? static_cast<double>(samples - first_samples) / train_seconds : 0;
  result.weights = std::move(w);
  result.weights_sha256 = WeightsSha256(result.weights);
  result.wire = params.wire();
  return result;
}

}  // namespace shardps::worker
