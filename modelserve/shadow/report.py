"""The promotion recommendation for a shadow version, with the evidence behind it.

`recommend` reads a `ShadowStats.snapshot()` and applies four checks:

| check | observed | passes when |
|---|---|---|
| `samples` | completed comparisons | >= `min_samples` |
| `agreement` | row agreement rate (Wilson interval in `detail`) | >= `min_agreement` |
| `latency_p95_ratio` | shadow p95 / primary p95 (model run time) | <= `max_latency_ratio` |
| `error_rate` | (errors + timeouts) / runs | <= `max_error_ratio` x `primary_error_rate` |

Too few samples, or a figure that cannot be computed yet, gives "not enough data" — never a pass —
except that a failing error-rate check over at least `min_samples` runs is "do not promote" on its own
(a version that raises or hangs on every call never completes a comparison). Otherwise every check
passing gives "promote", any failing "do not promote".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

Verdict = Literal["promote", "do not promote", "not enough data"]
PROMOTE: Verdict = "promote"
DO_NOT_PROMOTE: Verdict = "do not promote"
NOT_ENOUGH_DATA: Verdict = "not enough data"


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    """One piece of evidence: `observed` compared with `threshold` by `rule` (">=" or "<=")."""

    name: str
    observed: float | None  # None: could not be measured yet (counts as not passed)
    threshold: float
    rule: str
    passed: bool
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Recommendation:
    """The verdict on promoting a shadow version and the checks that led to it."""

    model: str
    shadow_version: str
    verdict: Verdict
    checks: tuple[Check, ...]

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON types, for the admin API and the CLI."""
        return asdict(self)


def _check(name: str, observed: float | None, threshold: float, rule: str, detail: str = "") -> Check:
    passed = observed is not None and (observed >= threshold if rule == ">=" else observed <= threshold)
    return Check(name=name, observed=observed, threshold=threshold, rule=rule, passed=passed, detail=detail)


def recommend(
    snapshot: Mapping[str, Any],
    *,
    primary_error_rate: float,
    min_agreement: float = 0.85,
    max_latency_ratio: float = 1.5,
    max_error_ratio: float = 2.0,
    min_samples: int = 1000,
) -> Recommendation:
    """Promote, do not promote, or not enough data, from a shadow stats snapshot.

    `primary_error_rate` is the live version's error rate over the same period (from its telemetry).
    """
    samples = int(snapshot.get("samples") or 0)
    low, high = snapshot.get("agreement_interval") or (None, None)
    primary_p95 = (snapshot.get("primary_latency_ms") or {}).get("p95")
    shadow_p95 = (snapshot.get("shadow_latency_ms") or {}).get("p95")
    ratio = shadow_p95 / primary_p95 if shadow_p95 is not None and primary_p95 else None
    runs = int(snapshot.get("runs") or 0)
    failures = int(snapshot.get("errors") or 0) + int(snapshot.get("timeouts") or 0)
    error_rate = failures / runs if runs else None
    checks = (
        _check("samples", float(samples), float(min_samples), ">="),
        _check(
            "agreement", snapshot.get("agreement_rate"), min_agreement, ">=",
            f"{snapshot.get('agreeing_rows', 0)} of {snapshot.get('rows', 0)} rows agree; "
            f"{snapshot.get('confidence', 0.95):.0%} Wilson interval [{low}, {high}]",
        ),
        _check(
            "latency_p95_ratio", ratio, max_latency_ratio, "<=",
            f"shadow p95 {shadow_p95} ms / primary p95 {primary_p95} ms",
        ),
        _check(
            "error_rate", error_rate, max_error_ratio * primary_error_rate, "<=",
            f"{failures} errors+timeouts of {runs} runs; primary error rate {primary_error_rate}"
            f" x {max_error_ratio}",
        ),
    )  # fmt: skip
    if runs >= min_samples and not checks[3].passed:
        verdict = DO_NOT_PROMOTE  # a version that fails or hangs never reaches min_samples comparisons
    elif samples < min_samples or any(c.observed is None for c in checks):
        verdict = NOT_ENOUGH_DATA
    else:
        verdict = PROMOTE if all(c.passed for c in checks) else DO_NOT_PROMOTE
    return Recommendation(
        model=str(snapshot.get("model", "")),
        shadow_version=str(snapshot.get("shadow_version", "")),
        verdict=verdict,
        checks=checks,
    )
