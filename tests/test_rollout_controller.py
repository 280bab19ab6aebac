"""The rollout controller against a recording stand-in for the server, fed with synthetic traffic.

`RecordingTarget` stands for the serving layer (which is not under test here): it keeps the live
version, readiness, the canary split and the shadow, and records every call. `Traffic` routes
requests by that split (deterministically: request n goes to the candidate when n % 100 < weight)
and records them into real `SlidingWindows` on an injected clock, so no test sleeps.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from modelserve.errors import Conflict, NotFound, NotReady
from modelserve.rollout.controller import RolloutController
from modelserve.rollout.events import RolloutEvent, format_timeline
from modelserve.rollout.gates import PASS, ShadowAgreement
from modelserve.rollout.plan import RolloutPlan, plan_from_dict
from modelserve.rollout.webhooks import WebhookNotifier
from modelserve.state.store import FileStateStore, MemoryStateStore, StateStore
from modelserve.telemetry.windows import SlidingWindows

MODEL, LIVE, CANDIDATE = "fraud", "1", "2"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self, now: float = 10_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_700_000_000.0 + self.now


class RecordingTarget:
    """Stands for the server: live versions, readiness, split and shadow per model; records calls."""

    def __init__(self, *, live: str = LIVE, ready: tuple[str, ...] = (LIVE, CANDIDATE)) -> None:
        self.live = {MODEL: live}
        self.ready = {(MODEL, v) for v in ready}
        self.weights: dict[str, tuple[str, int]] = {}
        self.shadows: dict[str, str | None] = {}
        self.deadlines: dict[str, float | None] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.refuse_traffic = False

    async def live_version(self, model: str) -> str | None:
        return self.live.get(model)

    async def is_ready(self, model: str, version: str) -> bool:
        return (model, version) in self.ready

    async def set_traffic(self, model: str, candidate: str, weight: int) -> None:
        if self.refuse_traffic:
            raise RuntimeError("slot table is locked")
        self.calls.append(("traffic", candidate, weight))
        self.weights[model] = (candidate, weight)

    async def set_shadow(self, model: str, candidate: str, on: bool) -> None:
        self.calls.append(("shadow", candidate, on))
        self.shadows[model] = candidate if on else None

    async def promote(self, model: str, version: str) -> None:
        self.calls.append(("promote", version))
        self.live[model] = version
        self.weights.pop(model, None)

    async def set_deadline(self, model: str, timeout_s: float | None) -> None:
        self.calls.append(("deadline", timeout_s))
        self.deadlines[model] = timeout_s


@dataclass
class Behaviour:
    error_every: int = 0  # every n-th candidate request fails; 0: none
    slowdown: float = 1.0


class Traffic:
    """Synthetic requests routed by the target's split, recorded into the windows."""

    def __init__(
        self, windows: SlidingWindows, target: RecordingTarget, clock: Clock, candidate: Behaviour
    ) -> None:
        self.windows, self.target, self.clock, self.candidate = windows, target, clock, candidate
        self.sent = 0
        self.candidate_sent = 0

    def _serve(self, version: str, role: str, base_latency: float) -> None:
        is_candidate = version == CANDIDATE
        error = False
        if is_candidate:
            error = bool(self.candidate.error_every) and self.candidate_sent % self.candidate.error_every == 0
            self.candidate_sent += 1
        latency = base_latency * (self.candidate.slowdown if is_candidate else 1.0)
        self.windows.record(MODEL, version, role, latency, error=error)

    def run(self, seconds: int = 1, rps: int = 100) -> None:
        for _ in range(seconds):
            start = self.clock.now
            for i in range(rps):
                self.clock.now = start + i / rps
                candidate, weight = self.target.weights.get(MODEL, ("", 0))
                live = self.target.live[MODEL]
                version = candidate if candidate and self.sent % 100 < weight else live
                base = 0.010 + (self.sent % 7) * 0.001
                self._serve(version, "primary", base)
                shadow = self.target.shadows.get(MODEL)
                if shadow and shadow != version:
                    self._serve(shadow, "shadow", base)
                self.sent += 1
            self.clock.now = start + 1.0


