// The bounded-staleness policy ("ssp", staleness s = ServerOptions::staleness), per chunk:
//  * A push carries the worker's step t. Pushes for a step below the chunk's version are refused
//    as stale. Pushes for a step in the window [version, version + s] are received at once, each
//    worker's values of each step into a chunk-sized buffer of that step (a worker covers every
//    key of the chunk once per step, in one push or several disjoint ones; an overlapping one is
//    refused as a duplicate). Pushes further ahead are parked unreceived until the window reaches
//    them. Pushes held for steps above the version (received or parked) are bounded by
//    max_future_pushes_per_chunk; more are refused.
//  * When every worker has covered step `version`, its buffers are summed in worker-rank order
//    (worker 0's values, plus worker 1's, plus ...: the same additions in the same order as
//    "bsp"), the optimizer runs once (after any pull reply still reading the weights has left)
//    and the chunk moves to version + 1; the next step is applied at once if it is complete too.
//  * A pull for version v, and the weights part of a PUSH_PULL of step t (v = t + 1, answered only
//    after its own values are received), is answered as soon as the chunk's version is >= v - s,
//    with the weights as they are then; the reply's step field carries the version it holds.
// A worker at clock c therefore reads weights that every worker's pushes up to step c - s - 1
// went into: no read sees a peer more than s steps behind. With s = 0 the weights are the bits
// "bsp" gives. Memory: beyond the weights and their state, at most (s + 1) x workers chunk-sized
// buffers per chunk while steps are in flight.
// Tables whose optimizer is "sum" are reductions (the trainer's metrics and sample counts), which
// every reader needs complete: they stay bulk synchronous under this policy.
#include <map>

#include "shardps/base/cluster.h"
#include "shardps/base/optimizer.h"
#include "shardps/ps/consistency.h"
#include "policies.h"

namespace shardps::ps {

namespace {

class SspChunk final : public ChunkSync {
 public:
  SspChunk(Chunk& chunk, PolicyHost& host, const SyncLimits& limits)
      : c_(chunk),
        host_(host),
        limits_(limits),
        s_(limits.staleness),
        pulls_(chunk, host, limits, /*lag=*/s_),
        buffers_(static_cast<size_t>(limits.num_workers) * 2) {}  // reused up to twice the workers

  void OnPush(HeldPtr held) override {
    const wire::Header& h = held->h();
    const uint64_t t = h.step();
    if (t < c_.version) return host_.Refuse(*held, StalePush(*held, c_, host_));
    if (t > c_.version && Ahead() >= limits_.max_future_pushes_per_chunk) {
      return host_.Refuse(*held, ResourceExhausted("push for step " + std::to_string(t) + " to " + host_.Describe(c_) +
                                                   ": too many pushes for future steps are already held (staleness " +
                                                   std::to_string(s_) + ")"));
    }
    if (t > c_.version + s_) {
      host_.WakeAt(held->deadline);
      future_.push_back(std::move(held));
      return;
    }
    Accept(std::move(held));
  }

  // The pull rule: version >= wanted - s.
  void OnPull(HeldPtr held) override { pulls_.OnPull(std::move(held)); }

  void OnWeightsFree() override {
    if (apply_pending_) Advance();
  }

  void OnBufferFree() override {}  // this policy keeps its own buffers

  Clock::time_point Expire(Clock::time_point now) override;

  std::vector<int> MissingWorkers() const override {
    std::vector<int> missing;
    auto it = steps_.find(c_.version);
    for (int w = 0; w < limits_.num_workers; ++w) {
      if (it == steps_.end() || it->second.by_worker[w].arrived < c_.info.size()) missing.push_back(host_.WorkerRank(w));
    }
    return missing;
  }

 private:
  // One worker's values for one step.
  struct Contribution {
    std::vector<float> values;  // chunk-sized once its first piece is accepted
    KeyRanges ranges;  // pieces accepted
    uint64_t covered = 0;  // elements received
    uint64_t arrived = 0;  // elements pushed, even if later refused (errors name who never sent)
  };
  struct Step {
    explicit Step(int workers) : by_worker(workers) {}
    std::vector<Contribution> by_worker;
    int receiving = 0;  // payloads of this step being received
    size_t pieces = 0;  // pieces accepted
  };

  // Pushes held for steps above the version.
  size_t Ahead() const {
    size_t n = future_.size();
    for (auto it = steps_.upper_bound(c_.version); it != steps_.end(); ++it) n += it->second.pieces;
    return n;
  }
  Step& StepOf(uint64_t t) { return steps_.try_emplace(t, limits_.num_workers).first->second; }
  void Accept(HeldPtr held);
  void Unclaim(const HeldRequest& held);
  void OnPayload(const HeldPtr& held, Status st);
  void Advance();

