// Transport: moves frames and their payloads between ranks. Backends: MPI (mpi_transport.h) and
// in-process ranks-as-threads (inproc_transport.h) and TCP (tcp_transport.h).
//
//   SHARDPS_ASSIGN_OR_RETURN(std::unique_ptr<Transport> t, CreateTcpTransport(tcp_options));  // a factory
//   SHARDPS_ASSIGN_OR_RETURN(auto node, Node::Start(std::move(t), cluster, layout));  // Node drives it
//
// A library user picks a backend through its factory and hands the transport to Node; the
// interface below is for writing a backend (or a decorator over one).
//
// A message is a small frame (prefix + protobuf header, owned bytes) plus an optional payload
// that is sent straight from the caller's buffer and, on the receiving side, received straight
// into a buffer the receiver chooses after it has read the frame: no intermediate copies and no
// allocation sized by a remote peer. Every frame whose payload_bytes > 0 must be consumed with
// exactly one ReceivePayload or DiscardPayload.
//
// Thread safety: a Transport is owned by one communication thread (the Endpoint's). Only Wake()
// may be called from other threads. Completions run on the owning thread, inside Poll().
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "shardps/base/status.h"

namespace shardps {

using Clock = std::chrono::steady_clock;
using Completion = std::function<void(Status)>;

struct IncomingFrame {
  int source = -1;
  std::vector<uint8_t> frame;   // prefix + header bytes, not yet validated
  uint64_t payload_bytes = 0;   // announced by the transport envelope; still on the wire
  uint64_t token = 0;           // identifies the payload to ReceivePayload/DiscardPayload
  Status error;                 // transport-level rejection (e.g. oversized frame); frame empty
};

// True when the two byte ranges share at least one byte (for Transport::Release).
inline bool Overlaps(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  if (a.empty() || b.empty()) return false;
  const auto a0 = reinterpret_cast<uintptr_t>(a.data()), b0 = reinterpret_cast<uintptr_t>(b.data());
  return a0 < b0 + b.size() && b0 < a0 + a.size();
}

class Transport {
 public:
  virtual ~Transport() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;

  // Starts sending `frame` and then `payload` to `dest`. `payload` must stay valid and unchanged
  // until `on_sent` runs. Errors in the arguments are returned; later failures reach `on_sent`.
  virtual Status Send(int dest, std::vector<uint8_t> frame, std::span<const uint8_t> payload,
                      Completion on_sent) = 0;

  // Receives the payload of `in` into `dest` (dest.size() == in.payload_bytes); `done` runs once
  // the bytes are there.
  virtual Status ReceivePayload(const IncomingFrame& in, std::span<uint8_t> dest, Completion done) = 0;

  // Drops the payload of `in` without storing it anywhere.
  virtual Status DiscardPayload(const IncomingFrame& in) = 0;

  // Makes progress: runs completions and appends newly arrived frames to `frames`. Returns as soon
  // as something happened, Wake() was called, or `deadline` passed.
  virtual Status Poll(std::vector<IncomingFrame>* frames, Clock::time_point deadline) = 0;

  // Thread-safe: makes a concurrent or the next Poll() return promptly.
  virtual void Wake() = 0;

  // Owner thread, before Poll(): whether a compute thread of this process is busy right now (a
  // worker computing rather than waiting on the network). A transport that must poll for
  // progress then polls at a low duty cycle, so it does not take the compute thread's core; when
  // no one computes it polls eagerly. Transports that block until something happens ignore it.
  virtual void SetComputeBusy(bool busy) { (void)busy; }

  // True when no send is still in flight (used to flush before stopping).
  virtual bool Idle() const = 0;

  // Tells every peer this rank is leaving in order, so that its closing connection is not taken
  // for a failure (transports that detect lost peers). Sends still queued go out first.
  virtual void Goodbye() {}
  // Tells every peer this rank is ending the job because of `reason` (transports that detect
  // lost peers report it with the reason, so every process can name the root cause).
  virtual void Abort(const std::string& reason) { (void)reason; }
  // Lets go of the caller's memory in `region` (owner thread): once it returns OK, no send
  // reads from it and no receive writes into it, whatever peers do later. A send whose payload
  // lies in the region and has not fully gone out keeps its unsent bytes in memory of its own
  // (the stream stays intact); a receive into the region is drained and dropped, and its
  // completion reports CANCELLED. A transport that cannot take the memory back by `deadline`
  // (an MPI send the peer never matches) says so with an error: the caller must then keep the
  // region alive until the transport is shut down.
  virtual Status Release(std::span<const uint8_t> region, Clock::time_point deadline) = 0;
  // Stops any thread of the transport's own; after it no completion runs and no receiver's
  // buffer is written. Called by the owner once it has stopped polling. Default: nothing.
  virtual void Shutdown() {}
};

// Hands every call to `inner`: the base of decorators that change one or two behaviours of a
// transport (frames stashed before a node starts, faults injected in tests) and forward the rest.
class ForwardingTransport : public Transport {
 public:
  explicit ForwardingTransport(std::unique_ptr<Transport> inner) : inner_(std::move(inner)) {}

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string name() const override { return inner_->name(); }
  Status Send(int dest, std::vector<uint8_t> frame, std::span<const uint8_t> payload, Completion on_sent) override {
    return inner_->Send(dest, std::move(frame), payload, std::move(on_sent));
  }
  Status ReceivePayload(const IncomingFrame& in, std::span<uint8_t> dest, Completion done) override {
    return inner_->ReceivePayload(in, dest, std::move(done));
  }
  Status DiscardPayload(const IncomingFrame& in) override { return inner_->DiscardPayload(in); }
  Status Poll(std::vector<IncomingFrame>* frames, Clock::time_point deadline) override {
    return inner_->Poll(frames, deadline);
  }
  void Wake() override { inner_->Wake(); }
  void SetComputeBusy(bool busy) override { inner_->SetComputeBusy(busy); }
  bool Idle() const override { return inner_->Idle(); }
  void Goodbye() override { inner_->Goodbye(); }
  void Abort(const std::string& reason) override { inner_->Abort(reason); }
  Status Release(std::span<const uint8_t> region, Clock::time_point deadline) override {
    return inner_->Release(region, deadline);
  }
  void Shutdown() override { inner_->Shutdown(); }

 private:
  std::unique_ptr<Transport> inner_;
};

}  // namespace shardps
