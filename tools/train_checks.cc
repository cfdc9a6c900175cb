#include "train_checks.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "shardps/base/crc32c.h"
#include "shardps/base/digest.h"
#include "shardps/base/optimizer.h"

namespace shardps::tools {

uint64_t MemoryLimitBytes() {
  uint64_t limit = UINT64_MAX;
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) limit = static_cast<uint64_t>(pages) * static_cast<uint64_t>(page);
  for (int res : {RLIMIT_AS, RLIMIT_DATA}) {
    rlimit rl{};
    if (getrlimit(res, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) limit = std::min<uint64_t>(limit, rl.rlim_cur);
  }
  return limit;
}

std::string Gigabytes(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f GB", bytes / 1e9);
  return buf;
}

// What a process needs at least for the model (a lower bound: data sets, buffers of the transport
// and the libraries come on top), checked against MemoryLimitBytes() before anything is
// allocated: a model that cannot fit is refused at start with its size, not killed by a failed
// allocation after hours of training.
Status CheckModelFits(const worker::ModelSpec& ms, const config::TrainConfig& c, bool trains, bool holds_tables,
                      int servers, int64_t test_rows, uint64_t limit) {
  std::vector<int64_t> d{ms.input_dim};
  d.insert(d.end(), ms.hidden.begin(), ms.hidden.end());
  d.push_back(ms.num_classes);
  double params = 0, widest = 0, widths = 0;
  for (size_t l = 0; l + 1 < d.size(); ++l) {
    params += static_cast<double>(d[l]) * static_cast<double>(d[l + 1]) + static_cast<double>(d[l + 1]);
    widest = std::max(widest, static_cast<double>(d[l + 1]));
    widths += static_cast<double>(d[l + 1]);
  }
  const auto opt = ToOptimizerConfig(c.optimizer());  // validated
  const double slots = opt.ok() ? OptimizerSlots(opt->kind) : 2;
  const double copy = params * sizeof(float);
  double need = 0;
  std::string what;
  if (trains) {
    // Weights, next weights and gradients (local_sgd: its optimizer's slots too), evaluation in
    // blocks of up to 1024 rows (activation and pre-activation of the widest layer), and a batch's
    // activations and their gradients.
    // fedavg: also a client's model, the round's update and the client's optimizer slots.
    const double copies = 3 + (c.mode() == "local_sgd" ? slots : c.mode() == "fedavg" ? 2 + slots : 0);
    const double eval_rows = static_cast<double>(std::min<int64_t>(1024, std::max<int64_t>(1, test_rows)));
    need += copies * copy + 2 * eval_rows * widest * sizeof(float) + 2 * static_cast<double>(c.batch_size()) * widths * sizeof(float);
    what = std::to_string(static_cast<int>(copies)) + " copies of the model to train";
  }
  if (holds_tables) {
    // The weights and optimizer slots of its share of the tables, and (a server) as much again
    // for the sums of the workers' gradients.
    const double share = servers > 0 ? copy / servers : copy;
    need += share * ((servers > 0 ? 2 : 1) + slots);
    what += std::string(what.empty() ? "" : " and ") + (servers > 0 ? "a 1/" + std::to_string(servers) + " share" : "a copy") +
            " of the tables with " + std::to_string(static_cast<int>(slots)) + " optimizer slots";
  }
  if (need <= static_cast<double>(limit)) return Status::Ok();
  char params_text[32];
  std::snprintf(params_text, sizeof(params_text), "%.0f", params);
  return ResourceExhausted("the model (hidden " + [&] {
    std::string h;
    for (int64_t w : ms.hidden) h += (h.empty() ? "" : ",") + std::to_string(w);
    return h.empty() ? std::string("none") : h;
  }() + ") has " + params_text + " parameters, " + Gigabytes(copy) + " per copy; this process would need at least " +
                           Gigabytes(need) + " (" + what + "), more than the " + Gigabytes(static_cast<double>(limit)) +
                           " it may use (physical memory or its RLIMIT_AS/RLIMIT_DATA): choose smaller hidden layers");
}

// With the sample count, what a checkpoint's data cursor is relative to.
uint32_t TrainDataCrc(const worker::Dataset& d) {
  uint32_t crc = Crc32cExtend(0, d.features.data(), d.features.size() * sizeof(float));
  return Crc32cExtend(crc, d.labels.data(), d.labels.size() * sizeof(int32_t));
}

// A resume continues at the checkpoint's data cursor (epoch, step in it); that position only
// means the same with the same training samples and global batch. Checked on every worker.
Status CheckResumeData(const CheckpointVersion& v, const config::TrainConfig& c, const worker::Dataset* train) {
  const auto& m = v.manifest;
  const std::string where = "epoch " + std::to_string(m.epoch()) + ", step " + std::to_string(m.step_in_epoch()) + " of it";
  const std::string fix = "; resume with the same data, data.train_limit, batch_size and seed (or start a new run from its "
                          "weights with --init-from after shardps ckpt export)";
  if (m.global_batch() != c.batch_size() || m.seed() != c.seed()) {
    return InvalidArgument("checkpoint " + v.path + " was taken with batch_size " + std::to_string(m.global_batch()) + " and seed " +
                           std::to_string(m.seed()) + "; this run has " + std::to_string(c.batch_size()) + " and " +
                           std::to_string(c.seed()) + " (the data cursor, " + where + ", would not mean the same)" + fix);
  }
  if (train == nullptr || m.train_samples() == 0) return Status::Ok();  // a server, or a checkpoint that does not record it
  if (m.train_samples() != static_cast<uint64_t>(train->num_samples)) {
    return InvalidArgument("checkpoint " + v.path + " was taken training on " + std::to_string(m.train_samples()) +
                           " samples; this run has " + std::to_string(train->num_samples) + " (data.train_limit " +
                           std::to_string(c.data().train_limit()) + ", " + c.data().train() + "): the data cursor, " + where +
                           ", would not mean the same" + fix);
  }
  if (m.train_data_crc32c() != TrainDataCrc(*train)) {
    return InvalidArgument("checkpoint " + v.path + " was taken on other training data than " + c.data().train() +
                           " holds now (same sample count, different content): the data cursor, " + where +
                           ", would not mean the same" + fix);
  }
  return Status::Ok();
}

namespace {

// 48 bits of the SHA-256 of `text` (the job agreement compares them; printed in hex).
int64_t Digest48(const std::string& text) {
  Sha256 h;
  h.Update(text.data(), text.size());
  return static_cast<int64_t>(std::stoull(h.HexDigest().substr(0, 12), nullptr, 16));
}

}  // namespace

// The job agreement on the run's data and batch configuration: every rank's values are gathered
// on rank 0, which refuses a mismatch naming the ranks and their values. Without it a worker
// started with another batch size or training set would train other steps than its peers and
// the job would hang until a request timeout blamed a server. Every process calls it once, after
// loading its data. Returns rank 0's verdict (OK elsewhere).
Status CompareRanks(Job& job, const Cluster& cluster, const config::TrainConfig& c, const worker::Dataset& train,
                    const worker::Dataset& test) {
  constexpr int64_t kNone = INT64_MIN;  // a value this rank does not have (servers load no data)
  const bool w = cluster.is_worker();
  config::TrainConfig shared = c;
  shared.clear_metrics_csv();  // each process may write its metrics elsewhere
  struct Fact {
    std::string name;
    int64_t value;
    bool hex;
  };
  const std::vector<Fact> facts = {
      {"processes in the job", job.size(), false},
      {"servers", cluster.num_servers(), false},
      {"workers", cluster.num_workers(), false},
      {"batch_size", c.batch_size(), false},
      {"epochs", c.epochs(), false},
      {"seed", static_cast<int64_t>(c.seed() & 0x7fffffffffffffffULL), false},
      {"mode", Digest48(c.mode()), true},
      {"local_steps", c.local_steps(), false},
      {"data.train_limit", c.data().train_limit(), false},
      {"data.test_limit", c.data().test_limit(), false},
      {"training samples loaded", w ? train.num_samples : kNone, false},
      {"test samples loaded", w ? test.num_samples : kNone, false},
      {"input features", w ? train.num_features : kNone, false},
      {"model (model, hidden, num_classes)", Digest48(c.model() + "|" + [&] {
         std::string h;
         for (int64_t x : c.hidden()) h += std::to_string(x) + ",";
         return h + "|" + std::to_string(c.data().num_classes());
       }()), true},
      {"optimizer", Digest48(c.optimizer().SerializeAsString()), true},
      {"whole config (but metrics_csv)", Digest48(ConfigToText(shared)), true},
  };
  std::string disagreements;
  for (const Fact& f : facts) {
    SHARDPS_ASSIGN_OR_RETURN(std::vector<int64_t> all, job.Gather(f.value));
    if (all.empty()) continue;  // not rank 0
    std::vector<std::pair<int64_t, std::string>> groups;  // value -> ranks, in order of first appearance
    for (int r = 0; r < static_cast<int>(all.size()); ++r) {
      if (all[r] == kNone) continue;
      auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == all[r]; });
      if (it == groups.end()) {
        groups.push_back({all[r], ""});
        it = groups.end() - 1;
      }
      it->second += (it->second.empty() ? "" : ", ") + cluster.Describe(r);
    }
    if (groups.size() < 2) continue;
    std::string m = f.name + ":";
    for (const auto& [value, ranks] : groups) {
      char v[32];
      if (f.hex) std::snprintf(v, sizeof(v), "digest %012llx", static_cast<unsigned long long>(value));
      else std::snprintf(v, sizeof(v), "%lld", static_cast<long long>(value));
      m += std::string(" ") + v + " on " + ranks + ";";
    }
    m.pop_back();
    disagreements += (disagreements.empty() ? "" : " | ") + m;
    // The first few are enough: a digest differs whenever a named value does.
  }
  if (disagreements.empty()) return Status::Ok();
  return FailedPrecondition("the processes of this job were started with different configurations (every process needs "
                            "the same config, flags and data): " + disagreements);
}

