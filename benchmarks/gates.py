"""Rollout gates by simulation: false rollbacks of identical versions, detection of real regressions.

Run: python benchmarks/gates.py [--rollouts 1000] [--quick]   (1,000 per row: ~4 min on two idle
cores; --quick: 100 per row, ~30 s)

Each simulated rollout runs the real `RolloutController` with the default plan (shadow -> 5% ->
25% -> 50% -> 100%, default gates, 5 s looks, one minute minimum per stage, 1,000 comparisons to
pass the shadow stage, a pause after ten undecided minutes) on a simulated clock. Only the sample
streams are synthetic: every 5 s interval, Poisson traffic at the given rate is split between the
versions as the current stage routes it (all of it shadowed in the shadow stage, 5 % of those shadow
runs dropped), and each request gets:

- a latency: log-normal body (median 1 ms, sigma 0.5), a Pareto tail on 2 % of requests (shape 1.5,
  so an unbounded variance), and host-contention bursts (15 % of intervals: a random 20-100 % of that
  interval's requests are 2-8x slower in wall time; their thread CPU time, what the gates
  compare, only 1-1.3x);
- an error with probability 0.5 %, a timeout with probability 0.1 %;
- in the shadow stage, agreement with the primary with probability 0.95.

Identical versions draw from the same streams (bursts hit both). Regressions change the candidate:
latency x2 (so p95 x2), errors 0.5 % -> 2.5 %, agreement 0.70 against the 0.85 bar. The table shows,
per scenario and traffic level, how rollouts ended (promoted / rolled back / paused undecided), and
for regressions the detection rate (rolled back) with the median time to detect and the stage that
caught it. A paused rollout keeps being evaluated (and rolls back on a failure), as the controller
does; "paused" counts rollouts still paused after an hour. Seeds are fixed, so figures repeat exactly.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

import anyio
import numpy as np

from modelserve.rollout.controller import RolloutController
from modelserve.rollout.gates import ShadowAgreement
from modelserve.rollout.plan import default_plan
from modelserve.state.store import MemoryStateStore
from modelserve.telemetry.histogram import bucket_upper_edge, bucket_value
from modelserve.telemetry.windows import RELATIVE_ERROR, LatencyHistogram, WindowStats

INTERVAL_S = 5.0
MAX_TIME_S = 3600.0
_INV_LOG_GAMMA = 1.0 / math.log((1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR))
_LOW, _HIGH = -450, 150  # histogram bucket indices kept: ~1.5e-8 s .. ~400 s
_INDICES = np.arange(_LOW, _HIGH + 1)
_VALUES = np.array([bucket_value(int(i)) for i in _INDICES])
_UPPER_EDGES = np.array([bucket_upper_edge(int(i)) for i in _INDICES])


@dataclass(frozen=True, slots=True)
class Streams:
    """How one version behaves."""

    latency_scale: float = 1.0
    error_rate: float = 0.005
    timeout_rate: float = 0.001
    agreement: float = 0.95


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    candidate: Streams
    rate: float
    regression: bool = False
    median_s: float = 0.001


def _bins(log_values: np.ndarray) -> np.ndarray:
    """Bucket counts of values given by their natural logs (what `LatencyHistogram.add` computes)."""
    index = np.ceil(log_values * _INV_LOG_GAMMA).astype(np.int64)
    np.clip(index, _LOW, _HIGH, out=index)
    return np.bincount(index - _LOW, minlength=_HIGH - _LOW + 1)


class SimWindows:
    """The part of `SlidingWindows` the controller reads, over per-interval simulated counts."""

    def __init__(self) -> None:
        self.series: dict[tuple[str, str], list[tuple[float, np.ndarray, np.ndarray, np.ndarray]]] = {}

    def add(
        self, version: str, role: str, end: float, counts: np.ndarray, wall: np.ndarray, cpu: np.ndarray
    ) -> None:
        rows = self.series.setdefault((version, role), [])
        if rows:  # cumulative sums: a window is the difference of two rows
            _, c, w, p = rows[-1]
            counts, wall, cpu = counts + c, wall + w, cpu + p
        rows.append((end, counts, wall, cpu))

    def _window(self, version: str, role: str, window_s: float, now: float) -> tuple[np.ndarray, ...] | None:
        rows = self.series.get((version, role))
        if not rows:
            return None
        start = now - window_s - 1e-9
        last = rows[-1]
        before = next((r for r in reversed(rows) if r[0] <= start), None)
        if before is None:
            return last[1], last[2], last[3]
        return last[1] - before[1], last[2] - before[2], last[3] - before[3]

    def snapshot(self, model: str, version: str, role: str, window_s: float, now: float) -> WindowStats:
        found = self._window(version, role, window_s, now)
        if found is None or found[0][0] == 0:
            return WindowStats.empty(window_s)
        requests, errors, timeouts = (int(x) for x in found[0])
        return WindowStats(
            requests=requests, errors=errors, timeouts=timeouts, error_rate=errors / requests,
            timeout_rate=timeouts / requests, p50=None, p95=None, p99=None, window_s=window_s,
        )  # fmt: skip

    def _histogram(
        self, version: str, role: str, window_s: float, now: float, which: int
    ) -> LatencyHistogram:
        histogram = LatencyHistogram()
        found = self._window(version, role, window_s, now)
        if found is not None:  # what `histogram_from_buckets` builds, vectorised
            counts = found[which]
            filled = np.flatnonzero(counts)
            if filled.size:
                histogram.buckets = dict(zip((filled + _LOW).tolist(), counts[filled].tolist(), strict=True))
                histogram.count = int(counts[filled].sum())
                histogram.total = float(_VALUES[filled] @ counts[filled])
                histogram.maximum = float(_UPPER_EDGES[filled[-1]])
        return histogram

    def histogram(self, model: str, version: str, role: str, window_s: float, now: float) -> LatencyHistogram:
        return self._histogram(version, role, window_s, now, 1)

    def compute_histogram(
        self, model: str, version: str, role: str, window_s: float, now: float
    ) -> LatencyHistogram:
        return self._histogram(version, role, window_s, now, 2)


class DiscardStore(MemoryStateStore):
    """Keeps nothing: durability is not simulated, and checking every write costs half the run."""

    def write(self, key: str, value: dict[str, object]) -> None:
        pass

    def append(self, key: str, record: dict[str, object]) -> None:
        pass


class SimTarget:
    """Serving as the controller sees it: one live version, the candidate's weight and shadow switch."""

    def __init__(self) -> None:
        self.live, self.weight, self.shadow, self.shadow_epoch = "1", 0, False, 0

    async def live_version(self, model: str) -> str | None:
        return self.live

    async def is_ready(self, model: str, version: str) -> bool:
        return True

    async def set_traffic(self, model: str, candidate: str, weight: int) -> None:
        self.weight = weight

    async def set_shadow(self, model: str, candidate: str, on: bool) -> None:
        if on and not self.shadow:
            self.shadow_epoch += 1  # agreement counts start again, as the server's do
        self.shadow = on

    async def promote(self, model: str, version: str) -> None:
        self.live = version


