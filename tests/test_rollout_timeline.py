"""The rollout timeline people read: one rollout at a time, times from its start, skipped stages named."""

from __future__ import annotations

import re

import pytest

from modelserve.rollout.controller import RolloutController
from modelserve.rollout.events import format_gate, format_history, format_timeline, split_rollouts
from modelserve.rollout.gates import GateResult
from modelserve.rollout.plan import default_plan
from modelserve.state.store import MemoryStateStore
from modelserve.telemetry.windows import SlidingWindows

MODEL = "credit"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_800_000_000.0 + self.now


class Target:
    """The serving side reduced to what the controller asks: live version, readiness, split, shadow."""

    def __init__(self) -> None:
        self.live = "1"

    async def live_version(self, model: str) -> str | None:
        return self.live

    async def is_ready(self, model: str, version: str) -> bool:
        return True

    async def set_traffic(self, model: str, candidate: str, weight: int) -> None:
        pass

    async def set_shadow(self, model: str, candidate: str, on: bool) -> None:
        pass

    async def promote(self, model: str, version: str) -> None:
        self.live = version


def controller(clock: Clock, target: Target) -> RolloutController:
    return RolloutController(
        target=target,
        windows=SlidingWindows(window_s=60, sub_windows=6, clock=clock),
        store=MemoryStateStore(),
        clock=clock,
        wall_clock=clock.wall,
    )


@pytest.mark.anyio
async def test_promote_all_names_the_skipped_stages_instead_of_saying_they_passed() -> None:
    clock, target = Clock(), Target()
    rollouts = controller(clock, target)
    await rollouts.start(MODEL, "2", default_plan())
    clock.now += 3.0
    status = await rollouts.promote(MODEL, all_stages=True)
    assert status.state == "promoted" and target.live == "2"
    assert "passed" not in status.reason.split(";")[-1]
    assert status.reason == (
        "0 of 5 stages passed their gates; "
        "skipped by an operator: shadow, canary-5, canary-25, canary-50, full"
    )
    timeline = format_timeline(rollouts.events(MODEL))
    assert "operator skipped shadow, canary-5, canary-25, canary-50, full" in timeline
    assert "all 5 stages passed" not in timeline


@pytest.mark.anyio
async def test_the_timeline_shows_only_the_latest_rollout_with_times_from_its_start() -> None:
    clock, target = Clock(), Target()
    rollouts = controller(clock, target)
    await rollouts.start(MODEL, "2", default_plan())
    clock.now += 100.0
    await rollouts.abort(MODEL, "changed my mind")
    clock.now += 500.0  # the second rollout starts 600 s after the first
    await rollouts.start(MODEL, "2", default_plan())
    clock.now += 2.0
    await rollouts.promote(MODEL)  # skip the shadow stage only
    events = rollouts.events(MODEL)
    assert [len(group) for group in split_rollouts(events)] == [2, 3]

    timeline = format_timeline(events)
    offsets = [float(m) for m in re.findall(r"^\+\s*([0-9.]+)s", timeline, flags=re.M)]
    assert offsets == [0.0, 2.0, 2.0]  # started, skipped, advanced: counted from the second start
    assert "changed my mind" not in timeline
    assert "operator skipped shadow" in timeline

    history = format_history(events).splitlines()
    assert len(history) == 2
    assert "in progress" in history[0] and "skipped by an operator: shadow" in history[0]
    assert "aborted after 100.0 s" in history[1]


def test_latency_gates_read_in_milliseconds_and_rates_stay_plain() -> None:
    def gate(metric: str, observed: float, threshold: float) -> GateResult:
        return GateResult(
            gate=f"{metric}_gate", metric=metric, verdict="pass", observed=observed, threshold=threshold,
            baseline=None, samples=10, baseline_samples=None, required_samples=5, dry_run=False, detail="",
        )  # fmt: skip

    assert "observed=12.5 ms limit=200 ms" in format_gate(gate("p95", 0.0125, 0.2))
    assert "observed=0.02 limit=0.01" in format_gate(gate("error_rate", 0.02, 0.01))


def test_a_gate_line_shows_its_intervals_with_the_samples() -> None:
    result = GateResult(
        gate="p95_vs_baseline", metric="p95", verdict="fail", observed=0.005, threshold=0.0015,
        baseline=0.001, samples=300, baseline_samples=3000, required_samples=1000, dry_run=False,
        detail="", interval=[0.004, None], difference_interval=[0.003, 0.0045],
    )  # fmt: skip
    line = format_gate(result)
    assert "observed=5 ms limit=1.5 ms baseline=1 ms (n=3000) n=300/1000" in line
    assert line.endswith("interval=[4 ms, inf] excess=[3 ms, 4.5 ms]")
