// The TCP transport's connection handling: after the rendezvous (rendezvous.cc, its accepting
// side in gate.cc) one I/O thread serves every peer's socket: the envelope stream, the write
// queue, payloads handed to the receiver (eager, direct or read aside; Peer::PayloadState),
// heartbeats and the detection of lost peers; the owning thread's calls post to it.
// Over 600 lines on purpose: the send and receive paths share each Peer and the I/O thread's
// invariants (which payload a stream is paused on, when a receiver's buffer may be touched,
// what Release must redirect), and they are checked against each other when read together.
#include "shardps/net/tcp_transport.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio.hpp>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <future>
#include <iostream>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "rendezvous.h"
#include "shardps/base/thread_annotations.h"

namespace shardps {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Deadline = Clock::time_point;

constexpr size_t kEnvelopeBytes = 16;
constexpr int kSpinPolls = 200;
constexpr int kIoSpinPolls = 200;
// Payloads up to kEagerBytes are read with their frame into a pooled buffer (one copy, like MPI's
// eager protocol), while at most kEagerBudget bytes of them wait for the receiver: a small message
// then costs no extra round of hand-offs between the I/O and the owning thread. Larger payloads
// are read straight into the receiver's buffer.
constexpr uint64_t kEagerBytes = 256 * 1024;
constexpr uint64_t kEagerBudget = 16 * 1024 * 1024;
constexpr uint64_t kEagerToken = uint64_t{1} << 63;
enum Kind : uint32_t { kMessage = 0, kHeartbeat = 1, kGoodbye = 2, kAbort = 3 };

std::vector<uint8_t> Envelope(uint64_t payload_bytes, uint32_t frame_bytes, Kind kind) {
  std::vector<uint8_t> e(kEnvelopeBytes);
  const uint32_t k = kind;
  std::memcpy(e.data(), &payload_bytes, 8);
  std::memcpy(e.data() + 8, &frame_bytes, 4);
  std::memcpy(e.data() + 12, &k, 4);
  return e;
}

// ---- The transport ----

class TcpTransport final : public Transport {
 public:
  explicit TcpTransport(const TcpOptions& o) : o_(o), peers_(o.size), heartbeat_(io_) {}
  ~TcpTransport() override { Shutdown(); }

  // Stops the I/O thread: every connection is shut down for sending (what was written goes out,
  // then FIN), what peers sent meanwhile is drained so the close does not reset the connection,
  // and no handler touches a receiver's buffer afterwards.
  void Shutdown() override {
    if (!thread_.joinable()) return;
    auto closed = std::make_shared<std::promise<void>>();
    auto done = closed->get_future();
    asio::post(io_, [this, closed] {
      stopping_ = true;
      heartbeat_.cancel();
      for (auto& p : peers_) {
        if (!p.sock) continue;
        boost::system::error_code ignored;
        p.sock->shutdown(tcp::socket::shutdown_send, ignored);
        p.sock->cancel(ignored);
      }
      closed->set_value();
    });
    done.wait_for(std::chrono::milliseconds(500));
    work_.reset();
    io_.stop();
    thread_.join();
    for (auto& p : peers_) {
      if (!p.sock || !p.sock->is_open()) continue;
      boost::system::error_code ignored;
      p.sock->non_blocking(true, ignored);
      uint8_t sink[4096];
      for (int i = 0; i < 256 && p.sock->read_some(asio::buffer(sink), ignored) > 0;) ++i;
      p.sock->close(ignored);
    }
  }

  // Connects to every other rank (rendezvous.h), then hands the sockets to the I/O thread.
  Status Setup();

  int rank() const override { return o_.rank; }
  int size() const override { return o_.size; }
  std::string name() const override { return "tcp"; }

  Status Send(int dest, std::vector<uint8_t> frame, std::span<const uint8_t> payload, Completion on_sent) override {
    if (dest < 0 || dest >= o_.size) return InvalidArgument("send to rank " + std::to_string(dest) + " outside world of " + std::to_string(o_.size));
    if (dest == o_.rank) {  // to ourselves (colocated): handed over in memory
      IncomingFrame in;
      in.source = o_.rank;
      in.frame = std::move(frame);
      in.payload_bytes = payload.size();
      if (!payload.empty()) {
        in.token = next_self_token_++;
        self_payloads_[in.token] = SelfPayload{payload, {}, std::move(on_sent)};
      } else if (on_sent) {
        local_done_.push_back([cb = std::move(on_sent)] { cb(Status::Ok()); });
      }
      self_ready_.push_back(std::move(in));
      return Status::Ok();
    }
    if (frame.size() > o_.max_frame_bytes) return InvalidArgument("frame of " + std::to_string(frame.size()) + " bytes is over the limit");
    Outgoing out;
    out.envelope = Envelope(payload.size(), static_cast<uint32_t>(frame.size()), kMessage);
    out.envelope.insert(out.envelope.end(), frame.begin(), frame.end());
    out.payload = payload;
    out.done = std::move(on_sent);
    out.counted = true;
    ++in_flight_;
    asio::post(io_, [this, dest, out = std::move(out)]() mutable { Enqueue(dest, std::move(out)); });
    return Status::Ok();
  }

