#!/usr/bin/env python3
"""Reference values for the RDP accountant (core/privacy/include/shardps/privacy/rdp_accountant.h).

An independent implementation, in arbitrary precision (mpmath, 50 significant digits), of the Renyi
DP of the sampled Gaussian mechanism (Mironov, Talwar, Zhang 2019, "Renyi Differential Privacy of the
Sampled Gaussian Mechanism") and of its conversion to (epsilon, delta). It shares no code or method
with the C++ one beyond the definitions:

  mu0 = N(0, z^2), mu = (1 - q) mu0 + q N(1, z^2),
  A_alpha = E_{x ~ mu0}[(mu(x) / mu0(x))^alpha],   RDP(alpha) = log(A_alpha) / (alpha - 1).

Two ways to get A_alpha here:
  * integer alpha: the plain binomial sum, sum_k C(alpha, k) q^k (1-q)^(alpha-k) exp((k^2-k)/(2z^2)),
    with exact integer binomials (math.comb) and no log-space tricks (50 digits make them needless);
    the C++ code sums 1 + sum_{k>=2} ... expm1(...) in double precision in log space instead;
  * any alpha: numerical integration (mpmath.quad, tanh-sinh) of the defining integral. For integer
    orders the two are compared (a self-check); for fractional orders the integral is the reference
    for the C++ series of MTZ 2019 Section 3.3, which this script does not implement.
q and z are taken as the exact binary values of the doubles the C++ tests pass.

Conversions, minimised over the orders (same definitions as the C++ header):
  improved: eps = rdp - (log(delta) + log(alpha))/(alpha - 1) + log((alpha - 1)/alpha)
            (Balle et al. 2020, Theorem 21 of arXiv:1905.09982), 0 where delta^2 >= 1 - exp(-rdp),
            never below 0;
  classic:  eps = rdp + log(1/delta)/(alpha - 1) (Mironov 2017, Proposition 3).

Usage:
  scripts/rdp_reference.py            # print the values tests/unit/privacy_test.cc asserts
  scripts/rdp_reference.py --dpsgd    # also the DP-SGD MNIST setting of TF Privacy's tutorial
Needs /usr/bin/python3 with mpmath (Debian: python3-mpmath).
"""

import argparse
import math
import sys

import mpmath

DIGITS = 50


def rdp_binomial(q, z, alpha):
    """RDP at integer order alpha >= 2 from the binomial sum, in mpmath precision."""
    assert isinstance(alpha, int) and alpha >= 2
    q = mpmath.mpf(q)
    z = mpmath.mpf(z)
    if q == 1:
        return mpmath.mpf(alpha) / (2 * z * z)
    total = mpmath.mpf(0)
    for k in range(alpha + 1):
        total += (math.comb(alpha, k) * q**k * (1 - q) ** (alpha - k) *
                  mpmath.exp(mpmath.mpf(k * k - k) / (2 * z * z)))
    return mpmath.log(total) / (alpha - 1)


def rdp_integral(q, z, alpha):
    """RDP at any order alpha > 1 by integrating the definition of A_alpha numerically."""
    q = mpmath.mpf(q)
    z = mpmath.mpf(z)
    alpha = mpmath.mpf(alpha)

    def integrand(x):
        mu0 = mpmath.npdf(x, 0, z)
        ratio = (1 - q) + q * mpmath.exp((2 * x - 1) / (2 * z * z))
        return mu0 * ratio**alpha

    # The integrand is a mixture of bumps centred at 0, 1, ..., alpha (width z); give the quadrature
    # the points between them so no bump is missed.
    hi = float(alpha) + 12 * float(z)
    lo = -12 * float(z)
    steps = max(8, int(math.ceil((hi - lo) / max(float(z), 0.25))))
    points = [mpmath.ninf] + [lo + (hi - lo) * i / steps for i in range(steps + 1)] + [mpmath.inf]
    a = mpmath.quad(integrand, points)
    return mpmath.log(a) / (alpha - 1)


def rdp(q, z, alpha):
    """The reference RDP: the binomial sum for integer orders, the integral otherwise."""
    if float(alpha).is_integer():
        return rdp_binomial(q, z, int(alpha))
    return rdp_integral(q, z, alpha)


def eps_improved(orders, rdps, delta):
    delta = mpmath.mpf(delta)
    best = (mpmath.inf, orders[0])
    for a, r in zip(orders, rdps):
        a_m = mpmath.mpf(a)
        if delta**2 >= 1 - mpmath.exp(-r):
            e = mpmath.mpf(0)
        else:
            e = r - (mpmath.log(delta) + mpmath.log(a_m)) / (a_m - 1) + mpmath.log((a_m - 1) / a_m)
        if e < best[0]:
            best = (e, a)
    return (max(mpmath.mpf(0), best[0]), best[1])


