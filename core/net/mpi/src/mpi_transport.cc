#include "shardps/net/mpi_transport.h"

#include <atomic>
#include <climits>
#include <condition_variable>
#include <mutex>
#include <cstring>
#include <thread>

#include <sched.h>
#include <vector>

namespace shardps {

std::string MpiErrorString(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(buf, len);
}

namespace {

constexpr int kFrameTag = 1;
constexpr int kFirstPayloadTag = 2;
constexpr size_t kEnvelopeBytes = 16;

struct Group {
  int remaining = 0;
  Status status;
  Completion done;
  std::vector<uint8_t> envelope;  // kept alive until the envelope send completes
  bool truncation_ok = false;     // discards: receiving 0 bytes of a longer message is the point
  int64_t expect_bytes = -1;      // receives: the payload must be exactly this long
};

class MpiTransport final : public Transport {
 public:
  MpiTransport(MPI_Comm comm, int rank, int size, int tag_ub, const MpiTransportOptions& options)
      : comm_(comm), rank_(rank), size_(size), tag_ub_(tag_ub), options_(options), next_tag_(size, 0) {}

  ~MpiTransport() override {
    // Requests still pending (only after a failed job) are abandoned, not freed: freeing an active
    // receive would let MPI write into released memory.
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "mpi"; }

  Status Send(int dest, std::vector<uint8_t> frame, std::span<const uint8_t> payload, Completion on_sent) override {
    if (dest < 0 || dest >= size_) return InvalidArgument("send to rank " + std::to_string(dest) + " outside world of " + std::to_string(size_));
    if (payload.size() > options_.max_payload_bytes) {
      return ResourceExhausted("payload of " + std::to_string(payload.size()) + " bytes exceeds the MPI transport limit of " +
                               std::to_string(options_.max_payload_bytes));
    }
    auto g = std::make_shared<Group>();
    g->done = std::move(on_sent);
    g->envelope.resize(kEnvelopeBytes + frame.size());
    const uint64_t pbytes = payload.size();
    const uint32_t tag = payload.empty() ? 0 : NextTag(dest);
    std::memcpy(g->envelope.data(), &pbytes, 8);
    std::memcpy(g->envelope.data() + 8, &tag, 4);
    std::memset(g->envelope.data() + 12, 0, 4);
    std::memcpy(g->envelope.data() + kEnvelopeBytes, frame.data(), frame.size());
    MPI_Request r;
    int rc = MPI_Isend(g->envelope.data(), static_cast<int>(g->envelope.size()), MPI_BYTE, dest, kFrameTag, comm_, &r);
    if (rc != MPI_SUCCESS) return Unavailable("MPI_Isend of a frame to rank " + std::to_string(dest) + ": " + MpiErrorString(rc));
    Add(r, g);
    if (!payload.empty()) {
      rc = MPI_Isend(payload.data(), static_cast<int>(payload.size()), MPI_BYTE, dest, static_cast<int>(tag), comm_, &r);
      if (rc != MPI_SUCCESS) {
        g->status = Unavailable("MPI_Isend of a payload to rank " + std::to_string(dest) + ": " + MpiErrorString(rc));
      } else {
        Add(r, g, payload);
      }
    }
    ++sends_in_flight_;
    g->done = [this, cb = std::move(g->done)](Status s) {
      --sends_in_flight_;
      if (cb) cb(std::move(s));
    };
    return Status::Ok();
  }

  Status ReceivePayload(const IncomingFrame& in, std::span<uint8_t> dest, Completion done) override {
    if (dest.size() != in.payload_bytes) {
      return InvalidArgument("payload destination of " + std::to_string(dest.size()) + " bytes for a payload of " +
                             std::to_string(in.payload_bytes));
    }
    auto g = std::make_shared<Group>();
    g->done = std::move(done);
    g->expect_bytes = static_cast<int64_t>(dest.size());
    MPI_Request r;
    int rc = MPI_Irecv(dest.data(), static_cast<int>(dest.size()), MPI_BYTE, in.source, static_cast<int>(in.token), comm_, &r);
    if (rc != MPI_SUCCESS) return Unavailable("MPI_Irecv of a payload from rank " + std::to_string(in.source) + ": " + MpiErrorString(rc));
    Add(r, g, dest, /*receive=*/true);
    return Status::Ok();
  }

