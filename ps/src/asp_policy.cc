// The asynchronous policy ("asp"), per chunk:
//  * Every push is received when it arrives, into a chunk-sized buffer for its worker and step. A
//    worker covers the chunk in one push or several disjoint ones (an overlapping one is refused
//    as a duplicate); once it has, the optimizer runs once with that worker's values alone (after
//    any pull reply still reading the weights has left), in the order contributions complete;
//    contributions completed meanwhile are applied one after the other before any reply is sent. The
//    chunk's version counts these updates: W workers pushing for T steps make W x T of them.
//  * A push for a step at or below the highest one of that worker already applied is refused as
//    stale (unless that step's contribution is still open). Pieces held (received, waiting for the rest of their worker's step) are bounded by
//    max_future_pushes_per_chunk.
//  * A PUSH is acknowledged once received; a PUSH_PULL is answered after its own update (and any
//    applied with it), with the weights as they are then (the reply's step field carries the
//    version). A pull for
//    version v is answered as soon as the chunk has applied v updates (v = 0: at once) with the
//    current weights.
// Not deterministic: the order of the updates is the order in which the workers' pushes arrive.
// Tables whose optimizer is "sum" are reductions (the trainer's metrics and sample counts), which
// every reader needs complete: they stay bulk synchronous under this policy.
#include <algorithm>
#include <deque>
#include <map>
#include <optional>

#include "shardps/base/cluster.h"
#include "shardps/base/optimizer.h"
#include "shardps/ps/consistency.h"
#include "policies.h"

namespace shardps::ps {

namespace {

class AspChunk final : public ChunkSync {
 public:
  AspChunk(Chunk& chunk, PolicyHost& host, const SyncLimits& limits)
      : c_(chunk),
        host_(host),
        limits_(limits),
        open_(limits.num_workers),
        applied_(limits.num_workers),
        pulls_(chunk, host, limits, /*lag=*/0),
        buffers_(static_cast<size_t>(limits.num_workers)) {}

  void OnPush(HeldPtr held) override;

  // A pull for version v is answered once the chunk has applied v updates.
  void OnPull(HeldPtr held) override { pulls_.OnPull(std::move(held)); }

  void OnWeightsFree() override { Drain(); }
  void OnBufferFree() override {}  // this policy keeps its own buffers
  Clock::time_point Expire(Clock::time_point now) override;
  // No update waits for another worker.
  std::vector<int> MissingWorkers() const override { return {}; }

 private:
  // One worker's values for one step, until they cover the chunk.
  struct Contribution {
    std::vector<float> values;
    KeyRanges ranges;
    uint64_t covered = 0;
    int receiving = 0;
    std::vector<HeldPtr> replies;  // PUSH_PULL pieces, answered after the update
  };
  using Key = std::pair<int, uint64_t>;  // worker, step

  size_t Held() const {
    size_t n = 0;
    for (const auto& steps : open_) for (const auto& [t, k] : steps) n += k.ranges.size();
    return n;
  }
  void OnPayload(const HeldPtr& held, Status st);
  void Drain();

