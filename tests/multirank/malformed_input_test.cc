// A peer that speaks the protocol badly: every malformed, truncated, oversized or wrong-shape
// message gets an ERROR reply, the server keeps serving and its tables do not change.
#include <gtest/gtest.h>

#include <cstring>
#include <thread>

#include "common/threads_cluster.h"
#include "shardps/base/crc32c.h"

namespace shardps {
namespace {

using std::chrono::milliseconds;
constexpr auto kWait = milliseconds(20000);

// Drives one rank's transport by hand.
class RawPeer {
 public:
  explicit RawPeer(std::unique_ptr<Transport> t) : t_(std::move(t)) {}

  void Send(int dest, std::vector<uint8_t> frame, std::span<const uint8_t> payload = {}) {
    ASSERT_TRUE(t_->Send(dest, std::move(frame), payload, nullptr).ok());
  }
  // The next frame that arrives, decoded.
  Result<Frame> Next(milliseconds timeout = kWait) {
    const auto deadline = Clock::now() + timeout;
    while (queue_.empty() && Clock::now() < deadline) {
      std::vector<IncomingFrame> in;
      SHARDPS_RETURN_IF_ERROR(t_->Poll(&in, deadline));
      for (auto& f : in) {
        if (f.payload_bytes) (void)t_->DiscardPayload(f);
        queue_.push_back(std::move(f));
      }
    }
    if (queue_.empty()) return DeadlineExceeded("no frame");
    IncomingFrame f = std::move(queue_.front());
    queue_.erase(queue_.begin());
    return DecodeFrame(f.frame, FrameLimits{});
  }
  // Keeps completing sends (payload hand-offs) for a while.
  void Drain(milliseconds d) {
    const auto until = Clock::now() + d;
    while (Clock::now() < until) {
      std::vector<IncomingFrame> in;
      (void)t_->Poll(&in, until);
      for (auto& f : in) queue_.push_back(std::move(f));
    }
  }

 private:
  std::unique_ptr<Transport> t_;
  std::vector<IncomingFrame> queue_;
};

wire::Header Push(uint32_t table, uint32_t chunk, uint64_t b, uint64_t e, uint64_t step, uint64_t id) {
  wire::Header h;
  h.set_op(wire::PUSH);
  h.set_sender(2);
  h.set_request_id(id);
  h.set_table(table);
  h.set_chunk(chunk);
  h.set_key_begin(b);
  h.set_key_end(e);
  h.set_element_count(e - b);
  h.set_step(step);
  return h;
}

std::span<const uint8_t> Bytes(const std::vector<float>& v) {
  return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(float)};
}

std::vector<uint8_t> Encode(const wire::Header& h, size_t payload_bytes) {
  std::vector<uint8_t> fake(payload_bytes);
  return EncodeFrame(h, fake);
}

class MalformedInput : public ::testing::Test {
 protected:
  // Server rank 0, honest worker rank 1 (a Node), raw worker rank 2 (driven by the test).
  void SetUp() override {
    TableSpec t{.name = "w", .size = 100};
    t.init.kind = InitKind::kConstant;
    t.init.value = 1.0f;
    t.optimizer.learning_rate = 0.5f;
    TableSpec sparse{.name = "emb", .row_dim = 2};  // table 1
    sparse.init.kind = InitKind::kConstant;
    sparse.init.value = 3.0f;
    hub_ = std::make_unique<InProcHub>(3);
    layout_ = std::make_unique<TableLayout>(*TableLayout::Create({t, sparse}, 1, {.chunk_floats = 64}));
    for (int r = 0; r < 2; ++r) {
      auto c = Cluster::Create(3, r, {.num_servers = 1});
      ASSERT_TRUE(c.ok());
      NodeOptions o;
      o.endpoint.on_warning = [](const std::string&) {};  // expected noise
      auto n = Node::Start(hub_->Connect(r), *c, *layout_, o);
      ASSERT_TRUE(n.ok()) << n.status().ToString();
      nodes_.push_back(std::move(*n));
    }
    raw_ = std::make_unique<RawPeer>(hub_->Connect(2));
  }

