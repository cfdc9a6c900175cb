#include "policies.h"

#include <chrono>

namespace shardps::ps {

namespace {

int64_t Ms(Clock::duration d) { return std::chrono::duration_cast<std::chrono::milliseconds>(d).count(); }

std::string Range(const wire::Header& h) {
  return "[" + std::to_string(h.key_begin()) + "," + std::to_string(h.key_end()) + ")";
}

}  // namespace

std::string HeldText(std::string_view what, std::string_view unit, const HeldRequest& request, Clock::time_point now,
                     const std::string& self) {
  return std::string(what) + " for " + std::string(unit) + " " + std::to_string(request.h().step()) + " held " +
         std::to_string(Ms(now - request.arrived)) + " ms on " + self + ": ";
}

void HeldPulls::OnPull(HeldPtr pull) {
  if (Ready(pull->h().step())) {
    host_.SendWeights(c_, *pull);
    return;
  }
  if (pulls_.size() >= max_) {
    return host_.Refuse(*pull, ResourceExhausted("too many pulls waiting on " + host_.Describe(c_)));
  }
  host_.WakeAt(pull->deadline);
  pulls_.push_back(std::move(pull));
}

void HeldPulls::AnswerReady() {
  std::vector<HeldPtr> still;
  std::vector<HeldPtr> now;
  for (auto& p : pulls_) (Ready(p->h().step()) ? now : still).push_back(std::move(p));
  pulls_ = std::move(still);
  for (auto& p : now) host_.SendWeights(c_, *p);
}

void HeldPulls::RefuseExpired(HeldRequest& pull, Clock::time_point now, std::string_view unit, const std::string& self,
                              const std::string& why) {
  const std::string what = OpName(pull.h().op()) + " of table '" + c_.spec->name + "' " + Range(pull.h());
  host_.Refuse(pull, DeadlineExceeded(HeldText(what, unit, pull, now, self) + why));
}

bool ClaimKeys(HeldRequest& push, KeyRanges& ranges, const Chunk& chunk, PolicyHost& host) {
  const wire::Header& h = push.h();
  for (const auto& [b, e] : ranges) {
    if (h.key_begin() < e && b < h.key_end()) {
      host.Refuse(push, FailedPrecondition("push for step " + std::to_string(h.step()) + " to " + host.Describe(chunk) +
                                           " from worker rank " + std::to_string(push.in.source) + " overlaps keys [" +
                                           std::to_string(b) + "," + std::to_string(e) +
                                           ") it already pushed for this step (duplicate push)"));
      return false;
    }
  }
  ranges.emplace_back(h.key_begin(), h.key_end());
  return true;
}

bool UnclaimKeys(const HeldRequest& push, KeyRanges& ranges) {
  auto it = std::find(ranges.begin(), ranges.end(), std::make_pair(push.h().key_begin(), push.h().key_end()));
  if (it == ranges.end()) return false;
  ranges.erase(it);
  return true;
}

std::vector<float> SpareBuffers::Take(uint64_t size) {
  if (free_.empty()) return std::vector<float>(size);
  std::vector<float> b = std::move(free_.back());
  free_.pop_back();
  return b;
}

Status ReceivePiece(const HeldPtr& push, std::vector<float>& values, SpareBuffers& pool, const Chunk& chunk, PolicyHost& host,
                    std::function<void(Status)> done) {
  if (values.empty()) values = pool.Take(chunk.info.size());
  const uint64_t off = push->h().key_begin() - chunk.info.begin;
  return host.ReceivePayload(push, std::span<float>(values.data() + off, push->keys()), std::move(done));
}

Status StalePush(const HeldRequest& push, const Chunk& chunk, const PolicyHost& host) {
  return FailedPrecondition("push for step " + std::to_string(push.h().step()) + " to " + host.Describe(chunk) +
                            ", which has already applied that step (stale push)");
}

HeldPtr PullPartOf(const HeldRequest& push_pull) {
  auto pull = std::make_shared<HeldRequest>();
  pull->in.source = push_pull.in.source;
  pull->frame.header = push_pull.h();
  pull->frame.header.set_step(push_pull.h().step() + 1);
  pull->arrived = push_pull.arrived;
  pull->deadline = push_pull.deadline;
  pull->worker = push_pull.worker;
  return pull;
}

}  // namespace shardps::ps
