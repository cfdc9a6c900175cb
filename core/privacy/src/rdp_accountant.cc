// RDP of the sampled Gaussian mechanism and its conversion to (epsilon, delta) (rdp_accountant.h,
// which states the formulas and cites the papers).
#include "shardps/privacy/rdp_accountant.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

namespace shardps::privacy {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kMaxOrder = 10000.0;

std::string Num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

// log(exp(a) + exp(b)), exact for -inf arguments.
double LogAdd(double a, double b) {
  if (a < b) std::swap(a, b);
  if (b == -kInf) return a;
  return a + std::log1p(std::exp(b - a));
}

// log(exp(a) - exp(b)) for a >= b; -inf when they are equal.
double LogSub(double a, double b) {
  if (b == -kInf) return a;
  if (b >= a) return -kInf;
  return a + std::log1p(-std::exp(b - a));
}

// log(1 + exp(l)) without overflow.
double Log1pExp(double l) { return l > 0.0 ? l + std::log1p(std::exp(-l)) : std::log1p(std::exp(l)); }

// log(expm1(c)) for c > 0, without overflow for large c.
double LogExpm1(double c) { return c > 1.0 ? c + std::log1p(-std::exp(-c)) : std::log(std::expm1(c)); }

// log(erfc(x)), accurate where erfc(x) underflows: past x = 25 (erfc(25) is about 8e-274) the
// asymptotic series erfc(x) = exp(-x^2) / (x sqrt(pi)) (1 - 1/(2x^2) + 3/(2x^2)^2 - 15/(2x^2)^3
// + ...), whose omitted terms are below 1e-15 relative there.
double LogErfc(double x) {
  if (x < 25.0) return std::log(std::erfc(x));
  const double t = 1.0 / (2.0 * x * x);
  const double series = 1.0 - t * (1.0 - 3.0 * t * (1.0 - 5.0 * t * (1.0 - 7.0 * t * (1.0 - 9.0 * t))));
  constexpr double kHalfLogPi = 0.57236494292470008707;
  return -x * x - std::log(x) - kHalfLogPi + std::log(series);
}

// log A_alpha for integer alpha >= 2 and 0 < q < 1 (header: 1 + a sum of positive terms). The log
// binomial coefficient is carried from k to k + 1 (log C(a, k+1) = log C(a, k) + log((a-k)/(k+1)))
// rather than taken from lgamma, whose sign output is a global.
double LogAInteger(double q, double z, int alpha) {
  const double log_q = std::log(q);
  const double log_1mq = std::log1p(-q);
  const double inv_2z2 = 1.0 / (2.0 * z * z);
  double log_binom = std::log(static_cast<double>(alpha));  // log C(alpha, 1)
  double log_sum = -kInf;                                   // log of sum_{k >= 2}
  for (int k = 2; k <= alpha; ++k) {
    log_binom += std::log(static_cast<double>(alpha - k + 1) / static_cast<double>(k));
    const double c = static_cast<double>(k) * static_cast<double>(k - 1) * inv_2z2;
    const double term = log_binom + k * log_q + (alpha - k) * log_1mq + LogExpm1(c);
    log_sum = LogAdd(log_sum, term);
  }
  return Log1pExp(log_sum);
}

// A signed sum kept as the logs of its positive and its negative part.
struct SignedLogSum {
  double log_pos = -kInf;
  double log_neg = -kInf;
  void Add(bool negative, double log_term) {
    double& part = negative ? log_neg : log_pos;
    part = LogAdd(part, log_term);
  }
  double Log() const { return LogSub(log_pos, log_neg); }  // the sums here are positive
};

// log A_alpha for fractional alpha > 1 and 0 < q < 1: MTZ 2019, Section 3.3. With
// z0 = z^2 log(1/q - 1) + 1/2 the integral of (mu/mu0)^alpha mu0 splits at z0; on each side the
// larger of the two terms of mu/mu0 is factored out and the binomial series in the ratio converges:
//   A0 = sum_i C(alpha, i) q^i (1-q)^(alpha-i) exp((i^2 - i)/(2z^2)) erfc((i - z0)/(sqrt2 z)) / 2
//   A1 = sum_i C(alpha, i) q^(alpha-i) (1-q)^i exp((j^2 - j)/(2z^2)) erfc((z0 - j)/(sqrt2 z)) / 2,
//        j = alpha - i.
// C(alpha, i) is carried with its sign from i to i + 1 (C(a, i+1) = C(a, i) (a - i)/(i + 1)); it is
// negative for odd i - ceil(alpha) > 0. Returns +inf when the terms overflow (z far too small to
// bound: conservative), INTERNAL when the series does not settle within kMaxTerms.
Result<double> LogAFractional(double q, double z, double alpha) {
  constexpr int kMaxTerms = 10'000'000;
  constexpr double kStopLog = -40.0;  // terms below e^-40 relative to A_alpha >= 1
  constexpr double kLogHalf = -0.69314718055994530942;
  const double log_q = std::log(q);
  const double log_1mq = std::log1p(-q);
  const double inv_2z2 = 1.0 / (2.0 * z * z);
  const double inv_sqrt2z = 1.0 / (std::sqrt(2.0) * z);
  const double z0 = z * z * (log_1mq - log_q) + 0.5;

  SignedLogSum a0, a1;
  double log_abs_binom = 0.0;  // C(alpha, 0) = 1
  bool negative = false;
  for (int i = 0; i < kMaxTerms; ++i) {
    const double di = static_cast<double>(i);
    const double j = alpha - di;
    const double log_s0 = log_abs_binom + di * log_q + j * log_1mq + (di * di - di) * inv_2z2 + kLogHalf +
                          LogErfc((di - z0) * inv_sqrt2z);
    const double log_s1 = log_abs_binom + j * log_q + di * log_1mq + (j * j - j) * inv_2z2 + kLogHalf +
                          LogErfc((z0 - j) * inv_sqrt2z);
    if (std::isnan(log_s0) || std::isnan(log_s1) || log_s0 == kInf || log_s1 == kInf) return kInf;
    a0.Add(negative, log_s0);
    a1.Add(negative, log_s1);
    if (di > alpha && std::max(log_s0, log_s1) < kStopLog) return LogAdd(a0.Log(), a1.Log());
    // Next coefficient: C(alpha, i+1) = C(alpha, i) (alpha - i) / (i + 1).
    const double ratio = (alpha - di) / (di + 1.0);
    log_abs_binom += std::log(std::fabs(ratio));
    if (ratio < 0.0) negative = !negative;
  }
  return Internal("RDP series for order " + Num(alpha) + " did not converge in " + std::to_string(kMaxTerms) +
                  " terms (q = " + Num(q) + ", z = " + Num(z) + ")");
}

Status CheckQ(double q) {
  if (!(q > 0.0 && q <= 1.0)) return InvalidArgument("sampling probability q must be in (0, 1], got " + Num(q));
  return Status::Ok();
}
Status CheckZ(double z) {
  if (!(std::isfinite(z) && z >= 0.0)) {
    return InvalidArgument("noise multiplier z must be finite and >= 0, got " + Num(z));
  }
  return Status::Ok();
}
Status CheckOrder(double order) {
  if (!(order > 1.0 && order <= kMaxOrder)) {
    return InvalidArgument("RDP order must be in (1, " + Num(kMaxOrder) + "], got " + Num(order));
  }
  return Status::Ok();
}
Status CheckDelta(double delta) {
  if (!(delta > 0.0 && delta < 1.0)) return InvalidArgument("delta must be in (0, 1), got " + Num(delta));
  return Status::Ok();
}

Status CheckRdpInputs(std::span<const double> orders, std::span<const double> rdp, double delta) {
  SHARDPS_RETURN_IF_ERROR(CheckDelta(delta));
  if (orders.empty()) return InvalidArgument("no RDP orders");
  if (orders.size() != rdp.size()) {
    return InvalidArgument(std::to_string(orders.size()) + " RDP orders but " + std::to_string(rdp.size()) +
                           " RDP values");
  }
  for (size_t i = 0; i < orders.size(); ++i) {
    if (!(orders[i] > 1.0) || std::isinf(orders[i])) {
      return InvalidArgument("RDP order must be finite and > 1, got " + Num(orders[i]));
    }
    if (!(rdp[i] >= 0.0)) {
      return InvalidArgument("RDP value at order " + Num(orders[i]) + " must be >= 0, got " + Num(rdp[i]));
    }
  }
  return Status::Ok();
}

// The smallest epsilon over the orders, `convert(order, rdp)` giving each order's.
template <typename Convert>
PrivacySpent MinimiseOverOrders(std::span<const double> orders, std::span<const double> rdp, Convert convert) {
  PrivacySpent best{kInf, orders[0]};
  for (size_t i = 0; i < orders.size(); ++i) {
    const double eps = rdp[i] == kInf ? kInf : convert(orders[i], rdp[i]);
    if (eps < best.epsilon) best = {eps, orders[i]};
  }
  return best;
}

}  // namespace

