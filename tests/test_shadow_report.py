"""The promotion recommendation follows its thresholds and shows the numbers behind it."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from modelserve.shadow.compare import label
from modelserve.shadow.report import DO_NOT_PROMOTE, NOT_ENOUGH_DATA, PROMOTE, recommend
from modelserve.shadow.stats import ShadowStats

AGREE = ({"p": np.array([[0.9, 0.1]])}, {"p": np.array([[0.8, 0.2]])})
DISAGREE = ({"p": np.array([[0.9, 0.1]])}, {"p": np.array([[0.2, 0.8]])})


def _snapshot(
    *, agree: int, disagree: int = 0, errors: int = 0, timeouts: int = 0, shadow_latency_s: float = 1e-3
) -> dict[str, Any]:
    stats = ShadowStats("fraud", "2")
    for i in range(agree + disagree):
        primary, shadow = AGREE if i < agree else DISAGREE
        stats.record_comparison(
            label(primary, shadow), primary_latency_s=1e-3, shadow_latency_s=shadow_latency_s,
            inputs={}, primary_outputs=primary, shadow_outputs=shadow,
        )  # fmt: skip
    for _ in range(errors):
        stats.record_error("RuntimeError: boom")
    for _ in range(timeouts):
        stats.record_timeout()
    return stats.snapshot()


def _check(recommendation: Any, name: str) -> Any:
    return next(c for c in recommendation.checks if c.name == name)


def test_a_healthy_shadow_with_enough_samples_is_promoted() -> None:
    result = recommend(_snapshot(agree=950, disagree=50), primary_error_rate=0.0)
    assert result.verdict == PROMOTE
    assert all(c.passed for c in result.checks)
    agreement = _check(result, "agreement")
    assert (agreement.observed, agreement.threshold, agreement.rule) == (0.95, 0.85, ">=")
    assert "950 of 1000 rows" in agreement.detail
    assert _check(result, "latency_p95_ratio").observed == pytest.approx(1.0)


def test_too_few_samples_is_not_enough_data_never_a_pass() -> None:
    result = recommend(_snapshot(agree=999), primary_error_rate=0.0)
    assert result.verdict == NOT_ENOUGH_DATA
    assert _check(result, "samples").observed == 999 and not _check(result, "samples").passed
    assert recommend(_snapshot(agree=0), primary_error_rate=0.0).verdict == NOT_ENOUGH_DATA


def test_low_agreement_is_do_not_promote_with_the_observed_rate() -> None:
    result = recommend(_snapshot(agree=800, disagree=200), primary_error_rate=0.0)
    assert result.verdict == DO_NOT_PROMOTE
    assert _check(result, "agreement").observed == 0.8 and not _check(result, "agreement").passed
    assert (
        recommend(_snapshot(agree=800, disagree=200), primary_error_rate=0.0, min_agreement=0.8).verdict
        == PROMOTE
    )


def test_slow_shadow_fails_the_p95_latency_ratio() -> None:
    result = recommend(_snapshot(agree=1000, shadow_latency_s=2e-3), primary_error_rate=0.0)
    ratio = _check(result, "latency_p95_ratio")
    assert result.verdict == DO_NOT_PROMOTE
    assert ratio.observed == pytest.approx(2.0, rel=0.05) and ratio.threshold == 1.5 and not ratio.passed


def test_error_rate_is_compared_with_twice_the_primary_rate() -> None:
    snapshot = _snapshot(agree=1000, errors=15, timeouts=5)  # 20 failures of 1,020 runs
    assert recommend(snapshot, primary_error_rate=0.01).verdict == PROMOTE
    strict = recommend(snapshot, primary_error_rate=0.005)
    errors = _check(strict, "error_rate")
    assert strict.verdict == DO_NOT_PROMOTE
    assert errors.observed == pytest.approx(20 / 1020) and errors.threshold == pytest.approx(0.01)


def test_a_version_that_always_fails_is_do_not_promote_without_comparisons() -> None:
    assert recommend(_snapshot(agree=0, errors=1000), primary_error_rate=0.0).verdict == DO_NOT_PROMOTE
    assert recommend(_snapshot(agree=0, timeouts=2000), primary_error_rate=0.0).verdict == DO_NOT_PROMOTE
    assert recommend(_snapshot(agree=0, errors=10), primary_error_rate=0.0).verdict == NOT_ENOUGH_DATA


def test_recommendation_is_json_ready_and_names_model_and_version() -> None:
    result = recommend(_snapshot(agree=10), primary_error_rate=0.0, min_samples=5)
    document = json.loads(json.dumps(result.as_dict()))
    assert (document["model"], document["shadow_version"], document["verdict"]) == ("fraud", "2", PROMOTE)
    assert [c["name"] for c in document["checks"]] == [
        "samples",
        "agreement",
        "latency_p95_ratio",
        "error_rate",
    ]
