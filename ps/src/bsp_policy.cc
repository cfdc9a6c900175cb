// The bulk synchronous policy ("bsp"), per chunk:
//  * A push carries the worker's step t. Only pushes for the chunk's current step (== version)
//    are counted; earlier ones are refused as stale, later ones parked until their step comes
//    (at most max_future_pushes_per_chunk). Each worker covers every key of the chunk once per
//    step, in one push or several disjoint ones; an overlapping one is refused as a duplicate.
//  * Pushes are summed in worker-rank order: the payload of worker k is received only after
//    workers 0..k-1 are summed, so the sum is the same bits whatever order messages arrive in.
//    Worker 0's values are received straight into the accumulator; later ones into a scratch
//    buffer and added (vectorised).
//  * When every worker has covered the chunk the optimizer runs once (after any pull reply still
//    being sent from the weights has left) and the chunk moves to version t+1.
//  * A pull for version v is answered when the chunk's version reaches v.
#include <algorithm>

#include "shardps/base/cluster.h"
#include "shardps/base/optimizer.h"
#include "shardps/ps/consistency.h"
#include "policies.h"

namespace shardps::ps {

namespace {

class BspChunk final : public ChunkSync {
 public:
  BspChunk(Chunk& chunk, PolicyHost& host, const SyncLimits& limits)
      : c_(chunk),
        host_(host),
        limits_(limits),
        pulls_(chunk, host, limits, /*lag=*/0),
        parked_(limits.num_workers),
        ranges_(limits.num_workers),
        covered_(limits.num_workers, 0),
        arrived_(limits.num_workers, 0) {}

  void OnPush(HeldPtr held) override {
    const wire::Header& h = held->h();
    if (h.step() < c_.version) return host_.Refuse(*held, StalePush(*held, c_, host_));
    if (h.step() > c_.version) {
      if (future_.size() >= limits_.max_future_pushes_per_chunk) {
        return host_.Refuse(*held, ResourceExhausted("push for step " + std::to_string(h.step()) + " to " + host_.Describe(c_) +
                                                     ": too many pushes for future steps are already parked"));
      }
      host_.WakeAt(held->deadline);
      future_.push_back(std::move(held));
      return;
    }
    if (!Claim(*held)) return;
    host_.WakeAt(held->deadline);
    parked_[held->worker].push_back(std::move(held));
    Advance();
  }

  // A pull for version v is answered when the chunk's version reaches v.
  void OnPull(HeldPtr held) override { pulls_.OnPull(std::move(held)); }

  void OnWeightsFree() override {
    if (apply_pending_) Advance();
  }

  void OnBufferFree() override {
    waiting_scratch_ = false;
    waiting_accum_ = false;
    Advance();
  }

  Clock::time_point Expire(Clock::time_point now) override;

  std::vector<int> MissingWorkers() const override {
    std::vector<int> missing;
    for (int w = 0; w < limits_.num_workers; ++w) {
      if (arrived_[w] < c_.info.size()) missing.push_back(host_.WorkerRank(w));
    }
    return missing;
  }

 private:
  bool Claim(HeldRequest& held);  // false (and refused) if it overlaps this step's keys
  void Unclaim(const HeldRequest& held);
  void Advance();
  void OnPayload(const HeldPtr& held, float* dest, bool scratch, Status st);
  void FinishContribution(HeldRequest& held);
  void ApplyStep();

  Chunk& c_;
  PolicyHost& host_;
  const SyncLimits limits_;
  HeldPulls pulls_;  // waiting for version >= step

  float* accum_ = nullptr;  // from the accumulator pool, held from worker 0's first piece to the update
  // Gathering the current step (== version), in worker-rank order.
  std::vector<std::vector<HeldPtr>> parked_;                      // by worker index: pieces waiting their turn
  std::vector<KeyRanges> ranges_;  // by worker: pieces accepted this step
  std::vector<uint64_t> covered_;  // by worker index: elements summed this step
  std::vector<uint64_t> arrived_;  // by worker index: elements pushed this step, even if later refused
                                   // or expired (so errors name the worker that never sent, not
                                   // the ones queued behind it)
  int next_worker_ = 0;            // worker index being summed; earlier ones are complete
  bool receiving_ = false;         // a payload of this chunk is being received
  bool waiting_scratch_ = false;
  bool waiting_accum_ = false;
  bool apply_pending_ = false;     // complete, waiting for pull replies to leave the weights