def eps_classic(orders, rdps, delta):
    delta = mpmath.mpf(delta)
    best = (mpmath.inf, orders[0])
    for a, r in zip(orders, rdps):
        e = r + mpmath.log(1 / delta) / (mpmath.mpf(a) - 1)
        if e < best[0]:
            best = (e, a)
    return best


def default_orders():
    """DefaultRdpOrders() of the C++ header."""
    return sorted([1.25, 1.5, 1.75, 2.25, 2.5, 3.5, 4.5] + list(range(2, 257)))


def fmt(x):
    return mpmath.nstr(x, 17, min_fixed=-5, max_fixed=5)


def self_check():
    """The binomial sum and the integral agree at integer orders (else the integral is not trusted)."""
    worst = 0
    for q, z, alpha in [(0.01, 1.1, 2), (0.01, 1.1, 16), (0.1, 1.0, 8), (0.1, 0.5, 32), (0.5, 2.0, 5)]:
        b = rdp_binomial(q, z, alpha)
        i = rdp_integral(q, z, alpha)
        worst = max(worst, abs(b - i) / b)
    if worst > 1e-20:
        sys.exit("self-check failed: binomial sum and integral differ by %s relative" % mpmath.nstr(worst, 3))
    print("# self-check: binomial sum vs integral at integer orders, worst relative difference %s"
          % mpmath.nstr(worst, 3))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dpsgd", action="store_true",
                        help="also the DP-SGD MNIST setting (fractional orders: slower)")
    args = parser.parse_args()
    mpmath.mp.dps = DIGITS
    self_check()

    print("# One-round RDP, integer orders (binomial sum): {q, z, alpha, rdp}")
    for q, z, orders in [(0.01, 1.1, [2, 3, 4, 8, 16, 32, 64]), (0.1, 1.0, [8]), (0.1, 0.5, [32]),
                         (0.5, 2.0, [2, 5]), (0.999, 0.8, [3]), (1e-4, 1.0, [2, 256])]:
        for a in orders:
            print("{%r, %r, %d, %s}," % (q, z, a, fmt(rdp_binomial(q, z, a))))

    print("# One-round RDP, fractional orders (integral): {q, z, alpha, rdp}")
    for q, z, orders in [(0.01, 1.1, [1.25, 1.5, 2.5, 10.5]), (0.1, 1.0, [1.5, 3.5]), (0.1, 0.5, [1.75])]:
        for a in orders:
            print("{%r, %r, %r, %s}," % (q, z, a, fmt(rdp_integral(q, z, a))))

    print("# Epsilon over the default orders: {q, z, rounds, delta, eps_improved, order, eps_classic, order}")
    for q, z, rounds, delta in [(0.01, 1.1, 1000, 1e-5), (0.1, 1.0, 100, 1e-6)]:
        orders = default_orders()
        rdps = [rounds * rdp(q, z, a) for a in orders]
        e, a = eps_improved(orders, rdps, delta)
        c, ac = eps_classic(orders, rdps, delta)
        print("{%r, %r, %d, %r, %s, %r, %s, %r}," % (q, z, rounds, delta, fmt(e), a, fmt(c), ac))

    if args.dpsgd:
        # TF Privacy's MNIST tutorial (tutorials/mnist_dpsgd_tutorial.py, January 2019): q = 256/60000,
        # noise 1.12, 60 epochs of 60000 // 256 = 234 steps, classic conversion, these orders; its
        # README reports epsilon 2.92 at delta = 1e-5. compute_dp_sgd_privacy.py of the same commit
        # uses ceil(60 x 60000 / 256) = 14063 steps and another grid, and states 2.92 as well.
        q = 256 / 60000
        tutorial_orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
        cli_orders = [1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 4.5] + list(range(5, 64)) + [128, 256, 512]
        print("# DP-SGD MNIST, q = 256/60000, delta = 1e-5: {z, steps, grid, eps_classic, order, eps_improved, order}")
        for z, steps, name, orders in [(1.12, 60 * 234, "tutorial", tutorial_orders),
                                       (1.12, 14063, "cli", cli_orders),
                                       (1.1, 60 * 234, "tutorial", tutorial_orders),
                                       (1.1, 14063, "cli", cli_orders)]:
            rdps = [steps * rdp(q, z, a) for a in orders]
            c, ac = eps_classic(orders, rdps, 1e-5)
            e, a = eps_improved(orders, rdps, 1e-5)
            print("{%r, %d, %s, %s, %r, %s, %r}," % (z, steps, name, fmt(c), ac, fmt(e), a))


if __name__ == "__main__":
    main()
