// The model server's pieces in process: a servable loaded from a checkpoint computes what the
// weights say; the model store follows the registry (new versions, tags, a corrupt version, the
// fallback registry) and keeps an old version alive while a request holds it; the HTTP server
// over real loopback sockets (keep-alive, limits, token, a throwing handler).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/scratch_dir.h"
#include "gtest/gtest.h"
#include "shardps/base/metrics.h"
#include "shardps/net/http_server.h"
#include "shardps/serve/kserve.h"
#include "shardps/serve/model_store.h"
#include "shardps/serve/servable.h"
#include "shardps/storage/checkpoint.h"

namespace shardps::serve {
namespace {

namespace fs = std::filesystem;

// A model of 3 inputs, one hidden layer of 2, 2 classes. Weights: l0.w[i][o] = s * (i + 1) * (o ? -1 : 1),
// l0.b = {0.1, 0.2}, l1.w[i][o] = s * (i == o ? 1 : 0.5), l1.b = {0, s}.
struct Weights {
  std::vector<float> w0, b0, w1, b1;
  explicit Weights(float s) {
    for (int i = 0; i < 3; ++i) {
      for (int o = 0; o < 2; ++o) w0.push_back(s * static_cast<float>(i + 1) * (o ? -1.f : 1.f));
    }
    b0 = {0.1f, 0.2f};
    for (int i = 0; i < 2; ++i) {
      for (int o = 0; o < 2; ++o) w1.push_back(s * (i == o ? 1.f : 0.5f));
    }
    b1 = {0.f, s};
  }
  // The logits of one row, computed here by hand.
  std::vector<float> Forward(const float* x) const {
    float h[2];
    for (int o = 0; o < 2; ++o) {
      float z = b0[o];
      for (int i = 0; i < 3; ++i) z += x[i] * w0[i * 2 + o];
      h[o] = std::max(0.f, z);
    }
    std::vector<float> out(2);
    for (int o = 0; o < 2; ++o) out[o] = b1[o] + h[0] * w1[o] + h[1] * w1[2 + o];
    return out;
  }
};

// Commits a version of the model above with scale s into `dir`; returns its number.
uint64_t WriteModelVersion(const std::string& dir, float s) {
  PosixFileSystem posix;
  auto version = NextCheckpointVersion(posix, dir);
  EXPECT_TRUE(version.ok()) << version.status().ToString();
  const std::string vdir = CheckpointVersionDir(dir, *version);
  EXPECT_TRUE(CreateCheckpointVersionDir(posix, vdir).ok());
  const Weights w(s);
  const std::vector<TableSpec> specs = {{.name = "l0.w", .size = 6, .shape = {3, 2}},
                                        {.name = "l0.b", .size = 2},
                                        {.name = "l1.w", .size = 4, .shape = {2, 2}},
                                        {.name = "l1.b", .size = 2}};
  const std::vector<const std::vector<float>*> data = {&w.w0, &w.b0, &w.w1, &w.b1};
  std::vector<ChunkToSave> chunks;
  for (uint32_t t = 0; t < 4; ++t) {
    ChunkToSave c;
    c.table = t;
    c.begin = 0;
    c.end = specs[t].size;
    c.data = *data[t];
    chunks.push_back(c);
  }
  EXPECT_TRUE(WriteShard(posix, vdir, 0, 10 * *version, chunks).ok());
  ckpt::Manifest m;
  m.set_version(*version);
  m.set_step(10 * *version);
  m.set_num_servers(1);
  for (const auto& t : specs) *m.add_tables() = CheckpointTableInfo(t);
  const Status st = CommitManifest(posix, vdir, &m, 1);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return *version;
}

void FlipByte(const std::string& path, long offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(f.is_open()) << path;
  f.seekg(offset);
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x5a);
  f.seekp(offset);
  f.write(&c, 1);
}

TEST(ServableTest, LogitsAreTheWeightsForwardPass) {
  shardps::testing::ScratchDir tmp("servable");
  WriteModelVersion(tmp.string(), 0.5f);
  auto v = ResolveCheckpoint(tmp.string(), nullptr);
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  auto s = LoadServable(std::move(*v), "primary");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ((*s)->input_dim(), 3);
  EXPECT_EQ((*s)->num_classes(), 2);
  EXPECT_EQ((*s)->model->spec().hidden, std::vector<int64_t>{2});
  EXPECT_EQ((*s)->bytes, 14u * sizeof(float));
  const std::vector<float> x = {1.f, -2.f, 0.5f, 0.3f, 0.2f, 0.1f};
  std::vector<float> logits(4);
  (*s)->Logits(x.data(), 2, logits.data());
  const Weights w(0.5f);
  for (int r = 0; r < 2; ++r) {
    const std::vector<float> want = w.Forward(x.data() + 3 * r);
    for (int k = 0; k < 2; ++k) EXPECT_NEAR(logits[r * 2 + k], want[k], 1e-6) << "row " << r << " class " << k;
  }
}

TEST(ServableTest, RefusesWhatIsNotALayeredModel) {
  CheckpointManifest empty;
  auto spec = ModelSpecFromManifest(empty, "here");
  ASSERT_FALSE(spec.ok());
  EXPECT_NE(spec.status().message().find("no layer tables"), std::string::npos) << spec.status().message();

  ckpt::Manifest m;
  *m.add_tables() = CheckpointTableInfo(TableSpec{.name = "l0.w", .size = 6, .shape = {3, 2}});
  *m.add_tables() = CheckpointTableInfo(TableSpec{.name = "emb", .size = 4});
  spec = ModelSpecFromManifest(CheckpointManifest(m), "here");
  ASSERT_FALSE(spec.ok());
  EXPECT_NE(spec.status().message().find("'emb'"), std::string::npos) << spec.status().message();

  ckpt::Manifest missing_bias;
  *missing_bias.add_tables() = CheckpointTableInfo(TableSpec{.name = "l0.w", .size = 6, .shape = {3, 2}});
  spec = ModelSpecFromManifest(CheckpointManifest(missing_bias), "here");
  ASSERT_FALSE(spec.ok());
  EXPECT_NE(spec.status().message().find("lacks its bias"), std::string::npos) << spec.status().message();

  ckpt::Manifest chain;  // layer 1 takes 5 inputs, layer 0 gives 2
  *chain.add_tables() = CheckpointTableInfo(TableSpec{.name = "l0.w", .size = 6, .shape = {3, 2}});
  *chain.add_tables() = CheckpointTableInfo(TableSpec{.name = "l0.b", .size = 2});
  *chain.add_tables() = CheckpointTableInfo(TableSpec{.name = "l1.w", .size = 10, .shape = {5, 2}});
  *chain.add_tables() = CheckpointTableInfo(TableSpec{.name = "l1.b", .size = 2});
  spec = ModelSpecFromManifest(CheckpointManifest(chain), "here");
  ASSERT_FALSE(spec.ok());
  EXPECT_NE(spec.status().message().find("takes 5 inputs"), std::string::npos) << spec.status().message();
}

TEST(ModelSelectorTest, Parses) {
  EXPECT_EQ(ParseModelSelector("latest")->kind, ModelSelector::Kind::kLatest);
  EXPECT_EQ(ParseModelSelector("12")->version, 12u);
  EXPECT_EQ(ParseModelSelector("tag:prod")->tag, "prod");
  EXPECT_EQ(ParseModelSelector("tag:prod")->SpecIn("/r"), "/r@prod");
  for (const char* bad : {"", "0", "tag:", "tag:a/b", "newest", "-1"}) EXPECT_FALSE(ParseModelSelector(bad).ok()) << bad;
}

TEST(ModelStoreTest, FollowsTheRegistryAndKeepsHeldVersionsAlive) {
  shardps::testing::ScratchDir tmp("store");
  const std::string dir = tmp.string() + "/reg";
  ModelStoreOptions o;
  o.registry = dir;
  std::vector<std::string> log;
  o.log = [&](const std::string& l) { log.push_back(l); };
  metrics::Registry metrics;
  o.metrics = &metrics;
  auto none = ModelStore::Open(o);
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("does not exist"), std::string::npos) << none.status().message();