  Status DiscardPayload(const IncomingFrame& in) override {
    if (in.payload_bytes == 0) return Status::Ok();
    return DiscardTagged(in.source, static_cast<int>(in.token));
  }

  Status Poll(std::vector<IncomingFrame>* frames, Clock::time_point deadline) override {
    int idle = 0;
    for (;;) {
      bool progressed = false;
      SHARDPS_RETURN_IF_ERROR(ProbeFrames(frames, &progressed));
      SHARDPS_RETURN_IF_ERROR(TestRequests(&progressed));
      if (progressed) {
        last_progress_ = Clock::now();
        return Status::Ok();
      }
      if (wake_.exchange(false, std::memory_order_acq_rel)) return Status::Ok();
      const auto now = Clock::now();
      if (now >= deadline) return Status::Ok();
      if (compute_busy_ && options_.busy_nap.count() > 0) {
        Nap(std::min<Clock::duration>(options_.busy_nap, deadline - now));
        continue;
      }
      if (++idle <= options_.spin_polls) continue;
      if (now - last_progress_ < options_.yield_for) {
        // Recently busy: stay responsive, but let any runnable thread on this CPU (a training
        // thread) go first. Measured much faster than napping or plain spinning when ranks
        // share cores (docs/benchmarks.md).
        sched_yield();
      } else {
        std::this_thread::sleep_for(std::min<Clock::duration>(options_.idle_sleep, deadline - now));
      }
    }
  }

  // Receives into the region are cancelled; sends from it cannot be (MPI may be reading the
  // buffer), so both are progressed until MPI has finished with them, up to `deadline`.
  Status Release(std::span<const uint8_t> region, Clock::time_point deadline) override {
    auto held = [&] {
      int n = 0;
      for (const Held& h : held_) if (Overlaps(h.buf, region)) ++n;
      return n;
    };
    if (held() == 0) return Status::Ok();
    for (size_t i = 0; i < reqs_.size(); ++i) {
      if (held_[i].receive && !held_[i].cancel_asked && Overlaps(held_[i].buf, region)) {
        held_[i].cancel_asked = true;
        MPI_Cancel(&reqs_[i]);
      }
    }
    for (;;) {
      bool progressed = false;
      SHARDPS_RETURN_IF_ERROR(TestRequests(&progressed));
      const int left = held();
      if (left == 0) return Status::Ok();
      if (Clock::now() >= deadline) {
        return FailedPrecondition(std::to_string(left) + " MPI request(s) still use the buffer (a peer has not matched " +
                                  "them); it must stay allocated until the job ends");
      }
      if (!progressed) sched_yield();
    }
  }

  void Wake() override {
    wake_.store(true);
    if (napping_.load()) {
      std::lock_guard<std::mutex> lock(nap_mu_);
      nap_cv_.notify_one();
    }
  }

  void SetComputeBusy(bool busy) override { compute_busy_ = busy; }

  bool Idle() const override { return sends_in_flight_ == 0; }

 private:
  uint32_t NextTag(int dest) {
    const uint32_t span = static_cast<uint32_t>(tag_ub_ - kFirstPayloadTag + 1);
    const uint32_t t = kFirstPayloadTag + next_tag_[dest];
    next_tag_[dest] = (next_tag_[dest] + 1) % span;
    return t;
  }

  void Add(MPI_Request r, std::shared_ptr<Group> g, std::span<const uint8_t> buf = {}, bool receive = false) {
    ++g->remaining;
    reqs_.push_back(r);
    groups_.push_back(std::move(g));
    held_.push_back(Held{buf, receive, false});
  }

  Status DiscardTagged(int source, int tag) {
    auto g = std::make_shared<Group>();
    g->truncation_ok = true;
    MPI_Request r;
    int rc = MPI_Irecv(nullptr, 0, MPI_BYTE, source, tag, comm_, &r);
    if (rc != MPI_SUCCESS) return Unavailable("MPI_Irecv to discard a payload from rank " + std::to_string(source) + ": " + MpiErrorString(rc));
    Add(r, g);
    return Status::Ok();
  }