STAGES = [
    {"name": "shadow", "shadow": True, "min_duration_s": 5, "min_samples": 100},
    {"name": "canary-5", "weight": 5, "min_duration_s": 5, "min_samples": 40},
    {"name": "canary-25", "weight": 25, "min_duration_s": 5, "min_samples": 100},
    {"name": "canary-50", "weight": 50, "min_duration_s": 5, "min_samples": 200},
    {"name": "full", "weight": 100, "min_duration_s": 12, "min_samples": 200},  # outlives the window
]


def make_plan(stages: list[dict[str, Any]] = STAGES, **extra: Any) -> RolloutPlan:
    return plan_from_dict({"name": "test", "interval_s": 1.0, "window_s": 60.0, "stages": stages, **extra})


class Harness:
    def __init__(
        self,
        behaviour: Behaviour | None = None,
        *,
        store: StateStore | None = None,
        target: RecordingTarget | None = None,
        **options: Any,
    ) -> None:
        self.clock = Clock()
        self.windows = SlidingWindows(window_s=60, sub_windows=60, clock=self.clock)
        self.target = target or RecordingTarget()
        self.store = store or MemoryStateStore()
        self.traffic = Traffic(self.windows, self.target, self.clock, behaviour or Behaviour())
        self.controller = RolloutController(
            target=self.target,
            windows=self.windows,
            store=self.store,
            agreement=self.agreement,
            clock=self.clock,
            wall_clock=self.clock.wall,
            **options,
        )

    def agreement(self, model: str, candidate: str) -> ShadowAgreement:
        samples = self.windows.snapshot(model, candidate, "shadow", 10.0).requests
        return ShadowAgreement(rate=0.96 if samples else None, samples=samples)

    async def step(self, seconds: int = 1) -> list[RolloutEvent]:
        self.traffic.run(seconds)
        return await self.controller.evaluate_once()

    async def run_until(self, done: Any, max_steps: int = 200) -> int:
        for steps in range(1, max_steps + 1):
            await self.step()
            if done():
                return steps
        raise AssertionError(f"condition not reached in {max_steps} steps")

    def state(self) -> str:
        status = self.controller.status(MODEL)
        assert status is not None
        return status.state

    def kinds(self) -> list[str]:
        return [e.kind for e in self.controller.events(MODEL) if e.kind != "gates"]


@pytest.mark.anyio
async def test_healthy_candidate_is_promoted_through_every_stage_with_the_numbers_shown() -> None:
    h = Harness()
    await h.controller.start(MODEL, CANDIDATE, make_plan())
    await h.run_until(lambda: h.state() == "promoted")

    assert h.kinds() == ["started", "advanced", "advanced", "advanced", "advanced", "promoted"]
    assert h.target.live[MODEL] == CANDIDATE
    assert [c for c in h.target.calls if c[0] == "traffic"] == [
        ("traffic", CANDIDATE, w) for w in (0, 5, 25, 50, 100)
    ]
    assert ("promote", CANDIDATE) in h.target.calls
    decisions = [e for e in h.controller.events(MODEL) if e.kind in ("advanced", "promoted")]
    for event in decisions:
        assert event.gates and all(g.verdict == PASS for g in event.gates)
        assert all(g.observed is not None and g.samples >= g.required_samples for g in event.gates)
    assert "shadow_agreement" in {g.gate for g in decisions[0].gates}
    assert decisions[-1].data["baseline_source"] == "frozen"  # the live version got no traffic at 100 %
    timeline = format_timeline(h.controller.events(MODEL))
    assert "p95_vs_baseline: pass observed=" in timeline and "promoted" in timeline
    print(timeline)


@pytest.mark.anyio
async def test_full_stage_compares_with_the_frozen_baseline_not_the_live_windows_leftovers() -> None:
    # Right after the switch to 100 % the live version's window still holds requests served before
    # it (a sub-window's edge): enough to count, but from another load. A host twice as busy from
    # then on (only the candidate serves) must not read as the candidate being slower.
    h = Harness()
    coarse = SlidingWindows(window_s=60, sub_windows=12, clock=h.clock)  # 5 s sub-windows, as served
    h.windows = h.traffic.windows = h.controller.windows = coarse
    stages = [
        {"name": "canary-50", "weight": 50, "min_duration_s": 5, "min_samples": 50},
        {"name": "full", "weight": 100, "min_duration_s": 5, "min_samples": 50},
    ]
    await h.controller.start(MODEL, CANDIDATE, make_plan(stages))
    await h.run_until(lambda: h.controller.status(MODEL).stage == "full")  # type: ignore[union-attr]
    h.traffic.candidate.slowdown = 3.0
    await h.run_until(lambda: h.state() != "running")

    assert h.state() == "promoted"
    full = [e for e in h.controller.events(MODEL) if e.stage == "full" and e.kind in ("gates", "promoted")]
    assert full and all(e.data["baseline_source"] == "frozen" for e in full)
    p95 = next(g for g in full[-1].gates if g.gate == "p95_vs_baseline")
    assert p95.verdict == PASS and "not acted on" in p95.detail


