#include "shardps/net/http_server.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <mutex>
#include <future>
#include <optional>
#include <thread>

#include "shardps/base/json.h"

namespace shardps {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

// Requests per second over all clients: a token bucket refilled continuously.
class TokenBucket {
 public:
  explicit TokenBucket(double rate) : rate_(rate), burst_(std::max(1.0, rate)), tokens_(burst_) {}
  bool Take() {
    if (rate_ <= 0) return true;
    std::lock_guard<std::mutex> l(mu_);
    const auto now = std::chrono::steady_clock::now();
    const double dt = std::chrono::duration<double>(now - last_).count();
    last_ = now;
    tokens_ = std::min(burst_, tokens_ + dt * rate_);
    if (tokens_ < 1.0) return false;
    tokens_ -= 1.0;
    return true;
  }

 private:
  const double rate_;
  const double burst_;
  std::mutex mu_;
  double tokens_;
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
};

std::string PathOf(const std::string& target) { return target.substr(0, target.find('?')); }

}  // namespace

struct HttpServer::Impl {
  // Declared before the io_context: sessions still queued in it when it is destroyed touch them.
  HttpServerOptions options;
  HttpHandler handler;
  std::atomic<size_t> connections{0};
  TokenBucket bucket{0};
  std::once_flag stopped;
  std::atomic<uint64_t> requests{0}, bad_requests{0}, too_large{0}, unauthorized{0}, rate_limited{0},
      connections_refused{0}, timeouts{0};

  asio::io_context ioc;
  tcp::acceptor acceptor{asio::make_strand(ioc)};  // accepts and the close in Stop() run on its strand
  asio::steady_timer accept_retry{acceptor.get_executor()};
  std::vector<std::thread> threads;

  explicit Impl(const HttpServerOptions& o) : options(o), bucket(o.rate_limit) {}
  void Accept();

  bool Authorized(const http::request<http::string_body>& req) const {
    if (options.bearer_token.empty()) return true;
    const std::string path = PathOf(std::string(req.target()));
    if (std::find(options.open_paths.begin(), options.open_paths.end(), path) != options.open_paths.end()) return true;
    const auto it = req.find(http::field::authorization);
    if (it == req.end()) return false;
    const std::string expected = "Bearer " + options.bearer_token;
    const beast::string_view got = it->value();
    return got.size() == expected.size() && CRYPTO_memcmp(got.data(), expected.data(), expected.size()) == 0;
  }
};

namespace {

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, HttpServer::Impl* server, bool refuse)
      : stream_(std::move(socket)), server_(server), refuse_(refuse) {
    beast::error_code ec;
    const auto ep = stream_.socket().remote_endpoint(ec);
    if (!ec) peer_ = ep.address().to_string() + ":" + std::to_string(ep.port());
  }
  ~Session() { server_->connections.fetch_sub(1); }

  void Run() {
    asio::dispatch(stream_.get_executor(), [self = shared_from_this()] {
      if (self->refuse_) {
        self->server_->connections_refused.fetch_add(1);
        self->Send(HttpError(503, "too many connections (limit " + std::to_string(self->server_->options.max_connections) + ")"),
                   /*keep_alive=*/false);
        return;
      }
      self->Read();
    });
  }

 private:
  void Read() {
    head_ = false;
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(std::min<size_t>(server_->options.max_header_bytes, UINT32_MAX)));
    parser_->body_limit(server_->options.max_body_bytes);
    stream_.expires_after(server_->options.request_timeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) { self->OnRead(ec); });
  }

  void OnRead(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset) return Close();
    if (ec == beast::error::timeout) {
      server_->timeouts.fetch_add(1);
      return;  // the stream closed the socket
    }
    if (ec == http::error::body_limit) {
      server_->too_large.fetch_add(1);
      return Send(HttpError(413, "request body larger than " + std::to_string(server_->options.max_body_bytes) + " bytes"),
                  false);
    }
    if (ec == http::error::header_limit) {
      server_->too_large.fetch_add(1);
      return Send(HttpError(431, "request headers larger than " + std::to_string(server_->options.max_header_bytes) + " bytes"),
                  false);
    }
    if (ec) {
      if (ec.category() == http::make_error_code(http::error::bad_method).category()) {
        server_->bad_requests.fetch_add(1);
        return Send(HttpError(400, "malformed HTTP request: " + ec.message()), false);
      }
      return Close();  // the connection itself failed
    }
    const http::request<http::string_body>& req = parser_->get();
    const bool keep_alive = req.keep_alive();
    head_ = req.method() == http::verb::head;
    if (!server_->Authorized(req)) {
      server_->unauthorized.fetch_add(1);
      HttpResponse r = HttpError(401, "missing or wrong bearer token (send \"Authorization: Bearer <token>\")");
      return Send(r, keep_alive);
    }
    if (!server_->bucket.Take()) {
      server_->rate_limited.fetch_add(1);
      return Send(HttpError(429, "rate limit of " + std::to_string(server_->options.rate_limit) + " requests/s exceeded"),
                  keep_alive);
    }
    HttpRequest r;
    r.method = std::string(req.method_string());
    r.target = std::string(req.target());
    r.body = req.body();
    r.peer = peer_;
    server_->requests.fetch_add(1);
    HttpResponse out;
    try {
      out = server_->handler(r);
    } catch (const std::exception& e) {
      out = HttpError(500, std::string("internal error: ") + e.what());
    }
    Send(out, keep_alive);
  }

  void Send(const HttpResponse& r, bool keep_alive) {
    res_ = {};
    res_.version(11);
    res_.result(static_cast<unsigned>(r.status));
    res_.set(http::field::server, "shardps");
    res_.set(http::field::content_type, r.content_type);
    res_.keep_alive(keep_alive);
    res_.body() = r.body;
    res_.prepare_payload();
    if (head_) {  // the headers a GET would get, Content-Length included, and no body
      const auto length = res_.body().size();
      res_.body().clear();
      res_.content_length(length);
    }
    stream_.expires_after(server_->options.request_timeout);
    http::async_write(stream_, res_, [self = shared_from_this(), keep_alive](beast::error_code ec, size_t) {
      if (ec) return;
      if (!keep_alive) return self->Close();
      self->Read();
    });
  }

  void Close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::response<http::string_body> res_;
  HttpServer::Impl* server_;
  bool refuse_;
  bool head_ = false;  // the request being answered is a HEAD
  std::string peer_;
};

}  // namespace