  Status ProbeFrames(std::vector<IncomingFrame>* frames, bool* progressed) {
    for (int i = 0; i < 64; ++i) {
      int flag = 0;
      MPI_Message msg;
      MPI_Status st;
      int rc = MPI_Improbe(MPI_ANY_SOURCE, kFrameTag, comm_, &flag, &msg, &st);
      if (rc != MPI_SUCCESS) return Unavailable("MPI_Improbe: " + MpiErrorString(rc));
      if (!flag) return Status::Ok();
      *progressed = true;
      int count = 0;
      MPI_Get_count(&st, MPI_BYTE, &count);
      IncomingFrame in;
      in.source = st.MPI_SOURCE;
      if (count < static_cast<int>(kEnvelopeBytes) || static_cast<uint64_t>(count) > kEnvelopeBytes + options_.max_frame_bytes) {
        uint8_t sink[kEnvelopeBytes];
        MPI_Status rs;
        MPI_Mrecv(sink, static_cast<int>(sizeof(sink)), MPI_BYTE, &msg, &rs);  // truncation expected
        in.error = count < static_cast<int>(kEnvelopeBytes)
                       ? DataLoss("MPI envelope of " + std::to_string(count) + " bytes from rank " + std::to_string(in.source) + " is shorter than 16")
                       : ResourceExhausted("frame of " + std::to_string(count - kEnvelopeBytes) + " bytes from rank " +
                                           std::to_string(in.source) + " exceeds the limit of " + std::to_string(options_.max_frame_bytes));
        // The payload of an oversized frame is not matched: a sender this far off the protocol
        // may leave an orphaned payload message behind, which is never received.
        frames->push_back(std::move(in));
        continue;
      }
      std::vector<uint8_t> buf(static_cast<size_t>(count));
      MPI_Status rs;
      rc = MPI_Mrecv(buf.data(), count, MPI_BYTE, &msg, &rs);
      if (rc != MPI_SUCCESS) return Unavailable("MPI_Mrecv of a frame from rank " + std::to_string(in.source) + ": " + MpiErrorString(rc));
      uint64_t pbytes;
      uint32_t tag;
      std::memcpy(&pbytes, buf.data(), 8);
      std::memcpy(&tag, buf.data() + 8, 4);
      if (pbytes > 0 && (tag < kFirstPayloadTag || static_cast<int64_t>(tag) > tag_ub_)) {
        in.error = DataLoss("MPI envelope from rank " + std::to_string(in.source) + " names invalid payload tag " + std::to_string(tag));
      } else if (pbytes > options_.max_payload_bytes) {
        in.error = ResourceExhausted("payload of " + std::to_string(pbytes) + " bytes from rank " + std::to_string(in.source) +
                                     " exceeds the limit of " + std::to_string(options_.max_payload_bytes));
        SHARDPS_RETURN_IF_ERROR(DiscardTagged(in.source, static_cast<int>(tag)));
      } else {
        in.payload_bytes = pbytes;
        in.token = tag;
        in.frame.assign(buf.begin() + kEnvelopeBytes, buf.end());
      }
      frames->push_back(std::move(in));
    }
    return Status::Ok();
  }