  std::vector<HeldPtr> future_;  // pushes for later steps
};

bool BspChunk::Claim(HeldRequest& held) {
  if (!ClaimKeys(held, ranges_[held.worker], c_, host_)) return false;
  arrived_[held.worker] += held.keys();
  return true;
}

void BspChunk::Unclaim(const HeldRequest& held) { UnclaimKeys(held, ranges_[held.worker]); }

// Sums parked pushes in worker-rank order, applies the step when complete, and repeats while
// parked pushes for the next step are already there.
void BspChunk::Advance() {
  const uint64_t size = c_.info.size();
  const int workers = limits_.num_workers;
  for (;;) {
    while (!receiving_ && !waiting_scratch_ && !waiting_accum_ && next_worker_ < workers) {
      if (covered_[next_worker_] == size) {
        ++next_worker_;
        continue;
      }
      auto& queue = parked_[next_worker_];
      if (queue.empty()) break;
      HeldPtr held = queue.front();
      const uint64_t n = held->keys();
      const uint64_t off = held->h().key_begin() - c_.info.begin;
      if (accum_ == nullptr) {
        // Accumulators come from a bounded pool: a server's memory is its weights, their state
        // and a fixed number of chunk buffers, whatever the table size. A chunk that finds none
        // free leaves its pushes unreceived (in the transport) until another chunk's update
        // returns one; that one never waits on this one, so this cannot deadlock.
        accum_ = host_.AcquireAccumulator(this);
        if (accum_ == nullptr) {
          waiting_accum_ = true;
          return;
        }
      }
      float* dest;
      bool scratch = false;
      if (next_worker_ == 0) {
        dest = accum_ + off;  // worker 0 covers the chunk: its values start the sum
      } else {
        dest = host_.AcquireScratch(this);
        if (dest == nullptr) {
          waiting_scratch_ = true;
          return;
        }
        scratch = true;
      }
      queue.erase(queue.begin());
      receiving_ = true;
      Status s = host_.ReceivePayload(held, std::span<float>(dest, n), [this, held, dest, scratch](Status st) {
        OnPayload(held, dest, scratch, std::move(st));
      });
      if (!s.ok()) {
        receiving_ = false;
        if (scratch) host_.ReleaseScratch(dest);
        Unclaim(*held);
        host_.Refuse(*held, s);
        continue;  // the worker's other parked pieces go on
      }
    }
    if (receiving_ || next_worker_ < workers) return;
    if (c_.inflight_sends > 0) {
      apply_pending_ = true;  // a pull reply is still reading the weights
      return;
    }
    ApplyStep();
  }
}

void BspChunk::OnPayload(const HeldPtr& held, float* dest, bool scratch, Status st) {
  receiving_ = false;
  const uint64_t n = held->keys();
  if (!st.ok()) {
    // The sum is unchanged (worker 0's region of the accumulator is overwritten by its re-push);
    // the worker may push these keys again for this step.
    Unclaim(*held);
    host_.Refuse(*held, st.WithContext("push to " + host_.Describe(c_)));
    if (scratch) host_.ReleaseScratch(dest);
    Advance();  // the worker's other parked pieces go on
    return;
  }
  if (scratch) {
    const uint64_t off = held->h().key_begin() - c_.info.begin;
    AddInto(std::span<float>(accum_ + off, n), std::span<const float>(dest, n));
  }
  FinishContribution(*held);
  if (scratch) host_.ReleaseScratch(dest);  // may Advance() another chunk waiting for a buffer
  Advance();
}

void BspChunk::FinishContribution(HeldRequest& held) {
  const wire::Header& h = held.h();
  covered_[held.worker] += held.keys();
  if (h.op() == wire::PUSH) {
    host_.Acknowledge(held);
  } else {  // PUSH_PULL: answer with the weights after this step (its deadline's wake-up is asked)
    pulls_.Hold(PullPartOf(held));
  }
}

void BspChunk::ApplyStep() {
  host_.ApplyUpdate(c_, std::span<const float>(accum_, c_.info.size()));
  apply_pending_ = false;
  next_worker_ = 0;
  std::fill(covered_.begin(), covered_.end(), 0);
  std::fill(arrived_.begin(), arrived_.end(), 0);
  for (auto& r : ranges_) r.clear();
  pulls_.AnswerReady();
  // Pushes that arrived early for this step join it now.
  std::vector<HeldPtr> later;
  std::vector<HeldPtr> now;
  for (auto& f : future_) (f->h().step() == c_.version ? now : later).push_back(std::move(f));
  future_ = std::move(later);
  for (auto& f : now) {
    if (Claim(*f)) parked_[f->worker].push_back(std::move(f));
  }
  float* accum = accum_;
  accum_ = nullptr;
  host_.ReleaseAccumulator(accum);  // may Advance() a chunk waiting for an accumulator
}

Clock::time_point BspChunk::Expire(Clock::time_point now) {
  const std::string me = host_.Self();
  const std::string missing = FormatRanks(MissingWorkers());
  // Pulls waiting for a step that is not complete.
  Clock::time_point next = pulls_.Expire(now, Clock::time_point::max(), "step", me, [&](const HeldRequest&) {
    return "step " + std::to_string(c_.version) + " is missing pushes from worker ranks " + missing;
  });
  // Pushes parked behind lower-ranked workers.
  for (int w = 0; w < limits_.num_workers; ++w) {
    next = ExpireHeld(parked_[w], now, next, [&](HeldRequest& p) {
      Unclaim(p);
      host_.Refuse(p, DeadlineExceeded(HeldText("push", "step", p, now, me) + host_.Describe(c_) +
                                       " is missing pushes from worker ranks " + missing + " (summed in worker-rank order)"));
    });
  }
  // Pushes for future steps.
  return ExpireHeld(future_, now, next, [&](HeldRequest& p) {
    host_.Refuse(p, DeadlineExceeded(HeldText("push", "step", p, now, me) + host_.Describe(c_) +
                                     " is missing pushes from worker ranks " + missing));
  });
}

}  // namespace

const ConsistencyPolicy& BspPolicy() {
  static const PolicyOf<BspChunk, /*kSumsStayBsp=*/false> bsp(kBspConsistency);
  return bsp;
}

}  // namespace shardps::ps
