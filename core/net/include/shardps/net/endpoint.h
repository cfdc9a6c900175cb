// Endpoint: the one communication thread of a process. It owns the Transport, decodes every
// incoming frame, and hands it to the server handler (requests) or the client handler (replies).
//
//   Endpoint ep(std::move(transport), EndpointOptions{});
//   ep.SetServerHandler(&server);   // if this rank serves
//   ep.SetClientHandler(&client);   // if this rank works
//   SHARDPS_RETURN_IF_ERROR(ep.Start());
//   ...                             // client calls from any thread
//   ep.Stop(std::chrono::seconds(5));
//
// Why one thread (see docs/architecture.md): MPI then needs no MPI_THREAD_MULTIPLE; all protocol
// state (shards, pending requests) is touched by one thread, so it needs no locks; and the order
// in which work happens is explicit. Other threads reach it only through Post().
//
// A frame that fails to decode, or a request this rank does not handle, gets an ERROR reply and
// its payload is discarded (an ERROR nobody here waits for is logged, not answered); nothing a
// peer sends can stop the thread.
// Thread safety: Post(), Start(), Stop() and the accessors are thread-safe; everything marked
// "comm thread only" must run on the communication thread (inside a handler or a Post()ed task).
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "shardps/base/thread_annotations.h"
#include "shardps/net/endpoint_options.h"
#include "shardps/net/frame.h"
#include "shardps/net/transport.h"

namespace shardps {

// Receives decoded frames on the communication thread.
class FrameHandler {
 public:
  virtual ~FrameHandler() = default;
  // `in.frame` has been decoded into `frame`; the handler owns consuming the payload (receive or
  // discard) when in.payload_bytes > 0.
  virtual void OnFrame(IncomingFrame in, Frame frame) = 0;
  // Called on every loop turn; returns when it next needs a call (a deadline to enforce).
  virtual Clock::time_point OnTick(Clock::time_point now) = 0;
  // A peer was lost (its connection closed without a goodbye, or it stopped answering
  // heartbeats): the job cannot go on. Fail everything waiting; `why` names the rank.
  virtual void OnPeerLost(const Status& why) { (void)why; }
};

class Endpoint {
 public:
  Endpoint(std::unique_ptr<Transport> transport, EndpointOptions options);
  ~Endpoint();
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  const EndpointOptions& options() const { return options_; }

  // Set before Start().
  void SetServerHandler(FrameHandler* handler) { server_ = handler; }
  void SetClientHandler(FrameHandler* handler) { client_ = handler; }

  Status Start();
  // Stops the thread after flushing sends still in flight (up to `flush`), then joins it.
  void Stop(std::chrono::milliseconds flush = std::chrono::milliseconds(2000));
  // An orderly exit: says goodbye to every peer (so its closing connections are not taken for a
  // failure), flushes, and stops.
  void Leave(std::chrono::milliseconds flush = std::chrono::milliseconds(2000));
  // A failed exit: tells every peer why this rank ends the job (so they can name the root
  // cause), flushes, and stops.
  void Abort(const Status& why, std::chrono::milliseconds flush = std::chrono::milliseconds(2000));
  // The first lost peer, once one was lost (then every send fails with it). Thread-safe.
  Status lost() const SHARDPS_EXCLUDES(mu_);
  bool running() const { return running_.load(); }

  // Runs `task` on the communication thread. Thread-safe.
  void Post(std::function<void()> task) SHARDPS_EXCLUDES(mu_);

  // A thread of this process starts or stops blocking on an operation of this endpoint (the
  // worker's Handle::wait). While a client is set and no thread waits, the worker is taken to be
  // computing, and a polling transport leaves it the core (Transport::SetComputeBusy).
  // Thread-safe.
  void BeginWait();
  void EndWait();

  // --- comm thread only ---
  // Encodes `header` (sender filled in) and sends it with `payload`.
  void Send(int dest, wire::Header header, std::span<const uint8_t> payload, Completion on_sent);
  // Answers `request` from `dest` with an ERROR frame carrying `status`.
  void SendError(int dest, const wire::Header& request, const Status& status);
  void Warn(const std::string& message);
  Transport& transport() { return *transport_; }

 private:
  void Loop();
  void Dispatch(IncomingFrame in);
  void ReplyToUndecodable(const IncomingFrame& in, const Status& why);
  void PeerLost(int rank, const Status& why);
  void Lost(const Status& s) SHARDPS_EXCLUDES(mu_);  // the job cannot go on here: fail everything waiting with `s`
  std::string Describe(int rank) const;

  // Constant after construction.
  const std::unique_ptr<Transport> transport_;
  const EndpointOptions options_;
  const int rank_;
  const int size_;
  FrameHandler* server_ = nullptr;  // set before Start()
  FrameHandler* client_ = nullptr;

  mutable Mutex mu_;
  std::vector<std::function<void()>> tasks_ SHARDPS_GUARDED_BY(mu_);
  Status lost_ SHARDPS_GUARDED_BY(mu_);
  std::atomic<bool> has_lost_{false};
  std::atomic<int> waiters_{0};

  std::atomic<bool> running_{false};
  std::atomic<bool> stop_{false};
  std::chrono::milliseconds flush_{0};
  std::thread thread_;
};

// Op names for messages: "PUSH", "PULL", ...
std::string OpName(int op);

}  // namespace shardps