  Status TestRequests(bool* progressed) {
    if (reqs_.empty()) return Status::Ok();
    int outcount = 0;
    indices_.resize(reqs_.size());
    statuses_.resize(reqs_.size());
    int rc = MPI_Testsome(static_cast<int>(reqs_.size()), reqs_.data(), &outcount, indices_.data(), statuses_.data());
    if (rc != MPI_SUCCESS && rc != MPI_ERR_IN_STATUS) return Unavailable("MPI_Testsome: " + MpiErrorString(rc));
    if (outcount == MPI_UNDEFINED || outcount == 0) return Status::Ok();
    *progressed = true;
    std::vector<std::shared_ptr<Group>> finished;
    for (int k = 0; k < outcount; ++k) {
      const int i = indices_[k];
      auto& g = groups_[i];
      int err = rc == MPI_ERR_IN_STATUS ? statuses_[k].MPI_ERROR : MPI_SUCCESS;
      if (err != MPI_SUCCESS && err != MPI_ERR_PENDING) {
        int cls = 0;
        MPI_Error_class(err, &cls);
        if (!(g->truncation_ok && cls == MPI_ERR_TRUNCATE) && g->status.ok()) {
          g->status = Unavailable("MPI request failed: " + MpiErrorString(err));
        }
      }
      int cancelled = 0;
      MPI_Test_cancelled(&statuses_[k], &cancelled);
      if (cancelled && g->status.ok()) g->status = Cancelled("payload receive cancelled");
      if (g->expect_bytes >= 0 && g->status.ok()) {
        int count = 0;
        MPI_Get_count(&statuses_[k], MPI_BYTE, &count);
        if (count != g->expect_bytes) {
          g->status = DataLoss("payload from rank " + std::to_string(statuses_[k].MPI_SOURCE) + " has " + std::to_string(count) +
                               " bytes, its frame announced " + std::to_string(g->expect_bytes));
        }
      }
      if (--g->remaining == 0) finished.push_back(g);
      g.reset();
    }
    // Compact: completed requests were set to MPI_REQUEST_NULL.
    size_t w = 0;
    for (size_t r = 0; r < reqs_.size(); ++r) {
      if (groups_[r]) {
        reqs_[w] = reqs_[r];
        groups_[w] = std::move(groups_[r]);
        held_[w] = held_[r];
        ++w;
      }
    }
    reqs_.resize(w);
    groups_.resize(w);
    held_.resize(w);
    for (auto& g : finished) if (g->done) g->done(g->status);
    return Status::Ok();
  }

  MPI_Comm comm_;
  const int rank_;
  const int size_;
  const int64_t tag_ub_;
  const MpiTransportOptions options_;
  std::vector<uint32_t> next_tag_;
  std::vector<MPI_Request> reqs_;
  std::vector<std::shared_ptr<Group>> groups_;
  struct Held {
    std::span<const uint8_t> buf;  // the caller's memory the request reads or writes (payloads)
    bool receive = false;
    bool cancel_asked = false;
  };
  std::vector<Held> held_;  // by request, parallel to reqs_
  std::vector<int> indices_;
  std::vector<MPI_Status> statuses_;
  int64_t sends_in_flight_ = 0;
  Clock::time_point last_progress_ = Clock::now();
  std::atomic<bool> wake_{false};
  // A nap ends early when Wake() is called: Wake() stores wake_ and then reads napping_, Nap()
  // stores napping_ and then reads wake_ (both sequentially consistent), so one sees the other.
  std::atomic<bool> napping_{false};
  std::mutex nap_mu_;
  std::condition_variable nap_cv_;
  bool compute_busy_ = false;  // owner thread

  void Nap(Clock::duration d) {
    std::unique_lock<std::mutex> lock(nap_mu_);
    napping_.store(true);
    nap_cv_.wait_for(lock, d, [&] { return wake_.load(); });
    napping_.store(false);
  }
};

}  // namespace

Result<std::unique_ptr<Transport>> CreateMpiTransport(MPI_Comm comm, const MpiTransportOptions& options) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) return FailedPrecondition("MPI is not initialized; call MPI_Init_thread first");
  MPI_Comm dup;
  int rc = MPI_Comm_dup(comm, &dup);
  if (rc != MPI_SUCCESS) return Unavailable("MPI_Comm_dup: " + MpiErrorString(rc));
  MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);
  int rank = 0, size = 0;
  MPI_Comm_rank(dup, &rank);
  MPI_Comm_size(dup, &size);
  int* ub = nullptr;
  int flag = 0;
  MPI_Comm_get_attr(dup, MPI_TAG_UB, &ub, &flag);
  const int tag_ub = (flag && ub) ? *ub : 32767;
  return std::unique_ptr<Transport>(new MpiTransport(dup, rank, size, tag_ub, options));
}

}  // namespace shardps
