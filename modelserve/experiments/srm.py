"""Sample-ratio mismatch: is the observed split of assignments consistent with the configured weights?

A mismatch means assignment or logging is broken (bots, redirects, crashes in one arm), so any
difference between arms is suspect: the report refuses a verdict when this check is flagged. The
test is Pearson's chi-square goodness of fit, flagged at p < 0.001 (the usual, deliberately strict
threshold: the check runs on every report, and a false alarm blocks a decision).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import chi2

#: p-value below which a split is flagged as a sample-ratio mismatch.
SRM_THRESHOLD = 0.001


@dataclass(frozen=True, slots=True, kw_only=True)
class SrmResult:
    """Outcome of a sample-ratio-mismatch check; `expected` are counts under the configured weights."""

    statistic: float
    p_value: float
    flagged: bool
    observed: tuple[int, ...]
    expected: tuple[float, ...]

    def describe(self) -> str:
        status = "MISMATCH" if self.flagged else "ok"
        return f"{status} (chi2={self.statistic:.2f}, p={self.p_value:.3g})"


def srm_check(
    observed: Sequence[int], weights: Sequence[float], *, threshold: float = SRM_THRESHOLD
) -> SrmResult:
    """Chi-square goodness of fit of `observed` assignment counts against `weights` (any positive scale).

    An arm with weight 0 that received assignments is a certain mismatch (p = 0).
    """
    if len(observed) != len(weights) or not observed:
        raise ValueError("observed counts and weights must be non-empty and of equal length")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
    total = sum(observed)
    weight_sum = sum(weights)
    expected = tuple(total * w / weight_sum for w in weights)
    counts = tuple(int(c) for c in observed)
    if total == 0:
        return SrmResult(statistic=0.0, p_value=1.0, flagged=False, observed=counts, expected=expected)
    if any(e == 0 and o > 0 for o, e in zip(counts, expected, strict=True)):
        return SrmResult(
            statistic=float("inf"), p_value=0.0, flagged=True, observed=counts, expected=expected
        )
    cells = [(o, e) for o, e in zip(counts, expected, strict=True) if e > 0]
    statistic = sum((o - e) ** 2 / e for o, e in cells)
    dof = len(cells) - 1
    p_value = float(chi2.sf(statistic, dof)) if dof > 0 else 1.0
    return SrmResult(
        statistic=statistic, p_value=p_value, flagged=p_value < threshold, observed=counts, expected=expected
    )
