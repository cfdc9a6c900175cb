// libFuzzer target: the server's message handling, end to end through the endpoint. A server rank
// (rank 0, two small tables) keeps serving across inputs; each input becomes one or more frames
// sent from worker rank 1's raw transport (a protobuf Header parsed from the input, a payload
// whose length the input chooses, or the raw input bytes as a frame). The server must answer or
// hold every request without crashing, leaking or tripping a sanitizer. Payload buffers are
// released only when the transport says the server consumed them.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

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
  if (mode % 3 == 0) {
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
