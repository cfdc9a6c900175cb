// A program outside shardps, built against the installed headers and libraries only: a job of two
// ranks (one server, one worker) as threads of this process, over the TCP transport on the
// loopback interface. The worker pushes a gradient and pulls the updated weights back.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "shardps/net/tcp_transport.h"
#include "shardps/node.h"
#include "shardps/storage/checkpoint_registry.h"

namespace {

// A port the kernel just had free on 127.0.0.1 (for rank 0's listener).
shardps::Result<uint16_t> FreeLoopbackPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return shardps::Unavailable("socket() failed");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  ::close(fd);
  if (!ok) return shardps::Unavailable("no free port on 127.0.0.1");
  return ntohs(a.sin_port);
}

}  // namespace

int main() {
  using namespace shardps;
  // The registry's spec parsing, a pure function of the public storage API.
  if (ParseCheckpointSpec("/no/such/run@7").which != "7") {
    std::fprintf(stderr, "ParseCheckpointSpec did not split off the version\n");
    return 1;
  }
  auto port = FreeLoopbackPort();
  if (!port.ok()) { std::fprintf(stderr, "%s\n", port.status().ToString().c_str()); return 1; }

  TableSpec t{.name = "w", .size = 10};
  t.optimizer.learning_rate = 1.0f;
  Status results[2];
  std::vector<float> weights(10, 1.0f);
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      auto cluster = Cluster::Create(2, r, {.num_servers = 1});
      if (!cluster.ok()) { results[r] = cluster.status(); return; }
      auto layout = TableLayout::Create({t}, cluster->num_servers());
      if (!layout.ok()) { results[r] = layout.status(); return; }
      // Both ranks are this process's threads on the loopback interface: no secret needed.
      TcpOptions o{.host = "127.0.0.1", .port = *port, .rank = r, .size = 2, .insecure = true};
      o.setup_timeout = std::chrono::seconds(30);
      auto transport = CreateTcpTransport(o);
      if (!transport.ok()) { results[r] = transport.status(); return; }
      NodeOptions no;
      no.startup_timeout = std::chrono::seconds(30);
      no.finish_timeout = std::chrono::seconds(30);
      auto node = Node::Start(std::move(*transport), *cluster, *layout, std::move(no));
      if (!node.ok()) { results[r] = node.status(); return; }
      if (worker::KVClient* c = (*node)->client()) {
        std::vector<float> g(10, 2.0f);
        results[r] = c->PushPull(0, g, weights, /*step=*/0).wait(std::chrono::seconds(30));
      }
      Status f = (*node)->Finish();
      if (results[r].ok()) results[r] = f;
    });
  }
  for (auto& th : ranks) th.join();
  for (int r = 0; r < 2; ++r) {
    if (!results[r].ok()) { std::fprintf(stderr, "rank %d: %s\n", r, results[r].ToString().c_str()); return 1; }
  }
  // Weights start at zero (the default initialiser); plain SGD with rate 1 takes the gradient off.
  for (float w : weights) {
    if (w != -2.0f) { std::fprintf(stderr, "consumer: weight %g after one step, expected -2\n", w); return 1; }
  }
  std::printf("consumer: one step over TCP, w[0] = %g\n", weights[0]);
  return 0;
}
