// L2 clipping of a client's model update, the first step of DP-FedAvg (McMahan, Ramage, Talwar,
// Zhang 2018, "Learning Differentially Private Recurrent Language Models"): every sampled client's
// update is scaled down to L2 norm at most S before the server sums the updates, so that adding or
// removing one client changes the sum by at most S (the sensitivity the Gaussian noise of
// gaussian.h is calibrated to: standard deviation z x S).
//
//   std::vector<float> update = ...;   // w_client - w_global, all tables concatenated
//   SHARDPS_ASSIGN_OR_RETURN(double norm, privacy::ClipL2(update, /*S=*/1.0f));
//   // norm: the L2 norm before clipping (for logging or adaptive clipping); update has norm <= S.
//
// The norm is accumulated in double, in index order, so the same update gives the same norm and
// the same clipped floats on every run. After scaling, the clipped update's norm (again computed
// in double) is at most S: when rounding the scaled floats pushes it a few ulps above S, the
// values are scaled down once more by a relative 2^-22 until it is not, so the sensitivity bound
// holds exactly rather than up to rounding.
// Thread safety: a pure function of its arguments; the caller owns the span.
#pragma once

#include <span>

#include "shardps/base/status.h"

namespace shardps::privacy {

// Returns the L2 norm of `update` before clipping. When it is above `max_norm`, scales `update`
// in place so that its norm is `max_norm` (within float rounding, never above); otherwise leaves
// every value untouched (bit for bit). An empty update has norm 0.
// INVALID_ARGUMENT (update untouched) when max_norm is not a finite value > 0, or when the update
// holds a NaN or an infinity (a client's update comes from outside: it is refused, not clipped).
// INTERNAL in the pathological case that rounding keeps the norm above a tiny S (values and S
// near the subnormal range); the update is then scaled but not guaranteed below S.
Result<double> ClipL2(std::span<float> update, float max_norm);

// The L2 norm of `values`, accumulated in double in index order (what ClipL2 compares with S).
double L2Norm(std::span<const float> values);

}  // namespace shardps::privacy
