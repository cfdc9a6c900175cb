// The same synchronous step over the TCP transport on 127.0.0.1: ranks are threads, each with its
// own TcpTransport (rendezvous, authentication, a full mesh of loopback connections).
#include <gtest/gtest.h>

#include <boost/asio.hpp>
#include <mutex>
#include <thread>

#include "shardps/net/inproc_transport.h"
#include "shardps/net/tcp_transport.h"
#include "shardps/node.h"

namespace shardps {
namespace {

using std::chrono::milliseconds;

uint16_t FreePort() {
  boost::asio::io_context io;
  boost::asio::ip::tcp::acceptor a(io, {boost::asio::ip::make_address("127.0.0.1"), 0});
  return a.local_endpoint().port();
}

float Grad(int w, uint64_t i) { return static_cast<float>((w + 1) * ((i % 7) + 1)) * 0.25f; }

struct Outcome {
  std::vector<Status> status;
  std::vector<std::vector<float>> weights;  // by rank (workers)
};

// Runs `world` ranks, `servers` of them servers (or all colocated), 4 PushPull steps of fixed
// gradients on a 1000-float SGD table (lr 0.5) and an Adam table, over TCP or in-process.
Outcome RunJob(int world, int servers, bool colocated, bool tcp, const std::vector<Secret>& keys) {
  TableSpec a{.name = "a", .size = 1000};
  a.optimizer.learning_rate = 0.5f;
  TableSpec b{.name = "b", .size = 300};
  b.optimizer.kind = OptimizerKind::kAdam;
  b.optimizer.learning_rate = 0.01f;
  const uint16_t port = FreePort();
  InProcHub hub(world);
  Outcome out;
  out.status.resize(world);
  out.weights.resize(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      out.status[r] = [&]() -> Status {
        SHARDPS_ASSIGN_OR_RETURN(Cluster c, Cluster::Create(world, r, {.num_servers = servers, .colocated = colocated}));
        SHARDPS_ASSIGN_OR_RETURN(TableLayout layout, TableLayout::Create({a, b}, c.num_servers(), {.chunk_floats = 128}));
        std::unique_ptr<Transport> t;
        if (tcp) {
          TcpOptions o;
          o.port = port;
          o.rank = r;
          o.size = world;
          o.secret = keys[r];
          o.setup_timeout = milliseconds(5000);
          SHARDPS_ASSIGN_OR_RETURN(t, CreateTcpTransport(o));
        } else {
          t = hub.Connect(r);
        }
        NodeOptions no;
        no.startup_timeout = milliseconds(10000);
        SHARDPS_ASSIGN_OR_RETURN(auto node, Node::Start(std::move(t), c, layout, no));
        Status s;
        if (auto* client = node->client()) {
          const int w = c.worker_index();
          std::vector<float> ga(1000), wa(1000), gb(300), wb(300);
          for (uint64_t i = 0; i < 1000; ++i) ga[i] = Grad(w, i);
          for (uint64_t i = 0; i < 300; ++i) gb[i] = Grad(w, i) * 0.1f;
          for (uint64_t step = 0; step < 4 && s.ok(); ++step) {
            s = client->PushPull(0, ga, wa, step).wait(milliseconds(20000));
            if (s.ok()) s = client->PushPull(1, gb, wb, step).wait(milliseconds(20000));
          }
          wa.insert(wa.end(), wb.begin(), wb.end());
          out.weights[r] = wa;
        }
        Status f = node->Finish();
        return s.ok() ? f : s;
      }();
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

TEST(TcpTransport, SynchronousStepsMatchTheClosedFormAndTheInProcessRun) {
  const std::vector<Secret> keys(4, Secret(32, 9));
  for (bool colocated : {false, true}) {
    const int world = colocated ? 2 : 4;
    const int servers = colocated ? 2 : 2;
    Outcome tcp = RunJob(world, servers, colocated, true, keys);
    for (const Status& s : tcp.status) ASSERT_TRUE(s.ok()) << s.ToString();
    Outcome mem = RunJob(world, servers, colocated, false, keys);
    const int first_worker = colocated ? 0 : servers;
    const int workers = world - first_worker;
    for (int r = first_worker; r < world; ++r) {
      ASSERT_EQ(tcp.weights[r].size(), 1300u);
      for (uint64_t i = 0; i < 1000; ++i) {
        float sum = 0;
        for (int w = 0; w < workers; ++w) sum += Grad(w, i);
        ASSERT_EQ(tcp.weights[r][i], -4 * 0.5f * sum) << "rank " << r << " element " << i;
      }
      // Adam: the same bits as the in-process transport.
      EXPECT_EQ(tcp.weights[r], mem.weights[r]) << "rank " << r;
    }
  }
}

TEST(TcpTransport, AWrongSecretIsRefused) {
  std::vector<Secret> keys(3, Secret(32, 9));
  keys[2] = Secret(32, 8);  // rank 2 does not know the job's secret
  Outcome out = RunJob(3, 1, false, true, keys);
  EXPECT_NE(out.status[2].ToString().find("rejected our proof"), std::string::npos) << out.status[2].ToString();
  // The coordinator refuses the stranger and keeps waiting for a real rank 2 until its deadline.
  EXPECT_EQ(out.status[0].code(), StatusCode::kDeadlineExceeded) << out.status[0].ToString();
  EXPECT_NE(out.status[0].ToString().find("ranks 2 did not connect"), std::string::npos) << out.status[0].ToString();
  EXPECT_NE(out.status[0].ToString().find("1 connections refused"), std::string::npos) << out.status[0].ToString();
}

// A worker that vanishes mid-run (its process gone: connections closed without a goodbye) ends the
// run on every other rank with an error naming it, long before any request deadline.
TEST(TcpTransport, ALostWorkerEndsTheRunEverywhere) {
  const int world = 3;
  const uint16_t port = FreePort();
  TableSpec a{.name = "a", .size = 1000};
  std::vector<Status> status(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      status[r] = [&]() -> Status {
        SHARDPS_ASSIGN_OR_RETURN(Cluster c, Cluster::Create(world, r, {.num_servers = 1}));
        SHARDPS_ASSIGN_OR_RETURN(TableLayout layout, TableLayout::Create({a}, 1, {.chunk_floats = 128}));
        TcpOptions o;
        o.port = port;
        o.rank = r;
        o.size = world;
        o.secret = Secret(32, 5);
        o.setup_timeout = milliseconds(10000);
        o.peer_timeout = milliseconds(60000);
        SHARDPS_ASSIGN_OR_RETURN(auto t, CreateTcpTransport(o));
        NodeOptions no;
        no.client.request_timeout = milliseconds(120000);  // far beyond the test: the loss must end it
        no.server.max_hold = milliseconds(120000);
        SHARDPS_ASSIGN_OR_RETURN(auto node, Node::Start(std::move(t), c, layout, no));
        if (auto* client = node->client()) {
          std::vector<float> g(1000, 1.0f), w(1000);
          for (uint64_t step = 0; step < 1000; ++step) {
            if (r == 2 && step == 3) return Cancelled("vanished");  // ~Node: no goodbye
            SHARDPS_RETURN_IF_ERROR(client->PushPull(0, g, w, step).wait(milliseconds(120000)));
          }
        }
        return node->Finish();
      }();
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(status[2].code(), StatusCode::kCancelled);
  for (int r : {0, 1}) {
    EXPECT_EQ(status[r].code(), StatusCode::kUnavailable) << r << ": " << status[r].ToString();
    EXPECT_NE(status[r].ToString().find("rank 2 (worker 1) lost"), std::string::npos) << status[r].ToString();
  }
}

}  // namespace
}  // namespace shardps
