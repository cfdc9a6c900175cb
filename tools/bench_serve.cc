// shardps serve-bench: a load generator for `shardps serve` (KServe v2 infer over HTTP/1.1).
//   shardps serve-bench --url http://127.0.0.1:8500 --model NAME [--clients 4] [--rate 200]
//                       [--duration-s 10] [--warmup-s 1] [--rows 1] [--data FILE] [--json] [--timeline]
//
// Each client is one keep-alive connection driven by its own thread. --rate R > 0 is open loop:
// client i sends its k-th request at t0 + (i + k*N)/R (R/N requests/s each, the clients staggered
// evenly), and a request's latency is measured from its SCHEDULED send time, not from when it was
// actually sent. A client still waiting for a slow answer sends its next request late, and that
// lateness counts in the next request's latency: a stall shows up in every request it delayed
// instead of in one sample (no coordinated omission). --rate 0 is closed loop: each client sends
// its next request as soon as the previous answer arrives (throughput), latency from the send.
//
// Requests scheduled in the first --warmup-s seconds are sent but not counted; the --duration-s
// seconds after them are measured. Bodies are built before the clock starts: a pool of requests of
// --rows rows each, from --data (CSV or whitespace-separated rows of the model's input width) or
// deterministic pseudo-random pixels k/255 (fixed seed), the width taken from the server's
// /v2/models/NAME metadata (784 when it cannot be read, or --width).
//
// Every network operation has a deadline (--timeout-ms): the clients run Beast's tcp_stream
// operations one at a time on their own io_context, which is the synchronous client with the
// stream's expires_after deadlines (Beast's blocking calls ignore them). A refused connection,
// a timeout, a reset or an answer other than 200 is a failure, counted with its reason; the
// client reconnects for its next request.
//
// Output: requests, failures (by reason, the first few in full), achieved req/s, latency
// p50/p90/p99/max in ms, each client's versions in the order they answered ("model_version",
// repeats collapsed, warmup included) and whether they never went down ("in_order"); --timeline
// adds per-second buckets (requests, failures, p50/p99/max) by scheduled time; --samples FILE
// writes every measured request as CSV (client, scheduled second, latency ms, HTTP status or 0,
// version).
// Exit status: 0 when some request succeeded, 1 when none did, 2 for a flag or --data error.
#include <algorithm>
#include <atomic>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/program_options.hpp>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "commands.h"
#include "flags.h"
#include "shardps/base/json.h"

namespace shardps::tools {
namespace {

namespace po = boost::program_options;
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

struct Options {
  std::string host = "127.0.0.1";
  std::string port = "8500";
  std::string model;
  int clients = 4;
  double rate = 0;
  double duration_s = 10;
  double warmup_s = 1;
  int64_t rows = 1;
  int64_t width = 0;  // 0: from the metadata
  std::string data;
  std::string samples;
  bool json_out = false;
  bool timeline = false;
  int64_t timeout_ms = 10000;
  int pool = 32;
};

// One measured request.
struct Sample {
  double sched_s;     // scheduled (open loop) or actual (closed loop) send time, seconds after the measured window began
  float latency_ms;
  int status;         // HTTP status, 0 for a transport error
  uint64_t version;   // model_version of a 200 answer, else 0
};

// Failures by reason over all clients, the first few different ones kept in full.
class FailureLog {
 public:
  void Add(const std::string& kind, std::string detail) {
    while (!detail.empty() && std::isspace(static_cast<unsigned char>(detail.back()))) detail.pop_back();
    const std::string text = detail.empty() || detail == kind ? kind : kind + ": " + detail;
    std::lock_guard<std::mutex> l(mu_);
    ++by_kind_[kind];
    if (first_.size() < 5 && std::find(first_.begin(), first_.end(), text) == first_.end()) first_.push_back(text);
  }
  std::map<std::string, uint64_t> by_kind() const {
    std::lock_guard<std::mutex> l(mu_);
    return by_kind_;
  }
  std::vector<std::string> first() const {
    std::lock_guard<std::mutex> l(mu_);
    return first_;
  }