  WriteModelVersion(dir, 1.0f);
  metrics::Registry metrics2;
  o.metrics = &metrics2;
  auto store = ModelStore::Open(o);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  std::shared_ptr<const Servable> held = (*store)->Current();
  EXPECT_EQ(held->version, 1u);

  WriteModelVersion(dir, 2.0f);
  (*store)->PollOnce();
  EXPECT_EQ((*store)->Current()->version, 2u);
  // The request that holds version 1 still computes with version 1's weights.
  EXPECT_EQ(held->version, 1u);
  EXPECT_FLOAT_EQ(held->params[0].data()[0], 1.0f);
  EXPECT_FLOAT_EQ((*store)->Current()->params[0].data()[0], 2.0f);
  std::weak_ptr<const Servable> weak = held;
  held.reset();
  EXPECT_TRUE(weak.expired()) << "version 1 stays in memory after its last request";

  // Nothing changed: no reload.
  (*store)->PollOnce();
  EXPECT_EQ((*store)->health().swaps, 2u);

  // A version being written (its directory, no MANIFEST yet): not a problem, nothing changes.
  PosixFileSystem posix0;
  ASSERT_TRUE(CreateCheckpointVersionDir(posix0, CheckpointVersionDir(dir, 99)).ok());
  (*store)->PollOnce();
  EXPECT_EQ((*store)->Current()->version, 2u);
  EXPECT_TRUE((*store)->health().problem.empty()) << (*store)->health().problem;
  fs::remove_all(CheckpointVersionDir(dir, 99));