  Chunk& c_;
  PolicyHost& host_;
  const SyncLimits limits_;
  std::vector<std::map<uint64_t, Contribution>> open_;  // by worker, by step
  std::vector<std::optional<uint64_t>> applied_;  // by worker: the highest step applied
  std::deque<Key> complete_;                    // waiting for the weights to be free
  HeldPulls pulls_;                             // waiting for version >= step
  SpareBuffers buffers_;
};

void AspChunk::OnPush(HeldPtr held) {
  const wire::Header& h = held->h();
  const int w = held->worker;
  const uint64_t t = h.step();
  auto open = open_[w].find(t);
  if (open == open_[w].end()) {
    if (applied_[w] && t < *applied_[w] + 1) {
      return host_.Refuse(*held, FailedPrecondition("push for step " + std::to_string(t) + " to " + host_.Describe(c_) +
                                                    " from worker rank " + std::to_string(held->in.source) +
                                                    ": its contribution to that step was already applied (stale push)"));
    }
  }
  if (Held() >= limits_.max_future_pushes_per_chunk) {
    return host_.Refuse(*held, ResourceExhausted("push for step " + std::to_string(t) + " to " + host_.Describe(c_) +
                                                 ": too many partial pushes are already held"));
  }
  Contribution& k = open == open_[w].end() ? open_[w][t] : open->second;
  if (!ClaimKeys(*held, k.ranges, c_, host_)) return;
  ++k.receiving;
  Status s = ReceivePiece(held, k.values, buffers_, c_, host_, [this, held](Status st) { OnPayload(held, std::move(st)); });
  if (!s.ok()) {
    --k.receiving;
    k.ranges.pop_back();
    host_.Refuse(*held, s);
  }
}

void AspChunk::OnPayload(const HeldPtr& held, Status st) {
  const wire::Header& h = held->h();
  const Key key{held->worker, h.step()};
  Contribution& k = open_[key.first].at(key.second);  // kept while a payload is being received
  --k.receiving;
  if (!st.ok()) {
    UnclaimKeys(*held, k.ranges);
    host_.Refuse(*held, st.WithContext("push to " + host_.Describe(c_)));
    return;
  }
  k.covered += held->keys();
  if (h.op() == wire::PUSH) {
    host_.Acknowledge(*held);
  } else {
    k.replies.push_back(held);
  }
  if (k.covered == c_.info.size() && k.receiving == 0) {
    complete_.push_back(key);
    Drain();
  } else if (h.op() == wire::PUSH_PULL) {
    host_.WakeAt(held->deadline);
  }
}

// Applies the complete contributions, one update each, while no reply reads the weights; then
// answers their push-pulls (and the pulls now satisfied) with the weights after all of them.
void AspChunk::Drain() {
  if (complete_.empty() || c_.inflight_sends > 0) return;
  std::vector<HeldPtr> replies;
  while (!complete_.empty()) {
    const auto [w, t] = complete_.front();
    complete_.pop_front();
    auto it = open_[w].find(t);
    Contribution k = std::move(it->second);
    open_[w].erase(it);
    host_.ApplyUpdate(c_, k.values);
    applied_[w] = std::max(applied_[w].value_or(0), t);
    buffers_.Give(std::move(k.values));
    for (HeldPtr& r : k.replies) replies.push_back(std::move(r));
  }
  for (const HeldPtr& r : replies) host_.SendWeights(c_, *r);
  pulls_.AnswerReady();
}

Clock::time_point AspChunk::Expire(Clock::time_point now) {
  const std::string me = host_.Self();
  Clock::time_point next = pulls_.Expire(now, Clock::time_point::max(), "version", me, [&](const HeldRequest&) {
    return host_.Describe(c_) + " has applied " + std::to_string(c_.version) + " updates";
  });
  // A worker's step that never covers the chunk: its push-pulls are refused at their deadline
  // and the partial contribution is dropped.
  for (int w = 0; w < limits_.num_workers; ++w) {
    for (auto it = open_[w].begin(); it != open_[w].end();) {
      Contribution& k = it->second;
      bool expired = false;
      for (const HeldPtr& r : k.replies) {
        if (r->deadline <= now) expired = true;
        else next = std::min(next, r->deadline);
      }
      const bool queued = std::find(complete_.begin(), complete_.end(), Key{w, it->first}) != complete_.end();
      if (!expired || k.receiving > 0 || queued) {
        ++it;
        continue;
      }
      for (const HeldPtr& r : k.replies) {
        host_.Refuse(*r, DeadlineExceeded(HeldText("push-pull", "step", *r, now, me) + "worker rank " +
                                          std::to_string(host_.WorkerRank(w)) + " pushed only " + std::to_string(k.covered) +
                                          " of the " + std::to_string(c_.info.size()) + " keys of " + host_.Describe(c_) +
                                          " for that step (asp applies a worker's values once they cover the chunk)"));
      }
      it = open_[w].erase(it);
    }
  }
  return next;
}

}  // namespace

const ConsistencyPolicy& AspPolicy() {
  static const PolicyOf<AspChunk, /*kSumsStayBsp=*/true> asp(kAspConsistency);
  return asp;
}

}  // namespace shardps::ps
