"""An arm the health gates removed returns after a cool-down, on probation at the floor weight: it is
removed again (with a doubled cool-down) if it still fails, and reinstated once it passes.

The supervisor, the bandit, the experiment service and the sliding windows are the real ones; only
the clock is a variable, so the cool-downs run in no time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelserve.experiments.bandits import EpsilonGreedy, bandit_from_dict
from modelserve.experiments.experiment import parse_experiment_spec
from modelserve.experiments.lifecycle import ExperimentSupervisor, cooldown_s
from modelserve.experiments.running import RunningExperiment
from modelserve.experiments.service import ExperimentService
from modelserve.serving.registry import ModelRegistry
from modelserve.serving.repository import ModelRepository
from modelserve.state.store import MemoryStateStore
from modelserve.telemetry.windows import SlidingWindows

COOLDOWN_S = 100.0
FLOOR = 0.05


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def serve(windows: SlidingWindows, arm: str, requests: int, *, error_every: int = 0) -> None:
    """`requests` served by `arm` (1 ms each); every `error_every`-th one an error."""
    for i in range(requests):
        windows.record("m", arm, "primary", 0.001, error=bool(error_every) and i % error_every == 0)


def kinds(service: ExperimentService) -> list[str]:
    return [event["kind"] for event in service.events.get("m", [])]


def last(service: ExperimentService, kind: str) -> dict[str, Any]:
    return [event for event in service.events["m"] if event["kind"] == kind][-1]


@pytest.mark.anyio
async def test_a_removed_arm_returns_on_probation_is_removed_again_then_reinstated(tmp_path: Path) -> None:
    clock = Clock()
    windows = SlidingWindows(window_s=60.0, sub_windows=10, clock=clock)
    service = ExperimentService(
        registry=ModelRegistry(ModelRepository(tmp_path), MemoryStateStore()),
        store=MemoryStateStore(),
        model_names=lambda: ["m"],
        rng=np.random.default_rng(1),
    )
    spec = parse_experiment_spec({
        "model": "m", "arms": ["1", "2", "3"], "metric": "binary", "policy": "epsilon_greedy",
        "bandit": {"floor": FLOOR, "min_outcomes": 5, "reweight_every": 1, "cooldown_s": COOLDOWN_S},
    })  # fmt: skip
    rng = np.random.default_rng(2)
    experiment = RunningExperiment(spec, experiment_id="e1", started_at=clock.now, rng=rng)
    service.experiments["m"] = experiment
    bandit = experiment.bandit
    assert isinstance(bandit, EpsilonGreedy)
    supervisor = ExperimentSupervisor(service, windows=windows, clock=clock)

    # Arm 2 fails the health gates: out of the draw.
    for arm in ("1", "3"):
        serve(windows, arm, 200)
    serve(windows, "2", 200, error_every=2)
    await supervisor.check()
    removed = last(service, "arm_removed")
    assert removed["arm"] == "2" and removed["removals"] == 1 and removed["returns_after_s"] == COOLDOWN_S
    assert bandit.weights()["2"] == 0.0

    clock.now += COOLDOWN_S - 1  # not yet
    await supervisor.check()
    assert "arm_returned" not in kinds(service) and "2" in bandit.removed

    clock.now += 1  # the cool-down is over: back at exactly the floor, even with the best rewards
    for _ in range(20):
        bandit.update("2", 1.0)
        bandit.update("1", 0.0)
        bandit.update("3", 0.0)
    await supervisor.check()
    returned = last(service, "arm_returned")
    assert returned["arm"] == "2" and returned["after_s"] == COOLDOWN_S
    assert bandit.weights()["2"] == pytest.approx(FLOOR) and "2" in bandit.probation
    assert "2 (5%: 0 assigned, 0 outcomes, on probation at the floor weight)" in experiment.summary(
        frozenset({"1", "2", "3"})
    )
    assert bandit_from_dict(bandit.to_dict(), rng=np.random.default_rng(0)).probation == bandit.probation

    # On probation it fails again, on what it served since it came back: removed, cool-down doubled.
    clock.now += 10
    for arm in ("1", "3"):
        serve(windows, arm, 150)
    serve(windows, "2", 150, error_every=2)
    await supervisor.check()
    again = last(service, "arm_removed")
    assert again["removals"] == 2 and again["on_probation"] is True
    assert again["returns_after_s"] == 2 * COOLDOWN_S == cooldown_s(COOLDOWN_S, 2)
    assert bandit.weights()["2"] == 0.0

    clock.now += 2 * COOLDOWN_S
    await supervisor.check()
    assert kinds(service).count("arm_returned") == 2
    assert bandit.weights()["2"] == pytest.approx(FLOOR)
    await supervisor.check()  # nothing served since it came back: inconclusive, stays on probation
    assert "2" in bandit.probation

    # Healthy now: reinstated, and its rewards weigh again (the best arm takes the most traffic).
    clock.now += 10
    for arm in ("1", "2", "3"):
        serve(windows, arm, 150)
    await supervisor.check()
    reinstated = last(service, "arm_reinstated")
    assert reinstated["arm"] == "2" and reinstated["requests"] == 150
    assert not bandit.probation and not bandit.removed
    assert bandit.weights()["2"] > 0.5
    assert kinds(service) == [
        "arm_removed", "arm_returned", "arm_removed", "arm_returned", "arm_reinstated"
    ]  # fmt: skip


def test_cooldown_doubles_per_removal_up_to_a_day() -> None:
    assert [cooldown_s(600, n) for n in (1, 2, 3)] == [600, 1200, 2400]
    assert cooldown_s(600, 30) == 86_400
    assert cooldown_s(200_000, 3) == 200_000  # a cool-down longer than a day is kept as configured