  // A committed but corrupt version 3: reported, version 2 keeps serving.
  const uint64_t v3 = WriteModelVersion(dir, 3.0f);
  FlipByte(CheckpointVersionDir(dir, v3) + "/shard-00000.bin", 4);
  (*store)->PollOnce();
  EXPECT_EQ((*store)->Current()->version, 2u);
  EXPECT_NE((*store)->health().problem.find("v00000003"), std::string::npos) << (*store)->health().problem;

  // Version 4 is served; a rollback to 1 is obeyed.
  WriteModelVersion(dir, 4.0f);
  (*store)->PollOnce();
  EXPECT_EQ((*store)->Current()->version, 4u);
  PosixFileSystem posix;
  ASSERT_TRUE(RollbackCheckpoint(posix, dir, "1").ok());
  (*store)->PollOnce();
  EXPECT_EQ((*store)->Current()->version, 1u);
  const std::string text = metrics2.Render();
  EXPECT_NE(text.find("shardps_serve_swaps_total{model=\"model\"} 4"), std::string::npos) << text;
  EXPECT_NE(text.find("shardps_serve_model_version{model=\"model\"} 1"), std::string::npos) << text;
  EXPECT_FALSE(log.empty());
}

TEST(ModelStoreTest, TagsAndFallback) {
  shardps::testing::ScratchDir tmp("store_tags");
  const std::string dir = tmp.string() + "/reg", backup = tmp.string() + "/backup";
  PosixFileSystem posix;
  WriteModelVersion(dir, 1.0f);
  WriteModelVersion(dir, 2.0f);
  WriteModelVersion(backup, 1.0f);
  WriteModelVersion(backup, 2.0f);
  ASSERT_TRUE(TagCheckpoint(posix, dir, 1, "prod").ok());
  ASSERT_TRUE(TagCheckpoint(posix, backup, 1, "prod").ok());
  ModelStoreOptions o;
  o.registry = dir;
  o.fallback_registry = backup;
  o.selector = *ParseModelSelector("tag:prod");
  auto store = ModelStore::Open(o);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  EXPECT_EQ((*store)->Current()->version, 1u);
  ASSERT_TRUE(TagCheckpoint(posix, dir, 2, "prod").ok());  // the tag moves
  (*store)->PollOnce();
  EXPECT_EQ((*store)->Current()->version, 2u);
  EXPECT_EQ((*store)->Current()->source, "primary");

  // The primary disappears: the fallback's "prod" (version 1 there) serves.
  fs::rename(dir, dir + ".away");
  (*store)->PollOnce();
  ModelHealth h = (*store)->health();
  EXPECT_EQ(h.source, "fallback");
  EXPECT_EQ(h.version, 1u);
  EXPECT_EQ(h.fallbacks, 1u);
  EXPECT_NE(h.problem.find("does not exist"), std::string::npos) << h.problem;
  // It comes back: the primary serves again and the problem is cleared.
  fs::rename(dir + ".away", dir);
  (*store)->PollOnce();
  h = (*store)->health();
  EXPECT_EQ(h.source, "primary");
  EXPECT_EQ(h.version, 2u);
  EXPECT_TRUE(h.problem.empty()) << h.problem;
}

