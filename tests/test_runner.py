"""A version's `Runner`: its slots, its worker threads and the one deadline timer every call shares.

Runs here block on events the test sets, so the order of things is decided by the test, not by the
host's speed; the model runs themselves are tested through `LoadedVersion` in test_deadline.py.
"""

from __future__ import annotations

import asyncio
import gc
import threading

import anyio
import pytest

from modelserve.errors import DeadlineExceeded
from modelserve.serving.runner import Runner

WHAT = "m version 1"


def blocking(release: threading.Event, ran: list[str], name: str) -> object:
    """A run that waits for `release` (bounded), then records that it ran."""

    def run() -> str:
        release.wait(10)
        ran.append(name)
        return name

    return run


def test_a_call_that_waits_past_its_deadline_never_runs_and_the_slot_goes_to_the_next() -> None:
    release, ran = threading.Event(), []

    async def scenario() -> tuple[int, int, str]:
        runner = Runner(1, what=WHAT)
        async with anyio.create_task_group() as group:
            group.start_soon(runner.run, blocking(release, ran, "first"), 30.0)
            await anyio.sleep(0)  # the first call takes the only slot
            with pytest.raises(DeadlineExceeded, match=r"deadline of 50 ms \(waiting for a free runner\)"):
                await runner.run(blocking(release, ran, "late"), 0.05)
            held = runner.in_use  # the first run still has it
            release.set()
        third = await runner.run(blocking(release, ran, "third"), 5.0)
        return held, runner.in_use, third

    held, in_use, third = anyio.run(scenario)
    assert held == 1 and in_use == 0 and third == "third"
    assert ran == ["first", "third"]  # the late call never ran


def test_a_short_deadline_behind_a_long_one_fires_on_its_own_time() -> None:
    # Timeouts differ when a rollout's plan changes the model's deadline while calls are in flight:
    # the timer must not wait for the earlier call's (longer) deadline.
    release, ran = threading.Event(), []

    async def scenario() -> str:
        runner = Runner(2, what=WHAT)
        async with anyio.create_task_group() as group:
            group.start_soon(runner.run, blocking(release, ran, "long"), 30.0)
            await anyio.sleep(0)
            with anyio.fail_after(10), pytest.raises(DeadlineExceeded, match=r"50 ms \(running\)"):
                await runner.run(blocking(release, ran, "short"), 0.05)
            release.set()
        return await runner.run(lambda: "after", 30.0)

    assert anyio.run(scenario) == "after"
    assert sorted(ran) == ["long", "short"]  # the abandoned run finished in its thread


def test_abandoned_runs_keep_their_slots_and_threads_never_outnumber_the_slots() -> None:
    release, ran = threading.Event(), []

    async def scenario() -> tuple[int, int, int]:
        runner = Runner(2, what="hanging version 9")
        for n in range(6):  # two hang in both slots; four time out waiting for them
            with pytest.raises(DeadlineExceeded):
                await runner.run(blocking(release, ran, f"run {n}"), 0.02)
        threads = sum(t.name == "modelserve hanging version 9" for t in threading.enumerate())
        busy = runner.in_use
        release.set()
        for _ in range(500):
            if runner.in_use == 0:
                break
            await anyio.sleep(0.01)
        return busy, threads, runner.in_use

    busy, threads, freed = anyio.run(scenario)
    assert (busy, threads, freed) == (2, 2, 0)
    assert sorted(ran) == ["run 0", "run 1"]


def test_a_cancelled_caller_leaves_the_queue_and_a_run_error_reaches_its_caller() -> None:
    release, ran = threading.Event(), []

    async def scenario() -> None:
        runner = Runner(1, what=WHAT)
        async with anyio.create_task_group() as group:
            group.start_soon(runner.run, blocking(release, ran, "first"))
            await anyio.sleep(0)
            with anyio.move_on_after(0.05):  # a client that went away while waiting
                await runner.run(blocking(release, ran, "gone"))
            assert runner.waiting == 0
            release.set()

        def failing() -> None:
            raise ValueError("bad input")

        with pytest.raises(ValueError, match="bad input"):
            await runner.run(failing, 5.0)
        assert runner.in_use == 0

    anyio.run(scenario)
    assert ran == ["first"]


def test_a_runner_serves_calls_from_a_new_event_loop_after_the_first_closed() -> None:
    runner = Runner(1, what=WHAT)
    for n in range(2):  # e.g. two anyio.run() in one test process
        assert anyio.run(runner.run, lambda n=n: n, 5.0) == n
    runner.close()
    with pytest.raises(RuntimeError, match="closed"):
        anyio.run(runner.run, lambda: 0)


def test_a_wait_for_a_batch_expires_on_the_shared_timer_and_the_batch_result_reaches_the_patient() -> None:
    async def scenario() -> object:
        runner = Runner(1, what=WHAT)
        loop = asyncio.get_running_loop()
        hurried, patient = loop.create_future(), loop.create_future()
        with pytest.raises(DeadlineExceeded, match=r"deadline of 50 ms \(batched\)"):
            await runner.wait(hurried, 0.05)
        loop.call_later(0.1, patient.set_result, "rows")  # the batch ends after the hurried one left
        return await runner.wait(patient, 5.0)

    assert anyio.run(scenario) == "rows"


def test_the_threads_of_a_runner_nobody_holds_end_even_while_its_deadline_timer_is_armed() -> None:
    # An unloaded version's runner: its timer (armed for a 30 s deadline) must not keep it alive.
    def named() -> int:
        return sum(t.name == "modelserve unloaded version 7" for t in threading.enumerate())

    async def scenario() -> tuple[int, int]:
        runner: Runner | None = Runner(2, what="unloaded version 7")
        assert runner is not None
        await runner.run(lambda: None, 30.0)
        started = named()
        runner = None
        gc.collect()
        for _ in range(500):
            if named() == 0:
                break
            await anyio.sleep(0.01)
        return started, named()

    assert anyio.run(scenario) == (1, 0)
