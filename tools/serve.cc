// shardps serve: a checkpoint registry's model over the KServe v2 REST protocol, with hot swaps
// and a fallback registry (docs/serving.md).
//   shardps serve --registry DIR --model NAME [--version latest|N|tag:TAG] [--listen 127.0.0.1:8500]
//                 [--fallback-registry DIR2] [--token-file FILE] [limits]
// Runs until SIGINT or SIGTERM, then stops accepting, finishes nothing new and exits 0.
#include <signal.h>

#include <atomic>
#include <boost/program_options.hpp>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iostream>
#include <mutex>
#include <string>

#include "commands.h"
#include "flags.h"
#include "shardps/base/metrics.h"
#include "shardps/net/auth.h"
#include "shardps/net/http_server.h"
#include "shardps/serve/kserve.h"
#include "shardps/serve/model_store.h"

namespace shardps::tools {
namespace {

namespace po = boost::program_options;

std::string UtcNow() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// The bearer token: the file's text without trailing whitespace; like a job's secret file it
// must not be readable by other users.
Result<std::string> LoadToken(const std::string& path) {
  SHARDPS_ASSIGN_OR_RETURN(std::string t, ReadPrivateFile(path, "token file"));
  while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.pop_back();
  if (t.size() < 16) return InvalidArgument("token file '" + path + "' holds fewer than 16 characters (write a long random token)");
  for (char c : t) {
    if (c < 0x21 || c > 0x7e) return InvalidArgument("token file '" + path + "' holds a character that cannot travel in an HTTP header");
  }
  return t;
}

int Fail(const Status& s) {
  std::cerr << "shardps serve: " << s.message() << "\n";
  return 1;
}

}  // namespace

int ServeMain(int argc, char** argv) {
  std::string registry, fallback, model, version = "latest", listen = "127.0.0.1:8500", token_file, port_file;
  int threads = 2;
  int64_t max_body = 16 << 20, max_rows = 4096, poll_ms = 200, timeout_ms = 30000;
  size_t max_connections = 64;
  double rate_limit = 0;
  po::options_description desc("shardps serve: serve a registry's model over KServe v2 (HTTP/1.1, JSON)");
  desc.add_options()
      ("registry", po::value(&registry)->required(), "checkpoint directory (the registry training writes)")
      ("model", po::value(&model)->required(), "the model's name in the URLs (/v2/models/NAME)")
      ("version", po::value(&version)->default_value(version), "latest (rollbacks obeyed), a version number, or tag:TAG")
      ("fallback-registry", po::value(&fallback), "served from when the registry is unreadable or its selected version is invalid")
      ("listen", po::value(&listen)->default_value(listen), "HOST:PORT (port 0: any free port); other than loopback needs --token-file")
      ("token-file", po::value(&token_file), "bearer token every request must send (mode 600); /v2/health/live stays open")
      ("port-file", po::value(&port_file), "write the port listened on to this file once serving")
      ("threads", po::value(&threads)->default_value(threads), "HTTP I/O threads (each runs requests' forward passes)")
      ("max-body-bytes", po::value(&max_body)->default_value(max_body), "largest request body")
      ("max-batch-rows", po::value(&max_rows)->default_value(max_rows), "most rows in one infer request")
      ("max-connections", po::value(&max_connections)->default_value(max_connections), "open connections; more get 503")
      ("rate-limit", po::value(&rate_limit)->default_value(rate_limit), "requests/s over all clients, 0: none; more get 429")
      ("request-timeout-ms", po::value(&timeout_ms)->default_value(timeout_ms), "a request must arrive whole within this (idle keep-alive included)")
      ("poll-ms", po::value(&poll_ms)->default_value(poll_ms), "how often the registry is checked for changes");
  if (int code = ParseFlags(argc, argv, desc, "serve"); code >= 0) return code;
  auto usage = [&](const std::string& m) {
    std::cerr << "shardps serve: " << m << "\n";
    return 2;
  };
  // Everything checkable is checked before anything is loaded or bound.
  if (threads < 1 || threads > 256) return usage("--threads must be in [1, 256]");
  if (max_body < 1024) return usage("--max-body-bytes must be at least 1024");
  if (max_rows < 1) return usage("--max-batch-rows must be >= 1");
  if (max_connections < 1) return usage("--max-connections must be >= 1");
  if (rate_limit < 0) return usage("--rate-limit must be >= 0");
  if (timeout_ms < 100) return usage("--request-timeout-ms must be >= 100");
  if (poll_ms < 10 || poll_ms > 60000) return usage("--poll-ms must be in [10, 60000]");
  if (model.empty() || model.find_first_of("/?# ") != std::string::npos) return usage("--model '" + model + "' must be a non-empty name without / ? # or spaces");
  auto selector = serve::ParseModelSelector(version);
  if (!selector.ok()) return usage(selector.status().message());
  auto hp = ParseHostPort(listen);
  if (!hp.ok()) return usage("--listen: " + hp.status().message());
  HttpServerOptions http;
  http.listen = listen;
  http.threads = threads;
  http.max_body_bytes = static_cast<size_t>(max_body);
  http.max_connections = max_connections;
  http.rate_limit = rate_limit;
  http.request_timeout = std::chrono::milliseconds(timeout_ms);
  if (!token_file.empty()) {
    auto t = LoadToken(token_file);
    if (!t.ok()) return Fail(t.status());
    http.bearer_token = *t;
    http.open_paths = {"/v2/health/live"};
  } else if (!IsLoopbackHost(hp->first)) {
    return usage("--listen " + listen + " is not a loopback address: give --token-file FILE so only holders of the token are served");
  }

  std::mutex log_mu;
  auto log = [&](const std::string& line) {
    std::lock_guard<std::mutex> l(log_mu);
    std::cerr << "shardps serve: " << UtcNow() << " " << line << std::endl;
  };
  metrics::Registry metrics;
  serve::ModelStoreOptions so;
  so.model_name = model;
  so.registry = registry;
  so.fallback_registry = fallback;
  so.selector = *selector;
  so.poll_interval = std::chrono::milliseconds(poll_ms);
  so.log = log;
  so.metrics = &metrics;
  auto store = serve::ModelStore::Open(so);
  if (!store.ok()) return Fail(store.status());

  // SIGINT/SIGTERM are taken by sigwait below: blocked before any thread starts, so every
  // thread inherits the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  serve::KServeOptions ko;
  ko.max_batch_rows = max_rows;
  std::unique_ptr<HttpServer> server;
  std::atomic<HttpServer*> serving{nullptr};  // read by scrapes, which may start before `server` is set
  auto& refused = metrics.AddCounter("shardps_serve_http_refused_total",
                                     "Requests and connections refused before reaching a handler, by reason", {"reason"});
  HttpServerStats seen;
  std::mutex seen_mu;
  ko.before_scrape = [&] {
    HttpServer* srv = serving.load();
    if (srv == nullptr) return;
    const HttpServerStats now = srv->stats();
    std::lock_guard<std::mutex> l(seen_mu);
    auto add = [&](const char* reason, uint64_t cur, uint64_t& last) {
      refused.With({reason}).Inc(static_cast<double>(cur - last));
      last = cur;
    };
    add("malformed", now.bad_requests, seen.bad_requests);
    add("too_large", now.too_large, seen.too_large);
    add("unauthorized", now.unauthorized, seen.unauthorized);
    add("rate_limited", now.rate_limited, seen.rate_limited);
    add("too_many_connections", now.connections_refused, seen.connections_refused);
    add("timeout", now.timeouts, seen.timeouts);
  };
  serve::KServeHandler handler(**store, metrics, ko);
  auto started = HttpServer::Start(http, [&](const HttpRequest& r) { return handler.Handle(r); });
  if (!started.ok()) return Fail(started.status());
  server = std::move(*started);
  serving.store(server.get());
  (*store)->Start();
  log("listening on http://" + hp->first + ":" + std::to_string(server->port()) + " (model '" + model + "', version " + version +
      (http.bearer_token.empty() ? "" : ", bearer token required") + ")");
  if (!port_file.empty()) {
    const std::string tmp = port_file + ".tmp";
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << server->port() << "\n";
      if (!out) {
        server->Stop();  // before the handler and the store it uses go out of scope
        (*store)->Stop();
        return Fail(IoError("cannot write the port file '" + tmp + "'"));
      }
    }
    if (std::rename(tmp.c_str(), port_file.c_str()) != 0) {
      server->Stop();
      (*store)->Stop();
      return Fail(IoError("cannot rename '" + tmp + "' to '" + port_file + "'"));
    }
  }
  int sig = 0;
  sigwait(&stop_signals, &sig);
  log(std::string("stopping on ") + (sig == SIGINT ? "SIGINT" : "SIGTERM"));
  server->Stop();
  (*store)->Stop();
  return 0;
}

}  // namespace shardps::tools
