#include "shardps/net/inproc_transport.h"

#include <algorithm>
#include <cstring>
#include <random>
#include <unordered_map>

#include "shardps/base/thread_annotations.h"

namespace shardps {

// A payload on its way: the receiver copies it out of the sender's buffer (zero-copy until then).
// If the sender releases that buffer first, the bytes move into `own` and the view follows them.
struct InProcPayload {
  Mutex mu;
  std::span<const uint8_t> view SHARDPS_GUARDED_BY(mu);
  std::vector<uint8_t> own SHARDPS_GUARDED_BY(mu);
  const std::span<const uint8_t> original;  // the sender's buffer
  const size_t size;
  explicit InProcPayload(std::span<const uint8_t> p) : view(p), original(p), size(p.size()) {}
  void CopyTo(std::span<uint8_t> dest) {
    MutexLock lock(mu);
    std::memcpy(dest.data(), view.data(), dest.size());
  }
  // Sender side: stop pointing into the caller's memory.
  void Detach() {
    MutexLock lock(mu);
    if (!own.empty() || view.empty()) return;
    own.assign(view.begin(), view.end());
    view = own;
  }
};

struct InProcEvent {
  enum Kind { kFrame, kSendDone } kind = kFrame;
  int source = -1;
  std::vector<uint8_t> frame;
  std::shared_ptr<InProcPayload> payload;
  uint64_t send_id = 0;
  Clock::time_point deliver_at{};
};

struct InProcHub::Mailbox {
  Mutex mu;
  std::condition_variable cv;
  std::deque<InProcEvent> events SHARDPS_GUARDED_BY(mu);
  bool woken SHARDPS_GUARDED_BY(mu) = false;

  void Put(InProcEvent e) {
    {
      MutexLock lock(mu);
      events.push_back(std::move(e));
    }
    cv.notify_one();
  }
};

namespace {

class InProcTransport final : public Transport {
 public:
  InProcTransport(int rank, const InProcOptions& options, std::vector<InProcHub::Mailbox*> boxes)
      : rank_(rank), options_(options), boxes_(std::move(boxes)),
        rng_(options.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(rank)) {}

  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(boxes_.size()); }
  std::string name() const override { return "inproc"; }

  Status Send(int dest, std::vector<uint8_t> frame, std::span<const uint8_t> payload, Completion on_sent) override {
    if (dest < 0 || dest >= size()) return InvalidArgument("send to rank " + std::to_string(dest) + " outside world of " + std::to_string(size()));
    InProcEvent e;
    e.kind = InProcEvent::kFrame;
    e.source = rank_;
    e.frame = std::move(frame);
    if (!payload.empty()) e.payload = std::make_shared<InProcPayload>(payload);
    e.deliver_at = Clock::now();
    if (options_.max_delay.count() > 0) {
      std::uniform_int_distribution<int64_t> d(0, options_.max_delay.count());
      e.deliver_at += std::chrono::microseconds(d(rng_));
    }
    if (payload.empty()) {
      local_done_.emplace_back(std::move(on_sent), Status::Ok());
    } else {
      e.send_id = next_send_id_++;
      pending_sends_.emplace(e.send_id, PendingSend{std::move(on_sent), e.payload});
    }
    boxes_[dest]->Put(std::move(e));
    return Status::Ok();
  }

  Status ReceivePayload(const IncomingFrame& in, std::span<uint8_t> dest, Completion done) override {
    auto it = payloads_.find(in.token);
    if (it == payloads_.end()) return Internal("payload token " + std::to_string(in.token) + " unknown or already consumed");
    if (dest.size() != it->second.payload->size) {
      return InvalidArgument("payload destination of " + std::to_string(dest.size()) + " bytes for a payload of " +
                             std::to_string(it->second.payload->size));
    }
    it->second.payload->CopyTo(dest);  // synchronous: nothing of `dest` is held afterwards
    Complete(it);
    local_done_.emplace_back(std::move(done), Status::Ok());
    return Status::Ok();
  }

  Status DiscardPayload(const IncomingFrame& in) override {
    auto it = payloads_.find(in.token);
    if (it == payloads_.end()) return Internal("payload token " + std::to_string(in.token) + " unknown or already consumed");
    Complete(it);
    return Status::Ok();
  }

  // Receives copy synchronously, so only sends can still hold caller memory: their payloads
  // are copied aside, and the receiver reads the copy.
  Status Release(std::span<const uint8_t> region, Clock::time_point) override {
    for (auto& [id, send] : pending_sends_) {
      if (send.payload && Overlaps(send.payload->original, region)) send.payload->Detach();
    }
    return Status::Ok();
  }

