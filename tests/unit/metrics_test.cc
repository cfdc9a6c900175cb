// Prometheus metrics (core/base metrics.h): the exact text Render() gives, escaping, number
// spelling, Remove, updates from several threads, and the programming errors that abort.
// tests/unit/metrics_render_main.cc feeds `promtool check metrics` (the metrics_promtool test).
#include "shardps/base/metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <thread>
#include <vector>

namespace shardps::metrics {
namespace {

TEST(MetricsTest, RendersExactText) {
  Registry r;
  auto& requests = r.AddCounter("shardps_requests_total", "Requests served.", {"method", "code"});
  requests.With({"push", "ok"}).Inc();
  requests.With({"push", "ok"}).Inc(2);
  requests.With({"pull", "ok"}).Inc(0.5);
  auto& queue = r.AddGauge("shardps_queue_length", "Requests waiting.");
  queue.With({}).Set(7);
  queue.With({}).Add(-2);
  auto& latency = r.AddHistogram("shardps_request_seconds", "Request latency.", {0.1, 0.5, 1}, {"table"});
  Histogram& h = latency.With({"w"});
  h.Observe(0.5);   // at a bound: counted in le="0.5"
  h.Observe(2);     // above all bounds: +Inf only
  h.Observe(0.25);  // between bounds
  h.Observe(0.01);  // below all bounds

  EXPECT_EQ(r.Render(),
            "# HELP shardps_requests_total Requests served.\n"
            "# TYPE shardps_requests_total counter\n"
            "shardps_requests_total{method=\"pull\",code=\"ok\"} 0.5\n"
            "shardps_requests_total{method=\"push\",code=\"ok\"} 3\n"
            "# HELP shardps_queue_length Requests waiting.\n"
            "# TYPE shardps_queue_length gauge\n"
            "shardps_queue_length 5\n"
            "# HELP shardps_request_seconds Request latency.\n"
            "# TYPE shardps_request_seconds histogram\n"
            "shardps_request_seconds_bucket{table=\"w\",le=\"0.1\"} 1\n"
            "shardps_request_seconds_bucket{table=\"w\",le=\"0.5\"} 3\n"
            "shardps_request_seconds_bucket{table=\"w\",le=\"1\"} 3\n"
            "shardps_request_seconds_bucket{table=\"w\",le=\"+Inf\"} 4\n"
            "shardps_request_seconds_sum{table=\"w\"} 2.76\n"
            "shardps_request_seconds_count{table=\"w\"} 4\n");
  EXPECT_EQ(h.count(), 4u);
  EXPECT_EQ(h.bucket_counts(), (std::vector<uint64_t>{1, 2, 0, 1}));
  EXPECT_DOUBLE_EQ(h.sum(), 2.76);
  EXPECT_EQ(requests.With({"push", "ok"}).value(), 3.0);
  EXPECT_EQ(queue.With({}).value(), 5.0);
}

TEST(MetricsTest, HistogramWithoutLabels) {
  Registry r;
  auto& h = r.AddHistogram("x_seconds", "X.", {1, 2});
  h.With({}).Observe(-std::numeric_limits<double>::infinity());  // the first bucket
  h.With({}).Observe(std::numeric_limits<double>::quiet_NaN());   // +Inf, and the sum becomes NaN
  EXPECT_EQ(r.Render(),
            "# HELP x_seconds X.\n"
            "# TYPE x_seconds histogram\n"
            "x_seconds_bucket{le=\"1\"} 1\n"
            "x_seconds_bucket{le=\"2\"} 1\n"
            "x_seconds_bucket{le=\"+Inf\"} 2\n"
            "x_seconds_sum NaN\n"
            "x_seconds_count 2\n");
}

TEST(MetricsTest, EscapesLabelValuesAndHelp) {
  Registry r;
  auto& g = r.AddGauge("escape_test", "Help with a \\ backslash,\na newline and \"quotes\".", {"v"});
  g.With({"back\\slash \"quoted\"\nnext line"}).Set(1);
  g.With({""}).Set(2);                              // an empty value
  g.With({"caf\xC3\xA9 \t tab"}).Set(3);            // UTF-8 and a tab pass as they are
  g.With({std::string("bad \xFF byte\xC3", 11)}).Set(4);  // not UTF-8: U+FFFD each
  EXPECT_EQ(r.Render(),
            "# HELP escape_test Help with a \\\\ backslash,\\na newline and \"quotes\".\n"
            "# TYPE escape_test gauge\n"
            "escape_test{v=\"\"} 2\n"
            "escape_test{v=\"back\\\\slash \\\"quoted\\\"\\nnext line\"} 1\n"
            "escape_test{v=\"bad \xEF\xBF\xBD byte\xEF\xBF\xBD\"} 4\n"
            "escape_test{v=\"caf\xC3\xA9 \t tab\"} 3\n");
}

TEST(MetricsTest, SpellsNumbers) {
  Registry r;
  auto& g = r.AddGauge("number_test", "Numbers.", {"case"});
  g.With({"a_integer"}).Set(3);
  g.With({"b_negative"}).Set(-42);
  g.With({"c_tenth"}).Set(0.1);
  g.With({"d_third"}).Set(1.0 / 3);
  g.With({"e_small"}).Set(1e-05);
  g.With({"f_large_int"}).Set(9007199254740991.0);  // 2^53 - 1: in full
  g.With({"g_huge"}).Set(1e20);                     // beyond 2^53: the shortest form
  g.With({"h_inf"}).Set(std::numeric_limits<double>::infinity());
  g.With({"i_ninf"}).Set(-std::numeric_limits<double>::infinity());
  g.With({"j_nan"}).Set(std::numeric_limits<double>::quiet_NaN());
  g.With({"k_zero"});
  EXPECT_EQ(r.Render(),
            "# HELP number_test Numbers.\n"
            "# TYPE number_test gauge\n"
            "number_test{case=\"a_integer\"} 3\n"
            "number_test{case=\"b_negative\"} -42\n"
            "number_test{case=\"c_tenth\"} 0.1\n"
            "number_test{case=\"d_third\"} 0.3333333333333333\n"
            "number_test{case=\"e_small\"} 1e-05\n"
            "number_test{case=\"f_large_int\"} 9007199254740991\n"
            "number_test{case=\"g_huge\"} 1e+20\n"
            "number_test{case=\"h_inf\"} +Inf\n"
            "number_test{case=\"i_ninf\"} -Inf\n"
            "number_test{case=\"j_nan\"} NaN\n"
            "number_test{case=\"k_zero\"} 0\n");
}

TEST(MetricsTest, LabelFreeFamilyRendersZeroFromTheStart) {
  Registry r;
  r.AddCounter("started_total", "Started.");
  r.AddGauge("unused", "Has labels, no children yet: left out.", {"x"});
  EXPECT_EQ(r.Render(),
            "# HELP started_total Started.\n"
            "# TYPE started_total counter\n"
            "started_total 0\n");
  EXPECT_EQ(Registry().Render(), "");
}

TEST(MetricsTest, RemoveDropsAChild) {
  Registry r;
  auto& c = r.AddCounter("removed_total", "Removed.", {"peer"});
  c.With({"a"}).Inc(5);
  c.With({"b"}).Inc(7);
  c.Remove({"a"});
  c.Remove({"never_made"});  // no-op
  EXPECT_EQ(r.Render(),
            "# HELP removed_total Removed.\n"
            "# TYPE removed_total counter\n"
            "removed_total{peer=\"b\"} 7\n");
  c.Remove({"b"});
  EXPECT_EQ(r.Render(), "");  // no children: the family is left out
  EXPECT_EQ(c.With({"a"}).value(), 0.0);  // a new child starts from zero
  EXPECT_NE(r.Render().find("removed_total{peer=\"a\"} 0\n"), std::string::npos);
}

TEST(MetricsTest, WithReturnsTheSameChild) {
  Registry r;
  auto& f = r.AddCounter("same_total", "Same.", {"k"});
  Counter* first = &f.With({"x"});
  r.AddGauge("other", "Registered later.");  // other registrations do not move children
  for (int i = 0; i < 100; ++i) f.With({"k" + std::to_string(i)});
  EXPECT_EQ(&f.With({"x"}), first);
}

TEST(MetricsTest, ConcurrentUpdatesGiveExactTotals) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 100000;
  Registry r;
  auto& counter = r.AddCounter("ops_total", "Operations.", {"kind"});
  auto& gauge = r.AddGauge("level", "Level.");
  auto& histogram = r.AddHistogram("op_seconds", "Operation time.", {0.5, 1.5});
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Counter& c = counter.With({"op"});  // every thread asks for the same child concurrently
      Gauge& g = gauge.With({});
      Histogram& h = histogram.With({});
      for (int i = 0; i < kPerThread; ++i) {
        c.Inc();
        g.Add(t % 2 == 0 ? 2.0 : -1.0);
        h.Observe((i % 4) * 0.5);  // 0, 0.5, 1, 1.5: sums of halves are exact
        if (t == 0 && i % 10000 == 0) (void)r.Render();  // rendering while others update
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(counter.With({"op"}).value(), double{kThreads} * kPerThread);
  EXPECT_EQ(gauge.With({}).value(), (2.0 - 1.0) * kThreads / 2 * kPerThread);
  const Histogram& h = histogram.With({});
  EXPECT_EQ(h.count(), uint64_t{kThreads} * kPerThread);
  // le=0.5: the 0 and 0.5 observations; le=1.5: 1 and 1.5; +Inf: none.
  EXPECT_EQ(h.bucket_counts(), (std::vector<uint64_t>{kThreads * kPerThread / 2, kThreads * kPerThread / 2, 0}));
  EXPECT_EQ(h.sum(), kThreads * (kPerThread / 4) * (0 + 0.5 + 1 + 1.5));
  EXPECT_NE(r.Render().find("ops_total{kind=\"op\"} 400000\n"), std::string::npos);
}

TEST(MetricsTest, LatencyBucketsAndContentType) {
  EXPECT_EQ(LatencyBuckets(), (std::vector<double>{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                   0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}));
  Registry r;
  r.AddHistogram("latency_seconds", "Latency.", LatencyBuckets()).With({}).Observe(0.003);
  const std::string text = r.Render();
  EXPECT_NE(text.find("latency_seconds_bucket{le=\"0.0001\"} 0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("latency_seconds_bucket{le=\"0.00025\"} 0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("latency_seconds_bucket{le=\"0.005\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("latency_seconds_bucket{le=\"10\"} 1\n"), std::string::npos) << text;
  EXPECT_STREQ(kContentType, "text/plain; version=0.0.4; charset=utf-8");
}

// Programming errors abort with a message, also in builds without assertions.
TEST(MetricsDeathTest, BadRegistrationsAbort) {
  Registry r;
  r.AddCounter("taken_total", "Taken.");
  r.AddHistogram("hist_seconds", "Histogram.", {1});
  EXPECT_DEATH(r.AddGauge("taken_total", "Again."), "taken by a family");
  EXPECT_DEATH(r.AddGauge("hist_seconds_count", "Clashes with the histogram's _count."), "taken by a family");
  EXPECT_DEATH(r.AddGauge("9lives", "Bad name."), "not a valid metric name");
  EXPECT_DEATH(r.AddGauge("has-dash", "Bad name."), "not a valid metric name");
  EXPECT_DEATH(r.AddGauge("", "Empty name."), "not a valid metric name");
  EXPECT_DEATH(r.AddGauge("ok_name", "Bad label.", {"a:b"}), "label name 'a:b' is not valid");
  EXPECT_DEATH(r.AddGauge("ok_name", "Reserved label.", {"__x"}), "starts with __");
  EXPECT_DEATH(r.AddGauge("ok_name", "Twice.", {"a", "a"}), "appears twice");
  EXPECT_DEATH(r.AddHistogram("h_seconds", "le.", {1}, {"le"}), "'le' is reserved");
  EXPECT_DEATH(r.AddHistogram("h_seconds", "Order.", {1, 1}), "strictly increasing");
  EXPECT_DEATH(r.AddHistogram("h_seconds", "Inf.", {1, std::numeric_limits<double>::infinity()}), "not finite");
  EXPECT_DEATH(r.AddHistogram("h_seconds", "NaN.", {std::numeric_limits<double>::quiet_NaN()}), "not finite");
  // The ones that passed above are registered only in the dead child processes.
  r.AddGauge("ok_name", "Fine.", {"a", "le"}).With({"x", "y"}).Set(1);  // "le" is reserved for histograms only
  EXPECT_NE(r.Render().find("ok_name{a=\"x\",le=\"y\"} 1\n"), std::string::npos);
}

TEST(MetricsDeathTest, WrongNumberOfLabelValuesAborts) {
  Registry r;
  auto& f = r.AddCounter("two_total", "Two labels.", {"a", "b"});
  EXPECT_DEATH(f.With({"only one"}), "got 1 label values for 2 label names");
  EXPECT_DEATH(f.Remove({"x", "y", "z"}), "got 3 label values for 2 label names");
  EXPECT_EQ(f.With({"x", "y"}).value(), 0.0);
}

TEST(MetricsDeathTest, NegativeCounterIncrement) {
  Registry r;
  Counter& c = r.AddCounter("mono_total", "Monotonic.").With({});
  c.Inc(2);
#ifdef NDEBUG
  c.Inc(-1);  // without assertions: ignored
  c.Inc(std::numeric_limits<double>::quiet_NaN());
  EXPECT_EQ(c.value(), 2.0);
#else
  EXPECT_DEATH(c.Inc(-1), "negative or NaN");
  EXPECT_DEATH(c.Inc(std::numeric_limits<double>::quiet_NaN()), "negative or NaN");
  EXPECT_EQ(c.value(), 2.0);
#endif
}

}  // namespace

TEST(MetricsTest, UpdateAndRemoveWhere) {
  Registry r;
  auto& c = r.AddCounter("req_total", "requests", {"model", "version"});
  for (int v = 1; v <= 4; ++v) {
    for (int k = 0; k < v; ++k) c.Update({"m", std::to_string(v)}, [](Counter& x) { x.Inc(); });
  }
  EXPECT_EQ(c.With({"m", "3"}).value(), 3.0);
  c.RemoveWhere("version", [](const std::string& v) { return v == "1" || v == "2"; });
  const std::string text = r.Render();
  EXPECT_EQ(text.find("version=\"1\""), std::string::npos) << text;
  EXPECT_EQ(text.find("version=\"2\""), std::string::npos) << text;
  EXPECT_NE(text.find("req_total{model=\"m\",version=\"3\"} 3"), std::string::npos) << text;
  EXPECT_NE(text.find("req_total{model=\"m\",version=\"4\"} 4"), std::string::npos) << text;
  // Updates racing removals: no child is freed under an update.
  std::thread remover([&] {
    for (int i = 0; i < 2000; ++i) c.RemoveWhere("version", [](const std::string& v) { return v == "x"; });
  });
  for (int i = 0; i < 2000; ++i) c.Update({"m", "x"}, [](Counter& x) { x.Inc(); });
  remover.join();
}

}  // namespace shardps::metrics