  Status ReceivePayload(const IncomingFrame& in, std::span<uint8_t> dest, Completion done) override {
    if (dest.size() != in.payload_bytes) return InvalidArgument("payload destination size mismatch");
    if (in.source == o_.rank) {
      auto it = self_payloads_.find(in.token);
      if (it == self_payloads_.end()) return Internal("unknown payload token");
      std::memcpy(dest.data(), it->second.payload.data(), dest.size());
      auto sent = std::move(it->second.sent);
      self_payloads_.erase(it);
      local_done_.push_back([sent = std::move(sent), done = std::move(done)] {
        if (sent) sent(Status::Ok());
        if (done) done(Status::Ok());
      });
      return Status::Ok();
    }
    if (in.source < 0 || in.source >= o_.size) return InvalidArgument("payload from an unknown rank");
    if (in.token & kEagerToken) {  // already here: one copy, completion on this thread
      auto it = eager_.find(in.token);
      if (it == eager_.end()) return Internal("unknown eager payload token");
      std::memcpy(dest.data(), it->second.data.get(), dest.size());
      ReleaseEager(std::move(it->second));
      eager_.erase(it);
      local_done_.push_back([done = std::move(done)] { if (done) done(Status::Ok()); });
      return Status::Ok();
    }
    asio::post(io_, [this, src = in.source, token = in.token, dest, done = std::move(done)]() mutable {
      Claim(src, token, dest, std::move(done));
    });
    return Status::Ok();
  }

  Status DiscardPayload(const IncomingFrame& in) override {
    if (in.source == o_.rank) {
      auto it = self_payloads_.find(in.token);
      if (it == self_payloads_.end()) return Internal("unknown payload token");
      auto sent = std::move(it->second.sent);
      self_payloads_.erase(it);
      local_done_.push_back([sent = std::move(sent)] { if (sent) sent(Status::Ok()); });
      return Status::Ok();
    }
    if (in.source < 0 || in.source >= o_.size) return InvalidArgument("payload from an unknown rank");
    if (in.token & kEagerToken) {
      auto it = eager_.find(in.token);
      if (it == eager_.end()) return Internal("unknown eager payload token");
      ReleaseEager(std::move(it->second));
      eager_.erase(it);
      return Status::Ok();
    }
    asio::post(io_, [this, src = in.source, token = in.token] { Discard(src, token); });
    return Status::Ok();
  }

  Status Release(std::span<const uint8_t> region, Deadline deadline) override {
    for (auto& [token, sp] : self_payloads_) {  // colocated sends not yet received
      if (sp.own.empty() && Overlaps(sp.payload, region)) {
        sp.own.assign(sp.payload.begin(), sp.payload.end());
        sp.payload = sp.own;
      }
    }
    if (!thread_.joinable()) return Status::Ok();  // no I/O thread: nothing of the caller's is in flight
    // Posted after every Send/ReceivePayload this thread made before (the I/O thread runs its
    // handlers in order), so it sees each of them queued or under way.
    auto released = std::make_shared<std::promise<void>>();
    auto done = released->get_future();
    asio::post(io_, [this, region, released] {
      ReleaseOnIoThread(region);
      released->set_value();
    });
    if (done.wait_until(deadline) != std::future_status::ready) {
      return DeadlineExceeded("the TCP transport's I/O thread did not let go of a buffer in time");
    }
    return Status::Ok();
  }

