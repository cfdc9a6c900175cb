#include "shardps/serve/model_store.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

namespace shardps::serve {
namespace {

namespace fs = std::filesystem;

bool ValidTagName(const std::string& t) {
  if (t.empty() || t.size() > 64 || t.find_first_not_of("0123456789") == std::string::npos) return false;
  return std::all_of(t.begin(), t.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.'; });
}

std::string StatLine(const std::string& path, const std::string& name) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) return name + ":missing:" + std::to_string(errno) + ";";
  return name + ":" + std::to_string(st.st_ino) + ":" + std::to_string(st.st_mtim.tv_sec) + "." +
         std::to_string(st.st_mtim.tv_nsec) + ":" + std::to_string(st.st_size) + ";";
}

// What changes when the registry changes: the directory itself (versions added or removed, TAGS
// and HEAD renamed in), each entry (a MANIFEST renamed into a version directory changes that
// directory's mtime).
std::string Fingerprint(const std::string& dir) {
  if (dir.empty()) return "";
  std::string fp = StatLine(dir, ".");
  std::error_code ec;
  std::vector<std::string> names;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    names.push_back(it->path().filename().string());
  }
  std::sort(names.begin(), names.end());
  for (const auto& n : names) fp += StatLine(dir + "/" + n, n);
  return fp;
}

// VerifyCheckpoint's words for a version directory that has no MANIFEST.
constexpr char kIncompleteVersion[] = "no MANIFEST (incomplete checkpoint)";

std::string Parent(const std::string& version_path) {
  const size_t slash = version_path.find_last_of('/');
  return slash == std::string::npos ? "." : version_path.substr(0, slash);
}

}  // namespace

std::string ModelSelector::SpecIn(const std::string& dir) const {
  switch (kind) {
    case Kind::kLatest: return dir;
    case Kind::kVersion: return dir + "@" + std::to_string(version);
    case Kind::kTag: return dir + "@" + tag;
  }
  return dir;
}

Result<ModelSelector> ParseModelSelector(const std::string& text) {
  ModelSelector s;
  s.text = text;
  if (text == "latest") return s;
  if (!text.empty() && text.size() <= 19 && text.find_first_not_of("0123456789") == std::string::npos) {
    s.kind = ModelSelector::Kind::kVersion;
    s.version = std::stoull(text);
    if (s.version == 0) return InvalidArgument("--version 0: versions start at 1");
    return s;
  }
  if (text.rfind("tag:", 0) == 0 && ValidTagName(text.substr(4))) {
    s.kind = ModelSelector::Kind::kTag;
    s.tag = text.substr(4);
    return s;
  }
  return InvalidArgument("--version '" + text + "': expected latest, a version number or tag:NAME");
}

ModelStore::ModelStore(ModelStoreOptions options) : options_(std::move(options)) {
  if (options_.metrics) {
    const std::vector<std::string> model{options_.model_name};
    auto& r = *options_.metrics;
    m_version_ = &r.AddGauge("shardps_serve_model_version", "Checkpoint version being served", {"model"}).With(model);
    m_bytes_ = &r.AddGauge("shardps_serve_model_bytes", "Bytes of weights of the version being served", {"model"}).With(model);
    m_fallback_ = &r.AddGauge("shardps_serve_fallback_active", "1 while the version served comes from the fallback registry",
                              {"model"}).With(model);
    m_swaps_ = &r.AddCounter("shardps_serve_swaps_total", "Versions swapped in (the first load included)", {"model"}).With(model);
    m_failures_ = &r.AddCounter("shardps_serve_load_failures_total",
                                "Selected versions that could not be resolved, loaded or verified (newer invalid ones skipped by latest included)", {"model"}).With(model);
    m_fallbacks_ = &r.AddCounter("shardps_serve_fallbacks_total", "Switches to the fallback registry", {"model"}).With(model);
  }
}

ModelStore::~ModelStore() { Stop(); }

Result<std::unique_ptr<ModelStore>> ModelStore::Open(ModelStoreOptions options) {
  if (options.registry.empty()) return InvalidArgument("no registry given (--registry DIR)");
  std::unique_ptr<ModelStore> store(new ModelStore(std::move(options)));
  store->PollOnce(/*force=*/true);
  if (!store->Current()) {
    return Unavailable("nothing to serve: " + store->health().problem);
  }
  return store;
}

std::shared_ptr<const Servable> ModelStore::Current() const {
  std::lock_guard<std::mutex> l(mu_);
  return current_;
}

ModelHealth ModelStore::health() const {
  std::lock_guard<std::mutex> l(mu_);
  return health_;
}

