// ModelStore: the version a model server serves, kept in step with its checkpoint registry.
//
//   ModelStoreOptions o;
//   o.registry = "runs/mlp";  o.fallback_registry = "/backup/mlp";
//   SHARDPS_ASSIGN_OR_RETURN(o.selector, ParseModelSelector("tag:prod"));
//   SHARDPS_ASSIGN_OR_RETURN(auto store, ModelStore::Open(o));   // loads, or says why it cannot
//   store->Start();                                              // the watcher thread
//   std::shared_ptr<const Servable> s = store->Current();       // per request
//
// Selection: "latest" is what a plain "DIR" resolves to in the registry (the rolled-back-to
// version while a rollback holds, else the newest valid one; newer invalid ones are skipped and
// reported), "N" version N, "tag:T" the version tag T points at.
// Watching: every poll (200 ms by default) stats the registry directory, its TAGS and HEAD files
// and each version directory; only when that fingerprint changed (a version committed or
// deleted, a tag moved, a rollback) is the selection resolved again (which verifies the
// version's CRC32Cs). A new selection is loaded beside the serving one and swapped in with one
// pointer store; requests hold a shared_ptr to the version they started with, so the old one is
// freed when its last in-flight request finishes. A version that fails to load or verify is
// reported (log, metrics, health) and the serving one stays.
// Fallback: when the primary registry is unreadable (missing, not a directory) or its selected
// version is invalid, the same selection is served from the fallback registry (if given), and
// the primary is resolved again when its fingerprint changes, and every 10 s while degraded.
// Thread safety: Current() and health() from any thread; PollOnce() from one thread at a time
// (the watcher's, or a test's while the watcher is not started).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <condition_variable>

#include "shardps/base/metrics.h"
#include "shardps/base/status.h"
#include "shardps/serve/servable.h"

namespace shardps::serve {

struct ModelSelector {
  enum class Kind { kLatest, kVersion, kTag };
  Kind kind = Kind::kLatest;
  uint64_t version = 0;
  std::string tag;
  std::string text;  // as given: "latest", "7", "tag:prod"
  // The checkpoint spec of this selection in `dir` ("dir", "dir@7", "dir@prod").
  std::string SpecIn(const std::string& dir) const;
};
Result<ModelSelector> ParseModelSelector(const std::string& text);

struct ModelStoreOptions {
  std::string model_name = "model";
  std::string registry;
  std::string fallback_registry;  // "" for none
  ModelSelector selector;
  std::chrono::milliseconds poll_interval{200};
  // Each load, swap, fallback and problem, as one line (the program prints it with a timestamp).
  std::function<void(const std::string&)> log;
  metrics::Registry* metrics = nullptr;  // optional: the serve_* model metrics are registered here
};

struct ModelHealth {
  bool ready = false;        // a version is loaded
  std::string source;        // "primary" / "fallback" / "" (none loaded)
  std::string registry;
  uint64_t version = 0;
  std::string problem;       // the latest unresolved problem ("" when the primary serves as selected)
  uint64_t swaps = 0;
  uint64_t load_failures = 0;
  uint64_t fallbacks = 0;    // times the fallback registry was switched to
};

class ModelStore {
 public:
  // Loads the first version (from the primary, else the fallback): an error when neither can
  // be served, naming both reasons.
  static Result<std::unique_ptr<ModelStore>> Open(ModelStoreOptions options);
  ~ModelStore();

  std::shared_ptr<const Servable> Current() const;
  ModelHealth health() const;
  const ModelStoreOptions& options() const { return options_; }

  void Start();  // the watcher thread: PollOnce every poll_interval
  void Stop();   // joins it (idempotent)
  // One step of the watcher: re-resolve if the registries changed (or `force`), load, swap.
  void PollOnce(bool force = false);

 private:
  explicit ModelStore(ModelStoreOptions options);
  struct Target;
  void Report(const std::string& problem);
  void Swap(std::shared_ptr<const Servable> next);
  bool TryServe(const std::string& registry, const std::string& source, std::string* why);

  ModelStoreOptions options_;
  mutable std::mutex mu_;
  std::shared_ptr<const Servable> current_;  // guarded by mu_
  ModelHealth health_;                       // guarded by mu_ (ready/source/version mirror current_)
  std::string fingerprint_;                  // watcher thread only
  std::chrono::steady_clock::time_point last_resolve_{};
  std::string last_reported_;                // watcher thread only: a problem is logged once

  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;
  std::thread watcher_;

  metrics::Gauge* m_version_ = nullptr;
  metrics::Gauge* m_bytes_ = nullptr;
  metrics::Gauge* m_fallback_ = nullptr;
  metrics::Counter* m_swaps_ = nullptr;
  metrics::Counter* m_failures_ = nullptr;
  metrics::Counter* m_fallbacks_ = nullptr;
};

}  // namespace shardps::serve