  Status Poll(std::vector<IncomingFrame>* frames, Deadline deadline) override {
    // Payloads handed out by the previous Poll and still not claimed are read aside, so the
    // stream behind them goes on (posted after the claims made during that dispatch).
    if (!handed_out_.empty()) {
      asio::post(io_, [this, list = std::move(handed_out_)] {
        for (auto [src, token] : list) ReadAsideIfParked(src, token);
      });
      handed_out_.clear();
    }
    RunLocal();
    std::vector<IncomingFrame> arrived;
    std::vector<std::function<void()>> completions;
    // While traffic flows, a reply usually arrives within microseconds: spin briefly (yielding)
    // before sleeping on the condition variable, which costs a scheduler wake-up per message.
    if (self_ready_.empty() && local_done_.empty()) {
      for (int i = 0; i < kSpinPolls && !ready_flag_.load(std::memory_order_acquire) && Clock::now() < deadline; ++i) {
        std::this_thread::yield();
      }
    }
    {
      MutexLock lock(mu_);
      if (self_ready_.empty() && local_done_.empty()) {
        while (inbox_.empty() && completions_.empty() && !woken_) {
          if (cv_.wait_until(lock.native(), deadline) == std::cv_status::timeout) break;
        }
      }
      ready_flag_.store(false, std::memory_order_relaxed);
      woken_ = false;
      arrived.swap(inbox_);
      completions.swap(completions_);
      for (auto& [token, buf] : eager_arrived_) eager_.emplace(token, std::move(buf));
      eager_arrived_.clear();
    }
    for (auto& c : completions) c();
    RunLocal();
    for (auto& f : self_ready_) frames->push_back(std::move(f));
    self_ready_.clear();
    for (auto& f : arrived) {
      if (f.payload_bytes > 0 && f.error.ok() && !(f.token & kEagerToken)) handed_out_.push_back({f.source, f.token});
      frames->push_back(std::move(f));
    }
    return Status::Ok();
  }

  void Wake() override {
    {
      MutexLock lock(mu_);
      woken_ = true;
      ready_flag_.store(true, std::memory_order_release);
    }
    cv_.notify_all();
  }

  bool Idle() const override { return in_flight_.load() == 0; }

  void Abort(const std::string& reason) override {
    std::string r = reason.substr(0, std::min<size_t>(reason.size(), 4000));
    in_flight_ += o_.size - 1;
    asio::post(io_, [this, r] {
      for (int p = 0; p < o_.size; ++p) {
        if (p == o_.rank) continue;
        Outgoing out;
        out.envelope = Envelope(0, static_cast<uint32_t>(r.size()), kAbort);
        out.envelope.insert(out.envelope.end(), r.begin(), r.end());
        out.counted = true;
        Enqueue(p, std::move(out));
      }
    });
  }

  void Goodbye() override {
    in_flight_ += o_.size - 1;  // counted here, so Idle() cannot report true before they are queued
    asio::post(io_, [this] {
      for (int r = 0; r < o_.size; ++r) {
        if (r == o_.rank) continue;
        Outgoing out;
        out.envelope = Envelope(0, 0, kGoodbye);
        out.counted = true;
        Enqueue(r, std::move(out));  // a lost peer completes it at once
      }
    });
  }

 private:
  struct Outgoing {
    std::vector<uint8_t> envelope;  // envelope + frame
    std::span<const uint8_t> payload;  // the caller's memory, or `own` once released
    std::vector<uint8_t> own;
    size_t sent = 0;                   // bytes of envelope + payload written so far
    Completion done;
    bool counted = false;  // in in_flight_ (heartbeats are not)
  };
  struct SelfPayload {
    std::span<const uint8_t> payload;  // the caller's memory, or `own` once released
    std::vector<uint8_t> own;
    Completion sent;
  };
  struct EagerPayload {
    std::unique_ptr<uint8_t[]> data;  // kEagerBytes capacity, from the pool
    uint64_t size = 0;
  };
  // The connection's life. A lost peer is reported once; one that said goodbye first is not
  // reported at all (its closing is an orderly exit).
  enum class Link {
    kJoining,   // no envelope yet since the mesh came up (allowed the setup time to speak)
    kUp,        // heard from
    kDeparted,  // said goodbye
    kLost,      // closed: every later send or receive fails at once
  };
  // What the incoming stream does with the payload behind the last frame handed to the receiver
  // (one with a token: larger than eager). The stream pauses until the payload is consumed.
  enum class PayloadState {
    kNone,           // none pending: reading envelope by envelope
    kParked,         // its bytes wait in the socket for the receiver to claim or discard them
    kReadingAside,   // unclaimed after the dispatch: being read into `side`
    kAside,          // in `side`, waiting for the claim (a copy) or the discard
    kClaimedAside,   // being read into `side`, copied to claim_dest when complete
    kDropping,       // discarded or released: being read aside or drained, then dropped
    kDirect,         // being read straight into the receiver's buffer (ReadDirect)
    kDirectDropped,  // ... which the receiver released: the rest goes to scratch memory
  };
  struct Peer {
    std::unique_ptr<tcp::socket> sock;
    Link link = Link::kJoining;
    bool writing = false;  // a WriteSome of `queue` is under way
    std::deque<Outgoing> queue;
    uint8_t env[kEnvelopeBytes];
    std::vector<uint8_t> frame;
    uint64_t payload_bytes = 0;
    PayloadState payload = PayloadState::kNone;
    uint64_t token = 0;  // the payload the receiver may claim or discard, 0 if none
    std::vector<uint8_t> side;
    std::span<uint8_t> claim_dest;
    Completion claim_done;
    std::span<uint8_t> direct_dest;  // kDirect: the receiver's buffer, and how far it got
    size_t direct_got = 0;
    Completion direct_done;
    Clock::time_point last_heard;
  };