// What a failed process says besides the error: where training stood and what to resume from.
std::string WhereToResume(const config::TrainConfig& c, int64_t steps_done) {
  std::string m = steps_done >= 0 ? "; last completed step " + std::to_string(steps_done) : "";
  if (c.checkpoint_dir().empty()) return m + "; no checkpoint directory was configured, nothing to resume from";
  const auto versions = ListCheckpoints(c.checkpoint_dir(), /*verify=*/false);
  for (auto it = versions.rbegin(); it != versions.rend(); ++it) {
    if (!it->status.ok()) continue;
    return m + "; newest checkpoint " + it->path + " (step " + std::to_string(it->manifest.step()) + "): resume with --resume " +
           c.checkpoint_dir();
  }
  return m + "; no checkpoint in " + c.checkpoint_dir() + " yet";
}

Status ParseSlowWorker(const std::string& spec, int* worker, double* factor) {
  const auto bad = [&] {
    return InvalidArgument("--test-slow-worker wants W:F (worker index W >= 0 or any, factor F in [1, 100]), got '" + spec +
                           "'");
  };
  const size_t colon = spec.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == spec.size()) return bad();
  const std::string w = spec.substr(0, colon), f = spec.substr(colon + 1);
  if (w != "any" && (w.size() > 6 || w.find_first_not_of("0123456789") != std::string::npos)) return bad();
  if (f.size() > 16 || f.find_first_not_of("0123456789.") != std::string::npos) return bad();
  char* end = nullptr;
  const double v = std::strtod(f.c_str(), &end);
  if (end != f.c_str() + f.size() || !(v >= 1.0 && v <= 100.0)) return bad();
  *worker = w == "any" ? kAnySlowWorker : std::stoi(w);
  *factor = v;
  return Status::Ok();
}

}  // namespace shardps::tools
