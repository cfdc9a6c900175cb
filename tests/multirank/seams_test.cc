// The server's consistency policy and the client's codec are chosen by name in the options; a
// name that is not registered is refused before anything starts, with an error naming it, and a
// server or client built with one anyway refuses its work with the same error instead of serving.
#include <gtest/gtest.h>

#include "common/threads_cluster.h"
#include "shardps/base/codec.h"
#include "shardps/base/half.h"

namespace shardps {
namespace {

using std::chrono::milliseconds;
constexpr auto kWait = milliseconds(20000);

// Rank 0 serves, rank 1 works, one table of 100 ones.
class Seams : public ::testing::Test {
 protected:
  void SetUp() override {
    TableSpec t{.name = "w", .size = 100};
    t.init.kind = InitKind::kConstant;
    t.init.value = 1.0f;
    t.optimizer.learning_rate = 0.5f;
    auto l = TableLayout::Create({t}, 1, {.chunk_floats = 64});
    auto s = Cluster::Create(2, 0, {.num_servers = 1});
    auto w = Cluster::Create(2, 1, {.num_servers = 1});
    ASSERT_TRUE(l.ok() && s.ok() && w.ok());
    layout_ = std::make_unique<TableLayout>(*l);
    server_ = std::make_unique<Cluster>(*s);
    worker_ = std::make_unique<Cluster>(*w);
  }
  InProcHub hub_{2};
  std::unique_ptr<TableLayout> layout_;
  std::unique_ptr<Cluster> server_, worker_;
};

TEST_F(Seams, NodeStartRefusesAnUnknownPolicyOrCodecBeforeStarting) {
  NodeOptions bad_policy;
  bad_policy.server.consistency = "ssp-typo";
  auto n = Node::Start(hub_.Connect(0), *server_, *layout_, bad_policy);
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(n.status().message().find("'ssp-typo'"), std::string::npos) << n.status().ToString();
  EXPECT_NE(n.status().message().find("bsp"), std::string::npos) << n.status().ToString();
  NodeOptions bad_codec;
  bad_codec.client.codec = "zip";
  auto m = Node::Start(hub_.Connect(1), *worker_, *layout_, bad_codec);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(m.status().message().find("'zip'"), std::string::npos) << m.status().ToString();
  EXPECT_NE(m.status().message().find("identity"), std::string::npos) << m.status().ToString();
}

TEST_F(Seams, AClientWithAnUnknownCodecFailsEveryTransferNamingIt) {
  Endpoint endpoint(hub_.Connect(1), {});
  worker::KVClient client(endpoint, *worker_, *layout_, {.codec = "zip"});
  std::vector<float> g(100, 1.0f), w(100);
  for (Status s : {client.Push(0, g, 0).wait(kWait), client.Pull(0, w, 0).wait(kWait),
                   client.PushPull(0, g, w, 0).wait(kWait)}) {
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("'zip'"), std::string::npos) << s.ToString();
  }
}

TEST_F(Seams, AServerWithAnUnknownPolicyRefusesEveryRequestNamingIt) {
  EndpointOptions quiet;
  quiet.on_warning = [](const std::string&) {};
  Endpoint endpoint(hub_.Connect(0), quiet);
  ps::ServerOptions o;
  o.consistency = "ssp-typo";
  ps::Server server(endpoint, *server_, *layout_, o);
  endpoint.SetServerHandler(&server);
  ASSERT_TRUE(endpoint.Start().ok());
  // The worker's Node says HELLO first: the answer is the server's error.
  NodeOptions w;
  w.endpoint.on_warning = [](const std::string&) {};
  w.startup_timeout = kWait;
  auto n = Node::Start(hub_.Connect(1), *worker_, *layout_, w);
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(n.status().message().find("'ssp-typo'"), std::string::npos) << n.status().ToString();
  EXPECT_NE(n.status().message().find("server rank 0"), std::string::npos) << n.status().ToString();
  endpoint.Stop();
}

TEST(SeamDefaults, TheDefaultNamesSelectBspAndTheIdentityCodec) {
  EXPECT_EQ(ps::ServerOptions{}.consistency, ps::kBspConsistency);
  EXPECT_EQ(worker::ClientOptions{}.codec, kIdentityCodec);
  // Named explicitly, the step is the synchronous one: 1 - 0.5 * (1 + 2) over two workers.
  testing::JobConfig c{.world = 4, .servers = 2};
  TableSpec t{.name = "w", .size = 300};
  t.init.kind = InitKind::kConstant;
  t.init.value = 1.0f;
  t.optimizer.learning_rate = 0.5f;
  c.tables = {t};
  c.node.server.consistency = "bsp";
  c.node.client.codec = "identity";
  testing::ThreadsJob job(c);
  auto statuses = job.Run([&](int rank, Node& node) -> Status {
    if (!node.client()) return Status::Ok();
    const float g = rank == 2 ? 1.0f : 2.0f;
    std::vector<float> grad(300, g), w(300);
    SHARDPS_RETURN_IF_ERROR(node.client()->PushPull(0, grad, w, 0).wait(kWait));
    for (float v : w) {
      if (v != -0.5f) return Internal("weight " + std::to_string(v) + ", expected -0.5");
    }
    return Status::Ok();
  });
  for (int r = 0; r < 4; ++r) EXPECT_TRUE(statuses[r].ok()) << "rank " << r << ": " << statuses[r].ToString();
}

// The fp16 codec end to end: pushes are decoded by the server and pull replies encoded there (the
// copy paths of a non-raw codec); values a half holds exactly go through unchanged, others are
// rounded to the nearest half on the wire while the server's arithmetic stays float32; a "sum"
// table (a reduction) travels as float32 whatever the client's codec.
TEST(Fp16Codec, PushesAreHalvesRepliesAreHalfChangesAndSumTablesStayExact) {
  testing::JobConfig c{.world = 4, .servers = 2};
  TableSpec w{.name = "w", .size = 300};
  w.optimizer.learning_rate = 0.5f;
  TableSpec sum{.name = "n", .size = 70};
  sum.optimizer.kind = OptimizerKind::kSum;
  c.tables = {w, sum};
  c.node.client.codec = "fp16";
  testing::ThreadsJob job(c);
  auto statuses = job.Run([&](int rank, Node& node) -> Status {
    if (!node.client()) return Status::Ok();
    // Worker 0 pushes 1, worker 1 pushes 0.1 (not a half: 0.0999755859375 on the wire). The server
    // sums in float32: 1 + 0.0999755859375 = 1.0999755859375f; SGD at 0.5 from 0 gives -0.54998779...
    const float g = rank == 2 ? 1.0f : 0.1f;
    std::vector<float> grad(300, g), got(300);
    const float step = 0.5f * (1.0f + HalfToFloat(FloatToHalf(0.1f)));
    // The first compressed reply of a chunk is the servers' replica whole, as float32: exact.
    SHARDPS_RETURN_IF_ERROR(node.client()->PushPull(0, grad, got, 0).wait(kWait));
    const float w1 = 0.0f - step;
    for (float v : got) {
      if (v != w1) return Internal("weight " + std::to_string(v) + ", expected " + std::to_string(w1));
    }
    // The next is the change of the replica, in halves: the worker holds w1 + half(w2 - w1).
    SHARDPS_RETURN_IF_ERROR(node.client()->PushPull(0, grad, got, 1).wait(kWait));
    const float w2 = w1 - step;
    const float want = w1 + HalfToFloat(FloatToHalf(w2 - w1));
    EXPECT_NE(want, w2);  // the change really is rounded
    for (float v : got) {
      if (v != want) return Internal("weight " + std::to_string(v) + ", expected " + std::to_string(want));
    }
    // 70000 is beyond the largest half: a reduction in fp16 would be infinity.
    std::vector<float> count(70, 70000.0f), total(70);
    SHARDPS_RETURN_IF_ERROR(node.client()->PushPull(1, count, total, 0).wait(kWait));
    for (float v : total) {
      if (v != 140000.0f) return Internal("sum " + std::to_string(v) + ", expected 140000");
    }
    return Status::Ok();
  });
  for (int r = 0; r < 4; ++r) EXPECT_TRUE(statuses[r].ok()) << "rank " << r << ": " << statuses[r].ToString();
}

}  // namespace
}  // namespace shardps
