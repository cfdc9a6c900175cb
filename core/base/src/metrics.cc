#include "shardps/base/metrics.h"

#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cassert>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <type_traits>
#include <utility>

namespace shardps::metrics {
namespace {

static_assert(std::atomic<uint64_t>::is_always_lock_free, "metric updates must be lock-free");

// A caller's bug (see metrics.h): the message on stderr, then abort, as a failed assert would,
// also without assertions. Only registration, With() and Remove() check, not the updates.
[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "shardps::metrics: %s\n", what.c_str());
  std::abort();
}

// `bits` holds a double's bit pattern; adds `v` to it without a lock.
void AtomicAdd(std::atomic<uint64_t>& bits, double v) {
  uint64_t old = bits.load(std::memory_order_relaxed);
  while (!bits.compare_exchange_weak(old, std::bit_cast<uint64_t>(std::bit_cast<double>(old) + v),
                                     std::memory_order_relaxed)) {
  }
}

double Load(const std::atomic<uint64_t>& bits) { return std::bit_cast<double>(bits.load(std::memory_order_relaxed)); }

bool IsAsciiLetter(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// [a-zA-Z_:][a-zA-Z0-9_:]*
bool ValidMetricName(std::string_view s) {
  if (s.empty() || IsDigit(s[0])) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return IsAsciiLetter(c) || IsDigit(c) || c == '_' || c == ':'; });
}

// [a-zA-Z_][a-zA-Z0-9_]*
bool ValidLabelName(std::string_view s) {
  if (s.empty() || IsDigit(s[0])) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return IsAsciiLetter(c) || IsDigit(c) || c == '_'; });
}

// The length of the well-formed UTF-8 sequence that starts s[i] (RFC 3629: no overlong forms, no
// surrogates, nothing above U+10FFFF), or 0 when the byte does not start one.
size_t Utf8Length(std::string_view s, size_t i) {
  const auto byte = [&](size_t k) { return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : 0u; };
  const auto cont = [&](size_t k, unsigned lo = 0x80, unsigned hi = 0xBF) { return byte(k) >= lo && byte(k) <= hi; };
  const unsigned b = byte(0);
  if (b < 0x80) return 1;
  if (b >= 0xC2 && b <= 0xDF) return cont(1) ? 2 : 0;
  if (b == 0xE0) return cont(1, 0xA0) && cont(2) ? 3 : 0;
  if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) return cont(1) && cont(2) ? 3 : 0;
  if (b == 0xED) return cont(1, 0x80, 0x9F) && cont(2) ? 3 : 0;
  if (b == 0xF0) return cont(1, 0x90) && cont(2) && cont(3) ? 4 : 0;
  if (b >= 0xF1 && b <= 0xF3) return cont(1) && cont(2) && cont(3) ? 4 : 0;
  if (b == 0xF4) return cont(1, 0x80, 0x8F) && cont(2) && cont(3) ? 4 : 0;
  return 0;
}

// Appends `s` escaped for the text format: backslash and newline always (HELP text), the double
// quote too in a label value. A byte that is not part of well-formed UTF-8 becomes U+FFFD, since
// Prometheus refuses the whole exposition otherwise.
void AppendEscaped(std::string* out, std::string_view s, bool label_value) {
  for (size_t i = 0; i < s.size();) {
    const size_t n = Utf8Length(s, i);
    if (n == 0) {
      out->append("\xEF\xBF\xBD");
      ++i;
      continue;
    }
    const char c = s[i];
    if (c == '\\') {
      out->append("\\\\");
    } else if (c == '\n') {
      out->append("\\n");
    } else if (c == '"' && label_value) {
      out->append("\\\"");
    } else {
      out->append(s, i, n);
    }
    i += n;
  }
}

