// L2 clipping (clip.h).
#include "shardps/privacy/clip.h"

#include <cmath>
#include <cstdio>
#include <string>

namespace shardps::privacy {
namespace {

std::string FormatFloat(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

}  // namespace

double L2Norm(std::span<const float> values) {
  double sum = 0.0;
  for (float v : values) sum += static_cast<double>(v) * static_cast<double>(v);
  return std::sqrt(sum);
}

Result<double> ClipL2(std::span<float> update, float max_norm) {
  if (!std::isfinite(max_norm) || max_norm <= 0.0f) {
    return InvalidArgument("clip norm S must be a finite value > 0, got " + FormatFloat(max_norm));
  }
  for (size_t i = 0; i < update.size(); ++i) {
    if (!std::isfinite(update[i])) {
      return InvalidArgument("update to clip holds a non-finite value at index " + std::to_string(i));
    }
  }
  const double norm = L2Norm(update);
  const double bound = static_cast<double>(max_norm);
  if (norm <= bound) return norm;

  // Scale by S / norm in double and round each value to float once. Rounding can leave the new
  // norm a few ulps above S; then scale down by a relative 2^-22 (at least one float ulp for every
  // normal value, so each pass makes progress) until it is not. About half of the clips need one
  // extra pass; more are for inputs near the float range's edges, and the loop gives up rather
  // than run forever.
  const double scale = bound / norm;
  for (float& v : update) v = static_cast<float>(static_cast<double>(v) * scale);
  constexpr int kMaxExtraPasses = 64;
  for (int pass = 0; L2Norm(update) > bound; ++pass) {
    if (pass == kMaxExtraPasses) {
      return Internal("clipping could not bring the update's norm below S = " + FormatFloat(max_norm));
    }
    for (float& v : update) v = static_cast<float>(static_cast<double>(v) * (1.0 - 0x1p-22));
  }
  return norm;
}

}  // namespace shardps::privacy