  Chunk& c_;
  PolicyHost& host_;
  const SyncLimits limits_;
  const uint64_t s_;
  HeldPulls pulls_;  // waiting for version >= step - s

  std::map<uint64_t, Step> steps_;  // steps in [version, version + s] with pushes accepted
  std::vector<HeldPtr> future_;     // pushes beyond the window, unreceived
  SpareBuffers buffers_;
  bool apply_pending_ = false;      // complete, waiting for pull replies to leave the weights
};

void SspChunk::Accept(HeldPtr held) {
  const wire::Header& h = held->h();
  Step& step = StepOf(h.step());
  Contribution& mine = step.by_worker[held->worker];
  if (!ClaimKeys(*held, mine.ranges, c_, host_)) return;
  mine.arrived += held->keys();
  ++step.pieces;
  ++step.receiving;
  Status s = ReceivePiece(held, mine.values, buffers_, c_, host_, [this, held](Status st) { OnPayload(held, std::move(st)); });
  if (!s.ok()) {
    --step.receiving;
    Unclaim(*held);
    host_.Refuse(*held, s);
  }
}

void SspChunk::Unclaim(const HeldRequest& held) {
  auto it = steps_.find(held.h().step());
  if (it == steps_.end()) return;
  if (UnclaimKeys(held, it->second.by_worker[held.worker].ranges)) --it->second.pieces;
}

void SspChunk::OnPayload(const HeldPtr& held, Status st) {
  const wire::Header& h = held->h();
  Step& step = steps_.at(h.step());  // not applied while one of its payloads is being received
  --step.receiving;
  if (!st.ok()) {
    // The worker may push these keys again for this step.
    Unclaim(*held);
    host_.Refuse(*held, st.WithContext("push to " + host_.Describe(c_)));
    return;
  }
  step.by_worker[held->worker].covered += held->keys();
  Advance();  // this piece may complete the current step (and later ones)
  if (h.op() == wire::PUSH) {
    host_.Acknowledge(*held);
    return;
  }
  // PUSH_PULL: answered with the weights after its step, within the staleness.
  HeldPtr pull = PullPartOf(*held);
  if (pulls_.Ready(h.step() + 1)) {
    host_.SendWeights(c_, *pull);
  } else {
    host_.WakeAt(pull->deadline);
    pulls_.Hold(std::move(pull));
  }
}

// Applies the current step while it is complete, then answers the pulls it makes ready and
// starts receiving the parked pushes the window now reaches.
void SspChunk::Advance() {
  const uint64_t size = c_.info.size();
  for (;;) {
    auto it = steps_.find(c_.version);
    if (it == steps_.end() || it->second.receiving > 0) return;
    Step& step = it->second;
    for (const Contribution& k : step.by_worker) {
      if (k.covered != size) return;
    }
    if (c_.inflight_sends > 0) {
      apply_pending_ = true;  // a pull reply is still reading the weights
      return;
    }
    apply_pending_ = false;
    // Worker 0's values start the sum; the others are added in worker-rank order.
    std::vector<float>& sum = step.by_worker[0].values;
    for (int w = 1; w < limits_.num_workers; ++w) AddInto(sum, step.by_worker[w].values);
    host_.ApplyUpdate(c_, sum);
    for (Contribution& k : step.by_worker) buffers_.Give(std::move(k.values));
    steps_.erase(it);
    pulls_.AnswerReady();
    std::vector<HeldPtr> later;
    std::vector<HeldPtr> now;
    for (auto& f : future_) (f->h().step() <= c_.version + s_ ? now : later).push_back(std::move(f));
    future_ = std::move(later);
    for (auto& f : now) Accept(std::move(f));
  }
}

Clock::time_point SspChunk::Expire(Clock::time_point now) {
  const std::string me = host_.Self();
  const std::string missing = FormatRanks(MissingWorkers());
  const Clock::time_point next = pulls_.Expire(now, Clock::time_point::max(), "step", me, [&](const HeldRequest& p) {
    const uint64_t v = p.h().step();
    return "it needs version " + std::to_string(v > s_ ? v - s_ : 0) + " (staleness " + std::to_string(s_) + "), but step " +
           std::to_string(c_.version) + " is missing pushes from worker ranks " + missing;
  });
  return ExpireHeld(future_, now, next, [&](HeldRequest& p) {
    host_.Refuse(p, DeadlineExceeded(HeldText("push", "step", p, now, me) + "it is more than " + std::to_string(s_) +
                                     " steps ahead of " + host_.Describe(c_) + ", which is missing pushes from worker ranks " +
                                     missing));
  });
}

}  // namespace

const ConsistencyPolicy& SspPolicy() {
  static const PolicyOf<SspChunk, /*kSumsStayBsp=*/true> ssp(kSspConsistency);
  return ssp;
}

}  // namespace shardps::ps