  // ---- eager buffers (either thread) ----
  EagerPayload TakeEagerBuffer() {
    {
      MutexLock lock(pool_mu_);
      if (!pool_.empty()) {
        EagerPayload b{std::move(pool_.back()), 0};
        pool_.pop_back();
        return b;
      }
    }
    return EagerPayload{std::make_unique<uint8_t[]>(kEagerBytes), 0};
  }
  void ReleaseEager(EagerPayload b) {
    eager_bytes_ -= kEagerBytes;
    MutexLock lock(pool_mu_);
    if (pool_.size() < 64) pool_.push_back(std::move(b.data));
  }

  // ---- owner thread ----
  void RunLocal() {
    while (!local_done_.empty()) {
      auto batch = std::move(local_done_);
      local_done_.clear();
      for (auto& f : batch) f();
    }
  }

  // ---- I/O thread ----
  void Deliver(std::function<void()> completion) {
    {
      MutexLock lock(mu_);
      completions_.push_back(std::move(completion));
      ready_flag_.store(true, std::memory_order_release);
    }
    cv_.notify_all();
  }
  void Complete(Completion done, Status s) {
    if (done) Deliver([done = std::move(done), s = std::move(s)] { done(s); });
  }
  void Arrive(IncomingFrame in) {
    {
      MutexLock lock(mu_);
      inbox_.push_back(std::move(in));
      ready_flag_.store(true, std::memory_order_release);
    }
    cv_.notify_all();
  }

  void Close(Peer& p) {
    if (!p.sock) return;
    boost::system::error_code ignored;
    p.sock->shutdown(tcp::socket::shutdown_both, ignored);
    p.sock->close(ignored);
  }

  void Lost(int r, const std::string& why) {
    Peer& p = peers_[r];
    if (p.link == Link::kLost) return;
    const bool departed = p.link == Link::kDeparted;
    p.link = Link::kLost;
    Close(p);
    if (departed || stopping_) return;  // an orderly exit
    IncomingFrame in;
    in.source = r;
    in.error = Unavailable(why);  // the endpoint names the rank and its role
    Arrive(std::move(in));
  }

  void Enqueue(int r, Outgoing out) {
    Peer& p = peers_[r];
    if (!p.sock || p.link == Link::kLost) {
      if (out.counted) --in_flight_;
      Complete(std::move(out.done), Unavailable("send to rank " + std::to_string(r) + ": the connection is lost"));
      return;
    }
    p.queue.push_back(std::move(out));
    if (!p.writing) StartWrite(r);
  }

  void StartWrite(int r) {
    Peer& p = peers_[r];
    if (p.link == Link::kLost) {  // fail what is left
      for (auto& out : p.queue) {
        if (out.counted) --in_flight_;
        Complete(std::move(out.done), Unavailable("send to rank " + std::to_string(r) + ": the connection is lost"));
      }
      p.queue.clear();
      p.writing = false;
      return;
    }
    if (p.queue.empty()) {
      p.writing = false;
      return;
    }
    p.writing = true;
    WriteSome(r);
  }

  // Writes the queue's messages until the socket would block, then waits for it to be writable.
  // The caller's payload is read only inside write_some, on this thread; no asynchronous
  // operation holds a pointer to it, so Release can move its unsent bytes aside between calls.
  void WriteSome(int r) {
    Peer& p = peers_[r];
    boost::system::error_code e;
    if (!p.sock->non_blocking()) p.sock->non_blocking(true, e);
    while (!p.queue.empty()) {
      Outgoing& out = p.queue.front();
      const size_t env = out.envelope.size();
      const size_t total = env + out.payload.size();
      std::array<asio::const_buffer, 2> bufs;
      if (out.sent < env) bufs[0] = asio::buffer(out.envelope.data() + out.sent, env - out.sent);
      const size_t from = out.sent > env ? out.sent - env : 0;
      bufs[1] = asio::buffer(out.payload.data() + from, out.payload.size() - from);
      const size_t n = p.sock->write_some(bufs, e);
      if (e == asio::error::would_block || e == asio::error::try_again) {
        p.sock->async_wait(tcp::socket::wait_write, [this, r](const boost::system::error_code& e) {
          if (e) return WriteFailed(r, e);
          WriteSome(r);
        });
        return;
      }
      if (e) return WriteFailed(r, e);
      out.sent += n;
      if (out.sent < total) continue;
      Outgoing done = std::move(out);
      p.queue.pop_front();
      if (done.counted) --in_flight_;
      Complete(std::move(done.done), Status::Ok());
    }
    p.writing = false;
  }

