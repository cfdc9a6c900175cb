// metrics_render: prints the Render() text of a registry with every metric kind and the awkward
// cases (label values with quotes, backslashes, newlines, tabs, non-UTF-8 bytes, empty values;
// HELP text with backslashes and newlines; NaN, infinities, huge and tiny numbers) on stdout. The
// metrics_promtool test (tests/unit/CMakeLists.txt) pipes it into `promtool check metrics`, which
// must accept it without a single complaint, lint included.
#include <cstdio>
#include <limits>
#include <string>

#include "shardps/base/metrics.h"

int main() {
  using namespace shardps::metrics;
  Registry r;

  auto& pushes = r.AddCounter("shardps_pushes_total", "Pushes applied, by table and outcome.", {"table", "outcome"});
  pushes.With({"weights", "ok"}).Inc(41);
  pushes.With({"weights", "ok"}).Inc();
  pushes.With({"quote\"d \\ back\\slash\nnew line", "ok"}).Inc(0.25);
  pushes.With({"tab\there, caf\xC3\xA9, bad \xFF byte", ""}).Inc(1e20);
  pushes.With({"", "stale"});  // zero

  r.AddCounter("shardps_restarts_total", "A counter without labels.\nIts help has a newline and a \\ backslash.")
      .With({})
      .Inc(3);

  auto& queue = r.AddGauge("shardps_queue_requests", "Requests waiting, by peer.", {"peer"});
  queue.With({"rank 1"}).Set(-2.5);
  queue.With({"rank 2"}).Set(std::numeric_limits<double>::quiet_NaN());
  queue.With({"rank 3"}).Set(std::numeric_limits<double>::infinity());
  queue.With({"rank 4"}).Set(-std::numeric_limits<double>::infinity());
  queue.With({"rank 5"}).Set(1e-300);
  queue.With({"rank 6"}).Set(9007199254740991.0);
  r.AddGauge("shardps_memory_bytes", "A gauge without labels.").With({}).Add(1.0 / 3);

  auto& latency = r.AddHistogram("shardps_push_seconds", "Push latency, by table.", LatencyBuckets(), {"table"});
  for (double v : {0.00005, 0.0001, 0.003, 0.3, 1.0, 42.0}) latency.With({"weights"}).Observe(v);
  latency.With({"bias \"b\""}).Observe(0.5);
  r.AddHistogram("shardps_frame_bytes", "A histogram without labels or observations.", {64, 1024, 65536});

  const std::string text = r.Render();
  return std::fwrite(text.data(), 1, text.size(), stdout) == text.size() && std::fflush(stdout) == 0 ? 0 : 1;
}