// Integers below 2^53 (every one of them exact) in full, other finite values with the fewest digits
// that read back to the same double, then the spellings Prometheus uses for the rest.
void AppendDouble(std::string* out, double v) {
  if (std::isnan(v)) {
    out->append("NaN");
    return;
  }
  if (std::isinf(v)) {
    out->append(v > 0 ? "+Inf" : "-Inf");
    return;
  }
  constexpr double kExactIntegers = 9007199254740992.0;  // 2^53
  const bool integer = v == std::trunc(v) && std::fabs(v) < kExactIntegers;
  char buf[64];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v, integer ? std::chars_format::fixed : std::chars_format::general);
  assert(ec == std::errc());
  out->append(buf, end);
}

void AppendUint(std::string* out, uint64_t v) {
  char buf[24];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  assert(ec == std::errc());
  out->append(buf, end);
}

// Appends `name suffix{l1="v1",...[,le="..."]} ` (no braces without labels), ready for the value.
void AppendSeries(std::string* out, const std::string& name, std::string_view suffix,
                  const std::vector<std::string>& label_names, const std::vector<std::string>& label_values,
                  std::string_view le = {}) {
  out->append(name).append(suffix);
  if (!label_names.empty() || !le.empty()) {
    out->push_back('{');
    for (size_t i = 0; i < label_names.size(); ++i) {
      if (i > 0) out->push_back(',');
      out->append(label_names[i]).append("=\"");
      AppendEscaped(out, label_values[i], /*label_value=*/true);
      out->push_back('"');
    }
    if (!le.empty()) {
      if (!label_names.empty()) out->push_back(',');
      out->append("le=\"").append(le).push_back('"');
    }
    out->push_back('}');
  }
  out->push_back(' ');
}

// The sample lines of one child.
void AppendSamples(std::string* out, const std::string& name, const std::vector<std::string>& label_names,
                   const std::vector<std::string>& label_values, const std::vector<double>& /*bounds*/,
                   const Counter& c) {
  AppendSeries(out, name, "", label_names, label_values);
  AppendDouble(out, c.value());
  out->push_back('\n');
}

void AppendSamples(std::string* out, const std::string& name, const std::vector<std::string>& label_names,
                   const std::vector<std::string>& label_values, const std::vector<double>& /*bounds*/,
                   const Gauge& g) {
  AppendSeries(out, name, "", label_names, label_values);
  AppendDouble(out, g.value());
  out->push_back('\n');
}

void AppendSamples(std::string* out, const std::string& name, const std::vector<std::string>& label_names,
                   const std::vector<std::string>& label_values, const std::vector<double>& bounds,
                   const Histogram& h) {
  // One snapshot of the buckets, so that the cumulative counts never go down and _count is the
  // le="+Inf" bucket, whatever observations land meanwhile.
  const std::vector<uint64_t> counts = h.bucket_counts();
  uint64_t cumulative = 0;
  std::string le;
  for (size_t i = 0; i < counts.size(); ++i) {
    cumulative += counts[i];
    le.clear();
    if (i < bounds.size()) {
      AppendDouble(&le, bounds[i]);
    } else {
      le = "+Inf";
    }
    AppendSeries(out, name, "_bucket", label_names, label_values, le);
    AppendUint(out, cumulative);
    out->push_back('\n');
  }
  AppendSeries(out, name, "_sum", label_names, label_values);
  AppendDouble(out, h.sum());
  out->push_back('\n');
  AppendSeries(out, name, "_count", label_names, label_values);
  AppendUint(out, cumulative);
  out->push_back('\n');
}

template <typename T>
constexpr const char* TypeName() {
  if constexpr (std::is_same_v<T, Counter>) {
    return "counter";
  } else if constexpr (std::is_same_v<T, Gauge>) {
    return "gauge";
  } else {
    static_assert(std::is_same_v<T, Histogram>);
    return "histogram";
  }
}

}  // namespace

// ---- Counter, Gauge, Histogram ----

void Counter::Inc(double v) {
  assert(v >= 0.0 && "Counter::Inc of a negative or NaN value");
  if (!(v >= 0.0)) return;  // without assertions: ignored, the counter stays monotonic
  AtomicAdd(bits_, v);
}

