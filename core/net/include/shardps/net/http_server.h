// HttpServer: a small HTTP/1.1 server (Boost.Beast over Asio) for what shardps exposes over HTTP:
// the model server's KServe v2 endpoints and Prometheus' /metrics on serving and training
// processes. Keep-alive, bounded everything, and a handler called with the whole request.
//
//   HttpServerOptions o;  o.listen = "127.0.0.1:8500";
//   SHARDPS_ASSIGN_OR_RETURN(auto server, HttpServer::Start(o, [&](const HttpRequest& r) {
//     return HttpResponse{200, "text/plain", "hello\n"};
//   }));
//   ... server->port() ...
//   server->Stop();   // or let it go out of scope
//
// What a remote client cannot do to it (each answered with a status and {"error": ...}, then the
// connection is closed; other connections carry on):
//   a request line or headers beyond max_header_bytes (431), a body beyond max_body_bytes (413,
//   refused from its Content-Length before the body is read), malformed HTTP (400), more than
//   max_connections open connections (503 to the newcomer), more requests per second than the
//   token bucket allows (429, connection kept), a missing or wrong bearer token (401), and a
//   request that does not arrive whole within request_timeout (slow or idle clients: the
//   connection is closed; this also ends idle keep-alive connections).
// The bearer token is compared in constant time. A handler's exception is a bug, answered 500.
// Thread safety: the handler runs on `threads` I/O threads concurrently; Stop() from any thread
// (not from the handler).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "shardps/base/status.h"

namespace shardps {

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string target;  // path and query as sent ("/v2/models/m/infer")
  std::string body;
  std::string peer;    // "127.0.0.1:51234"
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
};

struct HttpServerOptions {
  std::string listen = "127.0.0.1:0";  // host:port; port 0 picks a free one
  int threads = 2;
  size_t max_body_bytes = 16u << 20;
  size_t max_header_bytes = 16u << 10;
  size_t max_connections = 512;
  std::chrono::milliseconds request_timeout{30000};
  double rate_limit = 0;   // requests per second over all clients (0: none), burst = max(1, rate_limit)
  std::string bearer_token;            // non-empty: every request must send "Authorization: Bearer <token>"
  std::vector<std::string> open_paths; // exact paths served without the token (e.g. "/metrics", "/v2/health/live")
};

// Counts of what the server refused, for metrics and tests.
struct HttpServerStats {
  uint64_t requests = 0;             // handed to the handler
  uint64_t bad_requests = 0;         // malformed HTTP
  uint64_t too_large = 0;            // 413 and 431
  uint64_t unauthorized = 0;
  uint64_t rate_limited = 0;
  uint64_t connections_refused = 0;  // over max_connections
  uint64_t timeouts = 0;
};

using HttpHandler = std::function<HttpResponse(const HttpRequest&)>;

class HttpServer {
 public:
  // Binds and starts serving; an error names the address (unparsable, in use, not permitted).
  static Result<std::unique_ptr<HttpServer>> Start(const HttpServerOptions& options, HttpHandler handler);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  uint16_t port() const;
  HttpServerStats stats() const;
  // Closes the listening socket and joins the I/O threads; open connections are closed when the
  // server is destroyed. Idempotent.
  void Stop();

  struct Impl;

 private:
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// "host:port" -> (host, port); the port must be 0..65535. Hosts are names or IPv4/IPv6 literals
// ("[::1]:80").
Result<std::pair<std::string, uint16_t>> ParseHostPort(const std::string& text);
// Whether `host` is a loopback address or "localhost" (binding anywhere else needs a token).
bool IsLoopbackHost(const std::string& host);
// {"error": message} as JSON.
HttpResponse HttpError(int status, const std::string& message);

}  // namespace shardps
