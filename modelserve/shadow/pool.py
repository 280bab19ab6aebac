"""A fixed set of daemon worker threads for shadow runs.

Why not `concurrent.futures.ThreadPoolExecutor`: its workers are joined at interpreter exit, so one
shadow call that hangs forever would stop the process from ever exiting (verified with Python 3.11).
These workers are daemon threads, all started up front (the thread count never changes), and a
submit is one `SimpleQueue.put` — no Future per run. The queue itself is unbounded; the caller
(`ShadowRunner`) bounds it with its admission limit.

Each worker lowers its own scheduling priority (`nice`, Linux: per thread) so that shadow runs use
only CPU the serving threads leave idle: on a saturated core the kernel gives the event loop and the
primary's threads ~98% of the time, the shadow queue fills and the admission bound sheds shadows
first. Lowering one's own priority needs no privilege; where it is unsupported it is skipped.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
_STOP = object()


class WorkerPool(Generic[T]):
    """`workers` daemon threads named `<prefix>-<i>` calling `handler(item)` for each submitted item."""

    def __init__(
        self, handler: Callable[[T], None], *, workers: int, name_prefix: str, nice: int = 0
    ) -> None:
        self._handler = handler
        self._nice = nice
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._closed = False
        self.threads = tuple(
            threading.Thread(target=self._work, name=f"{name_prefix}-{i}", daemon=True)
            for i in range(workers)
        )
        for thread in self.threads:
            thread.start()

    def submit(self, item: T) -> None:
        """Queue an item; a worker passes it to the handler. RuntimeError once closed."""
        if self._closed:
            raise RuntimeError("the worker pool is closed")
        self._queue.put(item)

    def close(self) -> list[T]:
        """Stop taking work; return the items no worker had started. Workers exit when they are free."""
        self._closed = True
        pending: list[T] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                pending.append(item)  # type: ignore[arg-type]
        for _ in self.threads:
            self._queue.put(_STOP)
        return pending

    def _work(self) -> None:
        if self._nice:
            lower_thread_priority(self._nice)
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            with contextlib.suppress(Exception):  # the handler records its failures; a worker never dies
                self._handler(item)  # type: ignore[arg-type]


def lower_thread_priority(increment: int) -> bool:
    """Add `increment` to the calling thread's nice value (Linux threads are scheduled one by one)."""
    setpriority = getattr(os, "setpriority", None)
    if setpriority is None:
        return False
    try:
        tid = threading.get_native_id()
        setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
    except OSError:
        return False
    return True
