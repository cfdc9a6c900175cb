// Prometheus metrics: counters, gauges and histograms in families keyed by label values, rendered
// in the text exposition format 0.0.4 (what a /metrics endpoint serves with kContentType).
//
//   metrics::Registry registry;   // made once at the program's edge and passed down
//   auto& pushes = registry.AddCounter("shardps_pushes_total", "Pushes applied.", {"table"});
//   auto& latency = registry.AddHistogram("shardps_push_seconds", "Push latency.",
//                                         metrics::LatencyBuckets());
//   metrics::Counter& w_pushes = pushes.With({"w"});   // look up once, keep the reference
//   w_pushes.Inc();
//   latency.With({}).Observe(0.0031);
//   std::string body = registry.Render();
//
// Names follow Prometheus: metric names match [a-zA-Z_:][a-zA-Z0-9_:]*, label names
// [a-zA-Z_][a-zA-Z0-9_]* and do not start with "__" ("le" is reserved for a histogram's buckets);
// a counter's name should end in _total and a unit should be a base unit (_seconds, _bytes), as
// `promtool check metrics` asks. A bad name, a repeated label name, a histogram's bounds that are
// not finite and strictly increasing, a family name already taken (a histogram takes its name and
// name_bucket, name_sum, name_count) and a wrong number of label values in With() or Remove() are
// programming errors: the process aborts with a message, also in builds without assertions, since
// carrying on would serve text no scraper accepts. Counter::Inc with a negative or NaN value is
// asserted (and ignored without assertions: the counter stays monotonic). Label values are
// arbitrary strings; Render escapes them (bytes that are not UTF-8 become U+FFFD).
//
// Thread safety: every operation may be called from any thread. Counter, Gauge and Histogram
// updates and reads are lock-free (atomic bit patterns); Registry::Add*, Family::With/Remove and
// Render take a mutex, so look a child up once and keep the reference on a hot path. Render reads
// each child's atomics one by one: under concurrent updates a histogram's _sum may lag or lead its
// buckets by the observations in flight, while its _count always equals its le="+Inf" bucket.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "shardps/base/thread_annotations.h"

namespace shardps::metrics {

template <typename T>
class Family;
class Registry;

// A value that only goes up (requests served, bytes sent). Made by Family<Counter>::With.
class Counter {
 public:
  Counter(const Counter&) = delete;
  Counter& operator=(const Counter&) = delete;

  // Adds `v` >= 0 (asserted; NaN too).
  void Inc(double v = 1.0);
  double value() const;

 private:
  friend class Family<Counter>;
  Counter() = default;

  std::atomic<uint64_t> bits_{0};  // the double's bit pattern; 0 is +0.0
};

// A value that goes up and down (queue length, bytes in use). Made by Family<Gauge>::With.
class Gauge {
 public:
  Gauge(const Gauge&) = delete;
  Gauge& operator=(const Gauge&) = delete;

  void Set(double v);
  void Add(double v);  // negative to subtract
  double value() const;

 private:
  friend class Family<Gauge>;
  Gauge() = default;

  std::atomic<uint64_t> bits_{0};  // the double's bit pattern; 0 is +0.0
};

// Observations counted in buckets by upper bound (v <= bound; a NaN goes to +Inf), with their sum.
// Made by Family<Histogram>::With with the family's bounds.
class Histogram {
 public:
  Histogram(const Histogram&) = delete;
  Histogram& operator=(const Histogram&) = delete;

  void Observe(double v);
  // The number of observations: the sum of bucket_counts().
  uint64_t count() const;
  double sum() const;
  // Counts per bucket (not cumulative), one per upper bound, then the last one for +Inf.
  std::vector<uint64_t> bucket_counts() const;

 private:
  friend class Family<Histogram>;
  // `upper_bounds` is the family's, which outlives its children.
  explicit Histogram(const std::vector<double>& upper_bounds);

  const std::vector<double>& bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // bounds_.size() + 1, the last one +Inf
  std::atomic<uint64_t> sum_bits_{0};                 // the double's bit pattern
};

namespace detail {
// What the registry keeps of a family of any kind.
class FamilyBase {
 public:
  virtual ~FamilyBase() = default;
  // Appends the family's # HELP, # TYPE and sample lines; nothing when it has no children.
  virtual void RenderTo(std::string* out) const = 0;
};
}  // namespace detail

// One metric name with its help text and label names, and a child per distinct label values.
// A family without label names has its one child (With({})) from the start, so it renders 0
// before the first update. Made by Registry::Add*, which owns it.
template <typename T>
class Family : public detail::FamilyBase {
 public:
  Family(const Family&) = delete;
  Family& operator=(const Family&) = delete;