std::vector<double> DefaultRdpOrders() {
  std::vector<double> orders = {1.25, 1.5, 1.75, 2.25, 2.5, 3.5, 4.5};
  for (int a = 2; a <= 256; ++a) orders.push_back(a);
  std::sort(orders.begin(), orders.end());
  return orders;
}

Result<double> SampledGaussianRdp(double q, double z, double order) {
  SHARDPS_RETURN_IF_ERROR(CheckQ(q));
  SHARDPS_RETURN_IF_ERROR(CheckZ(z));
  SHARDPS_RETURN_IF_ERROR(CheckOrder(order));
  if (z == 0.0) return kInf;
  if (q == 1.0) return order / (2.0 * z * z);
  double log_a = 0.0;
  if (order == std::floor(order)) {
    log_a = LogAInteger(q, z, static_cast<int>(order));
  } else {
    SHARDPS_ASSIGN_OR_RETURN(log_a, LogAFractional(q, z, order));
  }
  // A_alpha >= 1 (Jensen), so log A >= 0; rounding can only make a 0 slightly negative.
  return std::max(0.0, log_a) / (order - 1.0);
}

Result<PrivacySpent> EpsilonFromRdp(std::span<const double> orders, std::span<const double> rdp, double delta) {
  SHARDPS_RETURN_IF_ERROR(CheckRdpInputs(orders, rdp, delta));
  const double log_delta = std::log(delta);
  const double delta_sq = delta * delta;
  PrivacySpent best = MinimiseOverOrders(orders, rdp, [&](double a, double r) {
    // Total variation <= sqrt(1 - exp(-KL)) and KL <= RDP at any order >= 1: (0, delta)-DP.
    if (delta_sq >= -std::expm1(-r)) return 0.0;
    return r - (log_delta + std::log(a)) / (a - 1.0) + std::log1p(-1.0 / a);
  });
  best.epsilon = std::max(0.0, best.epsilon);
  return best;
}