  Status Poll(std::vector<IncomingFrame>* frames, Clock::time_point deadline) override {
    InProcHub::Mailbox& box = *boxes_[rank_];
    std::vector<InProcEvent> got;
    bool progressed = RunLocalCompletions();
    {
      MutexLock lock(box.mu);
      for (;;) {
        const auto now = Clock::now();
        Clock::time_point next_delivery = Clock::time_point::max();
        for (auto it = box.events.begin(); it != box.events.end();) {
          if (it->kind == InProcEvent::kSendDone || it->deliver_at <= now) {
            got.push_back(std::move(*it));
            it = box.events.erase(it);
          } else {
            next_delivery = std::min(next_delivery, it->deliver_at);
            ++it;
          }
        }
        if (!got.empty() || progressed || box.woken || now >= deadline) break;
        box.cv.wait_until(lock.native(), std::min(deadline, next_delivery));
      }
      box.woken = false;
    }
    // Frames in delivery-time order: with max_delay this is a randomized order.
    std::stable_sort(got.begin(), got.end(), [](const InProcEvent& a, const InProcEvent& b) {
      if (a.kind != b.kind) return a.kind == InProcEvent::kSendDone;
      return a.deliver_at < b.deliver_at;
    });
    for (InProcEvent& e : got) {
      if (e.kind == InProcEvent::kSendDone) {
        auto it = pending_sends_.find(e.send_id);
        if (it != pending_sends_.end()) {
          Completion cb = std::move(it->second.done);
          pending_sends_.erase(it);
          if (cb) cb(Status::Ok());
        }
        continue;
      }
      IncomingFrame in;
      in.source = e.source;
      in.payload_bytes = e.payload ? e.payload->size : 0;
      if (e.frame.size() > options_.max_frame_bytes) {
        in.error = ResourceExhausted("frame of " + std::to_string(e.frame.size()) + " bytes from rank " +
                                     std::to_string(e.source) + " exceeds the limit of " +
                                     std::to_string(options_.max_frame_bytes));
      } else {
        in.frame = std::move(e.frame);
      }
      if (e.payload) {
        in.token = next_token_++;
        payloads_.emplace(in.token, Held{e.source, std::move(e.payload), e.send_id});
      }
      frames->push_back(std::move(in));
    }
    RunLocalCompletions();
    return Status::Ok();
  }

  void Wake() override {
    InProcHub::Mailbox& box = *boxes_[rank_];
    {
      MutexLock lock(box.mu);
      box.woken = true;
    }
    box.cv.notify_one();
  }

  bool Idle() const override { return pending_sends_.empty(); }

 private:
  struct Held {
    int source;
    std::shared_ptr<InProcPayload> payload;
    uint64_t send_id;
  };
  struct PendingSend {
    Completion done;
    std::shared_ptr<InProcPayload> payload;  // null for frames without one
  };

  void Complete(std::unordered_map<uint64_t, Held>::iterator it) {
    InProcEvent done;
    done.kind = InProcEvent::kSendDone;
    done.source = rank_;
    done.send_id = it->second.send_id;
    boxes_[it->second.source]->Put(std::move(done));
    payloads_.erase(it);
  }

  bool RunLocalCompletions() {
    bool any = false;
    while (!local_done_.empty()) {
      std::vector<std::pair<Completion, Status>> batch;
      batch.swap(local_done_);
      for (auto& [cb, st] : batch) {
        any = true;
        if (cb) cb(st);
      }
    }
    return any;
  }

  const int rank_;
  const InProcOptions options_;
  const std::vector<InProcHub::Mailbox*> boxes_;
  std::mt19937_64 rng_;
  uint64_t next_send_id_ = 1;
  uint64_t next_token_ = 1;
  std::unordered_map<uint64_t, PendingSend> pending_sends_;
  std::unordered_map<uint64_t, Held> payloads_;
  std::vector<std::pair<Completion, Status>> local_done_;
};

}  // namespace

InProcHub::InProcHub(int size, InProcOptions options) : size_(size), options_(options) {
  for (int i = 0; i < size; ++i) boxes_.push_back(std::make_unique<Mailbox>());
}

InProcHub::~InProcHub() = default;

std::unique_ptr<Transport> InProcHub::Connect(int rank) {
  std::vector<Mailbox*> boxes;
  for (auto& b : boxes_) boxes.push_back(b.get());
  return std::make_unique<InProcTransport>(rank, options_, std::move(boxes));
}

}  // namespace shardps