 private:
  mutable std::mutex mu_;
  std::map<std::string, uint64_t> by_kind_;
  std::vector<std::string> first_;
};

// A keep-alive HTTP/1.1 connection whose every step has a deadline: each Beast async operation is
// run to completion on this thread's own io_context, with the tcp_stream's timer armed.
class Connection {
 public:
  Connection(const tcp::resolver::results_type& endpoints, std::chrono::milliseconds timeout)
      : endpoints_(endpoints), timeout_(timeout), stream_(ioc_) {}

  bool connected() const { return connected_; }

  void Close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.close();
    buffer_.clear();
    connected_ = false;
  }

  // "" on success, else the failure's kind ("connect: Connection refused").
  std::string Connect() {
    if (connected_) Close();
    beast::error_code ec = asio::error::would_block;
    stream_.expires_after(timeout_);
    stream_.async_connect(endpoints_, [&](beast::error_code e, const tcp::endpoint&) { ec = e; });
    if (!Run(ec)) return "connect: event loop stopped";
    if (ec) return "connect: " + ec.message();
    stream_.socket().set_option(tcp::no_delay(true), ec);
    connected_ = true;
    return "";
  }

  // Sends `req` and reads the answer into `res`; "" on success, else the failure's kind. The
  // connection is closed after a failure or when the server does not keep it alive.
  std::string RoundTrip(http::request<http::string_body>& req, http::response<http::string_body>* res) {
    beast::error_code ec = asio::error::would_block;
    stream_.expires_after(timeout_);
    http::async_write(stream_, req, [&](beast::error_code e, size_t) { ec = e; });
    if (!Run(ec) || ec) {
      const std::string why = "write: " + (ec ? ec.message() : std::string("event loop stopped"));
      Close();
      return why;
    }
    http::response_parser<http::string_body> parser;
    parser.body_limit(64u << 20);
    ec = asio::error::would_block;
    stream_.expires_after(timeout_);
    http::async_read(stream_, buffer_, parser, [&](beast::error_code e, size_t) { ec = e; });
    if (!Run(ec) || ec) {
      const std::string why = "read: " + (ec ? ec.message() : std::string("event loop stopped"));
      Close();
      return why;
    }
    *res = parser.release();
    stream_.expires_never();
    if (!res->keep_alive()) Close();
    return "";
  }

 private:
  // Runs handlers until the operation's handler has set `ec` (the stream's timer bounds the wait).
  bool Run(beast::error_code& ec) {
    while (ec == asio::error::would_block) {
      if (ioc_.stopped()) ioc_.restart();
      if (ioc_.run_one() == 0 && ec == asio::error::would_block) return false;
    }
    return true;
  }

  asio::io_context ioc_;
  tcp::resolver::results_type endpoints_;
  std::chrono::milliseconds timeout_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  bool connected_ = false;
};

http::request<http::string_body> MakeRequest(http::verb verb, const std::string& target, const std::string& host,
                                             const std::string* body) {
  http::request<http::string_body> req{verb, target, 11};
  req.set(http::field::host, host);
  req.set(http::field::user_agent, "shardps-serve-bench");
  req.keep_alive(true);
  if (body) {
    req.set(http::field::content_type, "application/json");
    req.body() = *body;
  }
  req.prepare_payload();
  return req;
}

// The model's input width from GET /v2/models/NAME, or why not.
std::string FetchWidth(const tcp::resolver::results_type& endpoints, const Options& o, int64_t* width) {
  Connection c(endpoints, std::chrono::milliseconds(o.timeout_ms));
  if (std::string why = c.Connect(); !why.empty()) return why;
  auto req = MakeRequest(http::verb::get, "/v2/models/" + o.model, o.host, nullptr);
  http::response<http::string_body> res;
  if (std::string why = c.RoundTrip(req, &res); !why.empty()) return why;
  c.Close();
  if (res.result_int() != 200) {
    std::string body = res.body().substr(0, 300);
    while (!body.empty() && std::isspace(static_cast<unsigned char>(body.back()))) body.pop_back();
    return "metadata: HTTP " + std::to_string(res.result_int()) + (body.empty() ? "" : ": " + body);
  }
  const json j = json::parse(res.body(), nullptr, /*allow_exceptions=*/false);
  try {
    const json& shape = j.at("inputs").at(0).at("shape");
    const int64_t w = shape.at(shape.size() - 1).get<int64_t>();
    if (w < 1) return "metadata: input width " + std::to_string(w);
    *width = w;
    return "";
  } catch (const std::exception& e) {
    return std::string("metadata: no inputs[0].shape in the answer: ") + e.what();
  }
}

// Rows of `width` numbers from a text file (comma- or whitespace-separated, one row a line).
std::string ReadRows(const std::string& path, int64_t width, std::vector<std::vector<float>>* rows) {
  std::ifstream in(path);
  if (!in) return "cannot open --data file '" + path + "'";
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    std::vector<float> row;
    const char* p = line.data();
    const char* end = p + line.size();
    while (p < end) {
      while (p < end && (*p == ',' || std::isspace(static_cast<unsigned char>(*p)))) ++p;
      if (p == end) break;
      float v = 0;
      auto r = std::from_chars(p, end, v);
      if (r.ec != std::errc() || !std::isfinite(v)) return "'" + path + "' line " + std::to_string(lineno) + ": not a finite number";
      row.push_back(v);
      p = r.ptr;
    }
    if (row.empty()) continue;
    if (static_cast<int64_t>(row.size()) != width) {
      return "'" + path + "' line " + std::to_string(lineno) + " has " + std::to_string(row.size()) + " values; the model takes " +
             std::to_string(width);
    }
    rows->push_back(std::move(row));
  }
  if (rows->empty()) return "'" + path + "' holds no rows";
  return "";
}