  // Sends one bad message and expects an ERROR reply with `code`.
  void ExpectError(std::vector<uint8_t> frame, StatusCode code, std::span<const uint8_t> payload = {}) {
    raw_->Send(0, std::move(frame), payload);
    auto reply = raw_->Next();
    ASSERT_TRUE(reply.ok()) << reply.status().ToString();
    EXPECT_EQ(reply->header.op(), wire::ERROR);
    EXPECT_EQ(reply->header.error_code(), static_cast<int>(code)) << reply->header.error();
    EXPECT_FALSE(reply->header.error().empty());
  }

  std::unique_ptr<InProcHub> hub_;
  std::unique_ptr<TableLayout> layout_;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::unique_ptr<RawPeer> raw_;
};

TEST_F(MalformedInput, EveryBadMessageGetsAnErrorAndChangesNothing) {
  worker::KVClient& honest = *nodes_[1]->client();
  std::vector<float> before(100);
  ASSERT_TRUE(honest.Pull(0, before, 0).wait(kWait).ok());

  const std::vector<float> g64(64, 2.0f), g36(36, 2.0f), g63(63, 2.0f);
  std::vector<uint8_t> garbage = {'h', 'e', 'l', 'l', 'o'};
  ExpectError(garbage, StatusCode::kDataLoss);
  std::vector<uint8_t> junk(200, 0xAB);
  ExpectError(junk, StatusCode::kDataLoss);
  auto valid = Encode(Push(0, 0, 0, 64, 0, 1), 256);
  ExpectError(std::vector<uint8_t>(valid.begin(), valid.begin() + 20), StatusCode::kDataLoss);      // truncated prefix
  ExpectError(std::vector<uint8_t>(valid.begin(), valid.end() - 3), StatusCode::kDataLoss);         // truncated header
  ExpectError(std::vector<uint8_t>(100 * 1024, 0), StatusCode::kResourceExhausted);                 // oversized frame
  {
    auto f = valid;
    const uint32_t huge = 0xFFFFFFFFu;  // header_len claims 4 GiB
    std::memcpy(f.data() + 8, &huge, 4);
    ExpectError(f, StatusCode::kResourceExhausted, Bytes(g64));
  }
  {
    auto f = valid;
    f[40] ^= 0x10;  // a flipped bit in the header
    ExpectError(f, StatusCode::kDataLoss, Bytes(g64));
  }
  // Frame announces 256 payload bytes, the transport carries 252.
  ExpectError(valid, StatusCode::kDataLoss, Bytes(g63));
  // Wrong shapes.
  ExpectError(Encode(Push(9, 0, 0, 64, 0, 2), 256), StatusCode::kNotFound, Bytes(g64));              // unknown table
  ExpectError(Encode(Push(0, 1, 90, 126, 0, 3), 144), StatusCode::kOutOfRange, Bytes(g36));          // beyond the table
  ExpectError(Encode(Push(0, 0, 30, 66, 0, 4), 144), StatusCode::kOutOfRange, Bytes(g36));           // across chunks
  ExpectError(Encode(Push(0, 7, 0, 64, 0, 5), 256), StatusCode::kOutOfRange, Bytes(g64));            // no such chunk
  ExpectError(Encode(Push(0, 0, 10, 10, 0, 6), 0), StatusCode::kOutOfRange);                         // empty range
  {
    auto h = Push(0, 0, 0, 64, 0, 7);
    h.set_element_count(63);  // wrong length
    ExpectError(Encode(h, 252), StatusCode::kInvalidArgument, Bytes(g63));
  }
  {
    auto h = Push(0, 0, 0, 64, 0, 8);
    h.set_sender(1);  // claims to be the honest worker
    ExpectError(Encode(h, 256), StatusCode::kInvalidArgument, Bytes(g64));
  }
  {
    auto h = Push(0, 0, 0, 64, 0, 9);
    h.set_op(wire::PULL);  // a pull with a payload
    ExpectError(Encode(h, 256), StatusCode::kInvalidArgument, Bytes(g64));
  }
  {
    auto h = Push(0, 0, 0, 64, 0, 10);
    h.set_op(wire::RESPONSE);  // not a request
    ExpectError(Encode(h, 0), StatusCode::kInvalidArgument);
  }
  {
    auto h = Push(0, 0, 0, 64, 0, 11);
    h.set_op(wire::HELLO);
    h.set_layout_digest(layout_->digest() ^ 1);  // a different layout
    ExpectError(Encode(h, 0), StatusCode::kFailedPrecondition);
  }

  // Nothing changed, and the server still serves.
  std::vector<float> after(100);
  ASSERT_TRUE(honest.Pull(0, after, 0).wait(kWait).ok());
  EXPECT_EQ(before, after);
  for (float v : after) ASSERT_EQ(v, 1.0f);

  // A correct step from both workers: 1 - 0.5 * (1 + 2) = -0.5 everywhere.
  std::vector<float> ones(100, 1.0f), w(100);
  worker::Handle h = honest.PushPull(0, ones, w, 0);
  raw_->Send(0, Encode(Push(0, 0, 0, 64, 0, 20), 256), Bytes(g64));
  raw_->Send(0, Encode(Push(0, 1, 64, 100, 0, 21), 144), Bytes(g36));
  for (int i = 0; i < 2; ++i) {
    auto ack = raw_->Next();
    ASSERT_TRUE(ack.ok()) << ack.status().ToString();
    EXPECT_EQ(ack->header.op(), wire::RESPONSE) << ack->header.error();
  }
  ASSERT_TRUE(h.wait(kWait).ok()) << h.wait(kWait).ToString();
  for (float v : w) ASSERT_EQ(v, -0.5f);

  // A stale push (step 0 again) and a duplicate push (same keys twice in step 1) are refused.
  ExpectError(Encode(Push(0, 0, 0, 64, 0, 30), 256), StatusCode::kFailedPrecondition, Bytes(g64));
  raw_->Send(0, Encode(Push(0, 0, 0, 32, 1, 31), 128), std::span<const uint8_t>(Bytes(g64).subspan(0, 128)));
  ExpectError(Encode(Push(0, 0, 16, 48, 1, 32), 128), StatusCode::kFailedPrecondition,
              std::span<const uint8_t>(Bytes(g64).subspan(0, 128)));
  raw_->Drain(milliseconds(50));

  // A reply forged by another rank (request ids are easy to guess) is dropped: the honest
  // worker's pull, held by the server, does not complete with the forged bytes.
  {
    std::vector<float> target(4, 0.0f);
    worker::Handle held = honest.Pull(0, target, 5, {0, 4});
    const std::vector<float> forged(4, 42.0f);
    for (uint64_t id = 1; id < 64; ++id) {
      wire::Header h;
      h.set_op(wire::RESPONSE);
      h.set_reply_to(wire::PULL);
      h.set_request_id(id);
      h.set_sender(2);
      h.set_table(0);
      h.set_chunk(0);
      h.set_key_begin(0);
      h.set_key_end(4);
      h.set_element_count(4);
      raw_->Send(1, EncodeFrame(h, Bytes(forged)), Bytes(forged));
    }
    raw_->Drain(milliseconds(100));
    EXPECT_FALSE(held.done());
    for (float v : target) EXPECT_EQ(v, 0.0f);
    nodes_[1]->endpoint().Stop();  // before `target` goes out of scope
  }

  // Local validation in the client: wrong buffer sizes and unknown tables never reach the wire.
  std::vector<float> small(10);
  EXPECT_EQ(honest.Push(0, small, 1).wait(kWait).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(honest.Pull(5, small, 1).wait(kWait).code(), StatusCode::kNotFound);
  EXPECT_EQ(honest.Pull(0, small, 1, {95, 105}).wait(kWait).code(), StatusCode::kOutOfRange);

  // Rejected by the server's request handler (the rest were refused while decoding).
  EXPECT_GE(nodes_[0]->server()->stats().errors_sent, 10u);
  // Tear down without waiting for the raw worker's goodbye.
  nodes_[1]->endpoint().Stop();
  nodes_[0]->endpoint().Stop();
}


// A codec id the server's registry does not have: the push's payload is discarded, the pull is not
// answered with weights, each ERROR names the id, and the table does not change.
TEST_F(MalformedInput, UnknownCodecIdIsRefusedWithAnErrorNamingIt) {
  worker::KVClient& honest = *nodes_[1]->client();
  std::vector<float> g64(64, 5.0f);
  for (wire::Op op : {wire::PUSH, wire::PUSH_PULL, wire::PULL}) {
    auto h = Push(0, 0, 0, 64, 0, 40 + op);
    h.set_op(op);
    h.set_codec(7);
    if (op == wire::PULL) h.set_element_count(0);
    const bool payload = op != wire::PULL;
    raw_->Send(0, Encode(h, payload ? 256 : 0), payload ? Bytes(g64) : std::span<const uint8_t>());
    auto reply = raw_->Next();
    ASSERT_TRUE(reply.ok()) << reply.status().ToString();
    EXPECT_EQ(reply->header.op(), wire::ERROR) << OpName(op);
    EXPECT_EQ(reply->header.error_code(), static_cast<int>(StatusCode::kInvalidArgument)) << reply->header.error();
    EXPECT_NE(reply->header.error().find("codec id 7"), std::string::npos) << reply->header.error();
    EXPECT_NE(reply->header.error().find("identity"), std::string::npos) << reply->header.error();
  }
  std::vector<float> w(100);
  ASSERT_TRUE(honest.Pull(0, w, 0).wait(kWait).ok());
  for (float v : w) ASSERT_EQ(v, 1.0f);
  nodes_[1]->endpoint().Stop();
  nodes_[0]->endpoint().Stop();
}

// Lossy codecs: a push whose payload does not have its codec's size for the range, or that
// declares a residual it cannot carry, is refused before anything is received (the payload is
// discarded) and the table does not change; a pull naming a replica version the server never made
// gets the replica whole (delta_base 0, float32), not a change.
TEST_F(MalformedInput, CompressedFramesWithWrongSizesAreRefused) {
  worker::KVClient& honest = *nodes_[1]->client();
  struct Case {
    uint32_t codec;
    size_t bytes;
    uint64_t residual;
    const char* says;
  };
  // 64 values: int8 takes 4 + 64 bytes, sign 4 + 8, topk 4 + 8k, randomk 4 + 4k.
  for (const Case& c : {Case{2, 67, 0, "68 bytes"}, Case{2, 68 + 10, 0, "68 bytes"}, Case{3, 13, 0, "12 bytes"},
                        Case{4, 4 + 8 * 65, 0, "k <= 64"}, Case{4, 7, 0, "4 + 8k"}, Case{5, 4 + 4 * 65, 0, "k <= 64"},
                        Case{2, 68, 64, "residual"}, Case{2, 68 + 256, 63, "residual"}, Case{0, 256 + 256, 64, "residual"}}) {
    auto h = Push(0, 0, 0, 64, 0, 300 + c.codec * 1000 + c.bytes);
    h.set_codec(c.codec);
    h.set_residual_floats(c.residual);
    std::vector<uint8_t> payload(c.bytes, 0);
    raw_->Send(0, EncodeFrame(h, payload), payload);
    auto reply = raw_->Next();
    ASSERT_TRUE(reply.ok()) << reply.status().ToString();
    EXPECT_EQ(reply->header.op(), wire::ERROR) << "codec " << c.codec << ", " << c.bytes << " bytes";
    EXPECT_EQ(reply->header.error_code(), static_cast<int>(StatusCode::kInvalidArgument)) << reply->header.error();
    EXPECT_NE(reply->header.error().find(c.says), std::string::npos) << reply->header.error();
  }
  auto pull = Push(0, 0, 0, 64, 0, 999);
  pull.set_op(wire::PULL);
  pull.set_element_count(0);
  pull.set_codec(2);
  pull.set_base_version(12345);
  raw_->Send(0, EncodeFrame(pull, {}));
  auto reply = raw_->Next();
  ASSERT_TRUE(reply.ok()) << reply.status().ToString();
  EXPECT_EQ(reply->header.op(), wire::RESPONSE) << reply->header.error();
  EXPECT_EQ(reply->header.delta_base(), 0u);
  EXPECT_EQ(reply->header.codec(), 0u);
  EXPECT_EQ(reply->header.element_count(), 64u);
  std::vector<float> w(100);
  ASSERT_TRUE(honest.Pull(0, w, 0).wait(kWait).ok());
  for (float v : w) ASSERT_EQ(v, 1.0f);
  nodes_[1]->endpoint().Stop();
  nodes_[0]->endpoint().Stop();
}

// Sparse requests whose keys or sizes are wrong, or that name the wrong kind of table: each gets
// an ERROR naming what is wrong (the first bad key's position), before any row is created.
TEST_F(MalformedInput, BadSparseRequestsAreRefusedNamingWhatIsWrong) {
  auto sparse = [](wire::Op op, uint32_t table, uint64_t keys, uint64_t id) {
    wire::Header h;
    h.set_op(op);
    h.set_sender(2);
    h.set_request_id(id);
    h.set_table(table);
    h.set_element_count(keys);
    return h;
  };
  auto payload = [](std::vector<uint64_t> keys, size_t floats) {
    std::vector<uint8_t> p(keys.size() * 8 + floats * 4, 0);
    if (!keys.empty()) std::memcpy(p.data(), keys.data(), keys.size() * 8);
    return p;
  };
  auto expect = [&](const wire::Header& h, const std::vector<uint8_t>& p, const std::string& text) {
    raw_->Send(0, EncodeFrame(h, p), p);
    auto reply = raw_->Next();
    ASSERT_TRUE(reply.ok()) << reply.status().ToString();
    EXPECT_EQ(reply->header.op(), wire::ERROR) << text;
    EXPECT_EQ(reply->header.error_code(), static_cast<int>(StatusCode::kInvalidArgument)) << reply->header.error();
    EXPECT_NE(reply->header.error().find(text), std::string::npos) << reply->header.error();
  };
  expect(sparse(wire::SPARSE_PUSH, 1, 3, 60), payload({5, 9, 3}, 6), "keys[2] = 3 follows keys[1] = 9");
  expect(sparse(wire::SPARSE_PULL, 1, 2, 61), payload({4, 4}, 0), "keys[1] = 4 follows keys[0] = 4");
  expect(sparse(wire::SPARSE_PUSH, 1, 2, 62), payload({1, 2}, 3), "carries 28 bytes for 2 keys");
  expect(sparse(wire::SPARSE_PUSH_PULL, 1, uint64_t{1} << 62, 63), payload({1}, 2), "keys");  // no allocation of 2^62 keys
  expect(sparse(wire::SPARSE_PULL, 0, 1, 64), payload({1}, 0), "is dense");
  auto coded = sparse(wire::SPARSE_PULL, 1, 1, 65);
  coded.set_codec(3);
  expect(coded, payload({1}, 0), "identity codec");
  auto dense_op = Push(1, 0, 0, 2, 0, 66);
  expect(dense_op, payload({}, 2), "is sparse");
  // Nothing was created or changed: the rows come back as initialised.
  std::vector<float> rows(4);
  ASSERT_TRUE(nodes_[1]->client()->SparsePull(1, std::vector<uint64_t>{3, 5}, rows, 0).wait(kWait).ok());
  EXPECT_EQ(rows, std::vector<float>(4, 3.0f));
  EXPECT_EQ(nodes_[0]->server()->stats().sparse_rows, 2u);  // the two just pulled
  nodes_[1]->endpoint().Stop();
  nodes_[0]->endpoint().Stop();
}

}  // namespace
}  // namespace shardps