void ModelStore::Report(const std::string& problem) {
  {
    std::lock_guard<std::mutex> l(mu_);
    health_.problem = problem;
  }
  if (problem.empty() || problem == last_reported_) return;
  last_reported_ = problem;
  if (options_.log) options_.log(problem);
}

void ModelStore::Swap(std::shared_ptr<const Servable> next) {
  std::shared_ptr<const Servable> old;
  std::string line;
  {
    std::lock_guard<std::mutex> l(mu_);
    old = std::move(current_);
    current_ = next;
    const bool to_fallback = next->source == "fallback" && (!old || old->source != "fallback");
    health_.ready = true;
    health_.source = next->source;
    health_.registry = next->registry;
    health_.version = next->version;
    ++health_.swaps;
    if (to_fallback) ++health_.fallbacks;
    if (m_version_) {
      m_version_->Set(static_cast<double>(next->version));
      m_bytes_->Set(static_cast<double>(next->bytes));
      m_fallback_->Set(next->source == "fallback" ? 1 : 0);
      m_swaps_->Inc();
      if (to_fallback) m_fallbacks_->Inc();
    }
    line = "serving model '" + options_.model_name + "' version " + std::to_string(next->version) + " (step " +
           std::to_string(next->step) + ") from the " + next->source + " registry '" + next->registry + "'";
    if (old) line += " (was version " + std::to_string(old->version) + (old->source != next->source ? " from the " + old->source : "") + ")";
  }
  if (options_.log) options_.log(line);
  // `old` is released here, outside the lock; in-flight requests may still hold it.
}

bool ModelStore::TryServe(const std::string& registry, const std::string& source, std::string* why) {
  std::string skipped;
  auto v = ResolveCheckpoint(options_.selector.SpecIn(registry), [&](const std::string& w) {
    // A version without its MANIFEST is one a job is writing right now (the MANIFEST is committed
    // last): not committed yet, so not a problem to report.
    if (w.find(kIncompleteVersion) != std::string::npos) return;
    skipped += (skipped.empty() ? "" : "; ") + w;
  });
  if (!v.ok()) {
    *why = "the " + source + " registry cannot serve " + options_.selector.text + ": " + v.status().message();
    return false;
  }
  if (!skipped.empty()) *why = "the " + source + " registry: " + skipped;  // served, but reported
  const std::shared_ptr<const Servable> cur = Current();
  if (cur && cur->source == source && cur->registry == Parent(v->path) && cur->version == v->version) return true;
  auto loaded = LoadServable(std::move(*v), source);
  if (!loaded.ok()) {
    *why = "the " + source + " registry: version could not be loaded: " + loaded.status().message();
    return false;
  }
  Swap(std::move(*loaded));
  return true;
}

void ModelStore::PollOnce(bool force) {
  const std::string fp = Fingerprint(options_.registry) + "|" + Fingerprint(options_.fallback_registry);
  const auto now = std::chrono::steady_clock::now();
  const bool degraded = !health().problem.empty();
  // A problem the fingerprint cannot see (a byte repaired in place) is re-checked every 10 s.
  if (!force && fp == fingerprint_ && !(degraded && now - last_resolve_ >= std::chrono::seconds(10))) return;
  fingerprint_ = fp;
  last_resolve_ = now;
  std::string why;
  const bool served = TryServe(options_.registry, "primary", &why);
  if (served) {
    // "" clears the problem; a newer invalid version skipped by "latest" stays reported, and
    // counts as a failed load once.
    if (!why.empty() && why != last_reported_ && m_failures_) m_failures_->Inc();
    Report(why);
    return;
  }
  if (m_failures_) m_failures_->Inc();
  if (!options_.fallback_registry.empty()) {
    std::string why_fallback;
    if (TryServe(options_.fallback_registry, "fallback", &why_fallback)) {
      Report(why + " (serving from the fallback registry '" + options_.fallback_registry + "')");
      return;
    }
    why += "; " + why_fallback;
  }
  const auto cur = Current();
  if (cur) why += " (still serving version " + std::to_string(cur->version) + " from the " + cur->source + " registry)";
  Report(why);
}

void ModelStore::Start() {
  if (watcher_.joinable()) return;
  watcher_ = std::thread([this] {
    std::unique_lock<std::mutex> l(stop_mu_);
    while (!stop_cv_.wait_for(l, options_.poll_interval, [this] { return stopping_; })) {
      l.unlock();
      PollOnce();
      l.lock();
    }
  });
}

void ModelStore::Stop() {
  {
    std::lock_guard<std::mutex> l(stop_mu_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
  if (watcher_.joinable()) watcher_.join();
}

}  // namespace shardps::serve