void AppendFloat(std::string* out, float v) {
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  out->append(buf, r.ptr);
}

// The request bodies, built before the clock starts.
std::vector<std::string> BuildBodies(const Options& o, int64_t width, const std::vector<std::vector<float>>& file_rows) {
  std::mt19937_64 rng(20240601);
  std::uniform_int_distribution<int> pixel(0, 255);
  std::vector<std::string> bodies;
  size_t next_row = 0;
  for (int b = 0; b < o.pool; ++b) {
    std::string s = "{\"inputs\": [{\"name\": \"input\", \"datatype\": \"FP32\", \"shape\": [" + std::to_string(o.rows) + ", " +
                    std::to_string(width) + "], \"data\": [";
    for (int64_t r = 0; r < o.rows; ++r) {
      for (int64_t k = 0; k < width; ++k) {
        if (r || k) s += ',';
        float v;
        if (file_rows.empty()) v = static_cast<float>(pixel(rng)) / 255.0f;
        else v = file_rows[next_row % file_rows.size()][static_cast<size_t>(k)];
        AppendFloat(&s, v);
      }
      if (!file_rows.empty()) ++next_row;
    }
    s += "]}]}";
    bodies.push_back(std::move(s));
  }
  return bodies;
}

// model_version of an infer answer (a decimal string), 0 if absent.
uint64_t VersionOf(const std::string& body) {
  const json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return 0;
  const auto v = j.find("model_version");
  if (v == j.end() || !v->is_string()) return 0;
  uint64_t out = 0;
  const std::string& s = v->get_ref<const std::string&>();
  std::from_chars(s.data(), s.data() + s.size(), out);
  return out;
}

struct ClientResult {
  std::vector<Sample> samples;
  std::vector<uint64_t> versions;  // repeats collapsed, in answer order
  bool in_order = true;
  uint64_t warmup_requests = 0;
  double max_send_lag_ms = 0;      // open loop: how late the client was against its schedule
  uint64_t late_sends = 0;         // open loop: sends more than 1 ms behind schedule
};

