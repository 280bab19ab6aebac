"""Supervised background tasks: one failing task is logged, restarted with backoff, and visible.

The server runs a few long-lived coroutines (flag reload, rollout evaluation, experiment saves, the
loop-lag probe). Run bare in one task group, the first exception would cancel every other one and
leave the server half alive. `TaskSupervisor.run(name, factory)` instead runs `factory()` again after
it raises, waiting `initial_backoff_s` doubling up to `max_backoff_s` (reset once a run has lasted
`healthy_after_s`), logs every failure with its traceback, and keeps per-task figures for status
pages (`snapshot`). Cancellation (shutdown) is never caught. A task that returns is done, not failed.

Readiness does not depend on these tasks: they do not serve requests. Status shows them instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import anyio

log = logging.getLogger("modelserve.server")

TaskFactory = Callable[[], Coroutine[Any, Any, None]]


@dataclass(slots=True)
class TaskState:
    """What the supervisor knows about one task (mutated on the event loop only)."""

    name: str
    state: str = "starting"  # starting | running | backing off | done | stopped
    failures: int = 0
    last_error: str | None = None
    last_failure_at: float | None = None  # wall clock (time.time)
    next_restart_in_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_failure_at": self.last_failure_at,
        }


class TaskSupervisor:
    """Runs background coroutines, restarting each one that fails with exponential backoff."""

    def __init__(
        self,
        *,
        initial_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        healthy_after_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.healthy_after_s = healthy_after_s
        self._clock = clock
        self.tasks: dict[str, TaskState] = {}

    async def run(self, name: str, factory: TaskFactory) -> None:
        """Run `factory()` until it returns or the caller is cancelled; restart it when it raises."""
        base, copy = name, 1
        while name in self.tasks:  # two tasks of one function each get their own entry
            copy += 1
            name = f"{base}#{copy}"
        state = self.tasks[name] = TaskState(name)
        backoff = self.initial_backoff_s
        try:
            while True:
                state.state = "running"
                started = self._clock()
                try:
                    await factory()
                except Exception as exc:
                    if self._clock() - started >= self.healthy_after_s:
                        backoff = self.initial_backoff_s  # it ran well for a while: start over
                    state.failures += 1
                    state.last_error = f"{type(exc).__name__}: {exc}"[:500]
                    state.last_failure_at = time.time()
                    state.state = "backing off"
                    state.next_restart_in_s = backoff
                    log.exception(
                        "background task %s failed (failure %d); restarting in %.1f s",
                        name, state.failures, backoff,
                    )  # fmt: skip
                    await anyio.sleep(backoff)
                    backoff = min(backoff * 2, self.max_backoff_s)
                    continue
                state.state = "done"
                return
        finally:
            if state.state != "done":
                state.state = "stopped"

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per task: state, failures, last error and when it happened."""
        return {name: task.as_dict() for name, task in sorted(self.tasks.items())}

    @property
    def failing(self) -> list[str]:
        """Tasks waiting to be restarted after a failure."""
        return [name for name, task in self.tasks.items() if task.state == "backing off"]