@pytest.mark.anyio
async def test_five_percent_errors_hold_the_stage_then_roll_back_once_beyond_doubt() -> None:
    h = Harness(Behaviour(error_every=20))
    plan = make_plan(STAGES[1:])
    await h.controller.start(MODEL, CANDIDATE, plan)
    await h.run_until(lambda: h.state() == "rolled_back")
    # It never left canary-5: 5 % errors never look like a pass.
    assert {e.stage for e in h.controller.events(MODEL)} == {"canary-5"}
    assert h.kinds() == ["started", "rolled_back"]
    rollback = [e for e in h.controller.events(MODEL) if e.kind == "rolled_back"]
    held = [e for e in h.controller.events(MODEL) if e.kind == "gates"]
    assert any(g.verdict == "inconclusive" and g.samples >= 40 for e in held for g in e.gates)
    failing = {g.gate for g in rollback[0].gates if g.verdict == "fail"}
    assert failing and failing <= {"error_rate_vs_baseline", "error_rate_absolute"}
    for gate in rollback[0].gates:
        if gate.verdict == "fail":  # beyond doubt: the whole interval lies above the limit
            assert gate.interval is not None and gate.threshold is not None
            if gate.difference_interval is not None and gate.baseline is not None:
                assert gate.difference_interval[0] + gate.baseline > gate.threshold
            else:
                assert gate.interval[0] is not None and gate.interval[0] > gate.threshold
    error_gate = next(g for g in rollback[0].gates if g.gate == "error_rate_vs_baseline")
    assert error_gate.observed == pytest.approx(0.05, abs=0.005)
    assert (error_gate.baseline, error_gate.threshold) == (0.0, 0.005)
    assert h.target.weights[MODEL] == (CANDIDATE, 0) and h.target.shadows[MODEL] is None
    assert h.target.live[MODEL] == LIVE
    served = h.windows.totals(MODEL, CANDIDATE, "primary").requests
    h.traffic.run(20)
    assert h.windows.totals(MODEL, CANDIDATE, "primary").requests == served  # no request reaches it now
    status = h.controller.status(MODEL)
    assert status is not None and status.weight == 0 and "error_rate_absolute" in status.reason


@pytest.mark.anyio
async def test_three_times_slower_candidate_is_rolled_back_by_the_p95_gate() -> None:
    h = Harness(Behaviour(slowdown=3.0))
    await h.controller.start(MODEL, CANDIDATE, make_plan(STAGES[1:]))
    await h.run_until(lambda: h.state() == "rolled_back")
    rollback = h.controller.events(MODEL)[-1]
    assert {g.gate for g in rollback.gates if g.verdict == "fail"} == {"p95_vs_baseline"}
    p95 = next(g for g in rollback.gates if g.gate == "p95_vs_baseline")
    assert p95.observed is not None and p95.baseline is not None
    assert p95.observed == pytest.approx(3 * p95.baseline, rel=0.05)
    assert h.target.weights[MODEL] == (CANDIDATE, 0)


@pytest.mark.anyio
@pytest.mark.parametrize("gates", [None, []])
async def test_no_traffic_never_promotes_and_pauses_with_the_reason_after_the_stage_bound(
    gates: list[Any] | None,
) -> None:
    h = Harness()
    plan = make_plan() if gates is None else make_plan(gates=gates)
    await h.controller.start(MODEL, CANDIDATE, plan)
    for _ in range(500):
        h.clock.now += 1.0
        await h.controller.evaluate_once()
    status = h.controller.status(MODEL)
    assert status is not None
    assert (status.state, status.stage_index) == ("paused", 0)
    assert {g.verdict for g in status.gates} <= {"inconclusive"}
    assert not any(c[0] == "promote" for c in h.target.calls)
    paused = [e for e in h.controller.events(MODEL) if e.kind == "paused"]
    assert len(paused) == 1 and "undecided after 61 s" in paused[0].message  # at least a minute
    assert "candidate has 0 of 100 samples" in paused[0].message


