"""Run shadow versions beside the primary without ever holding it up.

A `ShadowRunner` owns a dedicated fixed pool of daemon threads ("modelserve-shadow-N", see `pool.py`),
never anyio's default pool nor the primary's limiter. Each shadow run first passes an admission
bound: at most `max_in_flight` runs may be queued or running; beyond it the run is dropped and
counted, so work never queues without bound. Every admitted run settles exactly once, as one of:

- a comparison (the shadow returned before its deadline): stats, sink record, `on_result`;
- an error (it raised): counted, the caller never sees it;
- a timeout: its deadline (`timeout_s` after admission) passed first. Python cannot kill a thread,
  so a hung shadow keeps its worker and its admission slot; runs queued behind it expire and later
  arrivals are dropped — memory and threads stay fixed. Overdue runs are found by a sweep on
  `submit`/`run_inline`/`snapshot` and counted then; a result that arrives late is not compared.

Two ways to run a shadow:

- `submit(...)`: from anywhere (typically the event loop once the response is produced); the run goes
  to the pool. It costs a lock, one small object and a queue put.
- `run_inline(...)`: the "ride the primary's worker thread" optimisation, which saves a thread hop.
  The serving layer runs the primary in a worker thread of its own executor, hands the result to the
  event loop (`loop.call_soon_threadsafe(future.set_result, outputs)`), then calls `run_inline` on the
  same thread. The response proceeds while the shadow runs. Do not hold the primary's limiter token
  across it (release it first, or the shadow delays the next primary request). A shadow hanging
  inline would capture a primary worker thread, so after its first inline timeout (or error: failing
  runs are slow) a version is barred from inline runs: check `inline_allowed(model, version)` first
  and fall back to `submit`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelserve.shadow.compare import Comparator, Comparison, resolve
from modelserve.shadow.pool import WorkerPool
from modelserve.shadow.sink import JsonlSink, key_hash
from modelserve.shadow.stats import ShadowStats, bounded_tensors

Outputs = Mapping[str, np.ndarray]
StatsKey = tuple[str, str]  # (model, shadow version)


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowResult:
    """How one shadow run settled; given to `on_result` (e.g. to create a span linked to `context`)."""

    model: str
    primary_version: str
    shadow_version: str
    request_id: str | None
    context: object  # whatever the caller passed to submit (e.g. the request's span context)
    comparison: Comparison | None  # None on error or timeout
    primary_latency_s: float
    shadow_latency_s: float | None  # None when the shadow never ran or has not returned
    error: str | None
    timed_out: bool
    start_time_ns: int | None  # wall clock (time.time_ns) when the shadow started, for spans
    end_time_ns: int  # wall clock when the run settled
    outputs: Outputs | None = None  # the shadow's outputs when they were compared (for label joins)
    compute_s: float | None = None  # the run's thread CPU time (the model's compute), when it returned
    ran: bool = True  # False: it expired waiting for a worker (the host was busy, the model never ran)
    budget_s: float = 0.0  # the run's timeout: a late run that computed less was starved, not slow


@dataclass(slots=True, kw_only=True, eq=False)
class _Run:
    """One admitted shadow run; `started` and `settled` flip once each, under the runner's lock."""

    id: int
    deadline: float
    inline: bool
    model: str
    primary_version: str
    shadow_version: str
    run: Callable[[], Outputs]
    inputs: Outputs
    primary_outputs: Outputs
    primary_latency_s: float
    request_id: str | None
    compare: str | Comparator
    context: object
    targeting_key: str | None = None
    log_inputs: bool = False  # the sink record carries the (capped) inputs: opt-in, sampled by the caller
    budget_s: float = 0.0
    started: bool = False
    running: bool = False  # the model run began (a sweep may settle it while it still runs)
    native_id: int = 0  # the worker thread running it, and its CPU clock when the run began
    cpu_started: float = 0.0
    settled: bool = False


def _starved_compute(ticket: _Run) -> float | None:
    """For an overdue run still running on a thread that is runnable (waiting for a CPU, not blocked
    or hung): the CPU time it got so far, so a busy host's starvation is not the model's timeout.
    None otherwise, or where Linux's per-thread /proc state and CPU clocks are not available."""
    if not ticket.running or not ticket.native_id:
        return None
    try:
        with open(f"/proc/self/task/{ticket.native_id}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        if fields[0] != b"R":
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime of that thread
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, cpu - ticket.cpu_started)


def _comparator_name(compare: str | Comparator) -> str:
    if isinstance(compare, str):
        return compare
    return str(
        getattr(compare, "__name__", None) or getattr(getattr(compare, "func", None), "__name__", "custom")
    )