  void WriteFailed(int r, const boost::system::error_code& e) {
    Peer& p = peers_[r];
    Outgoing out = std::move(p.queue.front());
    p.queue.pop_front();
    if (out.counted) --in_flight_;
    Complete(std::move(out.done), Unavailable("send to rank " + std::to_string(r) + ": " + e.message()));
    Lost(r, "send failed: " + e.message());
    StartWrite(r);  // fails what is left
  }

  // Called on the I/O thread by Release: nothing queued or under way keeps pointing into `region`.
  void ReleaseOnIoThread(std::span<const uint8_t> region) {
    for (auto& p : peers_) {
      for (auto& out : p.queue) {
        if (out.own.empty() && Overlaps(out.payload, region)) {
          out.own.assign(out.payload.begin(), out.payload.end());
          out.payload = out.own;
        }
      }
      if (p.payload == PayloadState::kClaimedAside && Overlaps(p.claim_dest, region)) {  // drop it there
        p.payload = PayloadState::kDropping;
        p.claim_dest = {};
        Complete(std::move(p.claim_done), Cancelled("payload receive cancelled"));
      }
      if (p.payload == PayloadState::kDirect && Overlaps(p.direct_dest, region)) {
        p.payload = PayloadState::kDirectDropped;  // the rest goes to scratch memory
        Complete(std::move(p.direct_done), Cancelled("payload receive cancelled"));
      }
    }
  }

  void StartRead(int r) {
    Peer& p = peers_[r];
    if (p.link == Link::kLost) return;
    asio::async_read(*p.sock, asio::buffer(p.env, kEnvelopeBytes), [this, r](const boost::system::error_code& e, size_t) {
      if (e) return Lost(r, ReadError(e));
      Peer& p = peers_[r];
      p.last_heard = Clock::now();
      if (p.link == Link::kJoining) p.link = Link::kUp;
      uint32_t fb, kind;
      std::memcpy(&p.payload_bytes, p.env, 8);
      std::memcpy(&fb, p.env + 8, 4);
      std::memcpy(&kind, p.env + 12, 4);
      if (kind == kHeartbeat || kind == kGoodbye) {
        if (fb != 0 || p.payload_bytes != 0) return Lost(r, "malformed control envelope");
        if (kind == kGoodbye) p.link = Link::kDeparted;
        return StartRead(r);
      }
      if (kind == kAbort) {  // the peer is ending the job: its reason names the root cause
        if (fb == 0 || fb > o_.max_frame_bytes || p.payload_bytes != 0) return Lost(r, "malformed abort envelope");
        p.frame.resize(fb);
        asio::async_read(*p.sock, asio::buffer(p.frame), [this, r](const boost::system::error_code& e, size_t) {
          if (e) return Lost(r, ReadError(e));
          Peer& p = peers_[r];
          std::string why(p.frame.begin(), p.frame.end());
          for (char& c : why) if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e) c = '?';
          Lost(r, "it ended the job: " + why);
        });
        return;
      }
      if (kind != kMessage || fb == 0 || fb > o_.max_frame_bytes || p.payload_bytes > o_.max_payload_bytes) {
        // The stream cannot be resynchronised: report and drop the connection.
        return Lost(r, "envelope of kind " + std::to_string(kind) + " with a frame of " + std::to_string(fb) +
                           " bytes and a payload of " + std::to_string(p.payload_bytes) + " bytes is outside the limits");
      }
      p.frame.resize(fb);
      asio::async_read(*p.sock, asio::buffer(p.frame), [this, r](const boost::system::error_code& e, size_t) {
        if (e) return Lost(r, ReadError(e));
        Peer& p = peers_[r];
        p.last_heard = Clock::now();
        IncomingFrame in;
        in.source = r;
        in.frame = std::move(p.frame);
        in.payload_bytes = p.payload_bytes;
        if (p.payload_bytes > 0 && p.payload_bytes <= kEagerBytes && eager_bytes_.load() + kEagerBytes <= kEagerBudget) {
          eager_bytes_ += kEagerBytes;  // a whole pooled buffer, whatever the payload's size
          auto buf = std::make_shared<EagerPayload>(TakeEagerBuffer());
          buf->size = p.payload_bytes;
          auto frame = std::make_shared<IncomingFrame>(std::move(in));
          asio::async_read(*p.sock, asio::buffer(buf->data.get(), buf->size), Heard(r),
                           [this, r, buf, frame](const boost::system::error_code& e, size_t) {
                             if (e) {
                               ReleaseEager(std::move(*buf));
                               return Lost(r, ReadError(e));
                             }
                             peers_[r].last_heard = Clock::now();
                             frame->token = next_token_++ | kEagerToken;
                             {
                               MutexLock lock(mu_);
                               eager_arrived_.emplace(frame->token, std::move(*buf));
                             }
                             Arrive(std::move(*frame));
                             StartRead(r);
                           });
          return;
        }
        if (p.payload_bytes > 0) {
          in.token = next_token_++;
          p.token = in.token;
          p.payload = PayloadState::kParked;
          Arrive(std::move(in));
          return;  // the stream waits for the receiver to claim or discard the payload
        }
        Arrive(std::move(in));
        StartRead(r);
      });
    });
  }

