// The privacy accountant of DP-FedAvg: Renyi differential privacy (Mironov 2017) of the sampled
// Gaussian mechanism, composed over rounds and converted to (epsilon, delta).
//
//   SHARDPS_ASSIGN_OR_RETURN(privacy::RdpAccountant acc,
//                            privacy::RdpAccountant::Create(/*q=*/0.01, /*z=*/1.1));
//   for (...each round...) { ...; acc.Step(); }
//   SHARDPS_ASSIGN_OR_RETURN(privacy::PrivacySpent spent, acc.Epsilon(/*delta=*/1e-5));
//   std::cout << "(" << spent.epsilon << ", 1e-5)-DP at order " << spent.order << "\n";
//
// The mechanism. Each round every one of N clients takes part independently with probability q
// (Poisson sampling; q = C, the client fraction), each participant's update is clipped to L2 norm
// S (clip.h), and the server releases sum + N(0, z^2 S^2 I) (gaussian.h). Dividing by the fixed
// expected count m = qN is post-processing and costs nothing. Adding or removing one client is the
// neighbouring relation: the guarantee is client-level DP (McMahan, Ramage, Talwar, Zhang 2018,
// "Learning Differentially Private Recurrent Language Models"). The analysis needs Poisson
// sampling; choosing exactly m clients without replacement is a different mechanism that this
// accountant does not cover.
//
// RDP of one round at order alpha > 1 (Mironov, Talwar, Zhang 2019, "Renyi Differential Privacy of
// the Sampled Gaussian Mechanism", Sections 3.2-3.3): with mu0 = N(0, z^2) and mu = (1 - q) mu0 +
// q N(1, z^2), eps(alpha) = log(A_alpha) / (alpha - 1), A_alpha = E_{x~mu0}[(mu(x) / mu0(x))^alpha].
//  * q = 1 (no sampling): the Gaussian mechanism, exactly alpha / (2 z^2).
//  * integer alpha: the binomial expansion
//        A_alpha = sum_{k=0..alpha} C(alpha, k) q^k (1-q)^(alpha-k) exp((k^2 - k) / (2 z^2)).
//    The k = 0 and k = 1 terms have exponent 0 and the binomial weights sum to 1, so
//        A_alpha = 1 + sum_{k=2..alpha} C(alpha, k) q^k (1-q)^(alpha-k) expm1((k^2 - k) / (2 z^2)),
//    a sum of positive terms evaluated in log space (log-sum-exp) and then log1p: no cancellation
//    even when A_alpha - 1 is tiny (small q), no overflow when it is huge (large alpha, small z).
//  * fractional alpha: the two series of Section 3.3, which split the integral at
//    z0 = z^2 log(1/q - 1) + 1/2 (where the two terms of mu/mu0 are equal) and expand each side
//    binomially; the terms carry erfc factors and, past i = alpha, alternate in sign. They are
//    summed (in log space, positive and negative parts apart) until a term falls below e^-40
//    (A_alpha >= 1, so that is a relative error of 4e-18; the sign alternation bounds the tail
//    by the first omitted term). The terms are of order 1 while log A_alpha can be tiny, so the
//    error is about 1e-16 absolute in log A_alpha: a few 1e-12 relative in the RDP at q = 0.01,
//    2e-9 at q = 1e-4, 2e-8 at q = 1e-5 (z = 1, alpha = 2.5); over T rounds the epsilon moves by
//    at most about T x 1e-16. Integer orders are accurate to a few ulps at every q.
// z = 0 (no noise) has infinite RDP: epsilon is reported as +inf, not refused. Orders are limited
// to (1, 10000]: the integer sum has alpha + 1 terms and larger orders are never the best.
//
// Composition: RDP adds up over rounds (Mironov 2017, Proposition 1), so T rounds have T x the
// one-round value at every order. Conversion to (epsilon, delta)-DP, minimised over the orders:
//  * Epsilon (default): eps = rdp - (log(delta) + log(alpha)) / (alpha - 1) + log((alpha - 1) / alpha)
//    (Balle, Barthe, Gaboardi, Hsu, Sato 2020, "Hypothesis testing interpretations and Renyi
//    differential privacy", Theorem 21; Canonne, Kamath, Steinke 2020, Proposition 12), and 0 at an
//    order where delta^2 >= 1 - exp(-rdp) (then the total variation distance, bounded through the
//    KL divergence <= rdp, is at most delta); never below 0.
//  * EpsilonClassic: eps = rdp + log(1/delta) / (alpha - 1) (Mironov 2017, Proposition 3), what
//    TensorFlow Privacy and Opacus reported before 2020 (for instance (2.92, 1e-5) for DP-SGD on
//    MNIST with q = 256/60000, z = 1.12, 60 epochs, TF Privacy's tutorial).
// Thread safety: RdpAccountant is a value; Step() needs exclusive access, the const methods may run
// concurrently. The free functions are pure.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "shardps/base/status.h"