class Traffic:
    """Draws one interval of requests for both versions."""

    def __init__(self, scenario: Scenario, rng: np.random.Generator) -> None:
        self.scenario, self.rng = scenario, rng
        self.agreeing = self.compared = 0
        self.epoch = 0

    def latencies(
        self, n: int, scale: float, burst: tuple[float, float] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Natural logs of the wall-clock latencies and of the thread CPU times of `n` requests."""
        rng = self.rng
        body = math.log(self.scenario.median_s * scale) + 0.5 * rng.standard_normal(n)
        tail = rng.random(n) < 0.02
        if tail.any():
            body[tail] += np.log1p(rng.pareto(1.5, int(tail.sum())))
        if burst is None:
            return body, body
        hit = rng.random(n) < burst[0]
        wall = body + hit * math.log(burst[1])
        cpu = body + hit * np.log(rng.uniform(1.0, 1.3, n))
        return wall, cpu

    def version(self, windows: SimWindows, version: str, role: str, n: int, streams: Streams, end: float,
                burst: tuple[float, float] | None) -> None:  # fmt: skip
        errors = self.rng.binomial(n, streams.error_rate)
        timeouts = self.rng.binomial(n, streams.timeout_rate)
        wall, cpu = self.latencies(n, streams.latency_scale, burst)
        windows.add(version, role, end, np.array([n, errors, timeouts]), _bins(wall), _bins(cpu))

    def interval(self, windows: SimWindows, target: SimTarget, end: float) -> None:
        rng, scenario = self.rng, self.scenario
        total = int(rng.poisson(scenario.rate * INTERVAL_S))
        burst = (rng.uniform(0.2, 1.0), rng.uniform(2.0, 8.0)) if rng.random() < 0.15 else None
        candidate = "2" if target.live == "1" else "1"
        if target.shadow:
            if target.shadow_epoch != self.epoch:
                self.epoch, self.agreeing, self.compared = target.shadow_epoch, 0, 0
            shadowed = int(rng.binomial(total, 0.95))
            self.version(windows, candidate, "shadow", shadowed, scenario.candidate, end, burst)
            self.compared += shadowed
            self.agreeing += int(rng.binomial(shadowed, scenario.candidate.agreement))
        routed = int(rng.binomial(total, target.weight / 100.0))
        live_streams = Streams() if target.live == "1" else scenario.candidate
        self.version(windows, target.live, "primary", total - routed, live_streams, end, burst)
        if routed:
            self.version(windows, candidate, "primary", routed, scenario.candidate, end, burst)


async def simulate(scenario: Scenario, seed: int) -> tuple[str, float, str]:
    """One rollout: (final state, seconds from start to the decision, stage it ended in)."""
    rng = np.random.default_rng(seed)
    now = 0.0
    windows, target = SimWindows(), SimTarget()
    traffic = Traffic(scenario, rng)
    plan = default_plan()
    controller = RolloutController(
        target=target, windows=windows, store=DiscardStore(),  # type: ignore[arg-type]
        agreement=lambda model, version: ShadowAgreement(
            rate=traffic.agreeing / traffic.compared if traffic.compared else None,
            samples=traffic.compared, agreeing=traffic.agreeing,
        ),
        clock=lambda: now, wall_clock=lambda: now,
    )  # fmt: skip
    await controller.start("m", "2", plan)
    while now < MAX_TIME_S:
        traffic.interval(windows, target, now + INTERVAL_S)
        now += INTERVAL_S
        for event in await controller.evaluate_once(now):
            if event.kind in ("promoted", "rolled_back"):
                return event.kind, now, event.stage
    status = controller.status("m")
    assert status is not None
    return status.state, now, status.stage  # paused (or still running) after an hour


def _chunk(scenario: Scenario, seeds: range) -> list[tuple[str, float, str]]:
    async def main() -> list[tuple[str, float, str]]:
        return [await simulate(scenario, seed) for seed in seeds]

    logging.getLogger("modelserve.rollout").disabled = True  # thousands of rollouts: the table is the output
    return anyio.run(main)


def run(pool: ProcessPoolExecutor, scenario: Scenario, rollouts: int, seed: int) -> dict[str, object]:
    outcomes: Counter[str] = Counter()
    times: list[float] = []
    stages: Counter[str] = Counter()
    first = seed * 1_000_003
    chunks = [range(first + i, first + min(i + 50, rollouts)) for i in range(0, rollouts, 50)]
    for results in pool.map(_chunk, [scenario] * len(chunks), chunks):
        for state, at, stage in results:
            outcomes[state] += 1
            if state == "rolled_back":
                times.append(at)
                stages[stage] += 1
    return {"outcomes": outcomes, "times": times, "stages": stages}


def scenarios(rates: list[float]) -> list[Scenario]:
    same = Streams()
    chosen = [Scenario(f"identical, {r:g} req/s", same, r) for r in rates]
    chosen.append(
        Scenario(f"identical, µs model (median 40 µs), {rates[-1]:g} req/s", same, rates[-1], median_s=40e-6)
    )
    for r in rates:
        chosen += [
            Scenario(f"latency x2 (p95 x2), {r:g} req/s", replace(same, latency_scale=2.0), r, True),
            Scenario(f"errors 0.5% -> 2.5%, {r:g} req/s", replace(same, error_rate=0.025), r, True),
            Scenario(f"agreement 0.70 (bar 0.85), {r:g} req/s", replace(same, agreement=0.70), r, True),
        ]
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rollouts", type=int, default=1000, help="simulated rollouts per scenario")
    parser.add_argument("--rates", default="5,20,100", help="traffic levels, requests per second")
    parser.add_argument("--quick", action="store_true", help="100 rollouts per scenario")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--only", default="", help="only the scenarios whose name contains this text")
    args = parser.parse_args()
    pool = ProcessPoolExecutor(max_workers=max(1, args.jobs))
    rollouts = 100 if args.quick else args.rollouts
    rates = [float(r) for r in args.rates.split(",")]
    print(f"default plan, {rollouts} simulated rollouts per row, looks every {INTERVAL_S:g} s\n")
    header = (
        f"{'scenario':<52} {'promoted':>9} {'rolled back':>12} {'paused':>7}  "
        f"{'detected':>9} {'median TTD':>11}  caught in"
    )
    print(header)
    print("-" * len(header))
    failures = []
    begun, chosen = time.perf_counter(), [s for s in scenarios(rates) if args.only in s.name]
    for index, scenario in enumerate(scenarios(rates)):  # seeds by position: a filtered row repeats
        if scenario not in chosen:
            continue
        started = time.perf_counter()
        result = run(pool, scenario, rollouts, seed=index + 1)
        outcomes: Counter[str] = result["outcomes"]  # type: ignore[assignment]
        times: list[float] = result["times"]  # type: ignore[assignment]
        stages: Counter[str] = result["stages"]  # type: ignore[assignment]
        share = {k: outcomes[k] / rollouts for k in ("promoted", "rolled_back", "paused")}
        if scenario.regression:
            detected = f"{share['rolled_back']:>8.1%}"
            ttd = f"{statistics.median(times):>9.0f} s" if times else f"{'-':>11}"
            where = ", ".join(f"{s} {n / max(1, len(times)):.0%}" for s, n in stages.most_common(3))
            if share["rolled_back"] < 0.95:
                failures.append(scenario.name)
        else:
            detected, ttd, where = f"{'':>9}", f"{'':>11}", ""
            if share["rolled_back"] > 0.01:
                failures.append(scenario.name)
        print(
            f"{scenario.name:<52} {share['promoted']:>9.1%} {share['rolled_back']:>12.1%} "
            f"{share['paused']:>7.1%}  {detected} {ttd}  {where}   ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    pool.shutdown()
    print(
        f"\n{rollouts * len(chosen)} rollouts in {time.perf_counter() - begun:.0f} s, "
        f"{args.jobs} worker processes"
    )
    print()
    print("targets: identical versions rolled back <= 1%; each regression rolled back >= 95%")
    print("missed: " + (", ".join(failures) if failures else "none"))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
