"""The shadow report decides through the rollout gates: same data, same verdicts, numbers shown."""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np
import pytest

from modelserve.rollout.controller import RolloutController
from modelserve.rollout.gates import FAIL, INCONCLUSIVE, PASS, ShadowAgreement
from modelserve.rollout.plan import default_plan
from modelserve.rollout.sample import Sample, stage_samples
from modelserve.shadow.report import DO_NOT_PROMOTE, NOT_ENOUGH_DATA, PROMOTE, recommend, report_stage
from modelserve.state.store import MemoryStateStore
from modelserve.telemetry.windows import LatencyHistogram, SlidingWindows

MODEL = "credit"


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


class Target:
    """Only what starting a rollout needs: version 1 live, everything ready."""

    async def live_version(self, model: str) -> str | None:
        return "1"

    async def is_ready(self, model: str, version: str) -> bool:
        return True

    async def set_traffic(self, model: str, candidate: str, weight: int) -> None:
        pass

    async def set_shadow(self, model: str, candidate: str, on: bool) -> None:
        pass

    async def promote(self, model: str, version: str) -> None:
        pass


def shadowed_traffic(
    windows: SlidingWindows, clock: Clock, seconds: int, *, rps: int = 20, shadow_errors: float = 0.0,
    slowdown: float = 1.0, seed: int = 0,
) -> None:  # fmt: skip
    """`rps` requests a second, each run by the live version and shadowed by the candidate."""
    rng = np.random.default_rng(seed)
    for _ in range(seconds * rps):
        clock.now += 1.0 / rps
        compute = float(0.002 * np.exp(0.3 * rng.standard_normal()))
        windows.record(MODEL, "1", "primary", compute * 3, compute_s=compute)
        shadow_compute = float(0.002 * slowdown * np.exp(0.3 * rng.standard_normal()))
        failed = bool(rng.random() < shadow_errors)
        windows.record(MODEL, "2", "shadow", shadow_compute * 5, error=failed, compute_s=shadow_compute)


def both_verdicts(
    seconds: int, agreement: ShadowAgreement, **traffic: Any
) -> tuple[dict[str, str], dict[str, str], str]:
    """(rollout gate verdicts, report check verdicts, report verdict) after `seconds` of shadow."""
    clock = Clock()
    windows = SlidingWindows(window_s=600, sub_windows=120, clock=clock)
    controller = RolloutController(
        target=Target(), windows=windows, store=MemoryStateStore(), agreement=lambda m, v: agreement,
        clock=clock, wall_clock=clock,
    )  # fmt: skip
    started = clock.now
    anyio.run(controller.start, MODEL, "2", default_plan())
    shadowed_traffic(windows, clock, seconds, **traffic)
    anyio.run(controller.evaluate_once, clock.now)
    status = controller.status(MODEL)
    assert status is not None and status.stage == "shadow"
    rollout = {g.gate: g.verdict for g in status.gates}
    # The report, as ShadowService.report builds it: both series since the shadow began.
    candidate, baseline, measure = stage_samples(
        windows, MODEL, "2", "1", shadow=True, window_s=clock.now - started, now=clock.now
    )
    assert measure == "compute"
    report = recommend(
        model=MODEL, shadow_version="2", stage=report_stage(), candidate=candidate, baseline=baseline,
        agreement=agreement,
    )  # fmt: skip
    return rollout, {c.name: c.verdict for c in report.checks}, report.verdict


@pytest.mark.parametrize(
    ("case", "agreement", "traffic", "verdict"),
    [
        ("healthy", ShadowAgreement(rate=0.95, samples=1200, agreeing=1140), {}, PROMOTE),
        ("agreement 0.70", ShadowAgreement(rate=0.7, samples=1200, agreeing=840), {}, DO_NOT_PROMOTE),
        (
            "5% errors",
            ShadowAgreement(rate=0.95, samples=1200, agreeing=1140),
            {"shadow_errors": 0.05},
            DO_NOT_PROMOTE,
        ),
        (
            "3x slower",
            ShadowAgreement(rate=0.95, samples=1200, agreeing=1140),
            {"slowdown": 3.0},
            DO_NOT_PROMOTE,
        ),
        ("too few", ShadowAgreement(rate=0.95, samples=100, agreeing=95), {"rps": 2}, NOT_ENOUGH_DATA),
        # The agreement that once rolled back a rollout while the report said promote: it holds.
        (
            "0.8294 of 170",
            ShadowAgreement(rate=0.8294, samples=170, agreeing=141),
            {"rps": 3},
            NOT_ENOUGH_DATA,
        ),
    ],
)
def test_report_and_rollout_gates_give_the_same_verdict_on_the_same_data(
    case: str, agreement: ShadowAgreement, traffic: dict[str, Any], verdict: str
) -> None:
    rollout, report, recommendation = both_verdicts(60, agreement, **traffic)
    assert report == rollout
    assert recommendation == verdict


def test_credit_v2_agreeing_86_percent_passes_a_bar_of_85() -> None:
    rollout, report, recommendation = both_verdicts(
        60, ShadowAgreement(rate=0.8567, samples=1200, agreeing=1028)
    )
    assert report == rollout and report["shadow_agreement"] == PASS and recommendation == PROMOTE


def test_every_check_shows_estimate_interval_limit_and_samples() -> None:
    histogram = LatencyHistogram()
    for value in np.linspace(0.001, 0.003, 500):
        histogram.add(float(value))
    sample = Sample(requests=500, errors=1, latency=histogram)
    result = recommend(
        model=MODEL, shadow_version="2", stage=report_stage(min_samples=500), candidate=sample,
        baseline=sample, agreement=ShadowAgreement(rate=0.9, samples=500, agreeing=450),
    )  # fmt: skip
    assert result.verdict == PROMOTE
    for check in result.checks:
        assert check.verdict == PASS and check.passed and check.samples == 500
        assert check.observed is not None and check.threshold is not None and check.interval is not None
        assert check.required_samples == 500 and check.confidence == 0.95
    errors = next(c for c in result.checks if c.name == "error_rate_vs_baseline")
    assert (errors.baseline, errors.baseline_samples) == (1 / 500, 500) and errors.difference_interval
    agreement = next(c for c in result.checks if c.name == "shadow_agreement")
    assert (agreement.observed, agreement.threshold, agreement.rule) == (0.9, 0.85, ">=")
    assert "vs minimum 0.85" in agreement.detail


def test_report_thresholds_override_the_gates() -> None:
    stage = report_stage(min_agreement=0.95, max_latency_ratio=2.0, max_error_ratio=3.0, min_samples=50)
    gates = {g.name: g for g in stage.gates}
    assert gates["shadow_agreement"].threshold == 0.95 and gates["p95_vs_baseline"].threshold == 2.0
    assert gates["error_rate_vs_baseline"].threshold == 3.0 and gates["error_rate_absolute"].threshold == 0.01
    assert stage.min_samples == 50
    sample = Sample(requests=0)
    verdicts = {c.verdict for c in recommend(
        model=MODEL, shadow_version="2", stage=stage, candidate=sample, baseline=sample, agreement=None
    ).checks}  # fmt: skip
    assert verdicts == {INCONCLUSIVE} and FAIL not in verdicts