namespace shardps::privacy {

// 1.25, 1.5, 1.75, 2.25, 2.5, 3.5, 4.5 and every integer from 2 to 256, ascending.
std::vector<double> DefaultRdpOrders();

// RDP at `order` of one round of the sampled Gaussian mechanism with sampling probability q and
// noise multiplier z (noise standard deviation over sensitivity). +inf when z = 0.
// INVALID_ARGUMENT (naming the value) when q is not in (0, 1], z is negative or not finite, or
// order is not in (1, 10000].
Result<double> SampledGaussianRdp(double q, double z, double order);

// The (epsilon, delta) guarantee and the RDP order that gave it.
struct PrivacySpent {
  double epsilon = 0.0;  // +inf when every order's RDP is +inf (z = 0)
  double order = 0.0;    // the minimising order; the first order when all give +inf
};

// Converts per-order RDP values (already composed) to (epsilon, delta)-DP, minimised over orders;
// see the header comment for the two conversions. INVALID_ARGUMENT when delta is not in (0, 1),
// the spans differ in length or are empty, an order is not > 1, or an RDP value is negative or NaN.
Result<PrivacySpent> EpsilonFromRdp(std::span<const double> orders, std::span<const double> rdp, double delta);
Result<PrivacySpent> EpsilonFromRdpClassic(std::span<const double> orders, std::span<const double> rdp,
                                           double delta);

// Accumulates the rounds of one sampled Gaussian mechanism (fixed q and z) and reports the privacy
// spent so far. The one-round RDP of every order is computed once, in Create.
class RdpAccountant {
 public:
  // INVALID_ARGUMENT as SampledGaussianRdp (naming the offending q, z or order), or when `orders`
  // is empty.
  static Result<RdpAccountant> Create(double q, double z, std::vector<double> orders = DefaultRdpOrders());

  // Records `rounds` more rounds (composition: the RDP of each order grows by rounds x one round).
  void Step(uint64_t rounds = 1) { rounds_ += rounds; }

  // Improved (default) and classic conversions of the RDP so far; INVALID_ARGUMENT when delta is not
  // in (0, 1). After zero rounds, Epsilon is 0.
  Result<PrivacySpent> Epsilon(double delta) const;
  Result<PrivacySpent> EpsilonClassic(double delta) const;

  // The composed RDP of every order after rounds() rounds (rounds() x RdpPerRound(), 0 x inf = 0).
  std::vector<double> Rdp() const;
  const std::vector<double>& RdpPerRound() const { return per_round_; }
  const std::vector<double>& orders() const { return orders_; }
  uint64_t rounds() const { return rounds_; }
  double sampling_probability() const { return q_; }
  double noise_multiplier() const { return z_; }

 private:
  RdpAccountant(double q, double z, std::vector<double> orders, std::vector<double> per_round)
      : q_(q), z_(z), orders_(std::move(orders)), per_round_(std::move(per_round)) {}

  // Constant after construction.
  double q_;
  double z_;
  std::vector<double> orders_;
  std::vector<double> per_round_;
  // The rounds recorded by Step.
  uint64_t rounds_ = 0;
};

}  // namespace shardps::privacy
