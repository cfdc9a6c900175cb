// In-process transport: ranks are threads of one process, for tests.
//
//   InProcHub hub(/*size=*/4, {.max_delay = std::chrono::microseconds(200), .seed = 7});
//   std::unique_ptr<Transport> t0 = hub.Connect(0);   // one per rank thread
//
// Payloads are copied once, from the sender's buffer straight into the receiver's. With
// max_delay > 0 each frame is held for a seeded random time before delivery, so frames from
// different senders (and from one sender) arrive in randomized orders: tests use it to show that
// results do not depend on arrival order.
// Thread safety: InProcHub is thread-safe; each Transport it returns belongs to one thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "shardps/net/transport.h"

namespace shardps {

struct InProcOptions {
  std::chrono::microseconds max_delay{0};
  uint64_t seed = 1;
  uint64_t max_frame_bytes = 64 * 1024;
};

class InProcHub {
 public:
  InProcHub(int size, InProcOptions options = {});
  ~InProcHub();
  InProcHub(const InProcHub&) = delete;
  InProcHub& operator=(const InProcHub&) = delete;

  int size() const { return size_; }
  // The transport of `rank`; call once per rank. The hub must outlive it.
  std::unique_ptr<Transport> Connect(int rank);

  struct Mailbox;  // private to the implementation

 private:
  const int size_;
  const InProcOptions options_;
  std::vector<std::unique_ptr<Mailbox>> boxes_;
};

}  // namespace shardps
