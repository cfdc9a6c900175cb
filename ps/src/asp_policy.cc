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

int64_t Ms(Clock::duration d) { return std::chrono::duration_cast<std::chrono::milliseconds>(d).count(); }

std::string Range(const wire::Header& h) {
  return "[" + std::to_string(h.key_begin()) + "," + std::to_string(h.key_end()) + ")";
}

class AspChunk final : public ChunkSync {
 public:
  AspChunk(Chunk& chunk, PolicyHost& host, const SyncLimits& limits)
      : c_(chunk), host_(host), limits_(limits), open_(limits.num_workers), applied_(limits.num_workers) {}

  void OnPush(HeldPtr held) override;

  void OnPull(HeldPtr held) override {
    if (held->h().step() <= c_.version) {
      host_.SendWeights(c_, *held);
      return;
    }
    if (pulls_.size() >= limits_.max_waiting_pulls_per_chunk) {
      return host_.Refuse(*held, ResourceExhausted("too many pulls waiting on " + host_.Describe(c_)));
    }
    host_.WakeAt(held->deadline);
    pulls_.push_back(std::move(held));
  }

  void OnWeightsFree() override { Drain(); }
  void OnBufferFree() override {}  // this policy keeps its own buffers
  Clock::time_point Expire(Clock::time_point now) override;
  // No update waits for another worker.
  std::vector<int> MissingWorkers() const override { return {}; }

 private:
  // One worker's values for one step, until they cover the chunk.
  struct Contribution {
    std::vector<float> values;
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
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
  std::vector<HeldPtr> pulls_;
  std::vector<std::vector<float>> free_;
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
  for (const auto& [b, e] : k.ranges) {
    if (h.key_begin() < e && b < h.key_end()) {
      return host_.Refuse(*held, FailedPrecondition("push for step " + std::to_string(t) + " to " + host_.Describe(c_) +
                                                    " from worker rank " + std::to_string(held->in.source) + " overlaps keys [" +
                                                    std::to_string(b) + "," + std::to_string(e) +
                                                    ") it already pushed for this step (duplicate push)"));
    }
  }
  k.ranges.emplace_back(h.key_begin(), h.key_end());
  if (k.values.empty()) {
    if (free_.empty()) {
      k.values.resize(c_.info.size());
    } else {
      k.values = std::move(free_.back());
      free_.pop_back();
    }
  }
  const uint64_t off = h.key_begin() - c_.info.begin;
  ++k.receiving;
  Status s = host_.ReceivePayload(held, std::span<float>(k.values.data() + off, held->keys()),
                                  [this, held](Status st) { OnPayload(held, std::move(st)); });
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
    auto r = std::find(k.ranges.begin(), k.ranges.end(), std::make_pair(h.key_begin(), h.key_end()));
    if (r != k.ranges.end()) k.ranges.erase(r);
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
    if (free_.size() < static_cast<size_t>(limits_.num_workers)) free_.push_back(std::move(k.values));
    for (HeldPtr& r : k.replies) replies.push_back(std::move(r));
  }
  for (const HeldPtr& r : replies) host_.SendWeights(c_, *r);
  std::vector<HeldPtr> still;
  for (auto& p : pulls_) {
    if (p->h().step() <= c_.version) {
      host_.SendWeights(c_, *p);
    } else {
      still.push_back(std::move(p));
    }
  }
  pulls_ = std::move(still);
}

Clock::time_point AspChunk::Expire(Clock::time_point now) {
  Clock::time_point next = Clock::time_point::max();
  const std::string me = host_.Self();
  std::vector<HeldPtr> keep;
  for (auto& p : pulls_) {
    if (p->deadline > now) {
      next = std::min(next, p->deadline);
      keep.push_back(std::move(p));
      continue;
    }
    host_.Refuse(*p, DeadlineExceeded(OpName(p->h().op()) + " of table '" + c_.spec->name + "' " + Range(p->h()) +
                                      " for version " + std::to_string(p->h().step()) + " held " +
                                      std::to_string(Ms(now - p->arrived)) + " ms on " + me + ": " + host_.Describe(c_) +
                                      " has applied " + std::to_string(c_.version) + " updates"));
  }
  pulls_ = std::move(keep);
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
        host_.Refuse(*r, DeadlineExceeded("push-pull for step " + std::to_string(it->first) + " held " +
                                          std::to_string(Ms(now - r->arrived)) + " ms on " + me + ": worker rank " +
                                          std::to_string(host_.WorkerRank(w)) + " pushed only " + std::to_string(k.covered) +
                                          " of the " + std::to_string(c_.info.size()) + " keys of " + host_.Describe(c_) +
                                          " for that step (asp applies a worker's values once they cover the chunk)"));
      }
      it = open_[w].erase(it);
    }
  }
  return next;
}

class Asp final : public ConsistencyPolicy {
 public:
  std::string_view name() const override { return kAspConsistency; }
  std::unique_ptr<ChunkSync> ForChunk(Chunk& chunk, PolicyHost& host, const SyncLimits& limits) const override {
    if (chunk.spec->optimizer.kind == OptimizerKind::kSum) return BspPolicy().ForChunk(chunk, host, limits);
    return std::make_unique<AspChunk>(chunk, host, limits);
  }
};

}  // namespace

const ConsistencyPolicy& AspPolicy() {
  static const Asp asp;
  return asp;
}

}  // namespace shardps::ps
