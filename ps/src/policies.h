// The consistency policies built into ps/, each defined in its own file and listed in the
// registry (consistency.cc).
#pragma once

#include "shardps/ps/consistency.h"

namespace shardps::ps {

const ConsistencyPolicy& BspPolicy();  // bsp_policy.cc
const ConsistencyPolicy& SspPolicy();  // ssp_policy.cc
const ConsistencyPolicy& AspPolicy();  // asp_policy.cc

}  // namespace shardps::ps
