"""A fixed set of daemon worker threads for shadow runs.

Why not `concurrent.futures.ThreadPoolExecutor`: its workers are joined at interpreter exit, so one
shadow call that hangs forever would stop the process from ever exiting (verified with Python 3.11).
These workers are daemon threads, all started up front (the thread count never changes), and a
submit is one `SimpleQueue.put` — no Future per run. The queue itself is unbounded; the caller
(`ShadowRunner`) bounds it with its admission limit.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
_STOP = object()


class WorkerPool(Generic[T]):
    """`workers` daemon threads named `<prefix>-<i>` calling `handler(item)` for each submitted item."""

    def __init__(self, handler: Callable[[T], None], *, workers: int, name_prefix: str) -> None:
        self._handler = handler
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
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            with contextlib.suppress(Exception):  # the handler records its failures; a worker never dies
                self._handler(item)  # type: ignore[arg-type]
