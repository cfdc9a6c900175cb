// Internal to the TCP transport: the accepting side of the rendezvous. A Gate accepts
// connections on a listener and authenticates many at once, each under its own deadline, until
// the wanted number of peers has registered, the rendezvous fails, or it is closed. It bounds
// what strangers can hold (TcpOptions::max_pending_connections, oldest unauthenticated evicted
// first) and the log lines they cause. Everything runs on the io_context's thread.
//
//   Gate gate(io, acceptor, options, /*want=*/n, [&](int peer, PeerAddress at, auto sock) { ...; return Status::Ok(); });
//   gate.Open();
//   while (!gate.complete()) io.run_one_until(...);   // then gate.error()
//   gate.Close();                                      // closes the listener and every pending connection
#pragma once

#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "rendezvous_io.h"

namespace shardps::tcp_internal {

struct Arrival;

class Gate {
 public:
  // Called for each peer that authenticated and registered; an error ends the rendezvous.
  using OnPeer = std::function<Status(int peer, PeerAddress, std::unique_ptr<tcp::socket>)>;

  Gate(asio::io_context& io, tcp::acceptor& acceptor, const TcpOptions& o, int want, OnPeer on_peer);
  ~Gate();

  void Open() {
    if (want_ > 0) AcceptNext();
  }
  bool complete() const { return got_ >= want_ || !error_.ok(); }
  const Status& error() const { return error_; }
  int refused() const { return refused_; }
  // Connections refused for a wrong proof of the secret, by the rank they claimed (the latest).
  struct Refusal {
    Clock::time_point at;
    std::string from;
  };
  const std::unordered_map<int, Refusal>& wrong_proofs() const { return wrong_proofs_; }
  // Ranks that were told why they cannot join (and have stopped) without joining.
  const std::vector<int>& told() const { return told_; }
  // After a failed rendezvous: every later arrival that authenticates goes to `on_peer` (which
  // tells it why), and the gate stays open until closed.
  void Reroute(OnPeer on_peer) {
    on_peer_ = std::move(on_peer);
    error_ = Status::Ok();
    want_ = std::numeric_limits<int>::max();
  }
  // Closes the listener and every connection still authenticating. Run the io_context's ready
  // handlers afterwards (poll) so the aborted operations release what they hold.
  void Close();

 private:
  void AcceptNext();
  void Arrived(std::shared_ptr<Arrival> a, Status s);

  asio::io_context& io_;
  tcp::acceptor& acceptor_;
  const TcpOptions& o_;
  int want_;
  OnPeer on_peer_;
  std::vector<std::shared_ptr<Arrival>> live_;
  int got_ = 0;
  int refused_ = 0;
  bool closed_ = false;
  Status error_;
  std::unordered_map<int, Refusal> wrong_proofs_;
  std::vector<int> told_;
};

}  // namespace shardps::tcp_internal
