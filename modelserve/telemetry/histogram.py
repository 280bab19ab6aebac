"""`LogHistogram`: the one histogram type of modelserve (latencies, output differences, /metrics).

Log buckets in the DDSketch style: a positive value `v` lands in bucket `ceil(log(v) / log(gamma))`
with `gamma = (1 + e) / (1 - e)`, so every quantile is reported within a relative error `e` (2 %) of a
true sample value, whatever the range. Buckets are a sparse dict: memory grows with the number of
distinct orders of magnitude seen (~58 buckets per factor of ten), not with the number of values, and
two histograms merge exactly by adding counts. Zeros, negatives and NaN are counted apart (they have
no magnitude); the exact maximum and sum are kept, so `quantile(1.0)` is the true maximum and the
mean is exact. Not thread-safe by itself: its owners hold a lock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: Relative error of a quantile (values are reported within +-2 % of a true sample value).
RELATIVE_ERROR = 0.02
_GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
_INV_LOG_GAMMA = 1.0 / math.log(_GAMMA)
_LOG_GAMMA = math.log(_GAMMA)
_BUCKET_VALUE_FACTOR = 2.0 / (_GAMMA + 1.0)
#: The bucket of +inf (no finite bucket index reaches it).
_INFINITE_BUCKET = 2**31
_PERCENTILES = (50.0, 95.0, 99.0)


def bucket_index(value: float) -> int:
    """The bucket of a positive value (+inf included)."""
    return math.ceil(math.log(value) * _INV_LOG_GAMMA) if value != math.inf else _INFINITE_BUCKET


def bucket_value(index: int) -> float:
    """The value a bucket reports: within the relative error of everything in it."""
    return math.inf if index == _INFINITE_BUCKET else _BUCKET_VALUE_FACTOR * _GAMMA**index


def bucket_upper_edge(index: int) -> float:
    """The largest value bucket `index` holds."""
    return math.inf if index == _INFINITE_BUCKET else math.exp(index * _LOG_GAMMA)


class LogHistogram:
    """Counts of values in log buckets; see the module docstring."""

    __slots__ = ("buckets", "count", "maximum", "total", "zeros")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.zeros = 0  # values <= 0 and NaN: counted, but without a magnitude
        self.total = 0.0  # sum of the positive values
        self.maximum = 0.0

    def add(self, value: float, count: int = 1) -> None:
        """Count `value` `count` times."""
        self.count += count
        if value > 0.0:
            index = math.ceil(math.log(value) * _INV_LOG_GAMMA) if value != math.inf else _INFINITE_BUCKET
            self.buckets[index] = self.buckets.get(index, 0) + count
            self.total += value * count
            if value > self.maximum:
                self.maximum = value
        else:
            self.zeros += count

    def merge(self, other: LogHistogram) -> None:
        """Add `other` into this histogram (histograms merge exactly)."""
        mine = self.buckets
        for index, count in other.buckets.items():
            mine[index] = mine.get(index, 0) + count
        self.count += other.count
        self.zeros += other.zeros
        self.total += other.total
        if other.maximum > self.maximum:
            self.maximum = other.maximum

    def quantile(self, q: float) -> float | None:
        """The `q`-quantile (0..1, the value at rank `q * (count - 1)`), or None when empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile {q} is not within [0, 1]")
        if self.count == 0:
            return None
        rank = q * (self.count - 1)
        seen = self.zeros
        if seen > rank:
            return 0.0
        if q == 1.0:
            return self.maximum
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen > rank:
                return min(bucket_value(index), self.maximum)
        return self.maximum

    def summary(self, scale: float = 1.0) -> dict[str, float | int | None]:
        """p50/p95/p99/max (multiplied by `scale`) and the count."""
        out: dict[str, float | int | None] = {"count": self.count}
        for p in _PERCENTILES:
            value = self.quantile(p / 100.0)
            out[f"p{p:g}"] = None if value is None else value * scale
        out["max"] = self.maximum * scale if self.count else None
        return out

    def cumulative_counts(self, bounds: Sequence[float]) -> list[int]:
        """For Prometheus buckets: how many values are at most each bound (ascending), then the count.

        A log bucket that straddles a bound counts below it when its reported value is (so a value
        within the relative error of a bound may be counted on the other side of it).
        """
        below = [0] * len(bounds)
        for index, count in self.buckets.items():
            value = bucket_value(index)
            for position, bound in enumerate(bounds):
                if value <= bound:
                    below[position] += count
        return [self.zeros + n for n in below] + [self.count]