void RunClient(int index, const Options& o, const tcp::resolver::results_type& endpoints, const std::vector<std::string>& bodies,
               Clock::time_point t0, FailureLog* failures, ClientResult* out) {
  const std::string target = "/v2/models/" + o.model + "/infer";
  const auto warm_end = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.warmup_s));
  const auto end = warm_end + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.duration_s));
  Connection conn(endpoints, std::chrono::milliseconds(o.timeout_ms));
  const bool open_loop = o.rate > 0;
  const double interval_s = open_loop ? o.clients / o.rate : 0;
  const double offset_s = open_loop ? index / o.rate : 0;
  if (open_loop) {
    out->samples.reserve(static_cast<size_t>(o.duration_s / interval_s) + 16);
  }
  std::this_thread::sleep_until(t0);
  for (uint64_t k = 0;; ++k) {
    Clock::time_point sched;
    if (open_loop) {
      sched = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(offset_s + k * interval_s));
      if (sched >= end) break;
      std::this_thread::sleep_until(sched);
      const double lag_ms = std::chrono::duration<double, std::milli>(Clock::now() - sched).count();
      if (sched >= warm_end) {
        out->max_send_lag_ms = std::max(out->max_send_lag_ms, lag_ms);
        if (lag_ms > 1.0) ++out->late_sends;
      }
    } else {
      sched = Clock::now();
      if (sched >= end) break;
    }
    const bool measured = sched >= warm_end;
    std::string why;
    int status = 0;
    uint64_t version = 0;
    std::string detail;
    if (!conn.connected()) why = conn.Connect();
    if (why.empty()) {
      auto req = MakeRequest(http::verb::post, target, o.host, &bodies[(index + k * o.clients) % bodies.size()]);
      http::response<http::string_body> res;
      why = conn.RoundTrip(req, &res);
      if (why.empty()) {
        status = res.result_int();
        if (status == 200) {
          version = VersionOf(res.body());
          if (version == 0) {
            why = "answer without model_version";
            detail = res.body().substr(0, 200);
          }
        } else {
          why = "HTTP " + std::to_string(status);
          detail = res.body().substr(0, 200);
        }
      }
    }
    const auto done = Clock::now();
    if (!why.empty()) failures->Add(why, detail);
    if (version != 0) {
      if (!out->versions.empty() && version < out->versions.back()) out->in_order = false;
      if (out->versions.empty() || out->versions.back() != version) out->versions.push_back(version);
    }
    if (measured) {
      Sample s;
      s.sched_s = std::chrono::duration<double>(sched - warm_end).count();
      s.latency_ms = static_cast<float>(std::chrono::duration<double, std::milli>(done - sched).count());
      s.status = (why.empty() || status != 200) ? status : 0;  // a 200 without a version is a failure
      s.version = why.empty() ? version : 0;
      out->samples.push_back(s);
    } else {
      ++out->warmup_requests;
    }
    // A closed loop that cannot connect backs off instead of spinning on refusals.
    if (!why.empty() && !open_loop && !conn.connected()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  conn.Close();
}

double Percentile(const std::vector<float>& sorted, double q) {
  if (sorted.empty()) return 0;
  // Nearest rank: the smallest value with at least q of the samples at or below it.
  size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  rank = std::clamp<size_t>(rank, 1, sorted.size());
  return sorted[rank - 1];
}

std::string Fixed(double v, int digits = 3) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

std::string VersionList(const std::vector<uint64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

int ParseUrl(const std::string& url, Options* o) {
  const std::string scheme = "http://";
  if (url.rfind(scheme, 0) != 0) {
    std::cerr << "shardps serve-bench: --url '" << url << "' must start with http://\n";
    return 2;
  }
  std::string rest = url.substr(scheme.size());
  rest = rest.substr(0, rest.find('/'));
  const size_t bracket = rest.find(']');
  const size_t colon = rest.rfind(':');
  if (colon == std::string::npos || (bracket != std::string::npos && colon < bracket)) {
    o->host = rest;
    o->port = "80";
  } else {
    o->host = rest.substr(0, colon);
    o->port = rest.substr(colon + 1);
  }
  if (o->host.size() >= 2 && o->host.front() == '[' && o->host.back() == ']') o->host = o->host.substr(1, o->host.size() - 2);
  if (o->host.empty() || o->port.empty() || o->port.find_first_not_of("0123456789") != std::string::npos) {
    std::cerr << "shardps serve-bench: --url '" << url << "' is not http://HOST:PORT\n";
    return 2;
  }
  return -1;
}

}  // namespace