@pytest.mark.anyio
async def test_paused_rollout_does_not_advance_but_still_rolls_back() -> None:
    h = Harness()
    await h.controller.start(MODEL, CANDIDATE, make_plan(STAGES[1:]))
    await h.controller.pause(MODEL, "waiting for the on-call")
    for _ in range(30):
        await h.step()
    status = h.controller.status(MODEL)
    assert status is not None and (status.state, status.stage_index) == ("paused", 0)
    assert status.passes["error_rate_vs_baseline"] >= 20  # it keeps evaluating

    h.traffic.candidate.error_every = 10
    await h.run_until(lambda: h.state() == "rolled_back", max_steps=120)
    assert h.target.weights[MODEL] == (CANDIDATE, 0)
    assert h.kinds()[-2:] == ["paused", "rolled_back"]


@pytest.mark.anyio
async def test_resume_lets_a_paused_rollout_advance() -> None:
    h = Harness()
    await h.controller.start(MODEL, CANDIDATE, make_plan(STAGES[1:]))
    await h.controller.pause(MODEL)
    for _ in range(25):  # p95 needs 100 candidate samples: 20 s at 5 % of 100 requests/s
        await h.step()
    await h.controller.resume(MODEL)
    await h.step()
    status = h.controller.status(MODEL)
    assert status is not None and (status.state, status.stage) == ("running", "canary-25")


@pytest.mark.anyio
async def test_dry_run_gate_logs_its_failure_but_never_acts() -> None:
    h = Harness(Behaviour(error_every=20))
    dry = [{"name": "error_rate_absolute", "metric": "error_rate", "threshold": 0.01, "dry_run": True}]
    await h.controller.start(MODEL, CANDIDATE, make_plan(STAGES[1:], gates=dry))
    await h.run_until(lambda: h.state() == "promoted")
    dry_failures = [e for e in h.controller.events(MODEL) if e.kind == "dry_run_failure"]
    assert dry_failures and dry_failures[0].gates[0].observed == pytest.approx(0.05)
    assert "rolled_back" not in h.kinds()


@pytest.mark.anyio
async def test_failure_limit_tolerates_that_many_failed_evaluations() -> None:
    h = Harness(Behaviour(error_every=20))
    gates = [{"name": "errors", "metric": "error_rate", "threshold": 0.01, "failure_limit": 2}]
    await h.controller.start(MODEL, CANDIDATE, make_plan(STAGES[1:], gates=gates))
    failed_evaluations = 0
    while h.state() == "running":
        events = await h.step()
        status = h.controller.status(MODEL)
        assert status is not None
        if status.gates and status.gates[0].verdict == "fail":
            failed_evaluations += 1
        assert not events or failed_evaluations <= 3
    assert (h.state(), failed_evaluations) == ("rolled_back", 3)


@pytest.mark.anyio
async def test_second_start_for_the_same_model_is_refused() -> None:
    h = Harness()
    await h.controller.start(MODEL, CANDIDATE, make_plan())
    with pytest.raises(Conflict, match="already has a rollout to version '2'"):
        await h.controller.start(MODEL, "3", make_plan())


@pytest.mark.anyio
async def test_start_checks_the_live_version_and_readiness() -> None:
    h = Harness(target=RecordingTarget(ready=(LIVE,)))
    with pytest.raises(NotReady, match="stage it first"):
        await h.controller.start(MODEL, CANDIDATE)
    with pytest.raises(Conflict, match="already live"):
        await h.controller.start(MODEL, LIVE)
    with pytest.raises(NotFound):
        await h.controller.start("unknown", CANDIDATE)
    with pytest.raises(NotFound, match="no active rollout"):
        await h.controller.pause(MODEL)