  // A completion condition for long reads: every partial read counts as hearing from the peer,
  // so a payload that takes longer than the peer timeout to arrive is not taken for silence.
  std::function<size_t(const boost::system::error_code&, size_t)> Heard(int r) {
    return [this, r](const boost::system::error_code& e, size_t) -> size_t {
      peers_[r].last_heard = Clock::now();
      return e ? 0 : 65536;
    };
  }

  std::string ReadError(const boost::system::error_code& e) const {
    if (e == asio::error::eof || e == asio::error::connection_reset) return "its connection closed without a goodbye (the process exited or was killed)";
    return e.message();
  }

  void Claim(int src, uint64_t token, std::span<uint8_t> dest, Completion done) {
    Peer& p = peers_[src];
    if (p.link == Link::kLost) return Complete(std::move(done), Unavailable("payload from rank " + std::to_string(src) + ": the connection is lost"));
    if (p.token != token) return Complete(std::move(done), Internal("payload token " + std::to_string(token) + " is not the pending one"));
    switch (p.payload) {
      case PayloadState::kAside:  // already read aside: copy
        std::memcpy(dest.data(), p.side.data(), dest.size());
        std::vector<uint8_t>().swap(p.side);
        p.payload = PayloadState::kNone;
        p.token = 0;
        Complete(std::move(done), Status::Ok());
        return StartRead(src);
      case PayloadState::kReadingAside:  // copied when complete
        p.payload = PayloadState::kClaimedAside;
        p.claim_dest = dest;
        p.claim_done = std::move(done);
        return;
      case PayloadState::kParked:  // straight into the caller's buffer
        p.payload = PayloadState::kDirect;
        p.token = 0;
        p.direct_dest = dest;
        p.direct_got = 0;
        p.direct_done = std::move(done);
        return ReadDirect(src);
      default:  // claimed or discarded before: the endpoint consumes each payload once
        return Complete(std::move(done), Internal("payload token " + std::to_string(token) + " was already claimed or discarded"));
    }
  }

  // Reads a claimed payload into the receiver's buffer until the socket has nothing more, then
  // waits for it to be readable. Like WriteSome, only read_some on this thread touches the buffer,
  // so Release can redirect the rest into scratch memory between calls. Every read counts as
  // hearing from the peer, so a payload that takes longer than the peer timeout is not silence.
  void ReadDirect(int src) {
    Peer& p = peers_[src];
    boost::system::error_code e;
    if (!p.sock->non_blocking()) p.sock->non_blocking(true, e);
    while (p.direct_got < p.direct_dest.size()) {
      const size_t left = p.direct_dest.size() - p.direct_got;
      if (scratch_.empty()) scratch_.resize(64 * 1024);
      const auto into = p.payload == PayloadState::kDirectDropped
                            ? asio::buffer(scratch_.data(), std::min(left, scratch_.size()))
                            : asio::buffer(p.direct_dest.data() + p.direct_got, left);
      const size_t n = p.sock->read_some(into, e);
      if (e == asio::error::would_block || e == asio::error::try_again) {
        p.sock->async_wait(tcp::socket::wait_read, [this, src](const boost::system::error_code& e) {
          if (e) return DirectFailed(src, e);
          ReadDirect(src);
        });
        return;
      }
      if (e) return DirectFailed(src, e);
      p.direct_got += n;
      p.last_heard = Clock::now();
    }
    const bool dropped = p.payload == PayloadState::kDirectDropped;
    p.payload = PayloadState::kNone;
    p.direct_dest = {};
    if (!dropped) Complete(std::move(p.direct_done), Status::Ok());
    StartRead(src);
  }