double Counter::value() const { return Load(bits_); }

void Gauge::Set(double v) { bits_.store(std::bit_cast<uint64_t>(v), std::memory_order_relaxed); }
void Gauge::Add(double v) { AtomicAdd(bits_, v); }
double Gauge::value() const { return Load(bits_); }

Histogram::Histogram(const std::vector<double>& upper_bounds)
    : bounds_(upper_bounds), counts_(std::make_unique<std::atomic<uint64_t>[]>(upper_bounds.size() + 1)) {}

void Histogram::Observe(double v) {
  // The first bucket whose bound is >= v; +Inf (the last) when there is none or v is NaN.
  const size_t i = std::isnan(v) ? bounds_.size()
                                 : static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  AtomicAdd(sum_bits_, v);
}

uint64_t Histogram::count() const {
  uint64_t n = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) n += counts_[i].load(std::memory_order_relaxed);
  return n;
}

double Histogram::sum() const { return Load(sum_bits_); }

std::vector<uint64_t> Histogram::bucket_counts() const {
  std::vector<uint64_t> counts(bounds_.size() + 1);
  for (size_t i = 0; i < counts.size(); ++i) counts[i] = counts_[i].load(std::memory_order_relaxed);
  return counts;
}

// ---- Family ----

template <typename T>
Family<T>::Family(std::string name, std::string help, std::vector<std::string> label_names,
                  std::vector<double> bucket_upper_bounds)
    : name_(std::move(name)),
      help_(std::move(help)),
      label_names_(std::move(label_names)),
      bounds_(std::move(bucket_upper_bounds)) {
  if (label_names_.empty()) With({});  // the one child exists from the start
}

template <typename T>
T& Family<T>::With(const std::vector<std::string>& label_values) {
  if (label_values.size() != label_names_.size()) {
    Fail("metric '" + name_ + "': With() got " + std::to_string(label_values.size()) + " label values for " +
         std::to_string(label_names_.size()) + " label names");
  }
  MutexLock lock(mu_);
  return FindOrAdd(label_values);
}

template <typename T>
T& Family<T>::FindOrAdd(const std::vector<std::string>& label_values) {
  auto it = children_.find(label_values);
  if (it == children_.end()) {
    std::unique_ptr<T> child;
    if constexpr (std::is_same_v<T, Histogram>) {
      child.reset(new T(bounds_));
    } else {
      child.reset(new T());
    }
    it = children_.emplace(label_values, std::move(child)).first;
  }
  return *it->second;
}

template <typename T>
void Family<T>::Update(const std::vector<std::string>& label_values, const std::function<void(T&)>& fn) {
  if (label_values.size() != label_names_.size()) {
    Fail("metric '" + name_ + "': Update() got " + std::to_string(label_values.size()) + " label values for " +
         std::to_string(label_names_.size()) + " label names");
  }
  MutexLock lock(mu_);
  fn(FindOrAdd(label_values));
}

template <typename T>
void Family<T>::RemoveWhere(const std::string& label_name, const std::function<bool(const std::string&)>& drop) {
  size_t index = label_names_.size();
  for (size_t i = 0; i < label_names_.size(); ++i) {
    if (label_names_[i] == label_name) index = i;
  }
  if (index == label_names_.size()) Fail("metric '" + name_ + "': RemoveWhere() names no label '" + label_name + "'");
  MutexLock lock(mu_);
  for (auto it = children_.begin(); it != children_.end();) {
    it = drop(it->first[index]) ? children_.erase(it) : std::next(it);
  }
}

template <typename T>
void Family<T>::Remove(const std::vector<std::string>& label_values) {
  if (label_values.size() != label_names_.size()) {
    Fail("metric '" + name_ + "': Remove() got " + std::to_string(label_values.size()) + " label values for " +
         std::to_string(label_names_.size()) + " label names");
  }
  MutexLock lock(mu_);
  children_.erase(label_values);
}

