// The consistency policies built into ps/, each defined in its own file and listed in the
// registry (consistency.cc), and what they share (policies.cc): the held pulls, the expiry of held
// requests at their deadlines, the key ranges a worker claimed for a step, and the error texts
// that read the same under every policy.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shardps/base/optimizer.h"
#include "shardps/ps/consistency.h"

namespace shardps::ps {

const ConsistencyPolicy& BspPolicy();  // bsp_policy.cc
const ConsistencyPolicy& SspPolicy();  // ssp_policy.cc
const ConsistencyPolicy& AspPolicy();  // asp_policy.cc

// A policy called `name` whose chunks are decided by `Sync`s (made from the chunk, the host and
// the limits). With kSumsStayBsp, tables whose optimizer is "sum" are reductions (the trainer's
// metrics and sample counts), which every reader needs complete: their chunks get "bsp"'s.
template <typename Sync, bool kSumsStayBsp>
class PolicyOf final : public ConsistencyPolicy {
 public:
  explicit PolicyOf(std::string_view name) : name_(name) {}
  std::string_view name() const override { return name_; }
  std::unique_ptr<ChunkSync> ForChunk(Chunk& chunk, PolicyHost& host, const SyncLimits& limits) const override {
    if (kSumsStayBsp && chunk.spec->optimizer.kind == OptimizerKind::kSum) return BspPolicy().ForChunk(chunk, host, limits);
    return std::make_unique<Sync>(chunk, host, limits);
  }

 private:
  std::string_view name_;
};

// Keeps, in order, the requests of `held` whose deadline is after `now`; calls `expired` (which
// refuses it) on each of the others, in order. Returns the earliest of `next` and the deadlines kept.
template <typename Expired>
Clock::time_point ExpireHeld(std::vector<HeldPtr>& held, Clock::time_point now, Clock::time_point next, Expired expired) {
  std::vector<HeldPtr> keep;
  for (auto& p : held) {
    if (p->deadline > now) {
      next = std::min(next, p->deadline);
      keep.push_back(std::move(p));
      continue;
    }
    expired(*p);
  }
  held = std::move(keep);
  return next;
}

// "push for step 7 held 300 ms on server rank 0: ", the start of the text a held request is
// refused with at its deadline: `what`, then `unit` and the request's step field, how long it was
// held by `now` and on which server (`self`, PolicyHost::Self()).
std::string HeldText(std::string_view what, std::string_view unit, const HeldRequest& request, Clock::time_point now,
                     const std::string& self);

// The pulls of one chunk held until its weights are recent enough for them, in arrival order. A
// pull for version v is ready when the chunk's version is >= v - lag (bsp and asp: lag 0; ssp: the
// staleness).
class HeldPulls {
 public:
  HeldPulls(Chunk& chunk, PolicyHost& host, const SyncLimits& limits, uint64_t lag)
      : c_(chunk), host_(host), max_(limits.max_waiting_pulls_per_chunk), lag_(lag) {}

  bool Ready(uint64_t wanted) const { return wanted <= c_.version + lag_; }
  // A pull: answered now if it is ready; else held until its deadline, or refused when the limit
  // (max_waiting_pulls_per_chunk) is held already.
  void OnPull(HeldPtr pull);
  // Holds `pull` without the limit (the pull part of a PUSH_PULL whose push was counted); the
  // caller has asked for a wake-up at its deadline.
  void Hold(HeldPtr pull) { pulls_.push_back(std::move(pull)); }
  // Answers, in arrival order, the held pulls now ready, with the chunk's weights as they are
  // now; the others stay held.
  void AnswerReady();
  // Refuses, in order, the held pulls whose deadline is <= now with DEADLINE_EXCEEDED: "PULL of
  // table 'w' [0,64) for <unit> 7 held 300 ms on server rank 0: " + why(pull). Returns the
  // earliest of `next` and the deadlines still held.
  template <typename Why>
  Clock::time_point Expire(Clock::time_point now, Clock::time_point next, std::string_view unit, const std::string& self,
                           Why why) {
    return ExpireHeld(pulls_, now, next, [&](HeldRequest& p) { RefuseExpired(p, now, unit, self, why(std::as_const(p))); });
  }

 private:
  void RefuseExpired(HeldRequest& pull, Clock::time_point now, std::string_view unit, const std::string& self,
                     const std::string& why);

  Chunk& c_;
  PolicyHost& host_;
  const size_t max_;
  const uint64_t lag_;
  std::vector<HeldPtr> pulls_;
};

// The pieces (key ranges) a worker pushed for one step.
using KeyRanges = std::vector<std::pair<uint64_t, uint64_t>>;
// Adds the keys of `push` to `ranges`; if they overlap a piece already there, refuses it as a
// duplicate instead and returns false.
bool ClaimKeys(HeldRequest& push, KeyRanges& ranges, const Chunk& chunk, PolicyHost& host);
// Removes the piece of `push` from `ranges` (its keys may be pushed again); false if not there.
bool UnclaimKeys(const HeldRequest& push, KeyRanges& ranges);

// The chunk-sized buffers a policy receives pushes into (ssp, asp: one a worker and step), reused:
// up to `keep` given back are kept for the next ones.
class SpareBuffers {
 public:
  explicit SpareBuffers(size_t keep) : keep_(keep) {}
  // A kept buffer (its old values), or a new one of `size` zeros.
  std::vector<float> Take(uint64_t size);
  void Give(std::vector<float> buffer) {
    if (free_.size() < keep_) free_.push_back(std::move(buffer));
  }

 private:
  const size_t keep_;
  std::vector<std::vector<float>> free_;
};
// Receives the payload of `push` into `values` (its worker's buffer for its step, taken from
// `pool` if still empty) at the place of its keys in the chunk; `done` and the result as in
// PolicyHost::ReceivePayload.
Status ReceivePiece(const HeldPtr& push, std::vector<float>& values, SpareBuffers& pool, const Chunk& chunk, PolicyHost& host,
                    std::function<void(Status)> done);

// The refusal of a push for a step the chunk has already applied (bsp, ssp).
Status StalePush(const HeldRequest& push, const Chunk& chunk, const PolicyHost& host);
// The pull part of a PUSH_PULL of step t: a pull for version t + 1 with the request's sender,
// header, arrival and deadline.
HeldPtr PullPartOf(const HeldRequest& push_pull);

}  // namespace shardps::ps
