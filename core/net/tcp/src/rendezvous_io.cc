#include "rendezvous_io.h"

#include <iostream>
#include <thread>
#include <vector>

namespace shardps::tcp_internal {

Status RunUntil(asio::io_context& io, const bool* done, Deadline deadline, const std::string& what) {
  io.restart();
  while (!*done) {
    if (Clock::now() >= deadline) return DeadlineExceeded(what + ": timed out");
    io.run_one_until(deadline);
    io.restart();
  }
  return Status::Ok();
}

Status ReadExact(asio::io_context& io, tcp::socket& s, void* buf, size_t n, Deadline deadline, const std::string& what) {
  return RunOp(io, s, deadline, what, [&](auto cb) { asio::async_read(s, asio::buffer(buf, n), cb); });
}

Status WriteExact(asio::io_context& io, tcp::socket& s, const void* buf, size_t n, Deadline deadline, const std::string& what) {
  return RunOp(io, s, deadline, what, [&](auto cb) { asio::async_write(s, asio::buffer(buf, n), cb); });
}

Status Connect(asio::io_context& io, tcp::socket& s, const tcp::endpoint& ep, Deadline deadline, const std::string& what) {
  for (;;) {
    Status st = RunOp(io, s, deadline, what, [&](auto cb) {
      s.async_connect(ep, [cb](const boost::system::error_code& e) { cb(e, 0); });
    });
    if (st.ok()) {
      s.set_option(tcp::no_delay(true));
      return st;
    }
    if (st.code() == StatusCode::kDeadlineExceeded) return st;
    boost::system::error_code ignored;
    s.close(ignored);
    if (Clock::now() + std::chrono::milliseconds(50) >= deadline) return st;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

void TellRefused(tcp::socket& s, const std::string& reason) {
  const std::string r = reason.substr(0, kMaxReasonBytes);
  std::vector<uint8_t> m;
  for (uint32_t v : {kRendezvousRefused, static_cast<uint32_t>(r.size())}) {
    for (int i = 0; i < 4; ++i) m.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  m.insert(m.end(), r.begin(), r.end());
  boost::system::error_code ignored;
  s.non_blocking(false, ignored);
  asio::write(s, asio::buffer(m), ignored);  // a few bytes into an idle socket's send buffer
}

void Warn(const TcpOptions& o, const std::string& m) {
  if (o.on_warning) o.on_warning(m);
  else std::cerr << "[shardps rank " << o.rank << "] warning: " << m << std::endl;
}

Result<tcp::endpoint> Resolve(const std::string& host, uint16_t port) {
  boost::system::error_code ec;
  const auto addr = asio::ip::make_address(host, ec);
  if (ec) return InvalidArgument("bad address '" + host + "' (give a numeric IPv4 or IPv6 address): " + ec.message());
  return tcp::endpoint(addr, port);
}

Status Listen(tcp::acceptor& a, const tcp::endpoint& ep) {
  boost::system::error_code ec;
  a.open(ep.protocol(), ec);
  if (!ec) a.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) a.bind(ep, ec);
  if (!ec) a.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Unavailable("cannot listen on " + ep.address().to_string() + ":" + std::to_string(ep.port()) + ": " + ec.message());
  return Status::Ok();
}

}  // namespace shardps::tcp_internal
