"""A blocking run with a deadline: the caller gets its answer or `DeadlineExceeded` on time.

A thread running onnxruntime cannot be interrupted, so a caller whose deadline passes stops waiting
(504) and the run finishes on its own. The run keeps its token of the version's `CapacityLimiter`
until it really ends, though, so abandoned runs never pile up: with every runner busy on overdue
runs, new requests wait for a token within their own deadline, and get 504 too, instead of starting
more threads. Waiting for a token counts toward the deadline.

The token is held on behalf of a `_Borrow`; whoever sees the run end last gives it back: the event
loop when the caller was still waiting, else the worker thread (through `call_soon_threadsafe`,
since a limiter belongs to its event loop). A run whose caller left before a worker thread started
it never starts (the answer was a 504 already; a thread pool skips a job cancelled before it was
picked up too), so the caller gives its token back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

from modelserve.errors import DeadlineExceeded

T = TypeVar("T")


class _CallerLeft(Exception):
    """Raised in place of a run whose caller left before its thread started it (nobody sees it)."""


class _Borrow:
    """One run's token: released exactly once, by the loop or by the thread that ran late."""

    __slots__ = ("done", "left", "lock", "started")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = False
        self.done = False
        self.left = False

    def starting_in_thread(self) -> bool:
        """The thread is about to run it; False when the caller left already (do not run it)."""
        with self.lock:
            self.started = not self.left
            return self.started

    def finished_in_thread(self) -> bool:
        """The run ended (in its thread); True when nobody waits for it any more (release it here)."""
        with self.lock:
            self.done = True
            return self.left

    def left_by_caller(self) -> bool:
        """The caller stops waiting; True when no thread runs it now (it ended, or never will start:
        release it now)."""
        with self.lock:
            self.left = True
            return self.done or not self.started


async def run_with_deadline(
    func: Callable[[], T],
    *,
    limiter: anyio.CapacityLimiter,
    hop: anyio.CapacityLimiter,
    timeout_s: float,
    what: str,
) -> T:
    """Run `func` in a worker thread holding a token of `limiter`, answering within `timeout_s`.

    `hop` is the worker-thread limiter `anyio.to_thread` uses (never anyio's default one): it is
    released when the caller leaves, while `limiter`'s token stays with the run until it ends.
    """
    loop = asyncio.get_running_loop()
    borrow = _Borrow()
    acquired = False

    def run() -> T:
        if not borrow.starting_in_thread():
            raise _CallerLeft  # nobody reads it: the caller answered 504 and gave the token back
        try:
            return func()
        finally:
            if borrow.finished_in_thread():
                with contextlib.suppress(RuntimeError):  # the loop closed: nothing waits for it
                    loop.call_soon_threadsafe(limiter.release_on_behalf_of, borrow)

    try:
        async with asyncio.timeout(timeout_s):  # half the cost of anyio.fail_after, on every run
            await limiter.acquire_on_behalf_of(borrow)
            acquired = True
            return await anyio.to_thread.run_sync(run, abandon_on_cancel=True, limiter=hop)
    except TimeoutError:
        where = "running" if acquired else "waiting for a free runner"
        raise DeadlineExceeded(
            f"{what} did not answer within its deadline of {timeout_s * 1000:g} ms ({where})"
        ) from None
    finally:
        if acquired and borrow.left_by_caller():
            limiter.release_on_behalf_of(borrow)