@pytest.mark.anyio
async def test_abort_withdraws_the_candidate_and_allows_a_new_start() -> None:
    h = Harness()
    await h.controller.start(MODEL, CANDIDATE, make_plan(STAGES[2:]))
    status = await h.controller.abort(MODEL, "wrong build")
    assert (status.state, status.reason, status.weight) == ("aborted", "wrong build", 0)
    assert h.target.weights[MODEL] == (CANDIDATE, 0) and h.target.live[MODEL] == LIVE
    await h.controller.start(MODEL, CANDIDATE, make_plan())
    assert h.controller.active_models() == [MODEL]


@pytest.mark.anyio
async def test_manual_promote_skips_a_stage_or_all_of_them() -> None:
    h = Harness()
    await h.controller.start(MODEL, CANDIDATE, make_plan())
    status = await h.controller.promote(MODEL)
    assert (status.stage, status.weight) == ("canary-5", 5)
    assert h.target.shadows[MODEL] is None
    status = await h.controller.promote(MODEL, all_stages=True)
    assert status.state == "promoted" and h.target.live[MODEL] == CANDIDATE
    assert h.kinds() == ["started", "skipped", "advanced", "skipped", "promoted"]


@pytest.mark.anyio
async def test_a_refused_action_is_an_error_event_and_is_retried() -> None:
    h = Harness(Behaviour(error_every=5))
    await h.controller.start(MODEL, CANDIDATE, make_plan(STAGES[1:]))
    h.target.refuse_traffic = True
    await h.run_until(lambda: "error" in h.kinds(), max_steps=30)
    assert h.state() == "running"
    h.target.refuse_traffic = False
    await h.step()
    assert h.state() == "rolled_back" and h.target.weights[MODEL] == (CANDIDATE, 0)


@pytest.mark.anyio
async def test_every_event_reaches_on_event_the_store_and_a_bounded_memory_log() -> None:
    seen: list[RolloutEvent] = []

    def on_event(event: RolloutEvent) -> None:
        seen.append(event)
        raise RuntimeError("a broken callback must not break the rollout")

    store = MemoryStateStore()
    h = Harness(store=store, on_event=on_event, max_events=4)
    await h.controller.start(MODEL, CANDIDATE, make_plan())
    await h.run_until(lambda: h.state() == "promoted")
    logged = store.read_log(f"rollout-events.{MODEL}")
    assert [e.to_dict() for e in seen] == logged
    assert len(logged) > 4 and h.controller.events(MODEL) == seen[-4:]
    saved = store.read(f"rollout.{MODEL}")
    assert saved is not None and saved["state"] == "promoted"


async def _run_to_stage(h: Harness, stage: str) -> None:
    await h.controller.start(MODEL, CANDIDATE, make_plan())
    await h.run_until(lambda: h.controller.status(MODEL).stage == stage)  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_restart_resumes_at_the_saved_stage_and_keeps_the_event_log(tmp_path: Path) -> None:
    before = Harness(store=FileStateStore(tmp_path))
    await _run_to_stage(before, "canary-25")
    events_before = [e.to_dict() for e in before.controller.events(MODEL)]

    after = Harness(store=FileStateStore(tmp_path))  # a new process: empty windows, fresh target
    restored = await after.controller.restore([MODEL, "other"])
    assert [(s.model, s.state, s.stage) for s in restored] == [(MODEL, "running", "canary-25")]
    assert after.target.weights[MODEL] == (CANDIDATE, 25)
    events = after.controller.events(MODEL)
    assert [e.to_dict() for e in events[:-1]] == events_before
    assert events[-1].kind == "restored" and "minimum duration is observed again" in events[-1].message
    await after.run_until(lambda: after.state() == "promoted")


@pytest.mark.anyio
async def test_a_plans_request_deadline_is_set_before_any_traffic_and_cleared_when_the_rollout_ends() -> None:
    promoted = Harness()
    await promoted.controller.start(MODEL, CANDIDATE, make_plan(request_timeout_s=0.25))
    assert promoted.target.calls[:2] == [("deadline", 0.25), ("traffic", CANDIDATE, 0)]
    await promoted.run_until(lambda: promoted.state() == "promoted")
    assert promoted.target.deadlines[MODEL] is None
    calls = promoted.target.calls
    assert calls.index(("deadline", None)) > calls.index(("promote", CANDIDATE))

    rolled_back = Harness(Behaviour(error_every=20))
    await rolled_back.controller.start(MODEL, CANDIDATE, make_plan(STAGES[1:], request_timeout_s=0.25))
    await rolled_back.run_until(lambda: rolled_back.state() == "rolled_back")
    assert rolled_back.target.deadlines[MODEL] is None

    aborted = Harness()
    await aborted.controller.start(MODEL, CANDIDATE, make_plan(request_timeout_s=0.25))
    await aborted.controller.abort(MODEL)
    assert aborted.target.deadlines[MODEL] is None

    without = Harness()  # a plan without one never touches the model's deadline
    await without.controller.start(MODEL, CANDIDATE, make_plan(STAGES[1:]))
    await without.controller.abort(MODEL)
    assert MODEL not in without.target.deadlines