  void DirectFailed(int src, const boost::system::error_code& e) {
    Peer& p = peers_[src];
    const bool dropped = p.payload == PayloadState::kDirectDropped;
    p.payload = PayloadState::kNone;
    p.direct_dest = {};
    if (!dropped) Complete(std::move(p.direct_done), Unavailable("payload from rank " + std::to_string(src) + ": " + e.message()));
    Lost(src, ReadError(e));
  }

  // Reads and drops `left` payload bytes through a small scratch buffer, then goes on reading.
  void Drain(int r, uint64_t left) {
    Peer& p = peers_[r];
    if (left == 0) {
      p.payload = PayloadState::kNone;
      p.token = 0;
      return StartRead(r);
    }
    p.side.resize(std::min<uint64_t>(left, 64 * 1024));
    asio::async_read(*p.sock, asio::buffer(p.side), [this, r, left](const boost::system::error_code& e, size_t n) {
      Peer& p = peers_[r];
      if (e) {
        p.payload = PayloadState::kNone;
        return Lost(r, ReadError(e));
      }
      p.last_heard = Clock::now();
      Drain(r, left - n);
    });
  }

  void Discard(int src, uint64_t token) {
    Peer& p = peers_[src];
    if (p.link == Link::kLost || p.token != token) return;
    switch (p.payload) {
      case PayloadState::kAside:
        std::vector<uint8_t>().swap(p.side);
        p.payload = PayloadState::kNone;
        p.token = 0;
        return StartRead(src);
      case PayloadState::kParked:  // nobody wants the bytes: no buffer for them
        p.payload = PayloadState::kDropping;
        return Drain(src, p.payload_bytes);
      case PayloadState::kReadingAside:  // dropped when complete
        p.payload = PayloadState::kDropping;
        return;
      default:  // claimed or discarded before
        return;
    }
  }

  void ReadAsideIfParked(int src, uint64_t token) {
    Peer& p = peers_[src];
    if (p.link != Link::kLost && p.token == token && p.payload == PayloadState::kParked) StartSideRead(src);
  }

  void StartSideRead(int r) {
    Peer& p = peers_[r];
    p.payload = PayloadState::kReadingAside;
    p.side.resize(p.payload_bytes);
    asio::async_read(*p.sock, asio::buffer(p.side), Heard(r), [this, r](const boost::system::error_code& e, size_t) {
      Peer& p = peers_[r];
      const PayloadState was = p.payload;
      if (e) {
        p.payload = PayloadState::kNone;
        if (was == PayloadState::kClaimedAside) Complete(std::move(p.claim_done), Unavailable("payload from rank " + std::to_string(r) + ": " + e.message()));
        return Lost(r, ReadError(e));
      }
      p.last_heard = Clock::now();
      if (was == PayloadState::kReadingAside) {
        p.payload = PayloadState::kAside;
        return;
      }
      // Claimed meanwhile (copy it), or discarded or released (drop it).
      if (was == PayloadState::kClaimedAside) std::memcpy(p.claim_dest.data(), p.side.data(), p.claim_dest.size());
      Completion done = std::move(p.claim_done);
      std::vector<uint8_t>().swap(p.side);
      p.payload = PayloadState::kNone;
      p.token = 0;
      if (was == PayloadState::kClaimedAside) Complete(std::move(done), Status::Ok());
      StartRead(r);
    });
  }