void HttpServer::Impl::Accept() {
  acceptor.async_accept(asio::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
    if (ec) {
      // Out of descriptors (EMFILE/ENFILE) or another transient failure: try again shortly
      // rather than spinning on the error.
      accept_retry.expires_after(std::chrono::milliseconds(50));
      accept_retry.async_wait([this](beast::error_code wait_ec) {
        if (!wait_ec && acceptor.is_open()) Accept();
      });
      return;
    }
    const bool refuse = connections.fetch_add(1) >= options.max_connections;
    std::make_shared<Session>(std::move(socket), this, refuse)->Run();
    Accept();
  });
}

Result<std::pair<std::string, uint16_t>> ParseHostPort(const std::string& text) {
  const size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon + 1 == text.size()) {
    return InvalidArgument("address '" + text + "' is not host:port");
  }
  std::string host = text.substr(0, colon);
  const std::string port = text.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host.empty()) return InvalidArgument("address '" + text + "' has no host");
  if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos || std::stoul(port) > 65535) {
    return InvalidArgument("address '" + text + "': port '" + port + "' is not a number in 0..65535");
  }
  return std::make_pair(host, static_cast<uint16_t>(std::stoul(port)));
}

bool IsLoopbackHost(const std::string& host) {
  if (host == "localhost") return true;
  beast::error_code ec;
  const auto addr = asio::ip::make_address(host, ec);
  return !ec && addr.is_loopback();
}

HttpResponse HttpError(int status, const std::string& message) {
  return HttpResponse{status, "application/json", "{\"error\": " + JsonQuote(message) + "}\n"};
}

Result<std::unique_ptr<HttpServer>> HttpServer::Start(const HttpServerOptions& options, HttpHandler handler) {
  SHARDPS_ASSIGN_OR_RETURN(auto hp, ParseHostPort(options.listen));
  if (options.threads < 1) return InvalidArgument("HTTP server threads must be >= 1");
  auto impl = std::make_unique<Impl>(options);
  impl->handler = std::move(handler);
  beast::error_code ec;
  tcp::resolver resolver(impl->ioc);
  auto results = resolver.resolve(hp.first, std::to_string(hp.second), tcp::resolver::passive, ec);
  if (ec || results.empty()) return InvalidArgument("cannot resolve listen address '" + options.listen + "': " + ec.message());
  const tcp::endpoint ep = results.begin()->endpoint();
  const std::string where = "cannot listen on " + options.listen + ": ";
  impl->acceptor.open(ep.protocol(), ec);
  if (ec) return Unavailable(where + ec.message());
  impl->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  impl->acceptor.bind(ep, ec);
  if (ec) return Unavailable(where + ec.message());
  impl->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Unavailable(where + ec.message());
  impl->Accept();
  for (int i = 0; i < options.threads; ++i) impl->threads.emplace_back([p = impl.get()] { p->ioc.run(); });
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpServer::~HttpServer() { Stop(); }

uint16_t HttpServer::port() const {
  beast::error_code ec;
  return impl_->acceptor.local_endpoint(ec).port();
}

HttpServerStats HttpServer::stats() const {
  HttpServerStats s;
  s.requests = impl_->requests.load();
  s.bad_requests = impl_->bad_requests.load();
  s.too_large = impl_->too_large.load();
  s.unauthorized = impl_->unauthorized.load();
  s.rate_limited = impl_->rate_limited.load();
  s.connections_refused = impl_->connections_refused.load();
  s.timeouts = impl_->timeouts.load();
  return s;
}

void HttpServer::Stop() {
  std::call_once(impl_->stopped, [this] {
    // The listening socket is closed first (on the acceptor's strand), so nobody connects to a
    // server that no longer answers; then the I/O threads stop. Connections still open are
    // closed when the server is destroyed.
    std::promise<void> closed;
    asio::post(impl_->acceptor.get_executor(), [this, &closed] {
      beast::error_code ec;
      impl_->accept_retry.cancel();
      impl_->acceptor.close(ec);
      closed.set_value();
    });
    closed.get_future().wait_for(std::chrono::seconds(10));
    impl_->ioc.stop();
    for (auto& t : impl_->threads) t.join();
  });
}

}  // namespace shardps