@pytest.mark.anyio
async def test_a_restored_rollout_sets_its_plans_deadline_again_and_clears_it_when_it_ends(
    tmp_path: Path,
) -> None:
    before = Harness(store=FileStateStore(tmp_path))
    await before.controller.start(MODEL, CANDIDATE, make_plan(request_timeout_s=0.25))
    after = Harness(store=FileStateStore(tmp_path))  # a new process, or a new leader
    await after.controller.restore([MODEL])
    assert after.target.deadlines[MODEL] == 0.25
    await after.controller.abort(MODEL)
    assert after.target.deadlines[MODEL] is None


@pytest.mark.anyio
async def test_a_restore_clears_a_deadline_no_active_rollout_owns(tmp_path: Path) -> None:
    ended = Harness(store=FileStateStore(tmp_path))
    await ended.controller.start(MODEL, CANDIDATE, make_plan(request_timeout_s=0.25))
    await ended.controller.abort(MODEL)
    after = Harness(store=FileStateStore(tmp_path))
    after.target.deadlines[MODEL] = 0.25  # the end was not applied before the crash
    await after.controller.restore([MODEL, "other"])
    assert after.target.deadlines == {MODEL: None, "other": None}  # "other": its start was lost


@pytest.mark.anyio
async def test_restart_keeps_a_pause(tmp_path: Path) -> None:
    before = Harness(store=FileStateStore(tmp_path))
    await _run_to_stage(before, "canary-5")
    await before.controller.pause(MODEL, "investigating")
    after = Harness(store=FileStateStore(tmp_path))
    (status,) = await after.controller.restore([MODEL])
    assert (status.state, status.reason, status.stage) == ("paused", "investigating", "canary-5")


@pytest.mark.anyio
async def test_restart_with_a_different_live_version_pauses_with_the_reason(tmp_path: Path) -> None:
    before = Harness(store=FileStateStore(tmp_path))
    await _run_to_stage(before, "canary-5")
    after = Harness(store=FileStateStore(tmp_path), target=RecordingTarget(live="3", ready=("2", "3")))
    (status,) = await after.controller.restore([MODEL])
    assert status.state == "paused" and "live version is '3'" in status.reason
    assert after.target.calls == []  # someone changed serving by hand: leave it as it is
    with pytest.raises(Conflict, match="cannot resume"):
        await after.controller.resume(MODEL)


@pytest.mark.anyio
async def test_restart_with_the_candidate_not_ready_pauses_and_withdraws_it(tmp_path: Path) -> None:
    before = Harness(store=FileStateStore(tmp_path))
    await _run_to_stage(before, "canary-5")
    after = Harness(store=FileStateStore(tmp_path), target=RecordingTarget(ready=(LIVE,)))
    (status,) = await after.controller.restore([MODEL])
    assert status.state == "paused" and "not ready" in status.reason
    assert after.target.weights[MODEL] == (CANDIDATE, 0)


@pytest.mark.anyio
async def test_run_loop_evaluates_on_the_plans_interval() -> None:
    windows = SlidingWindows(window_s=10)
    target = RecordingTarget()
    rolled_back = anyio.Event()

    def on_event(event: RolloutEvent) -> None:
        if event.kind == "rolled_back":
            rolled_back.set()

    controller = RolloutController(
        target=target, windows=windows, store=MemoryStateStore(), on_event=on_event
    )
    plan = make_plan(STAGES[1:], interval_s=0.01)
    for i in range(200):
        windows.record(MODEL, LIVE, "primary", 0.01)
        windows.record(MODEL, CANDIDATE, "primary", 0.01, error=i % 2 == 0)
    await controller.start(MODEL, CANDIDATE, plan)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(controller.run)
            await rolled_back.wait()
            group.cancel_scope.cancel()
    assert target.weights[MODEL] == (CANDIDATE, 0)


