"""Supervised background tasks: a failure is logged, restarted with backoff, visible; cancel stops."""

from __future__ import annotations

import logging

import anyio
import pytest

from modelserve.server.supervisor import TaskSupervisor


async def _failing_then_steady(calls: list[int], recovered: anyio.Event) -> None:
    calls.append(len(calls))
    if len(calls) <= 3:
        raise RecursionError("maximum recursion depth exceeded")
    recovered.set()
    await anyio.sleep_forever()


def test_a_failing_task_is_logged_restarted_with_backoff_and_visible(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = TaskSupervisor(initial_backoff_s=0.001, max_backoff_s=0.004)
    calls: list[int] = []
    beside: list[int] = []

    async def other() -> None:  # a healthy task beside the failing one keeps running throughout
        while True:
            beside.append(1)
            await anyio.sleep(0.001)

    async def main() -> None:
        recovered = anyio.Event()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(supervisor.run, "flags", lambda: _failing_then_steady(calls, recovered))
            tasks.start_soon(supervisor.run, "lag", other)
            with anyio.fail_after(10):
                await recovered.wait()
            snapshot = supervisor.snapshot()
            assert snapshot["flags"]["state"] == "running" and snapshot["flags"]["failures"] == 3
            assert "RecursionError" in snapshot["flags"]["last_error"]
            assert snapshot["lag"] == {"state": "running", "failures": 0, "last_error": None,
                                       "last_failure_at": None}  # fmt: skip
            tasks.cancel_scope.cancel()

    with caplog.at_level(logging.ERROR, logger="modelserve.server"):
        anyio.run(main)
    assert len(calls) == 4 and beside
    assert sum("background task flags failed" in r.getMessage() for r in caplog.records) == 3
    assert all(r.exc_info for r in caplog.records if "background task" in r.getMessage())
    assert supervisor.snapshot()["flags"]["state"] == "stopped"


def test_backoff_doubles_up_to_its_cap_while_a_task_keeps_failing() -> None:
    supervisor = TaskSupervisor(initial_backoff_s=0.001, max_backoff_s=0.004)
    waits: list[float | None] = []

    async def broken(enough: anyio.Event) -> None:
        waits.append(supervisor.tasks["broken"].next_restart_in_s)
        if len(waits) == 6:
            enough.set()
            await anyio.sleep_forever()
        raise ValueError("boom")

    async def main() -> None:
        enough = anyio.Event()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(supervisor.run, "broken", lambda: broken(enough))
            with anyio.fail_after(10):
                await enough.wait()
            tasks.cancel_scope.cancel()

    anyio.run(main)
    assert waits == [None, 0.001, 0.002, 0.004, 0.004, 0.004]
    assert supervisor.failing == [] and supervisor.snapshot()["broken"]["failures"] == 5
