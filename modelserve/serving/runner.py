"""`Runner`: one version's worker threads, its `max_concurrency` slots and one deadline timer.

Every run of a version off the event loop goes through its runner: a thread run, a batch, with a
request deadline or without. A run takes one of the version's slots until it really ends, and waits
for a free one in arrival order (FIFO) when every slot is busy.

    await runner.run(func, timeout_s)   # func() runs in one of the runner's threads

The caller awaits one future, which is settled exactly once: with the run's result or exception (a
worker thread hands it back through `call_soon_threadsafe`), or with `DeadlineExceeded` when the
call's deadline (`timeout_s` after the call, waiting for a slot included) passes first. A thread
running onnxruntime cannot be interrupted, so a run past its deadline finishes on its own and keeps
its slot until then: abandoned runs never pile up, and with every slot busy on overdue runs new calls
wait and get their 504 on time instead of starting more threads. A call whose deadline passes while
it waits for a slot never runs, nor does one whose deadline passed before a thread picked it up (a
busy host; the read of the future's state from the thread is a hint, never a decision about slots).

Why a runner, not `anyio.to_thread` plus a timer per call: one timer per runner serves every call.
Calls with the same `timeout_s` have their deadlines in arrival order, so each timeout has a FIFO of
calls and the timer is armed for the earliest head only; a call that ends removes itself from the
head in O(1), and the timer fires about once per `timeout_s`, not once per call. The threads take
jobs from a `SimpleQueue`, without anyio's per-call checkpoint, cancel scope and limiter. Measured in
`benchmarks/deadline.py` (figures in docs/guardrails.md).

A dynamic batch takes one slot; a caller whose rows ride in another caller's batch waits for it
through `wait`, on the same timer (504 "(batched)"), while the batch runs on for the others.

Everything but the worker threads' own loop runs on the event loop (no locks). The threads are
daemons, started as slots are first used, and stop when the runner is closed or garbage collected
(its worker threads hold no reference to it).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import weakref
from collections import deque
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, Generic, TypeVar

from modelserve.errors import DeadlineExceeded

T = TypeVar("T")


class _Call(Generic[T]):
    """One call: its function, the future its caller awaits, its deadline; `running` once started."""

    __slots__ = ("batched", "deadline", "func", "future", "loop", "runner", "running")

    def __init__(self, runner: Runner, func: Callable[[], T] | None, future: asyncio.Future[T]) -> None:
        self.runner = runner
        self.func = func  # None: a wait for a batch another call runs (`Runner.wait`)
        self.future = future
        self.loop = future.get_loop()
        self.deadline = math.inf  # the loop's time; set when the call has a deadline
        self.running = False
        self.batched = func is None

    def execute(self) -> None:
        """In a worker thread: run, then hand the outcome to the loop (which frees the slot)."""
        result: Any = None
        error: BaseException | None = None
        if self.func is not None and not self.future.done():  # else its deadline passed: skip it
            try:
                result = self.func()
            except BaseException as exc:  # the caller gets it, whatever it is
                error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed: nothing waits for it any more
            self.loop.call_soon_threadsafe(self.runner._finished, self, result, error)


def _work(jobs: SimpleQueue[_Call[Any] | None]) -> None:
    """A worker thread: run calls until the sentinel (it holds no reference to the runner)."""
    while (call := jobs.get()) is not None:
        call.execute()
        del call  # an idle thread keeps nothing alive


def _expire(runner: weakref.ref[Runner]) -> None:
    """The deadline timer's callback: it holds the runner weakly, so an unloaded version's runner
    (and its threads) go at once, not when its last deadline would have passed."""
    alive = runner()
    if alive is not None:
        alive._expire()


def _stop(jobs: SimpleQueue[_Call[Any] | None], threads: list[int]) -> None:
    for _ in range(threads[0]):
        jobs.put(None)


class Runner:
    """See the module docstring. `slots` bounds the runs at a time; `what` names it in a 504."""

    def __init__(self, slots: int, *, what: str) -> None:
        if slots < 1:
            raise ValueError("a runner needs at least one slot")
        self.slots = slots
        self.what = what
        self._free = slots
        self._waiting: deque[_Call[Any]] = deque()
        self._compact_at = 64  # queue length at which calls that left it are dropped (see `_queue`)
        self._jobs: SimpleQueue[_Call[Any] | None] = SimpleQueue()
        self._threads = [0]  # a list: shared with the finalizer, which must not hold the runner
        #: timeout_s -> calls with that timeout, in arrival (= deadline) order.
        self._deadlines: dict[float, deque[_Call[Any]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._finalizer = weakref.finalize(self, _stop, self._jobs, self._threads)
        self._weak = weakref.ref(self)

    @property
    def in_use(self) -> int:
        """Slots taken: runs in progress, abandoned ones included."""
        return self.slots - self._free

    @property
    def waiting(self) -> int:
        """Calls waiting for a free slot."""
        return sum(not call.future.done() for call in self._waiting)

    async def run(self, func: Callable[[], T], timeout_s: float | None = None) -> T:
        """`func()` in a worker thread within `timeout_s` (None: no deadline); DeadlineExceeded else."""
        if not self._finalizer.alive:
            raise RuntimeError(f"the runner of {self.what} is closed")
        loop = asyncio.get_running_loop()
        call: _Call[T] = _Call(self, func, loop.create_future())
        if timeout_s is not None:
            self._watch(call, loop, timeout_s)
        if self._free and not self._waiting:
            self._start(call)
        else:
            self._queue(call)
        try:
            return await call.future
        finally:
            self._settled(timeout_s)

    async def wait(self, future: asyncio.Future[T], timeout_s: float | None) -> T:
        """`future`, settled elsewhere (a batch another call runs), within `timeout_s` (DeadlineExceeded
        "(batched)" else; the batch runs on for the others); the same timer as `run`."""
        if timeout_s is None:
            return await future
        self._watch(_Call(self, None, future), future.get_loop(), timeout_s)
        try:
            return await future
        finally:
            self._settled(timeout_s)

    def _settled(self, timeout_s: float | None) -> None:
        """A call ended: finished calls leave the head of the timer's list at once."""
        expiring = self._deadlines.get(timeout_s) if timeout_s is not None else None
        while expiring and expiring[0].future.done():
            expiring.popleft()

    def close(self) -> None:
        """Stop the worker threads once the runs they have finish (as garbage collection would); no
        call is taken after this."""
        self._finalizer()

    # -- slots ---------------------------------------------------------------------------------------

    def _start(self, call: _Call[Any]) -> None:
        self._free -= 1
        call.running = True
        if self._threads[0] < self.slots:  # one thread per slot taken at once, at most
            self._threads[0] += 1
            threading.Thread(
                target=_work, args=(self._jobs,), name=f"modelserve {self.what}", daemon=True
            ).start()
        self._jobs.put(call)

    def _finished(self, call: _Call[Any], result: Any, error: BaseException | None) -> None:
        """On the loop: the run ended; its slot goes to the first caller still waiting."""
        self._free += 1
        future = call.future
        if not future.done():
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
        del call, error  # no reference cycle through the traceback
        while self._waiting and self._free:
            waiting = self._waiting.popleft()
            if not waiting.future.done():
                self._start(waiting)

    def _queue(self, call: _Call[Any]) -> None:
        # A call that leaves the queue (deadline, cancelled) stays in it until its turn, when it is
        # skipped; while every slot hangs no turn comes, so drop them whenever the queue doubled.
        if len(self._waiting) >= self._compact_at:
            self._waiting = deque(c for c in self._waiting if not c.future.done())
            self._compact_at = 2 * len(self._waiting) + 64
        self._waiting.append(call)

    # -- the deadline timer --------------------------------------------------------------------------

    def _watch(self, call: _Call[Any], loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        if loop is not self._timer_loop:  # a runner used from a new event loop (tests): start afresh
            self._timer_loop, self._timer, self._deadlines = loop, None, {}
        call.deadline = deadline = loop.time() + timeout_s
        expiring = self._deadlines.get(timeout_s)
        if expiring is None:
            expiring = self._deadlines[timeout_s] = deque()
        expiring.append(call)
        if self._timer is None or deadline < self._timer_at:  # else the armed timer comes first
            self._arm(loop, deadline)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = loop.call_at(when, _expire, self._weak)

    def _expire(self) -> None:
        """The timer: settle every call past its deadline with a 504, then wait for the next one."""
        self._timer = None
        loop = self._timer_loop
        assert loop is not None
        now = loop.time()
        earliest: float | None = None
        for timeout_s, expiring in self._deadlines.items():
            while expiring and (expiring[0].future.done() or expiring[0].deadline <= now):
                call = expiring.popleft()
                if not call.future.done():
                    where = "running" if call.running else "waiting for a free runner"
                    where = "batched" if call.batched else where
                    call.future.set_exception(DeadlineExceeded(
                        f"{self.what} did not answer within its deadline of {timeout_s * 1000:g} ms ({where})"
                    ))  # fmt: skip
            if expiring and (earliest is None or expiring[0].deadline < earliest):
                earliest = expiring[0].deadline
        if earliest is not None:
            self._arm(loop, earliest)