int ServeBenchMain(int argc, char** argv) {
  Options o;
  std::string url;
  int port = 0;
  po::options_description desc("shardps serve-bench: load a `shardps serve` with KServe v2 infer requests, measure latency and throughput");
  desc.add_options()
      ("url", po::value(&url), "http://HOST:PORT of the server (or --host and --port)")
      ("host", po::value(&o.host)->default_value(o.host), "server host")
      ("port", po::value(&port), "server port (default 8500)")
      ("model", po::value(&o.model)->required(), "the model's name (/v2/models/NAME)")
      ("clients", po::value(&o.clients)->default_value(o.clients), "keep-alive connections, one thread each")
      ("rate", po::value(&o.rate)->default_value(o.rate), "requests/s over all clients, open loop; 0: closed loop, as fast as answered")
      ("duration-s", po::value(&o.duration_s)->default_value(o.duration_s), "seconds measured")
      ("warmup-s", po::value(&o.warmup_s)->default_value(o.warmup_s), "seconds of load before the measured ones")
      ("rows", po::value(&o.rows)->default_value(o.rows), "rows per infer request")
      ("data", po::value(&o.data), "rows to send: a text file, one row a line, values comma- or space-separated "
                                    "(default: pseudo-random pixels k/255 from a fixed seed)")
      ("width", po::value(&o.width), "input width (default: the server's model metadata, else 784)")
      ("timeout-ms", po::value(&o.timeout_ms)->default_value(o.timeout_ms), "deadline of each connect, write and read")
      ("pool", po::value(&o.pool)->default_value(o.pool), "distinct request bodies, used in turn")
      ("json", po::bool_switch(&o.json_out), "print one JSON object instead of text")
      ("timeline", po::bool_switch(&o.timeline), "add per-second buckets (p50/p99/max, failures) by scheduled time")
      ("samples", po::value(&o.samples), "write every measured request to this CSV file");
  if (int code = ParseFlags(argc, argv, desc, "serve-bench"); code >= 0) return code;
  auto usage = [](const std::string& m) {
    std::cerr << "shardps serve-bench: " << m << "\n";
    return 2;
  };
  if (!url.empty()) {
    if (int code = ParseUrl(url, &o); code >= 0) return code;
  }
  if (port != 0) o.port = std::to_string(port);
  if (port < 0 || port > 65535) return usage("--port must be in [1, 65535]");
  if (o.clients < 1 || o.clients > 1024) return usage("--clients must be in [1, 1024]");
  if (o.rate < 0 || !std::isfinite(o.rate)) return usage("--rate must be >= 0");
  if (!(o.duration_s > 0) || o.duration_s > 86400) return usage("--duration-s must be in (0, 86400]");
  if (o.warmup_s < 0 || o.warmup_s > 3600) return usage("--warmup-s must be in [0, 3600]");
  if (o.rows < 1 || o.rows > 1000000) return usage("--rows must be >= 1");
  if (o.timeout_ms < 1) return usage("--timeout-ms must be >= 1");
  if (o.pool < 1 || o.pool > 4096) return usage("--pool must be in [1, 4096]");
  if (o.model.empty() || o.model.find_first_of("/?# ") != std::string::npos) return usage("--model must be a name without / ? # or spaces");

  asio::io_context ioc;
  tcp::resolver resolver(ioc);
  beast::error_code ec;
  const auto endpoints = resolver.resolve(o.host, o.port, ec);
  if (ec || endpoints.empty()) return usage("cannot resolve " + o.host + ":" + o.port + ": " + ec.message());

  std::string width_note;
  int64_t width = o.width;
  if (width <= 0) {
    width = 784;
    const std::string why = FetchWidth(endpoints, o, &width);
    if (!why.empty()) {
      width_note = "model metadata unavailable (" + why + "); sending rows of 784";
      std::cerr << "shardps serve-bench: " << width_note << "\n";
    }
  }
  std::vector<std::vector<float>> file_rows;
  if (!o.data.empty()) {
    if (std::string why = ReadRows(o.data, width, &file_rows); !why.empty()) return usage(why);
  }
  const std::vector<std::string> bodies = BuildBodies(o, width, file_rows);

  FailureLog failures;
  std::vector<ClientResult> results(static_cast<size_t>(o.clients));
  std::vector<std::thread> threads;
  // The clock starts once every thread exists; each connects when its first request is due.
  const auto t0 = Clock::now() + std::chrono::milliseconds(100 + o.clients);
  const double start_unix = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count() +
                            std::chrono::duration<double>(t0 - Clock::now()).count() + o.warmup_s;
  for (int i = 0; i < o.clients; ++i) {
    threads.emplace_back(RunClient, i, std::cref(o), std::cref(endpoints), std::cref(bodies), t0, &failures, &results[i]);
  }
  for (auto& t : threads) t.join();

  // Totals.
  std::vector<float> lat;
  uint64_t ok = 0, failed = 0, warmup = 0, late = 0;
  double max_lag = 0;
  bool all_in_order = true;
  for (const auto& r : results) {
    for (const Sample& s : r.samples) {
      if (s.status == 200 && s.version != 0) {
        ++ok;
        lat.push_back(s.latency_ms);
      } else {
        ++failed;
      }
    }
    warmup += r.warmup_requests;
    late += r.late_sends;
    max_lag = std::max(max_lag, r.max_send_lag_ms);
    all_in_order = all_in_order && r.in_order;
  }
  std::sort(lat.begin(), lat.end());
  double mean = 0;
  for (float v : lat) mean += v;
  if (!lat.empty()) mean /= static_cast<double>(lat.size());
  const double achieved = static_cast<double>(ok) / o.duration_s;

  // Per-second buckets by scheduled time (successful requests' latencies; failures counted).
  struct Bucket {
    std::vector<float> lat;
    uint64_t failures = 0;
  };
  std::vector<Bucket> buckets(static_cast<size_t>(std::ceil(o.duration_s)));
  if (o.timeline && !buckets.empty()) {
    for (const auto& r : results) {
      for (const Sample& s : r.samples) {
        const size_t b = std::min(buckets.size() - 1, static_cast<size_t>(std::max(0.0, s.sched_s)));
        if (s.status == 200 && s.version != 0) buckets[b].lat.push_back(s.latency_ms);
        else ++buckets[b].failures;
      }
    }
    for (auto& b : buckets) std::sort(b.lat.begin(), b.lat.end());
  }
  if (!o.samples.empty()) {
    std::ofstream f(o.samples, std::ios::trunc);
    f << "client,sched_s,latency_ms,status,version\n";
    for (size_t i = 0; i < results.size(); ++i) {
      for (const Sample& s : results[i].samples) {
        f << i << ',' << Fixed(s.sched_s, 6) << ',' << Fixed(s.latency_ms, 4) << ',' << s.status << ',' << s.version << '\n';
      }
    }
    if (!f) std::cerr << "shardps serve-bench: cannot write --samples file '" << o.samples << "'\n";
  }

  const auto kinds = failures.by_kind();
  const auto first = failures.first();
  if (o.json_out) {
    std::ostringstream j;
    j << "{\"url\": " << JsonQuote("http://" + o.host + ":" + o.port) << ", \"model\": " << JsonQuote(o.model)
      << ", \"clients\": " << o.clients << ", \"rate\": " << o.rate << ", \"mode\": \"" << (o.rate > 0 ? "open" : "closed")
      << "\", \"duration_s\": " << o.duration_s << ", \"warmup_s\": " << o.warmup_s << ", \"rows\": " << o.rows
      << ", \"input_width\": " << width << ", \"request_bytes\": " << bodies.front().size()
      << ", \"start_unix\": " << Fixed(start_unix, 6) << ", \"requests\": " << ok + failed << ", \"ok\": " << ok
      << ", \"failures\": " << failed << ", \"warmup_requests\": " << warmup << ", \"failure_kinds\": {";
    bool comma = false;
    for (const auto& [k, n] : kinds) {
      j << (comma ? ", " : "") << JsonQuote(k) << ": " << n;
      comma = true;
    }
    j << "}, \"first_failures\": [";
    for (size_t i = 0; i < first.size(); ++i) j << (i ? ", " : "") << JsonQuote(first[i]);
    j << "], \"achieved_rps\": " << Fixed(achieved, 2) << ", \"latency_ms\": {\"p50\": " << Fixed(Percentile(lat, 0.50), 4)
      << ", \"p90\": " << Fixed(Percentile(lat, 0.90), 4) << ", \"p99\": " << Fixed(Percentile(lat, 0.99), 4)
      << ", \"max\": " << Fixed(lat.empty() ? 0 : lat.back(), 4) << ", \"mean\": " << Fixed(mean, 4) << "}"
      << ", \"late_sends\": " << late << ", \"max_send_lag_ms\": " << Fixed(max_lag, 3) << ", \"in_order\": " << (all_in_order ? "true" : "false")
      << ", \"per_client\": [";
    for (size_t i = 0; i < results.size(); ++i) {
      uint64_t n_ok = 0;
      for (const Sample& s : results[i].samples) n_ok += (s.status == 200 && s.version != 0);
      j << (i ? ", " : "") << "{\"requests\": " << results[i].samples.size() << ", \"failures\": " << results[i].samples.size() - n_ok
        << ", \"versions\": " << VersionList(results[i].versions) << ", \"in_order\": " << (results[i].in_order ? "true" : "false") << "}";
    }
    j << "]";
    if (!width_note.empty()) j << ", \"note\": " << JsonQuote(width_note);
    if (o.timeline) {
      j << ", \"timeline\": [";
      for (size_t b = 0; b < buckets.size(); ++b) {
        const auto& l = buckets[b].lat;
        j << (b ? ", " : "") << "{\"t\": " << b << ", \"requests\": " << l.size() + buckets[b].failures << ", \"failures\": " << buckets[b].failures
          << ", \"p50_ms\": " << Fixed(Percentile(l, 0.5), 4) << ", \"p99_ms\": " << Fixed(Percentile(l, 0.99), 4)
          << ", \"max_ms\": " << Fixed(l.empty() ? 0 : l.back(), 4) << "}";
      }
      j << "]";
    }
    j << "}";
    std::cout << j.str() << std::endl;
  } else {
    std::printf("shardps serve-bench: %s, model %s, %d clients, %s, %g s measured after %g s warmup, %lld row(s) of %lld (%zu-byte bodies)\n",
                ("http://" + o.host + ":" + o.port).c_str(), o.model.c_str(), o.clients,
                o.rate > 0 ? ("open loop at " + Fixed(o.rate, 1) + " req/s").c_str() : "closed loop", o.duration_s, o.warmup_s,
                static_cast<long long>(o.rows), static_cast<long long>(width), bodies.front().size());
    std::printf("requests  %llu (ok %llu, failed %llu)\n", static_cast<unsigned long long>(ok + failed), static_cast<unsigned long long>(ok),
                static_cast<unsigned long long>(failed));
    for (const auto& [k, n] : kinds) std::printf("  failures: %llu x %s\n", static_cast<unsigned long long>(n), k.c_str());
    for (const auto& f : first) std::printf("  e.g. %s\n", f.c_str());
    std::printf("achieved  %.1f req/s\n", achieved);
    std::printf("latency   p50 %.3f ms  p90 %.3f ms  p99 %.3f ms  max %.3f ms  mean %.3f ms\n", Percentile(lat, 0.5), Percentile(lat, 0.9),
                Percentile(lat, 0.99), lat.empty() ? 0.0 : lat.back(), mean);
    if (o.rate > 0) std::printf("schedule  %llu sends more than 1 ms late, at most %.3f ms\n", static_cast<unsigned long long>(late), max_lag);
    for (size_t i = 0; i < results.size(); ++i) {
      std::printf("client %zu  versions %s%s\n", i, VersionList(results[i].versions).c_str(), results[i].in_order ? "" : "  OUT OF ORDER");
    }
    if (o.timeline) {
      std::printf("%5s %9s %9s %9s %9s %9s\n", "t(s)", "requests", "failures", "p50(ms)", "p99(ms)", "max(ms)");
      for (size_t b = 0; b < buckets.size(); ++b) {
        const auto& l = buckets[b].lat;
        std::printf("%5zu %9zu %9llu %9.3f %9.3f %9.3f\n", b, l.size() + buckets[b].failures,
                    static_cast<unsigned long long>(buckets[b].failures), Percentile(l, 0.5), Percentile(l, 0.99), l.empty() ? 0.0 : l.back());
      }
    }
  }
  return ok > 0 ? 0 : 1;
}

}  // namespace shardps::tools