template <typename T>
void Family<T>::RenderTo(std::string* out) const {
  MutexLock lock(mu_);
  if (children_.empty()) return;
  out->append("# HELP ").append(name_).push_back(' ');
  AppendEscaped(out, help_, /*label_value=*/false);
  out->append("\n# TYPE ").append(name_).append(" ").append(TypeName<T>()).push_back('\n');
  for (const auto& [label_values, child] : children_) {
    AppendSamples(out, name_, label_names_, label_values, bounds_, *child);
  }
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

// ---- Registry ----

Registry::Registry() = default;
Registry::~Registry() = default;

template <typename T>
Family<T>& Registry::Add(const std::string& name, const std::string& help, std::vector<std::string> label_names,
                         std::vector<double> bucket_upper_bounds) {
  constexpr bool kHistogram = std::is_same_v<T, Histogram>;
  const std::string what = "metric '" + name + "': ";
  if (!ValidMetricName(name)) Fail(what + "not a valid metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)");
  for (size_t i = 0; i < label_names.size(); ++i) {
    const std::string& l = label_names[i];
    if (!ValidLabelName(l)) Fail(what + "label name '" + l + "' is not valid ([a-zA-Z_][a-zA-Z0-9_]*)");
    if (l.starts_with("__")) Fail(what + "label name '" + l + "' starts with __ (reserved)");
    if (kHistogram && l == "le") Fail(what + "label name 'le' is reserved for the histogram's buckets");
    if (std::find(label_names.begin(), label_names.begin() + i, l) != label_names.begin() + i) {
      Fail(what + "label name '" + l + "' appears twice");
    }
  }
  for (size_t i = 0; i < bucket_upper_bounds.size(); ++i) {
    if (!std::isfinite(bucket_upper_bounds[i])) Fail(what + "a bucket bound is not finite (+Inf is implicit)");
    if (i > 0 && !(bucket_upper_bounds[i - 1] < bucket_upper_bounds[i])) {
      Fail(what + "bucket bounds are not strictly increasing");
    }
  }
  std::vector<std::string> samples = {name};
  if (kHistogram) {
    for (const char* suffix : {"_bucket", "_sum", "_count"}) samples.push_back(name + suffix);
  }

  MutexLock lock(mu_);
  for (const std::string& s : samples) {
    if (sample_names_.count(s) != 0) Fail(what + "the name '" + s + "' is taken by a family already registered");
  }
  sample_names_.insert(samples.begin(), samples.end());
  auto family = std::unique_ptr<Family<T>>(
      new Family<T>(name, help, std::move(label_names), std::move(bucket_upper_bounds)));
  Family<T>& ref = *family;
  families_.push_back(std::move(family));
  return ref;
}

Family<Counter>& Registry::AddCounter(const std::string& name, const std::string& help,
                                      std::vector<std::string> label_names) {
  return Add<Counter>(name, help, std::move(label_names), {});
}

Family<Gauge>& Registry::AddGauge(const std::string& name, const std::string& help,
                                  std::vector<std::string> label_names) {
  return Add<Gauge>(name, help, std::move(label_names), {});
}

Family<Histogram>& Registry::AddHistogram(const std::string& name, const std::string& help,
                                          std::vector<double> bucket_upper_bounds,
                                          std::vector<std::string> label_names) {
  return Add<Histogram>(name, help, std::move(label_names), std::move(bucket_upper_bounds));
}

std::string Registry::Render() const {
  std::string out;
  MutexLock lock(mu_);
  for (const auto& family : families_) family->RenderTo(&out);
  return out;
}

std::vector<double> LatencyBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
}

uint64_t ResidentBytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  unsigned long size = 0, resident = 0;
  const int n = std::fscanf(f, "%lu %lu", &size, &resident);
  std::fclose(f);
  return n == 2 ? resident * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE)) : 0;
}

}  // namespace shardps::metrics