class ShadowRunner:
    """Bounded, isolated execution of shadow versions with comparison, stats, sink and a result hook.

    `sink` is not owned (close it after the runner). `on_result` is called once per settled run on
    the thread that settled it; its exceptions are counted in `hook_errors` and otherwise ignored.
    `clock` (seconds, monotonic) measures latencies and deadlines. `nice` > 0 lowers the workers'
    scheduling priority by that much (see `pool.py`), so shadows only use CPU serving leaves idle.
    """

    def __init__(
        self,
        *,
        max_workers: int = 1,
        max_in_flight: int = 4,
        timeout_s: float = 1.0,
        sink: JsonlSink | None = None,
        stats_factory: Callable[[str, str], ShadowStats] = ShadowStats,
        on_result: Callable[[ShadowResult], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        nice: int = 0,
    ) -> None:
        if max_workers < 1 or max_in_flight < 1 or timeout_s <= 0:
            raise ValueError("max_workers and max_in_flight must be >= 1 and timeout_s > 0")
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self.sink = sink
        self.hook_errors = 0
        self._stats_factory = stats_factory
        self._on_result = on_result
        self._clock = clock
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight: dict[int, _Run] = {}
        self._per_model: dict[str, int] = {}  # runs in flight per model, for per-model bounds
        self._next_id = 0
        self._next_sweep = float("inf")
        self._stats: dict[StatsKey, ShadowStats] = {}
        self._inline_barred: set[StatsKey] = set()
        self._closed = False
        self._pool: WorkerPool[_Run] = WorkerPool(
            self._execute, workers=max_workers, name_prefix="modelserve-shadow", nice=nice
        )

    def submit(
        self, *, model: str, primary_version: str, shadow_version: str, run: Callable[[], Outputs],
        inputs: Outputs, primary_outputs: Outputs, primary_latency_s: float, request_id: str | None = None,
        compare: str | Comparator = "label", context: object = None, timeout_s: float | None = None,
        max_in_flight: int | None = None, targeting_key: str | None = None, log_inputs: bool = False,
    ) -> bool:  # fmt: skip
        """Queue a shadow run on the pool; False when dropped (bound reached or closed). Never blocks.

        `run` returns the shadow's outputs; the arrays passed in must not be mutated afterwards.
        `primary_latency_s` is the primary's latency as the caller measures it (stats report both).
        `timeout_s` overrides the runner's timeout for this run; `max_in_flight` adds a per-model
        admission bound (runs of `model` queued or running) under the runner's global one.
        """
        ticket = self._admit(
            model=model, primary_version=primary_version, shadow_version=shadow_version, run=run,
            inputs=inputs, primary_outputs=primary_outputs, primary_latency_s=primary_latency_s,
            request_id=request_id, compare=compare, context=context, inline=False, timeout_s=timeout_s,
            limit=max_in_flight, targeting_key=targeting_key, log_inputs=log_inputs,
        )  # fmt: skip
        if ticket is None:
            return False
        try:
            self._pool.submit(ticket)
        except RuntimeError:  # closed concurrently
            self._release(ticket)
            return False
        return True

    def run_inline(
        self, *, model: str, primary_version: str, shadow_version: str, run: Callable[[], Outputs],
        inputs: Outputs, primary_outputs: Outputs, primary_latency_s: float, request_id: str | None = None,
        compare: str | Comparator = "label", context: object = None, timeout_s: float | None = None,
        max_in_flight: int | None = None, targeting_key: str | None = None, log_inputs: bool = False,
    ) -> bool:  # fmt: skip
        """Run the shadow now on the calling thread; False when dropped or barred.

        For a primary worker thread after the primary's result has been handed back (see the module
        docstring), or the event loop after the response was sent for a model the warm-up showed
        runs in a few µs (cheaper than any hop).
        """
        if (model, shadow_version) in self._inline_barred:
            return False
        ticket = self._admit(
            model=model, primary_version=primary_version, shadow_version=shadow_version, run=run,
            inputs=inputs, primary_outputs=primary_outputs, primary_latency_s=primary_latency_s,
            request_id=request_id, compare=compare, context=context, inline=True, timeout_s=timeout_s,
            limit=max_in_flight, targeting_key=targeting_key, log_inputs=log_inputs,
        )  # fmt: skip
        if ticket is None:
            return False
        self._execute(ticket)
        return True

    def inline_allowed(self, model: str, shadow_version: str) -> bool:
        """False once an inline run of this version has timed out or raised; then use `submit`."""
        return (model, shadow_version) not in self._inline_barred

    def stats(self, model: str, shadow_version: str) -> ShadowStats:
        """The statistics of one shadow version (created empty on first use)."""
        key = (model, shadow_version)
        stats = self._stats.get(key)
        if stats is None:
            with self._lock:
                stats = self._stats.get(key)
                if stats is None:
                    stats = self._stats[key] = self._stats_factory(model, shadow_version)
        return stats

    def forget(self, model: str, shadow_version: str) -> None:
        """Drop a version's statistics and inline bar (e.g. when its shadow is switched off)."""
        with self._lock:
            self._stats.pop((model, shadow_version), None)
            self._inline_barred.discard((model, shadow_version))

    def snapshot(self, model: str | None = None, *, examples: bool = True) -> list[dict[str, Any]]:
        """Snapshots of every shadow version's stats (of one model, if given), after a timeout sweep;
        `examples=False` leaves out the disagreement examples."""
        self._sweep(self._clock())
        with self._lock:
            chosen = [s for (m, _), s in self._stats.items() if model is None or m == model]
        return [s.snapshot(examples=examples) for s in chosen]

    def clear_examples(self, model: str, keep: tuple[str, ...] = ()) -> None:
        """Forget the disagreement examples of `model`'s shadow versions not in `keep` (shadow stopped)."""
        with self._lock:
            chosen = [s for (m, v), s in self._stats.items() if m == model and v not in keep]
        for stats in chosen:
            stats.clear_examples()

    @property
    def in_flight(self) -> int:
        """Runs admitted and not finished, including overdue ones still occupying a worker."""
        return len(self._in_flight)

    @property
    def threads(self) -> tuple[threading.Thread, ...]:
        """The pool's worker threads (fixed for the runner's lifetime)."""
        return self._pool.threads

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no run is in flight; False on timeout. For tests, benchmarks and shutdown."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._in_flight, timeout)

    def wait_settled(self, model: str, version: str, runs: int, timeout: float = 60.0) -> bool:
        """Block until `runs` runs of `version` were counted (compared, error, timeout or dropped) and
        none is in flight, listeners included; False on timeout. For tests and benchmarks.

        A client has its response before the server admits the request's shadow run, so `wait_idle`
        alone can return while that run is still to come. A run is counted before its listeners are
        called and leaves the in-flight set after them: count first, then idle.
        """
        deadline = time.monotonic() + timeout
        while True:
            counted = self.stats(model, version).snapshot(examples=False)
            if counted["runs"] + counted["dropped"] >= runs:
                return self.wait_idle(max(0.0, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)

    def close(self, timeout: float | None = 5.0) -> bool:
        """Refuse new runs, drop queued ones, wait up to `timeout` for running ones; True when idle.

        Hung shadow calls keep their (daemon) threads; they never block interpreter exit.
        """
        with self._lock:
            self._closed = True
        for ticket in self._pool.close():
            self.stats(ticket.model, ticket.shadow_version).record_dropped()
            self._release(ticket)
        return self.wait_idle(timeout)

    def _admit(
        self, *, model: str, shadow_version: str, inline: bool, timeout_s: float | None, limit: int | None,
        **fields: Any,
    ) -> _Run | None:  # fmt: skip
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        with self._lock:
            per_model = self._per_model.get(model, 0)
            admitted = (
                not self._closed
                and len(self._in_flight) < self.max_in_flight
                and (limit is None or per_model < limit)
            )
            if admitted:
                self._per_model[model] = per_model + 1
                deadline = now + (self.timeout_s if timeout_s is None else timeout_s)
                ticket = _Run(
                    id=self._next_id, deadline=deadline, inline=inline, model=model,
                    shadow_version=shadow_version, budget_s=deadline - now, **fields,
                )  # fmt: skip
                self._next_id += 1
                self._in_flight[ticket.id] = ticket
                if deadline < self._next_sweep:
                    self._next_sweep = deadline
        if not admitted:
            self.stats(model, shadow_version).record_dropped()
            return None
        return ticket

    def _release(self, ticket: _Run) -> None:
        with self._lock:
            if self._in_flight.pop(ticket.id, None) is not None:
                left = self._per_model[ticket.model] - 1
                if left:
                    self._per_model[ticket.model] = left
                else:
                    del self._per_model[ticket.model]
            if not self._in_flight:
                self._idle.notify_all()

    def _sweep(self, now: float) -> None:
        """Settle every overdue run as a timeout (once); the late result, if any, is discarded."""
        with self._lock:
            overdue = [t for t in self._in_flight.values() if not t.settled and now >= t.deadline]
            for ticket in overdue:
                ticket.settled = True
            pending = [t.deadline for t in self._in_flight.values() if not t.settled]
            self._next_sweep = min(pending, default=float("inf"))
        for ticket in overdue:
            self._record(ticket, timed_out=True, compute=_starved_compute(ticket))

    def _claim(self, ticket: _Run) -> bool:
        with self._lock:
            if ticket.settled:
                return False
            ticket.settled = True
            return True

    def _execute(self, ticket: _Run) -> None:
        with self._lock:
            if ticket.id not in self._in_flight:  # dropped by close() before it started
                return
            ticket.started = True
        try:
            start = self._clock()
            if start >= ticket.deadline:  # expired in the queue (behind a slow or hung run)
                if self._claim(ticket):
                    self._record(ticket, timed_out=True)
                return
            start_ns = time.time_ns()
            cpu_started = time.thread_time()
            ticket.native_id, ticket.cpu_started = threading.get_native_id(), cpu_started
            ticket.running = True
            try:
                outputs = ticket.run()
            except Exception as exc:
                if self._claim(ticket):
                    self._record(ticket, error=f"{type(exc).__name__}: {exc}",
                                 latency=self._clock() - start, start_ns=start_ns)  # fmt: skip
                return
            latency = self._clock() - start
            compute = time.thread_time() - cpu_started
            if not self._claim(ticket):  # already counted as a timeout by a sweep
                return
            if start + latency >= ticket.deadline:
                self._record(ticket, timed_out=True, latency=latency, start_ns=start_ns, compute=compute)
                return
            try:
                comparison = resolve(ticket.compare)(ticket.primary_outputs, outputs)
            except Exception as exc:  # a custom comparator failed, or an unknown comparison name
                self._record(ticket, error=f"{type(exc).__name__}: {exc}", latency=latency, start_ns=start_ns)
                return
            self._record(
                ticket, comparison=comparison, outputs=outputs, latency=latency, start_ns=start_ns,
                compute=compute,
            )  # fmt: skip
        finally:
            self._release(ticket)

    def _record(
        self, ticket: _Run, *, comparison: Comparison | None = None, outputs: Outputs | None = None,
        error: str | None = None, timed_out: bool = False, latency: float | None = None,
        start_ns: int | None = None, compute: float | None = None,
    ) -> None:  # fmt: skip
        stats = self.stats(ticket.model, ticket.shadow_version)
        if comparison is not None and outputs is not None and latency is not None:
            stats.record_comparison(
                comparison, primary_latency_s=ticket.primary_latency_s, shadow_latency_s=latency,
                inputs=ticket.inputs, primary_outputs=ticket.primary_outputs, shadow_outputs=outputs,
                primary_version=ticket.primary_version, request_id=ticket.request_id,
            )  # fmt: skip
        elif error is not None:
            stats.record_error(error)
            if ticket.inline:  # failing is slow (exception, onnxruntime's error log): keep it off the caller
                with self._lock:
                    self._inline_barred.add((ticket.model, ticket.shadow_version))
        else:
            stats.record_timeout()
            if ticket.inline:
                with self._lock:
                    self._inline_barred.add((ticket.model, ticket.shadow_version))
        if self.sink is not None:
            self.sink.offer(self._sink_record(ticket, comparison, error, timed_out, latency, outputs))
        if self._on_result is not None:
            result = ShadowResult(
                model=ticket.model, primary_version=ticket.primary_version,
                shadow_version=ticket.shadow_version, request_id=ticket.request_id, context=ticket.context,
                comparison=comparison, primary_latency_s=ticket.primary_latency_s, shadow_latency_s=latency,
                error=error, timed_out=timed_out, start_time_ns=start_ns, end_time_ns=time.time_ns(),
                outputs=outputs if comparison is not None else None,
                compute_s=compute, ran=ticket.running, budget_s=ticket.budget_s,
            )  # fmt: skip
            try:
                self._on_result(result)
            except Exception:
                with self._lock:
                    self.hook_errors += 1

    @staticmethod
    def _sink_record(
        ticket: _Run, comparison: Comparison | None, error: str | None, timed_out: bool,
        latency: float | None, outputs: Outputs | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        record = {
            "ts": time.time(),
            "model": ticket.model,
            "primary_version": ticket.primary_version,
            "shadow_version": ticket.shadow_version,
            "request_id": ticket.request_id,
            "compare": _comparator_name(ticket.compare),
            "agree": comparison.agree if comparison else None,
            "agreement": comparison.agreement if comparison else None,
            "rows": comparison.rows if comparison else None,
            "max_abs_diff": comparison.max_abs_diff if comparison else None,
            "js_distance": comparison.js_distance if comparison else None,
            "reason": comparison.reason if comparison else "",
            "primary_latency_s": ticket.primary_latency_s,
            "shadow_latency_s": latency,
            "error": error,
            "timeout": timed_out,
            "key_hash": key_hash(ticket.targeting_key),
            "primary_outputs": bounded_tensors(ticket.primary_outputs),
            "shadow_outputs": bounded_tensors(outputs) if outputs is not None else None,
        }
        if ticket.log_inputs:
            record["inputs"] = bounded_tensors(ticket.inputs)
        return record
