"""Confidence sequences for gates: intervals that stay valid however often a rollout looks at them.

A rollout evaluates its gates every few seconds on data that keeps growing (everything since the
stage began). A fixed-horizon 95 % interval checked at every look fails healthy candidates far more
often than 5 % of the time; a *confidence sequence* covers the truth at every look at once, with
probability >= 1 - alpha (Ville's inequality). Every interval here is the normal-mixture confidence
sequence of `modelserve.experiments.sequential` (Johari et al.'s mSPRT, asymptotic form):

    estimate +- sqrt(V (V + tau^2) / tau^2 * (2 log(1/alpha) + log((V + tau^2) / V)))

with V the variance of the estimate at this look and tau the mixing scale (the size of effect the
sequence is tuned to resolve; it is tight within a factor of ~1.1 for V from tau^2 / 30 to tau^2 / 3).

- `rate_interval`: one rate (errors / requests, agreeing rows / rows).
- `rate_difference_interval`: candidate rate minus baseline rate.
- `quantile_interval`: a latency quantile from a log-bucket histogram, distribution-free. For the true
  q-quantile x_q the indicators 1{X_i <= x_q} are Bernoulli(q) with a *known* variance q (1 - q), so a
  confidence sequence for their mean turns into order statistics bounding x_q: the lower bound is the
  floor(n (q - w))-th smallest value, the upper bound the floor(n (q + w)) + 1 -th (Howard &
  Ramdas, "Sequential estimation of quantiles", 2022, in its asymptotic form). Too few samples
  leave a side unbounded (None). The histogram's +-2 % bucket error widens both bounds.

Rates compute their variance as if at least three events (and three non-events) had been seen,
so 0 errors in 80 does not claim a rate of 0 with no uncertainty (the rule of three).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate

from modelserve.telemetry.histogram import bucket_value
from modelserve.telemetry.windows import RELATIVE_ERROR, LatencyHistogram


@dataclass(frozen=True, slots=True, kw_only=True)
class Bounds:
    """An estimate and its confidence-sequence bounds; a None bound means "unbounded on that side"."""

    estimate: float | None
    low: float | None
    high: float | None

    def as_list(self) -> list[float | None]:
        """[low, high] for JSON evidence."""
        return [self.low, self.high]


def confidence_half_width(variance: float, tau: float, alpha: float) -> float:
    """Half-width of the (1 - alpha) normal-mixture confidence sequence at the current look.

    The formula of `modelserve.experiments.sequential.confidence_half_width` (a test pins them
    equal); written out here because experiments' bandit health checks import the gates.
    """
    t2 = tau * tau
    return math.sqrt(
        variance * (variance + t2) / t2 * (2 * math.log(1 / alpha) + math.log((variance + t2) / variance))
    )


def _guarded_variance(successes: int, n: int) -> float:
    # At least three events (or non-events) in the variance: with fewer, p(1-p)/n says "certain"
    # where the rule of three says a rate up to 3/n is still plausible.
    guard = min(0.5, 3.0 / n)
    p = min(1.0 - guard, max(guard, successes / n))
    return p * (1 - p) / n


def rate_interval(successes: int, n: int, *, alpha: float, tau: float) -> Bounds:
    """Confidence sequence for a rate (clipped to [0, 1]); no samples -> no estimate, no bounds."""
    if n <= 0:
        return Bounds(estimate=None, low=None, high=None)
    rate = successes / n
    half = confidence_half_width(_guarded_variance(successes, n), tau, alpha)
    return Bounds(estimate=rate, low=max(0.0, rate - half), high=min(1.0, rate + half))


def rate_difference_interval(
    successes_b: int, n_b: int, successes_a: int, n_a: int, *, alpha: float, tau: float
) -> Bounds:
    """Confidence sequence for rate_b - rate_a (b: candidate, a: baseline)."""
    if n_a <= 0 or n_b <= 0:
        return Bounds(estimate=None, low=None, high=None)
    difference = successes_b / n_b - successes_a / n_a
    variance = _guarded_variance(successes_b, n_b) + _guarded_variance(successes_a, n_a)
    half = confidence_half_width(variance, tau, alpha)
    return Bounds(estimate=difference, low=difference - half, high=difference + half)


def quantile_tau(q: float) -> float:
    """The mixing scale of a quantile's sequence: half the tail mass (0.025 for p95)."""
    return max(min(q, 1.0 - q) / 2.0, 1e-4)


class _Ranked:
    """A histogram's buckets sorted once, so several ranks are read without sorting again."""

    __slots__ = ("cumulative", "histogram", "indices")

    def __init__(self, histogram: LatencyHistogram) -> None:
        self.histogram = histogram
        self.indices = sorted(histogram.buckets)
        self.cumulative = list(
            accumulate((histogram.buckets[i] for i in self.indices), initial=histogram.zeros)
        )
        del self.cumulative[0]

    def quantile(self, q: float) -> float:
        """`LatencyHistogram.quantile(q)` of a non-empty histogram."""
        h = self.histogram
        rank = q * (h.count - 1)
        if h.zeros > rank:
            return 0.0
        if q == 1.0:
            return h.maximum
        position = bisect_right(self.cumulative, rank)
        if position == len(self.indices):
            return h.maximum
        return min(bucket_value(self.indices[position]), h.maximum)

    def order_statistic(self, k: int) -> float:
        n = self.histogram.count
        if not 1 <= k <= n:
            raise ValueError(f"order statistic {k} of {n} values")
        # quantile(f) reads rank f (n - 1); aim a hair past k - 1 so rounding never lands below it.
        return self.quantile(0.0 if n == 1 else min(1.0, (k - 1 + 1e-6) / (n - 1)))


def order_statistic(histogram: LatencyHistogram, k: int) -> float:
    """The k-th smallest value (1-based) of a histogram holding at least k values (bucket value)."""
    return _Ranked(histogram).order_statistic(k)


def quantile_interval(histogram: LatencyHistogram, q: float, *, alpha: float) -> Bounds:
    """Confidence sequence for the q-quantile of the distribution the histogram samples."""
    n = histogram.count
    if n == 0:
        return Bounds(estimate=None, low=None, high=None)
    ranked = _Ranked(histogram)
    estimate = ranked.quantile(q)
    half = confidence_half_width(q * (1.0 - q) / n, quantile_tau(q), alpha)
    low_rank = math.floor(n * (q - half))
    high_rank = math.floor(n * (q + half)) + 1
    low = ranked.order_statistic(low_rank) * (1 - RELATIVE_ERROR) if low_rank >= 1 else None
    high = ranked.order_statistic(high_rank) * (1 + RELATIVE_ERROR) if high_rank <= n else None
    return Bounds(estimate=estimate, low=low, high=high)


def min_samples_for_quantile(q: float, tail: int = 5) -> int:
    """Samples below which a q-quantile is not estimated at all: `tail` values expected beyond it."""
    return math.ceil(tail / max(min(q, 1.0 - q), 1e-9) - 1e-9)


def rate_sd(successes: int, n: int) -> float:
    """Standard error of one rate (with the three-event guard above)."""
    return math.sqrt(_guarded_variance(successes, n)) if n > 0 else math.inf


def quantile_one_sigma_low(histogram: LatencyHistogram, q: float) -> float | None:
    """The q-quantile's estimate one standard error (of its rank) lower: what it plausibly is."""
    n = histogram.count
    if n == 0:
        return None
    rank = math.floor(n * q - math.sqrt(n * q * (1.0 - q)))
    return order_statistic(histogram, rank) if rank >= 1 else 0.0
