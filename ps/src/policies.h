// The consistency policies built into ps/, each defined in its own file and listed in the
// registry (consistency.cc).
#pragma once

#include <utility>
#include <vector>

#include "shardps/ps/consistency.h"

namespace shardps::ps {

const ConsistencyPolicy& BspPolicy();  // bsp_policy.cc
const ConsistencyPolicy& SspPolicy();  // ssp_policy.cc
const ConsistencyPolicy& AspPolicy();  // asp_policy.cc

// Answers, in arrival order, the held pulls for which `ready(version wanted)` holds, with the
// chunk's weights as they are now; the others stay held.
template <typename Ready>
void AnswerReadyPulls(std::vector<HeldPtr>& pulls, Ready ready, Chunk& chunk, PolicyHost& host) {
  std::vector<HeldPtr> still;
  std::vector<HeldPtr> now;
  for (auto& p : pulls) (ready(p->h().step()) ? now : still).push_back(std::move(p));
  pulls = std::move(still);
  for (auto& p : now) host.SendWeights(chunk, *p);
}

}  // namespace shardps::ps