// One HTTP exchange over a fresh loopback connection: the raw bytes the server answers until it closes.
std::string Exchange(uint16_t port, const std::string& bytes) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(fd);
    return "connect failed";
  }
  size_t sent = 0;
  while (sent < bytes.size()) {
    const ssize_t n = ::send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

size_t Count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

TEST(HttpServerTest, KeepAliveLimitsTokenAndHandlerErrors) {
  HttpServerOptions o;
  o.max_body_bytes = 1000;
  o.bearer_token = "token-0123456789abcdef";
  o.open_paths = {"/open"};
  auto server = HttpServer::Start(o, [](const HttpRequest& r) -> HttpResponse {
    if (r.target == "/throw") throw std::runtime_error("boom");
    return HttpResponse{200, "text/plain", r.method + " " + r.target + " " + std::to_string(r.body.size())};
  });
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  const uint16_t port = (*server)->port();
  const std::string auth = "Authorization: Bearer token-0123456789abcdef\r\n";
  // Two requests on one keep-alive connection, the second asks to close.
  std::string out = Exchange(port, "GET /a HTTP/1.1\r\nHost: x\r\n" + auth + "\r\nPOST /b HTTP/1.1\r\nHost: x\r\n" + auth +
                                       "Content-Length: 3\r\nConnection: close\r\n\r\nabc");
  EXPECT_EQ(Count(out, "HTTP/1.1 200"), 2u) << out;
  EXPECT_NE(out.find("GET /a 0"), std::string::npos) << out;
  EXPECT_NE(out.find("POST /b 3"), std::string::npos) << out;
  // No token, a wrong one: 401; an open path needs none.
  EXPECT_NE(Exchange(port, "GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").find("HTTP/1.1 401"), std::string::npos);
  EXPECT_NE(Exchange(port, "GET /a HTTP/1.1\r\nAuthorization: Bearer token-0123456789abcdeX\r\nConnection: close\r\n\r\n")
                .find("HTTP/1.1 401"),
            std::string::npos);
  EXPECT_NE(Exchange(port, "GET /open HTTP/1.1\r\nConnection: close\r\n\r\n").find("HTTP/1.1 200"), std::string::npos);
  // A body over the limit, refused from its Content-Length.
  out = Exchange(port, "POST /b HTTP/1.1\r\n" + auth + "Content-Length: 5000\r\n\r\n");
  EXPECT_NE(out.find("HTTP/1.1 413"), std::string::npos) << out;
  EXPECT_NE(out.find("{\"error\": \"request body larger than 1000 bytes\"}"), std::string::npos) << out;
  // Malformed.
  out = Exchange(port, "NOT HTTP AT ALL\r\n\r\n");
  EXPECT_NE(out.find("HTTP/1.1 400"), std::string::npos) << out;
  // A handler that throws: 500, the server goes on.
  out = Exchange(port, "GET /throw HTTP/1.1\r\n" + auth + "Connection: close\r\n\r\n");
  EXPECT_NE(out.find("HTTP/1.1 500"), std::string::npos) << out;
  EXPECT_NE(out.find("boom"), std::string::npos) << out;
  EXPECT_NE(Exchange(port, "GET /a HTTP/1.1\r\n" + auth + "Connection: close\r\n\r\n").find("HTTP/1.1 200"), std::string::npos);
  const HttpServerStats st = (*server)->stats();
  EXPECT_EQ(st.unauthorized, 2u);
  EXPECT_EQ(st.too_large, 1u);
  EXPECT_EQ(st.bad_requests, 1u);
  (*server)->Stop();
  EXPECT_EQ(Exchange(port, "GET /a HTTP/1.1\r\n\r\n"), "connect failed");
}

TEST(HttpServerTest, RefusesBadAddresses) {
  HttpServerOptions o;
  o.listen = "127.0.0.1:notaport";
  auto s = HttpServer::Start(o, [](const HttpRequest&) { return HttpResponse{}; });
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("notaport"), std::string::npos);
  EXPECT_TRUE(IsLoopbackHost("127.0.0.1"));
  EXPECT_TRUE(IsLoopbackHost("::1"));
  EXPECT_TRUE(IsLoopbackHost("localhost"));
  EXPECT_FALSE(IsLoopbackHost("0.0.0.0"));
  EXPECT_FALSE(IsLoopbackHost("10.1.2.3"));
}

}  // namespace
}  // namespace shardps::serve