  // Every peer_timeout / 4: a heartbeat to every idle connection, and a check that every peer
  // was heard from within peer_timeout.
  void Beat() {
    const auto interval = std::max<std::chrono::milliseconds>(std::chrono::milliseconds(10), o_.peer_timeout / 4);
    heartbeat_.expires_after(interval);
    heartbeat_.async_wait([this](const boost::system::error_code& e) {
      if (e || stopping_) return;
      const auto now = Clock::now();
      for (int r = 0; r < o_.size; ++r) {
        Peer& p = peers_[r];
        if (r == o_.rank || !p.sock || p.link == Link::kLost || p.link == Link::kDeparted) continue;
        // While this side holds the stream (a payload parked, unclaimed), nothing can arrive
        // from the peer: that is not its silence.
        if (p.payload == PayloadState::kParked || p.payload == PayloadState::kAside) {
          p.last_heard = now;
        }
        // Until a peer's first envelope, allow it the setup time (it may still be dialling the
        // ranks below it).
        const auto allowed = p.link != Link::kJoining ? o_.peer_timeout : std::max(o_.peer_timeout, o_.setup_timeout);
        if (now - p.last_heard > allowed) {
          Lost(r, "nothing heard from it, not even a heartbeat, for " +
                      std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(now - p.last_heard).count()) +
                      " ms (peer timeout " + std::to_string(allowed.count()) +
                      " ms): the process is stopped or hung, or the network is down");
          continue;
        }
        if (!p.writing) {
          Outgoing hb;
          hb.envelope = Envelope(0, 0, kHeartbeat);
          Enqueue(r, std::move(hb));
        }
      }
      Beat();
    });
  }

  TcpOptions o_;
  asio::io_context io_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::thread thread_;
  // I/O thread only (after Setup).
  std::vector<Peer> peers_;
  asio::steady_timer heartbeat_;
  uint64_t next_token_ = 1;
  bool stopping_ = false;
  std::vector<uint8_t> scratch_;  // where released payload bytes are read and dropped
  // Shared between the threads.
  Mutex mu_;
  std::condition_variable cv_;
  std::vector<IncomingFrame> inbox_ SHARDPS_GUARDED_BY(mu_);
  std::vector<std::function<void()>> completions_ SHARDPS_GUARDED_BY(mu_);
  bool woken_ SHARDPS_GUARDED_BY(mu_) = false;
  std::atomic<bool> ready_flag_{false};             // something for Poll (set under mu_)
  std::unordered_map<uint64_t, EagerPayload> eager_arrived_ SHARDPS_GUARDED_BY(mu_);
  std::atomic<uint64_t> eager_bytes_{0};            // eager payloads not yet claimed or discarded
  Mutex pool_mu_;
  std::vector<std::unique_ptr<uint8_t[]>> pool_ SHARDPS_GUARDED_BY(pool_mu_);
  std::atomic<int64_t> in_flight_{0};
  // Owner thread only.
  std::vector<IncomingFrame> self_ready_;
  std::vector<std::function<void()>> local_done_;
  std::unordered_map<uint64_t, SelfPayload> self_payloads_;
  std::vector<std::pair<int, uint64_t>> handed_out_;
  std::unordered_map<uint64_t, EagerPayload> eager_;  // arrived with their frames, by token
  uint64_t next_self_token_ = 1;
};

Status TcpTransport::Setup() {
  SHARDPS_ASSIGN_OR_RETURN(auto socks, tcp_internal::Rendezvous(io_, o_));
  for (int r = 0; r < o_.size; ++r) peers_[r].sock = std::move(socks[r]);
  // The mesh is up: the I/O thread takes over every socket.
  io_.restart();
  const auto now = Clock::now();
  for (int r = 0; r < o_.size; ++r) {
    if (r == o_.rank) continue;
    peers_[r].last_heard = now;
    StartRead(r);
  }
  Beat();
  work_.emplace(io_.get_executor());
  thread_ = std::thread([this] {
    // Spin (yielding) for a while after each burst of work before blocking in epoll: a post from
    // the owning thread then needs no wake-up of this one.
    int idle = 0;
    while (!io_.stopped()) {
      if (io_.poll() > 0) {
        idle = 0;
      } else if (++idle < kIoSpinPolls) {
        std::this_thread::yield();
      } else {
        io_.run_one();
        idle = 0;
      }
    }
  });
  return Status::Ok();
}

}  // namespace

Status ParseHostPort(const std::string& text, std::string* host, uint16_t* port) {
  const size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 >= text.size()) {
    return InvalidArgument("'" + text + "' is not HOST:PORT");
  }
  std::string h = text.substr(0, colon);
  if (h.size() > 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  const std::string p = text.substr(colon + 1);
  if (p.size() > 5 || p.find_first_not_of("0123456789") != std::string::npos || std::stoul(p) == 0 || std::stoul(p) > 65535) {
    return InvalidArgument("'" + text + "': port must be 1..65535");
  }
  boost::system::error_code ec;
  asio::ip::make_address(h, ec);
  if (ec) return InvalidArgument("'" + text + "': '" + h + "' is not a numeric IP address");
  *host = h;
  *port = static_cast<uint16_t>(std::stoul(p));
  return Status::Ok();
}

Result<std::unique_ptr<Transport>> CreateTcpTransport(const TcpOptions& options) {
  if (options.size < 1 || options.rank < 0 || options.rank >= options.size) {
    return InvalidArgument("rank " + std::to_string(options.rank) + " outside world of " + std::to_string(options.size));
  }
  if (!options.insecure && options.secret.size() < kMinSecretBytes) {
    return InvalidArgument("a shared secret of at least 32 bytes is required (or choose insecure explicitly)");
  }
  if (options.peer_timeout.count() <= 0 || options.handshake_timeout.count() <= 0 || options.max_pending_connections < 1) {
    return InvalidArgument("peer and handshake timeouts must be positive and at least one pending connection allowed");
  }
  auto t = std::make_unique<TcpTransport>(options);
  SHARDPS_RETURN_IF_ERROR(t->Setup());
  return std::unique_ptr<Transport>(std::move(t));
}

}  // namespace shardps