Result<PrivacySpent> EpsilonFromRdpClassic(std::span<const double> orders, std::span<const double> rdp,
                                           double delta) {
  SHARDPS_RETURN_IF_ERROR(CheckRdpInputs(orders, rdp, delta));
  const double log_inv_delta = -std::log(delta);
  return MinimiseOverOrders(orders, rdp, [&](double a, double r) { return r + log_inv_delta / (a - 1.0); });
}

Result<RdpAccountant> RdpAccountant::Create(double q, double z, std::vector<double> orders) {
  SHARDPS_RETURN_IF_ERROR(CheckQ(q));
  SHARDPS_RETURN_IF_ERROR(CheckZ(z));
  if (orders.empty()) return InvalidArgument("RDP accountant needs at least one order");
  std::vector<double> per_round;
  per_round.reserve(orders.size());
  for (double order : orders) {
    SHARDPS_ASSIGN_OR_RETURN(double rdp, SampledGaussianRdp(q, z, order));
    per_round.push_back(rdp);
  }
  return RdpAccountant(q, z, std::move(orders), std::move(per_round));
}

std::vector<double> RdpAccountant::Rdp() const {
  std::vector<double> total(per_round_.size(), 0.0);
  if (rounds_ == 0) return total;  // no release yet: 0 even where one round is +inf
  for (size_t i = 0; i < per_round_.size(); ++i) total[i] = static_cast<double>(rounds_) * per_round_[i];
  return total;
}

Result<PrivacySpent> RdpAccountant::Epsilon(double delta) const {
  const std::vector<double> rdp = Rdp();
  return EpsilonFromRdp(orders_, rdp, delta);
}

Result<PrivacySpent> RdpAccountant::EpsilonClassic(double delta) const {
  const std::vector<double> rdp = Rdp();
  return EpsilonFromRdpClassic(orders_, rdp, delta);
}

}  // namespace shardps::privacy