class Receiver:
    """A real local HTTP server collecting webhook bodies; answers 500 to the first `fail_first`."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail_first = fail_first
        self.attempts = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.lock:
                    receiver.attempts += 1
                    ok = receiver.attempts > receiver.fail_first
                    if ok:
                        receiver.bodies.append(orjson.loads(body))
                self.send_response(200 if ok else 500)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    server = Receiver(fail_first=getattr(request, "param", 0))
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()
    server.thread.join()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


@pytest.mark.anyio
@pytest.mark.parametrize("receiver", [0, 2], indirect=True, ids=["healthy", "first-two-fail"])
async def test_webhook_receiver_gets_every_event_in_order(receiver: Receiver) -> None:
    notifier = WebhookNotifier([receiver.url], backoff_s=0.01)
    h = Harness(webhooks=notifier)
    async with anyio.create_task_group() as group:
        group.start_soon(notifier.run)
        await h.controller.start(MODEL, CANDIDATE, make_plan())
        await h.run_until(lambda: h.state() == "promoted")
        expected = [e.to_dict() for e in h.controller.events(MODEL)]
        with anyio.fail_after(15):
            await notifier.drain()
        group.cancel_scope.cancel()
    assert receiver.bodies == expected
    stats = notifier.stats()
    assert (stats.sent, stats.failed, stats.dropped, stats.retries) == (
        len(expected),
        0,
        0,
        receiver.fail_first,
    )


@pytest.mark.anyio
async def test_dead_webhook_only_queues_and_never_delays_a_live_one(receiver: Receiver) -> None:
    notifier = WebhookNotifier([closed_port_url(), receiver.url], max_attempts=2, backoff_s=0.01)
    h = Harness(Behaviour(error_every=20), webhooks=notifier)
    await h.controller.start(MODEL, CANDIDATE, make_plan(STAGES[1:]))
    await h.run_until(lambda: h.state() == "rolled_back")  # no delivery task yet: evaluations only enqueue
    count = len(h.controller.events(MODEL))
    assert notifier.stats().queued == 2 * count and notifier.stats().sent == 0

    async with anyio.create_task_group() as group:
        group.start_soon(notifier.run)
        with anyio.fail_after(15):
            await notifier.drain()
        group.cancel_scope.cancel()
    stats = notifier.stats()
    assert (stats.sent, stats.failed, stats.queued, stats.retries) == (count, count, 0, count)
    assert [b["kind"] for b in receiver.bodies][-1] == "rolled_back"


def test_a_full_webhook_queue_drops_and_counts() -> None:
    notifier = WebhookNotifier([closed_port_url()], max_queue=3)
    for i in range(10):
        notifier.notify({"n": i})
    assert (notifier.stats().queued, notifier.stats().dropped) == (3, 7)


@pytest.mark.anyio
async def test_a_start_the_server_refuses_leaves_no_rollout_behind() -> None:
    h = Harness()
    h.target.refuse_traffic = True
    with pytest.raises(RuntimeError, match="locked"):
        await h.controller.start(MODEL, CANDIDATE, make_plan(STAGES[1:]))
    assert h.controller.status(MODEL) is None and h.controller.active_models() == []


@pytest.mark.anyio
@pytest.mark.parametrize("broken", [b"{not json", b'{"format": 1, "plan": [1, 2]}', None])
async def test_one_broken_saved_rollout_never_stops_the_others_and_is_named(
    tmp_path: Path, broken: bytes | None
) -> None:
    before = Harness(store=FileStateStore(tmp_path))
    await _run_to_stage(before, "canary-25")
    path = tmp_path / "rollout.other.json"
    if broken is None:
        path.mkdir()
    else:
        path.write_bytes(broken)
    after = Harness(store=FileStateStore(tmp_path))
    restored = await after.controller.restore(["other", MODEL])
    assert [(s.model, s.stage) for s in restored] == [(MODEL, "canary-25")]
    assert set(after.controller.restore_errors) == {"other"}
    assert "saved rollout not restored" in after.controller.restore_errors["other"]
