#include "shardps/net/endpoint.h"

#include <iostream>
#include <thread>

namespace shardps {

std::string OpName(int op) {
  if (wire::Op_IsValid(op)) return wire::Op_Name(static_cast<wire::Op>(op));
  return "op " + std::to_string(op);
}

Endpoint::Endpoint(std::unique_ptr<Transport> transport, EndpointOptions options)
    : transport_(std::move(transport)),
      options_(std::move(options)),
      rank_(transport_->rank()),
      size_(transport_->size()) {}

Endpoint::~Endpoint() { Stop(std::chrono::milliseconds(0)); }

Status Endpoint::Start() {
  if (running_.exchange(true)) return FailedPrecondition("endpoint already started");
  stop_ = false;
  thread_ = std::thread([this] { Loop(); });
  return Status::Ok();
}

void Endpoint::Stop(std::chrono::milliseconds flush) {
  if (!thread_.joinable()) return;
  Post([this, flush] {
    flush_ = flush;
    stop_ = true;
  });
  thread_.join();
  transport_->Shutdown();  // no transport thread writes into a handler's buffer after this
  running_ = false;
}

void Endpoint::Leave(std::chrono::milliseconds flush) {
  if (!thread_.joinable()) return;
  Post([this] { transport_->Goodbye(); });
  Stop(flush);
}

void Endpoint::Abort(const Status& why, std::chrono::milliseconds flush) {
  if (!thread_.joinable()) return;
  const std::string reason = why.ToString();
  Post([this, reason] { transport_->Abort(reason); });
  Stop(flush);
}

Status Endpoint::lost() const {
  if (!has_lost_.load()) return Status::Ok();
  MutexLock lock(mu_);
  return lost_;
}

std::string Endpoint::Describe(int rank) const {
  return options_.describe_rank ? options_.describe_rank(rank) : "rank " + std::to_string(rank);
}

void Endpoint::PeerLost(int rank, const Status& why) { Lost(Unavailable(Describe(rank) + " lost: " + why.message())); }

void Endpoint::Lost(const Status& s) {
  {
    MutexLock lock(mu_);
    if (!lost_.ok()) return;  // the first loss is the cause; later ones follow from it
    lost_ = s;
  }
  has_lost_ = true;
  Warn(s.message());
  if (server_) server_->OnPeerLost(s);
  if (client_ && client_ != server_) client_->OnPeerLost(s);
}

void Endpoint::Post(std::function<void()> task) {
  {
    MutexLock lock(mu_);
    tasks_.push_back(std::move(task));
  }
  transport_->Wake();
}

void Endpoint::BeginWait() {
  if (waiters_.fetch_add(1) == 0) transport_->Wake();  // leave a low-duty-cycle poll now
}

void Endpoint::EndWait() { waiters_.fetch_sub(1); }

void Endpoint::Warn(const std::string& message) {
  if (options_.on_warning) {
    options_.on_warning(message);
  } else {
    std::cerr << "[shardps rank " << rank_ << "] warning: " << message << std::endl;
  }
}

void Endpoint::Send(int dest, wire::Header header, std::span<const uint8_t> payload, Completion on_sent) {
  if (has_lost_.load() && dest != rank_) {  // the job is over: nothing more goes out
    if (on_sent) Post([on_sent, s = lost()] { on_sent(s); });
    return;
  }
  header.set_sender(rank_);
  std::vector<uint8_t> frame = EncodeFrame(header, payload, options_.checksum_payloads);
  Status s = transport_->Send(dest, std::move(frame), payload, on_sent);
  if (!s.ok() && on_sent) {
    // Report through the completion so callers have one error path.
    Post([on_sent, s] { on_sent(s); });
  }
}

void Endpoint::SendError(int dest, const wire::Header& request, const Status& status) {
  wire::Header h;
  h.set_op(wire::ERROR);
  h.set_request_id(request.request_id());
  h.set_reply_to(request.op());
  h.set_table(request.table());
  h.set_chunk(request.chunk());
  h.set_step(request.step());
  h.set_error_code(static_cast<int>(status.code()));
  // Bound the message so an error reply always fits the peer's frame limit.
  std::string msg = "rank " + std::to_string(rank_) + ": " + status.message();
  if (msg.size() > 4000) msg.resize(4000);
  h.set_error(std::move(msg));
  Send(dest, std::move(h), {}, nullptr);
}

void Endpoint::ReplyToUndecodable(const IncomingFrame& in, const Status& why) {
  if (in.frame.empty() && in.payload_bytes == 0 && why.code() == StatusCode::kUnavailable) {
    PeerLost(in.source, why);  // the connection to that rank is gone: nobody to answer
    return;
  }
  Warn("rejected a frame from rank " + std::to_string(in.source) + ": " + why.ToString());
  if (in.payload_bytes > 0) {
    Status d = transport_->DiscardPayload(in);
    if (!d.ok()) Warn("could not discard a payload: " + d.ToString());
  }
  wire::Header unknown;  // request id 0: the requester learns the reason but cannot match it
  SendError(in.source, unknown, why);
}

void Endpoint::Dispatch(IncomingFrame in) {
  if (!in.error.ok()) {
    ReplyToUndecodable(in, in.error);
    return;
  }
  Result<Frame> decoded = DecodeFrame(in.frame, options_.limits);
  if (!decoded.ok()) {
    ReplyToUndecodable(in, decoded.status());
    return;
  }
  Frame& f = *decoded;
  if (f.payload_bytes != in.payload_bytes) {
    ReplyToUndecodable(in, DataLoss("frame announces " + std::to_string(f.payload_bytes) + " payload bytes, transport carries " +
                                    std::to_string(in.payload_bytes)));
    return;
  }
  if (f.header.sender() != in.source) {
    ReplyToUndecodable(in, InvalidArgument("frame claims sender rank " + std::to_string(f.header.sender()) +
                                           " but came from rank " + std::to_string(in.source)));
    return;
  }
  const wire::Op op = f.header.op();
  FrameHandler* h = nullptr;
  switch (op) {
    case wire::HELLO:
    case wire::PUSH:
    case wire::PULL:
    case wire::PUSH_PULL:
    case wire::BARRIER:
    case wire::SHUTDOWN:
    case wire::HEARTBEAT:
    case wire::CHECKPOINT:
    case wire::SPARSE_PUSH:
    case wire::SPARSE_PULL:
    case wire::SPARSE_PUSH_PULL:
    case wire::SECAGG:
      h = server_;
      break;
    case wire::RESPONSE:
    case wire::ERROR:
      h = client_;
      break;
    default:
      break;
  }
  if (h == nullptr) {
    if (op == wire::ERROR) {  // an error about something we sent, with nobody to give it to
      Warn("error from rank " + std::to_string(in.source) + ": " + f.header.error());
      if (in.payload_bytes > 0) (void)transport_->DiscardPayload(in);
      return;
    }
    if (in.payload_bytes > 0) (void)transport_->DiscardPayload(in);
    SendError(in.source, f.header,
              InvalidArgument(OpName(op) + " is not handled by rank " + std::to_string(rank_) +
                              (server_ ? "" : " (it is not a server)")));
    return;
  }
  h->OnFrame(std::move(in), std::move(f));
}

void Endpoint::Loop() {
  std::vector<IncomingFrame> frames;
  Clock::time_point stop_by = Clock::time_point::max();
  Clock::time_point failing_since = Clock::time_point::max();  // of the current run of failed Polls
  for (;;) {
    std::vector<std::function<void()>> tasks;
    {
      MutexLock lock(mu_);
      tasks.swap(tasks_);
    }
    for (auto& t : tasks) t();
    if (stop_) {
      if (stop_by == Clock::time_point::max()) stop_by = Clock::now() + flush_;
      if (transport_->Idle() || Clock::now() >= stop_by) break;
    }
    auto now = Clock::now();
    Clock::time_point next = now + options_.max_idle_wait;
    if (server_) next = std::min(next, server_->OnTick(now));
    if (client_ && client_ != server_) next = std::min(next, client_->OnTick(now));
    if (stop_) next = std::min(next, now + std::chrono::milliseconds(1));
    frames.clear();
    transport_->SetComputeBusy(client_ != nullptr && waiters_.load() == 0 && !stop_);
    Status s = transport_->Poll(&frames, next);
    if (s.ok()) {
      failing_since = Clock::time_point::max();
    } else if (failing_since == Clock::time_point::max()) {
      failing_since = Clock::now();
      Warn("transport: " + s.ToString() + " (the job ends on this rank if it persists for " +
           std::to_string(options_.poll_failure_limit.count()) + " ms)");
    } else if (!has_lost_.load() && Clock::now() - failing_since >= options_.poll_failure_limit) {
      Lost(Unavailable("the " + transport_->name() + " transport of " + Describe(rank_) + " kept failing for " +
                       std::to_string(options_.poll_failure_limit.count()) + " ms: " + s.ToString()));
    }
    for (auto& in : frames) Dispatch(std::move(in));
    if (!s.ok()) {
      // Do not spin on a broken transport; a Post (Wake) still ends the pause at once for the
      // next turn's tasks, since tasks are run first.
      bool no_tasks;
      {
        MutexLock lock(mu_);
        no_tasks = tasks_.empty();
      }
      if (no_tasks && !stop_) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
}

}  // namespace shardps
