// libFuzzer target: the server's message handling, end to end through the endpoint. A server rank
// (rank 0, two small tables) keeps serving across inputs; each input becomes one or more frames
// sent from worker rank 1's raw transport (a protobuf Header parsed from the input, a payload
// whose length the input chooses, or the raw input bytes as a frame). A quarter of the inputs
// (mode >= 0xC0) are instead a well-formed dense PUSH, PULL or PUSH_PULL naming one of the
// compressing codecs (ids 2-5) with a payload that codec encoded, then sent as it is, cut short,
// lengthened, overwritten or with one byte changed, sometimes with a wrong element_count or a
// residual after the coded bytes: the codecs' size checks and decoders on the server's side (a
// push is decoded when the server takes it into a step, so only the first push to a range at the
// current step reaches Decode; codec_fuzzer fuzzes the decoders themselves). The server must answer or hold every
// request without crashing, leaking or tripping a sanitizer. Payload buffers are released only
// when the transport says the server consumed them.
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "shardps/base/codec.h"
#include "shardps/net/frame.h"
#include "shardps/net/inproc_transport.h"
#include "shardps/node.h"

namespace {

using namespace shardps;

struct Harness {
  InProcHub hub{3};
  std::unique_ptr<Node> server;
  std::unique_ptr<Transport> raw;

  Harness() {
    TableSpec a{.name = "a", .size = 100};
    TableSpec b{.name = "b", .size = 7};
    b.optimizer.kind = OptimizerKind::kAdam;
    auto cluster = Cluster::Create(3, 0, {.num_servers = 1});
    auto layout = TableLayout::Create({a, b}, 1, {.chunk_floats = 32});
    NodeOptions o;
    o.server.max_hold = std::chrono::milliseconds(20);  // held requests expire quickly
    o.endpoint.on_warning = [](const std::string&) {};
    auto n = Node::Start(hub.Connect(0), *cluster, *layout, o);
    if (!n.ok()) std::abort();
    server = std::move(*n);
    raw = hub.Connect(1);
  }