  // The child for these label values (size must equal the family's label names; checked with an
  // assert as a programming error). The reference stays valid for the registry's lifetime unless Remove()d.
  T& With(const std::vector<std::string>& label_values) SHARDPS_EXCLUDES(mu_);
  // Drops the child for these label values from the family and the output (no-op when absent).
  // References to it dangle afterwards; a later With() makes a new child starting from zero.
  void Remove(const std::vector<std::string>& label_values) SHARDPS_EXCLUDES(mu_);

  // Runs fn(child) with the family's lock held, so that a concurrent Remove/RemoveWhere cannot
  // free the child meanwhile: for families whose children are removed while others update them.
  void Update(const std::vector<std::string>& label_values, const std::function<void(T&)>& fn) SHARDPS_EXCLUDES(mu_);
  // Drops every child whose value of label `label_name` (a name of this family) satisfies `drop`.
  void RemoveWhere(const std::string& label_name, const std::function<bool(const std::string&)>& drop) SHARDPS_EXCLUDES(mu_);

  void RenderTo(std::string* out) const override SHARDPS_EXCLUDES(mu_);

 private:
  friend class Registry;
  T& FindOrAdd(const std::vector<std::string>& label_values) SHARDPS_REQUIRES(mu_);
  Family(std::string name, std::string help, std::vector<std::string> label_names,
         std::vector<double> bucket_upper_bounds);

  const std::string name_;
  const std::string help_;
  const std::vector<std::string> label_names_;
  const std::vector<double> bounds_;  // histograms only
  mutable Mutex mu_;
  // Sorted by label values, which is the rendering order; unique_ptr keeps references stable.
  std::map<std::vector<std::string>, std::unique_ptr<T>> children_ SHARDPS_GUARDED_BY(mu_);
};

extern template class Family<Counter>;
extern template class Family<Gauge>;
extern template class Family<Histogram>;

// The families of one program (or one test), in registration order.
class Registry {
 public:
  Registry();
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  Family<Counter>& AddCounter(const std::string& name, const std::string& help,
                              std::vector<std::string> label_names = {}) SHARDPS_EXCLUDES(mu_);
  Family<Gauge>& AddGauge(const std::string& name, const std::string& help,
                          std::vector<std::string> label_names = {}) SHARDPS_EXCLUDES(mu_);
  Family<Histogram>& AddHistogram(const std::string& name, const std::string& help,
                                  std::vector<double> bucket_upper_bounds,
                                  std::vector<std::string> label_names = {}) SHARDPS_EXCLUDES(mu_);

  // Text exposition format 0.0.4: # HELP, # TYPE, samples; families in registration order,
  // children sorted by label values; histogram _bucket{le="..."} cumulative incl. le="+Inf", _sum, _count.
  // Families without children are left out. Numbers: integers below 2^53 in full ("3"), others
  // with the fewest digits that read back to the same double ("0.1", "1e-05"), "+Inf", "-Inf", "NaN".
  std::string Render() const SHARDPS_EXCLUDES(mu_);

 private:
  // Checks the names and bounds (aborting on a programming error), then adds the family.
  template <typename T>
  Family<T>& Add(const std::string& name, const std::string& help, std::vector<std::string> label_names,
                 std::vector<double> bucket_upper_bounds) SHARDPS_EXCLUDES(mu_);

  mutable Mutex mu_;
  std::vector<std::unique_ptr<detail::FamilyBase>> families_ SHARDPS_GUARDED_BY(mu_);
  // Every sample name the families render (a histogram's name_bucket, name_sum, name_count too),
  // so that no two families' samples can clash.
  std::set<std::string> sample_names_ SHARDPS_GUARDED_BY(mu_);
};

// Default latency buckets in seconds: 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10
std::vector<double> LatencyBuckets();

// Resident set size of this process in bytes (/proc/self/statm), 0 if unreadable: what the
// process_resident_memory_bytes gauge of a serving or training process shows.
uint64_t ResidentBytes();

// The Content-Type of Render()'s text.
inline constexpr const char* kContentType = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace shardps::metrics
