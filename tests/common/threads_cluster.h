// Runs a shardps job with ranks as threads over the in-process transport, or over TCP on
// 127.0.0.1 (each rank its own TcpTransport: rendezvous, authentication, loopback sockets).
//
//   ThreadsJob job({.world = 4, .servers = 2, .tables = {...}});   // .transport = kTcp for TCP
//   auto statuses = job.Run([&](int rank, Node& node) -> Status { ... node.client() ... });
//
// Each rank builds its own Cluster, TableLayout and Node exactly as a real process would.
#pragma once

#include <functional>
#include <thread>
#include <vector>

#include <boost/asio.hpp>

#include "shardps/net/endpoint.h"  // Node::endpoint(), an internal part tests reach into
#include "shardps/net/inproc_transport.h"
#include "shardps/net/tcp_transport.h"
#include "shardps/node.h"
#include "shardps/ps/server.h"  // Node::server(), an internal part tests reach into

namespace shardps::testing {

enum class TransportKind { kInProc, kTcp };

inline std::string TransportName(TransportKind k) { return k == TransportKind::kTcp ? "tcp" : "inproc"; }

// A port free on 127.0.0.1 right now (the coordinator of a TCP job binds it next).
inline uint16_t FreeLoopbackPort() {
  boost::asio::io_context io;
  boost::asio::ip::tcp::acceptor a(io, {boost::asio::ip::make_address("127.0.0.1"), 0});
  return a.local_endpoint().port();
}

struct JobConfig {
  TransportKind transport = TransportKind::kInProc;
  int world = 2;
  int servers = 1;
  bool colocated = false;
  std::vector<TableSpec> tables;
  uint64_t chunk_floats = 64;
  InProcOptions inproc;
  NodeOptions node;
  // If set, each rank's transport passes through it before the node starts (fault injection).
  std::function<std::unique_ptr<Transport>(int rank, std::unique_ptr<Transport>)> wrap_transport;
};

class ThreadsJob {
 public:
  explicit ThreadsJob(JobConfig config)
      : config_(std::move(config)),
        hub_(config_.world, config_.inproc),
        port_(config_.transport == TransportKind::kTcp ? FreeLoopbackPort() : 0) {}

  InProcHub& hub() { return hub_; }

  // Runs `body` on every rank (after Node::Start) and then Node::Finish; returns each rank's status.
  std::vector<Status> Run(const std::function<Status(int rank, Node& node)>& body) {
    std::vector<Status> out(config_.world);
    std::vector<std::thread> threads;
    for (int r = 0; r < config_.world; ++r) {
      threads.emplace_back([&, r] { out[r] = RunRank(r, body); });
    }
    for (auto& t : threads) t.join();
    return out;
  }

  Status RunRank(int rank, const std::function<Status(int rank, Node& node)>& body) {
    ClusterOptions co;
    co.num_servers = config_.servers;
    co.colocated = config_.colocated;
    SHARDPS_ASSIGN_OR_RETURN(Cluster cluster, Cluster::Create(config_.world, rank, co));
    LayoutOptions lo;
    lo.chunk_floats = config_.chunk_floats;
    SHARDPS_ASSIGN_OR_RETURN(TableLayout layout, TableLayout::Create(config_.tables, cluster.num_servers(), lo));
    std::unique_ptr<Transport> transport;
    if (config_.transport == TransportKind::kTcp) {
      TcpOptions o;
      o.port = port_;
      o.rank = rank;
      o.size = config_.world;
      o.secret = Secret(32, 0x5a);
      o.setup_timeout = std::chrono::milliseconds(20000);
      SHARDPS_ASSIGN_OR_RETURN(transport, CreateTcpTransport(o));
    } else {
      transport = hub_.Connect(rank);
    }
    if (config_.wrap_transport) transport = config_.wrap_transport(rank, std::move(transport));
    SHARDPS_ASSIGN_OR_RETURN(auto node, Node::Start(std::move(transport), cluster, layout, config_.node));
    Status body_status = body(rank, *node);
    Status finish = node->Finish();
    return body_status.ok() ? finish : body_status;
  }

 private:
  JobConfig config_;
  InProcHub hub_;
  uint16_t port_;
};

inline std::string JoinStatuses(const std::vector<Status>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += "rank " + std::to_string(i) + ": " + v[i].ToString() + "\n";
  return s;
}

}  // namespace shardps::testing
