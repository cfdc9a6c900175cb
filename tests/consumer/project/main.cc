// A program outside shardps, built against the installed headers and libraries only: jobs of two
// ranks (one server, one worker) as threads of this process, over the TCP transport on the
// loopback interface. The first job's worker pushes a gradient, pulls the updated weights back and
// checkpoints them with its own CheckpointDriver; the second job starts its server from that
// checkpoint through Node and its worker pulls the restored weights.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "shardps/net/tcp_transport.h"
#include "shardps/node.h"
#include "shardps/storage/checkpoint_registry.h"
#include "shardps/worker/checkpoint_driver.h"

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

// Runs a job of two ranks (rank 0 serves, rank 1 works) with `options`; `work` runs on the worker.
shardps::Status RunJob(const shardps::TableSpec& t, shardps::NodeOptions options,
                       const std::function<shardps::Status(shardps::worker::KVClient&)>& work) {
  using namespace shardps;
  auto port = FreeLoopbackPort();
  if (!port.ok()) return port.status();
  options.startup_timeout = std::chrono::seconds(30);
  options.finish_timeout = std::chrono::seconds(30);
  Status results[2];
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
      auto node = Node::Start(std::move(*transport), *cluster, *layout, options);
      if (!node.ok()) { results[r] = node.status(); return; }
      if (worker::KVClient* c = (*node)->client()) results[r] = work(*c);
      Status f = (*node)->Finish();
      if (results[r].ok()) results[r] = f;
    });
  }
  for (auto& th : ranks) th.join();
  for (int r = 0; r < 2; ++r) {
    if (!results[r].ok()) return results[r].WithContext("rank " + std::to_string(r));
  }
  return Status::Ok();
}

}  // namespace

int main(int argc, char** argv) {
  using namespace shardps;
  if (argc != 2) { std::fprintf(stderr, "usage: consumer SCRATCH_DIR\n"); return 2; }
  const std::string ckdir = std::string(argv[1]) + "/ck";
  // The registry's spec parsing, a pure function of the public storage API.
  if (ParseCheckpointSpec("/no/such/run@7").which != "7") {
    std::fprintf(stderr, "ParseCheckpointSpec did not split off the version\n");
    return 1;
  }
  TableSpec t{.name = "w", .size = 10};
  t.optimizer.learning_rate = 1.0f;
  const std::chrono::seconds timeout(30);

  // Job 1: one step, then a checkpoint of it from the worker.
  std::vector<float> weights(10, 1.0f);
  PosixFileSystem fs;
  Status s = EnsureWritableDirectory(fs, ckdir, "checkpoint directory");
  if (!s.ok()) { std::fprintf(stderr, "%s\n", s.ToString().c_str()); return 1; }
  NodeOptions first;
  first.server.checkpoint_dir = ckdir;  // where the server writes its shard
  s = RunJob(t, first, [&](worker::KVClient& c) {
    std::vector<float> g(10, 2.0f);
    SHARDPS_RETURN_IF_ERROR(c.PushPull(0, g, weights, /*step=*/0).wait(timeout));
    worker::CheckpointDriver ckpts(fs, c, {.seed = 1, .num_servers = 1, .num_workers = 1, .tables = {t}},
                                   {.dir = ckdir, .timeout = timeout});
    return ckpts.OnStep({.step = 1}, /*final=*/true);
  });
  if (!s.ok()) { std::fprintf(stderr, "job 1: %s\n", s.ToString().c_str()); return 1; }
  // Weights start at zero (the default initialiser); plain SGD with rate 1 takes the gradient off.
  for (float w : weights) {
    if (w != -2.0f) { std::fprintf(stderr, "consumer: weight %g after one step, expected -2\n", w); return 1; }
  }

  // Job 2: the server starts from the newest version; the worker pulls what it restored.
  auto v = ResolveCheckpoint(ckdir, [](const std::string& m) { std::fprintf(stderr, "%s\n", m.c_str()); });
  if (!v.ok()) { std::fprintf(stderr, "resolve: %s\n", v.status().ToString().c_str()); return 1; }
  if (v->version != 1 || v->manifest.step() != 1 || v->manifest.tables().size() != 1) {
    std::fprintf(stderr, "consumer: checkpoint version %llu at step %llu with %zu tables, expected 1, 1, 1\n",
                 (unsigned long long)v->version, (unsigned long long)v->manifest.step(), v->manifest.tables().size());
    return 1;
  }
  CheckpointReader reader(*v);
  NodeOptions restore;
  restore.restore_from = &reader;
  std::vector<float> restored(10, 0.0f);
  s = RunJob(t, restore, [&](worker::KVClient& c) { return c.Pull(0, restored, /*version=*/1).wait(timeout); });
  if (!s.ok()) { std::fprintf(stderr, "job 2: %s\n", s.ToString().c_str()); return 1; }
  if (restored != weights) { std::fprintf(stderr, "consumer: restored w[0] = %g, expected %g\n", restored[0], weights[0]); return 1; }
  std::printf("consumer: one step over TCP, w[0] = %g; checkpointed and restored through Node\n", weights[0]);
  return 0;
}
