"""The coordination interface's contract, run against every backend (in-process, SQLite, real Redis)."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from modelserve.state.coordinator import (
    Coordinator,
    Fence,
    FenceRejected,
    StaleRevision,
    StateDirInUse,
    cas_update,
)
from modelserve.state.inprocess import InProcessCoordinator, lock_state_dir
from modelserve.state.redis_backend import RedisCoordinator
from modelserve.state.sqlite_backend import SqliteCoordinator

BACKENDS = ["inprocess", "sqlite", "redis"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Factory = Callable[[], Coordinator]


@pytest.fixture(params=BACKENDS)
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """A factory of coordinators that share one backend (several connections to the same state)."""
    kind = request.param
    shared_inprocess: list[Coordinator] = []
    prefix = f"t{uuid.uuid4().hex[:8]}:"

    def factory() -> Coordinator:
        if kind == "inprocess":  # one process has one coordinator: every "connection" is that one
            if not shared_inprocess:
                shared_inprocess.append(InProcessCoordinator(tmp_path / "state"))
            return shared_inprocess[0]
        if kind == "sqlite":
            return SqliteCoordinator(tmp_path / "state.db", poll_s=0.01)
        return RedisCoordinator(request.getfixturevalue("redis_url"), prefix=prefix)

    return factory


@pytest.fixture
async def coord(make: Factory) -> AsyncIterator[Coordinator]:
    c = make()
    await c.open()
    yield c
    await c.aclose()


@pytest.mark.anyio
async def test_documents_have_revisions_and_compare_and_set(coord: Coordinator) -> None:
    assert await coord.get("policy.fraud") is None
    first = await coord.put("policy.fraud", {"canary_weight": 5}, expect_rev=0)
    assert first.rev == 1
    with pytest.raises(StaleRevision):
        await coord.put("policy.fraud", {"canary_weight": 9}, expect_rev=0)
    second = await coord.put("policy.fraud", {"canary_weight": 25}, expect_rev=1)
    assert second.rev == 2
    with pytest.raises(StaleRevision) as stale:
        await coord.put("policy.fraud", {"canary_weight": 50}, expect_rev=1)
    assert stale.value.actual == 2
    got = await coord.get("policy.fraud")
    assert got is not None and got.rev == 2 and got.body == {"canary_weight": 25}
    assert await coord.revisions("policy.") == {"policy.fraud": 2}


@pytest.mark.anyio
async def test_concurrent_cas_updates_lose_nothing(make: Factory) -> None:
    """Eight connections, 200 read-modify-write increments with retry: every one of them lands."""
    coordinators = [make() for _ in range(8)]
    for c in coordinators:
        await c.open()
    try:

        async def bump(c: Coordinator, n: int) -> None:
            for _ in range(n):
                await cas_update(c, "doc.counter", lambda body: {**body, "n": body.get("n", 0) + 1},
                                 attempts=1000)  # fmt: skip

        async with anyio.create_task_group() as group:
            for c in coordinators:
                group.start_soon(bump, c, 25)
        final = await coordinators[0].get("doc.counter")
        assert final is not None and final.body["n"] == 200 and final.rev == 200
    finally:
        for c in set(coordinators):
            await c.aclose()


@pytest.mark.anyio
async def test_counters_add_atomically(make: Factory) -> None:
    a, b = make(), make()
    await a.open()
    await b.open()
    try:
        async with anyio.create_task_group() as group:
            for c in (a, b) * 50:
                group.start_soon(c.incr, "exp.fraud", {"assigned:1": 1, "reward:1": 0.5})
        assert await b.counters("exp.fraud") == {"assigned:1": 100.0, "reward:1": 50.0}
        assert await a.counters("missing") == {}
    finally:
        for c in {a, b}:
            await c.aclose()


@pytest.mark.anyio
async def test_snapshots_are_per_replica_and_expire(coord: Coordinator) -> None:
    await coord.put_snapshot("windows.fraud", "a", {"n": 1}, ttl_s=60)
    await coord.put_snapshot("windows.fraud", "a", {"n": 2}, ttl_s=60)  # overwrite: idempotent
    await coord.put_snapshot("windows.fraud", "b", {"n": 5}, ttl_s=0.05)
    assert await coord.snapshots("windows.fraud") == {"a": {"n": 2}, "b": {"n": 5}}
    await anyio.sleep(0.1)
    assert await coord.snapshots("windows.fraud") == {"a": {"n": 2}}


@pytest.mark.anyio
async def test_event_log_is_idempotent_by_event_id(coord: Coordinator) -> None:
    assert await coord.append_event("rollout-events.fraud", "r1:1:started", {"kind": "started"})
    assert not await coord.append_event("rollout-events.fraud", "r1:1:started", {"kind": "started"})
    assert await coord.append_event("rollout-events.fraud", "r1:2:advanced", {"kind": "advanced"})
    events = await coord.events("rollout-events.fraud")
    assert [e["event_id"] for e in events] == ["r1:1:started", "r1:2:advanced"]
    assert [e["event_id"] for e in await coord.events("rollout-events.fraud", limit=1)] == ["r1:2:advanced"]


@pytest.mark.anyio
async def test_lease_has_one_holder_expires_and_fences_the_deposed(coord: Coordinator) -> None:
    first = await coord.acquire_lease("rollout", "a", ttl_s=0.3)
    assert first is not None
    assert await coord.acquire_lease("rollout", "b", ttl_s=0.3) is None
    renewed = await coord.acquire_lease("rollout", "a", ttl_s=0.3)
    assert renewed is not None and renewed.token == first.token
    fence_a = Fence("rollout", first.token)
    await coord.put("rollout.fraud", {"stage": 1}, fence=fence_a)
    await anyio.sleep(0.4)  # a stops renewing: the lease expires
    second = await coord.acquire_lease("rollout", "b", ttl_s=5)
    assert second is not None and second.token > first.token
    with pytest.raises(FenceRejected):
        await coord.put("rollout.fraud", {"stage": 2}, fence=fence_a)
    with pytest.raises(FenceRejected):
        await coord.append_event("rollout-events.fraud", "x:1:advanced", {}, fence=fence_a)
    await coord.put("rollout.fraud", {"stage": 2}, fence=Fence("rollout", second.token))
    doc = await coord.get("rollout.fraud")
    assert doc is not None and doc.body == {"stage": 2}
    await coord.release_lease("rollout", "b")
    third = await coord.acquire_lease("rollout", "a", ttl_s=5)
    assert third is not None and third.token > second.token


@pytest.mark.anyio
async def test_an_increment_with_a_once_token_counts_once_however_often_it_is_retried(make: Factory) -> None:
    a, b = make(), make()
    await a.open()
    await b.open()
    try:
        applied: list[bool] = []

        async def add(c: Coordinator, token: str) -> None:
            applied.append(await c.incr("exp.once", {"n": 1, "total": 0.25}, once=token))

        async with anyio.create_task_group() as group:
            for i, c in itertools.product(range(20), (a, b, b)):  # every token sent three times
                group.start_soon(add, c, f"replica-x:{i}")
        assert applied.count(True) == 20 and applied.count(False) == 40
        assert await a.counters("exp.once") == {"n": 20.0, "total": 5.0}
        assert await b.incr("exp.once", {"n": 1}) is True  # without a token: always applied
        assert (await a.counters("exp.once"))["n"] == 21.0
    finally:
        for c in {a, b}:
            await c.aclose()


@pytest.mark.anyio
async def test_decisions_in_batches_join_exactly_once(make: Factory) -> None:
    a, b = make(), make()
    await a.open()
    await b.open()
    try:
        await a.put_decisions([(f"batch-{i}", {"arm": str(i % 2)}) for i in range(300)], ttl_s=60)
        await a.put_decisions([("batch-0", {"arm": "moved"})], ttl_s=60)  # a stored id stays as it is
        ids = [f"batch-{i}" for i in range(300)] + ["batch-0", "never"]
        taken = await b.take_decisions(ids)
        assert [t.outcome for t in taken[:300]] == ["joined"] * 300
        assert taken[0].body == {"arm": "0"} and taken[299].body == {"arm": "1"}
        assert [t.outcome for t in taken[300:]] == ["duplicate", "unknown"]
        again = await a.take_decisions([f"batch-{i}" for i in range(300)])
        assert {t.outcome for t in again} == {"duplicate"}
        # A store retried after its first attempt landed and was taken: the decision stays taken.
        await b.put_decisions([("batch-5", {"arm": "1"})], ttl_s=60)
        assert (await a.take_decision("batch-5")).outcome == "duplicate"
        assert await a.take_decisions([]) == []
    finally:
        for c in {a, b}:
            await c.aclose()


@pytest.mark.anyio
async def test_decisions_join_exactly_once(make: Factory) -> None:
    a, b = make(), make()
    await a.open()
    await b.open()
    try:
        for i in range(50):
            await a.put_decision(f"req-{i}", {"version": "2", "i": i}, ttl_s=60)
        outcomes: list[str] = []

        async def take(c: Coordinator, rid: str) -> None:
            outcomes.append((await c.take_decision(rid)).outcome)

        async with anyio.create_task_group() as group:
            for i, c in itertools.product(range(50), (a, b, b)):
                group.start_soon(take, c, f"req-{i}")
        assert outcomes.count("joined") == 50 and outcomes.count("duplicate") == 100
        taken = await b.take_decision("req-7")
        assert taken.outcome == "duplicate"
        assert (await b.take_decision("never-served")).outcome == "unknown"
        await a.put_decision("short", {"v": 1}, ttl_s=0.05)
        await anyio.sleep(0.1)
        assert (await b.take_decision("short")).outcome == "unknown"
    finally:
        for c in {a, b}:
            await c.aclose()


@pytest.mark.anyio
async def test_a_write_wakes_watchers_of_other_connections_quickly(make: Factory) -> None:
    writer, reader = make(), make()
    await writer.open()
    await reader.open()
    try:
        seen = anyio.Event()
        latency: list[float] = []

        async def watch() -> None:
            async for keys in reader.watch():
                if "policy.fraud" in keys:
                    latency.append(time.perf_counter())
                    seen.set()
                    return

        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            await anyio.sleep(0.2)  # the subscription is in place
            started = time.perf_counter()
            await writer.put("policy.fraud", {"live": "2"})
            with anyio.fail_after(1.0):  # the documented bound
                await seen.wait()
        assert latency[0] - started < 1.0
        doc = await reader.get("policy.fraud")
        assert doc is not None and doc.body == {"live": "2"}
    finally:
        for c in {writer, reader}:
            await c.aclose()


@pytest.mark.anyio
async def test_in_process_documents_survive_a_restart_in_the_old_file_format(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "slots.fraud.json").write_text('{"live_version": "2"}')  # written by an older version
    first = InProcessCoordinator(state)
    await first.open()
    doc = await first.get("slots.fraud")
    assert doc is not None and doc.rev == 1 and doc.body == {"live_version": "2"}
    await first.put("slots.fraud", {"live_version": "3"}, expect_rev=1)
    await first.incr("exp.fraud", {"n": 2})
    await first.append_event("log.fraud", "e1", {"k": 1})
    await first.aclose()
    second = InProcessCoordinator(state)
    await second.open()
    doc = await second.get("slots.fraud")
    assert doc is not None and doc.body == {"live_version": "3"}
    assert await second.counters("exp.fraud") == {"n": 2.0}
    assert not await second.append_event("log.fraud", "e1", {"k": 1})
    await second.aclose()


@pytest.mark.anyio
async def test_a_second_process_on_one_state_dir_is_refused_with_the_way_out(tmp_path: Path) -> None:
    first = InProcessCoordinator(tmp_path)
    await first.open()
    try:
        with pytest.raises(StateDirInUse) as refused:
            lock_state_dir(tmp_path)  # what a second process does first
        message = str(refused.value)
        assert "--workers N" in message and "--coordinator redis://" in message
        assert str(__import__("os").getpid()) in message
    finally:
        await first.aclose()
    lock_state_dir(tmp_path)  # released: the next process may take it


@pytest.mark.anyio
async def test_redis_down_is_coordinator_unavailable_not_a_hang(tmp_path: Path) -> None:
    from modelserve.state.coordinator import CoordinatorUnavailable
    from modelserve.testing_processes import free_port

    c = RedisCoordinator(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    with anyio.fail_after(5), pytest.raises(CoordinatorUnavailable):
        await c.open()
    await c.aclose()


@pytest.mark.anyio
async def test_a_burst_of_redis_calls_shares_a_bounded_pool_of_connections(redis_url: str) -> None:
    """150 calls at once wait for 4 connections instead of opening 150 sockets (which, on a starved
    host, time out while connecting: what made the exactly-once join test fail under load)."""
    import redis.asyncio as aioredis

    coordinator = RedisCoordinator(redis_url, prefix=f"t{uuid.uuid4().hex[:8]}:", max_connections=4)
    observer = aioredis.Redis.from_url(redis_url)
    try:
        before = (await observer.info("clients"))["connected_clients"]
        await coordinator.open()
        await coordinator.put_decisions([(f"r{i}", {"i": i}) for i in range(50)], ttl_s=60)
        outcomes: list[str] = []

        async def take(rid: str) -> None:
            outcomes.append((await coordinator.take_decision(rid)).outcome)

        async with anyio.create_task_group() as group:
            for i in range(150):
                group.start_soon(take, f"r{i % 50}")
        during = (await observer.info("clients"))["connected_clients"]
        assert outcomes.count("joined") == 50 and outcomes.count("duplicate") == 100
        assert during - before <= 4
    finally:
        await coordinator.aclose()
        await observer.aclose()


def _open_sqlite(path: str, start: Any) -> str:
    """In a process of its own: open the coordinator on `path` once every process is ready to."""
    from modelserve.state.sqlite_backend import SqliteCoordinator

    start.wait()
    coordinator = SqliteCoordinator(path)
    try:
        asyncio.run(coordinator.open())
    except Exception as exc:
        return repr(exc)
    asyncio.run(coordinator.aclose())
    return "open"


def test_processes_starting_together_on_a_new_sqlite_file_all_open_it(tmp_path: Path) -> None:
    """`serve --workers N` starts its workers at once on a fresh coordinator.db: they race to switch
    it to WAL, and SQLite answers the losers 'database is locked' without waiting."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    for trial in range(3):
        path = str(tmp_path / f"trial-{trial}.db")
        with context.Manager() as manager, context.Pool(8) as pool:
            start = manager.Barrier(8)
            assert pool.starmap(_open_sqlite, [(path, start)] * 8) == ["open"] * 8
