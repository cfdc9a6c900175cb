// Uses the installed headers and libraries: one server and one worker as threads.
#include <cstdio>
#include <thread>
#include <vector>

#include "shardps/net/inproc_transport.h"
#include "shardps/node.h"

int main() {
  using namespace shardps;
  TableSpec t{.name = "w", .size = 10};
  t.optimizer.learning_rate = 1.0f;
  InProcHub hub(2);
  Status results[2];
  std::vector<float> weights(10);
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      auto cluster = Cluster::Create(2, r, {.num_servers = 1});
      auto layout = TableLayout::Create({t}, 1);
      if (!cluster.ok() || !layout.ok()) { results[r] = Internal("setup"); return; }
      auto node = Node::Start(hub.Connect(r), *cluster, *layout);
      if (!node.ok()) { results[r] = node.status(); return; }
      if (auto* c = (*node)->client()) {
        std::vector<float> g(10, 2.0f);
        results[r] = c->PushPull(0, g, weights, 0).wait(std::chrono::seconds(10));
      }
      Status f = (*node)->Finish();
      if (results[r].ok()) results[r] = f;
    });
  }
  for (auto& th : ranks) th.join();
  for (auto& s : results) if (!s.ok()) { std::fprintf(stderr, "%s\n", s.ToString().c_str()); return 1; }
  std::printf("consumer: w[0] = %g\n", weights[0]);
  return weights[0] == -2.0f ? 0 : 1;
}