  // Polls rank 1 until every sent payload was consumed (or a bounded time passed), discarding
  // whatever the server answers.
  void Drain(int* outstanding) {
    const auto until = Clock::now() + std::chrono::milliseconds(200);
    do {
      std::vector<IncomingFrame> in;
      (void)raw->Poll(&in, Clock::now() + std::chrono::milliseconds(2));
      for (auto& f : in) {
        if (f.payload_bytes > 0) (void)raw->DiscardPayload(f);
      }
    } while (*outstanding > 0 && Clock::now() < until);
  }
};

Harness& GetHarness() {
  static Harness* h = new Harness();  // lives for the whole fuzzing process
  return *h;
}

// The dense request of an input with mode >= 0xC0 (the harness's tables: "a", 100 floats in
// chunks of 32; "b", 7 floats in one chunk), with a codec payload for it.
std::pair<wire::Header, std::vector<uint8_t>> CodecRequest(const uint8_t* body, size_t body_size) {
  uint8_t b[10] = {};
  std::memcpy(b, body, std::min(body_size, sizeof b));
  const uint8_t* rest = body + std::min(body_size, sizeof b);
  const size_t rest_size = body_size - std::min(body_size, sizeof b);
  static constexpr wire::Op kOps[] = {wire::PUSH, wire::PULL, wire::PUSH_PULL};
  wire::Header h;
  h.set_op(kOps[b[0] % 3]);
  h.set_request_id(b[1]);
  h.set_sender(1);
  h.set_table(b[2] % 2);
  uint64_t begin = 0, end = 7;
  if (h.table() == 0) {
    h.set_chunk(b[3] % 4);
    begin = h.chunk() * 32;
    end = std::min<uint64_t>(begin + 32, 100);
  }
  const uint64_t key_begin = begin + b[4] % (end - begin);
  const uint64_t key_end = key_begin + 1 + b[5] % (end - key_begin);
  h.set_key_begin(key_begin);
  h.set_key_end(key_end);
  const uint64_t n = key_end - key_begin;
  h.set_element_count(b[6] & 0x80 ? n + 1 + (b[6] & 3) : n);
  h.set_step(b[6] & 3);
  h.set_codec(2 + b[7] % 4);  // int8, sign, topk, randomk
  h.set_timeout_ms(50);
  // The values: the rest of the input as floats, then a ramp.
  std::vector<float> values(n);
  for (size_t i = 0; i < n; ++i) {
    if (4 * i + 4 <= rest_size) {
      std::memcpy(&values[i], rest + 4 * i, 4);
    } else {
      values[i] = static_cast<float>(i) - 3.5f;
    }
  }
  // Encoded as worker index 0 (rank 1), as the server decodes it.
  CodecContext ctx{.table = h.table(), .chunk = h.chunk(), .step = h.step(), .rank = 0};
  ctx.density = static_cast<float>(b[9] % 32 + 1) / 32.0f;
  h.set_codec_density(ctx.density);
  std::vector<uint8_t> payload = FindCodecById(h.codec())->Encode(values, ctx);
  switch (b[8] % 8) {
    case 0: break;  // as encoded
    case 1: if (!payload.empty()) payload.pop_back(); break;
    case 2: payload.push_back(b[9]); break;
    case 3: payload.resize(payload.size() + 4, b[9]); break;
    case 4: payload.resize(payload.size() + 8, 0); break;
    case 5: payload.resize(payload.size() >= 4 ? payload.size() - 4 : 0); break;
    case 6:  // the right size, the input's bytes
      for (size_t i = 0; i < payload.size(); ++i) payload[i] = i < rest_size ? rest[i] : b[9];
      break;
    case 7:  // one byte changed
      if (!payload.empty()) payload[b[9] % payload.size()] ^= static_cast<uint8_t>(1u << (b[1] % 8));
      break;
  }
  if (h.op() == wire::PULL && b[8] % 8 != 2) payload.clear();  // a pull carries no payload
  if (h.op() != wire::PULL && (b[1] & 0x40)) {
    // The sender's residual after the coded bytes: the range's n floats (or one more declared).
    h.set_residual_floats(n + ((b[1] & 0x20) ? 1 : 0));
    payload.resize(payload.size() + n * sizeof(float), 0);
  }
  return {std::move(h), std::move(payload)};
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Harness& h = GetHarness();
  if (size < 2) return 0;
  const uint8_t mode = data[0];
  const uint16_t payload_len = static_cast<uint16_t>(data[1] | (size > 2 ? data[2] << 8 : 0)) % 2048;
  const uint8_t* body = data + 3 < data + size ? data + 3 : data + size;
  const size_t body_size = size > 3 ? size - 3 : 0;
  int outstanding = 0;
  auto send = [&](std::vector<uint8_t> frame, size_t payload_bytes) {
    auto payload = std::make_shared<std::vector<uint8_t>>(payload_bytes, 0x3F);
    ++outstanding;
    Status s = h.raw->Send(0, std::move(frame), *payload, [payload, &outstanding](Status) { --outstanding; });
    if (!s.ok()) --outstanding;
  };
  if (mode >= 0xC0) {
    auto [header, payload] = CodecRequest(data + 1, size - 1);
    auto owned = std::make_shared<std::vector<uint8_t>>(std::move(payload));
    ++outstanding;
    Status s = h.raw->Send(0, EncodeFrame(header, *owned, (mode & 8) != 0), *owned,
                           [owned, &outstanding](Status) { --outstanding; });
    if (!s.ok()) --outstanding;
  } else if (mode % 3 == 0) {
    // The input bytes as a frame, with a payload.
    send(std::vector<uint8_t>(body, body + body_size), payload_len);
  } else {
    wire::Header header;
    if (!header.ParseFromArray(body, static_cast<int>(body_size))) return 0;
    header.set_sender(1);
    if (mode % 3 == 2 && header.timeout_ms() > 50) header.set_timeout_ms(50);
    const size_t n = mode % 3 == 1 ? payload_len : header.element_count() * 4 % 4096;
    std::vector<uint8_t> payload(n, 0);
    send(EncodeFrame(header, payload, (mode & 8) != 0), n);
  }
  h.Drain(&outstanding);
  if (outstanding > 0) {
    // A push parked behind a missing worker holds its payload until the server's hold expires.
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
    h.Drain(&outstanding);
    if (outstanding > 0) std::abort();  // the server never consumed a payload: a stuck sender
  }
  return 0;
}
