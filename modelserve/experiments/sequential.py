"""Always-valid inference: a report may be read after every outcome without inflating false positives.

The test is the mixture sequential probability ratio test (mSPRT) of Johari, Koomen, Pekelis and
Walsh ("Always valid inference", 2017; the basis of Optimizely's Stats Engine) in its asymptotic
normal form. The estimate theta_hat (B - A, a difference of rates or of means) is treated as
N(theta, V) with V = var_a / n_a + var_b / n_b, and theta is mixed over N(0, tau^2):

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 * theta_hat^2 / (2 V (V + tau^2)))

Lambda is a non-negative martingale under H0: theta = 0, so by Ville's inequality
P(Lambda ever reaches 1/alpha) <= alpha, and p = min(1, 1/Lambda) is an always-valid p-value at
every single look (taking the running minimum over looks gives more power and stays valid, but needs
history; the report uses the value at the current look, which is conservative). Inverting the test
gives the confidence sequence

    theta_hat +- sqrt(V (V + tau^2) / tau^2 * (2 log(1/alpha) + log((V + tau^2) / V))).

For proportions the p-value uses the pooled variance (as the z-test does), which keeps early looks
with a handful of successes from rejecting; the confidence sequence uses the unpooled variance.

Mixing variance: tau is set to the absolute minimum detectable effect (`mixing_tau`), i.e. the
prior spread of effects equals the smallest effect worth detecting. Johari et al. show the test's
efficiency is flat over a wide range of tau around the effects of interest; too small a tau spends
power on effects nobody cares about, too large a tau wastes samples on small ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import optimize
from scipy.stats import norm

from modelserve.experiments.stats import NAN, Interval

_UNDEFINED = Interval(low=NAN, high=NAN)


@dataclass(frozen=True, slots=True, kw_only=True)
class SequentialResult:
    """mSPRT at one look: the B - A estimate, its always-valid p-value and confidence sequence."""

    estimate: float
    p_value: float
    interval: Interval
    tau: float


def mixing_tau(mde_relative: float, control_mean: float, control_sd: float | None = None) -> float:
    """The mixing scale: the absolute MDE, `mde_relative * |control_mean|`.

    When the control mean is 0 (no relative effect is defined) the control's standard deviation
    scaled by the relative MDE is used instead, and 1e-9 as a last resort.
    """
    tau = abs(mde_relative * control_mean)
    if tau == 0 and control_sd:
        tau = abs(mde_relative * control_sd)
    return tau if tau > 0 else 1e-9


def log_likelihood_ratio(estimate: float, variance: float, tau: float) -> float:
    """log Lambda of the normal-mixture SPRT for H0: theta = 0."""
    t2 = tau * tau
    return 0.5 * math.log(variance / (variance + t2)) + t2 * estimate**2 / (2 * variance * (variance + t2))


def always_valid_p(estimate: float, variance: float, tau: float) -> float:
    """min(1, 1 / Lambda); 1.0 when there is no variance estimate yet."""
    if not variance > 0 or not math.isfinite(estimate):
        return 1.0
    return min(1.0, math.exp(-log_likelihood_ratio(estimate, variance, tau)))


def confidence_half_width(variance: float, tau: float, alpha: float) -> float:
    """Half-width of the (1 - alpha) confidence sequence at the current look."""
    t2 = tau * tau
    return math.sqrt(
        variance * (variance + t2) / t2 * (2 * math.log(1 / alpha) + math.log((variance + t2) / variance))
    )


def msprt(
    estimate: float, variance: float, *, tau: float, alpha: float = 0.05, test_variance: float | None = None
) -> SequentialResult:
    """mSPRT from an estimate and its variance; `test_variance` (if given) is used for the p-value."""
    if not variance > 0:
        return SequentialResult(estimate=estimate, p_value=1.0, interval=_UNDEFINED, tau=tau)
    half = confidence_half_width(variance, tau, alpha)
    p_value = always_valid_p(estimate, variance if test_variance is None else test_variance, tau)
    return SequentialResult(
        estimate=estimate,
        p_value=p_value,
        interval=Interval(low=estimate - half, high=estimate + half),
        tau=tau,
    )


def msprt_proportions(
    successes_a: int, n_a: int, successes_b: int, n_b: int, *, tau: float, alpha: float = 0.05
) -> SequentialResult:
    """mSPRT for p_b - p_a."""
    if n_a <= 0 or n_b <= 0:
        return SequentialResult(estimate=NAN, p_value=1.0, interval=_UNDEFINED, tau=tau)
    p_a, p_b = successes_a / n_a, successes_b / n_b
    variance = p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b
    pooled = (successes_a + successes_b) / (n_a + n_b)
    pooled_variance = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    if not pooled_variance > 0:
        return SequentialResult(estimate=p_b - p_a, p_value=1.0, interval=_UNDEFINED, tau=tau)
    if not variance > 0:
        variance = pooled_variance  # e.g. 0/n vs n/n: fall back rather than claim zero uncertainty
    return msprt(p_b - p_a, variance, tau=tau, alpha=alpha, test_variance=pooled_variance)


def msprt_means(
    n_a: int,
    mean_a: float,
    var_a: float,
    n_b: int,
    mean_b: float,
    var_b: float,
    *,
    tau: float,
    alpha: float = 0.05,
) -> SequentialResult:
    """mSPRT for mean_b - mean_a from summary statistics."""
    if n_a < 2 or n_b < 2:
        return SequentialResult(estimate=NAN, p_value=1.0, interval=_UNDEFINED, tau=tau)
    return msprt(mean_b - mean_a, var_a / n_a + var_b / n_b, tau=tau, alpha=alpha)


def sequential_power(
    effect: float, unit_variance: float, n_per_arm: float, *, tau: float, alpha: float = 0.05
) -> float:
    """Probability that a single look at n per arm rejects, for a true effect (a lower bound on the
    power of monitoring up to n). `unit_variance` is var_a + var_b for one observation per arm."""
    variance = unit_variance / n_per_arm
    half = confidence_half_width(variance, tau, alpha)
    sd = math.sqrt(variance)
    return float(norm.cdf((abs(effect) - half) / sd) + norm.cdf((-abs(effect) - half) / sd))


def sequential_sample_size(
    effect: float, unit_variance: float, *, tau: float, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Per-arm n (unrounded) at which a look has the requested power; monitoring never needs more."""
    if effect == 0 or unit_variance <= 0:
        raise ValueError("the effect must be non-zero and the variance positive")
    high = 10.0
    while sequential_power(effect, unit_variance, high, tau=tau, alpha=alpha) < power:
        high *= 2
        if high > 1e15:
            raise ValueError("the requested power is out of reach")
    return float(
        optimize.brentq(
            lambda n: sequential_power(effect, unit_variance, n, tau=tau, alpha=alpha) - power,
            1.0,
            high,
            xtol=1e-6,
        )
    )
