"""Leader election over a real shared backend: one leader, takeover, fenced writes of the deposed."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import anyio
import pytest

from modelserve.fleet.leader import LeaderLease
from modelserve.state.coordinator import Coordinator, FenceRejected, current_fence
from modelserve.state.redis_backend import RedisCoordinator
from modelserve.state.sqlite_backend import SqliteCoordinator


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", "redis"])
def connect(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    prefix = f"l{uuid.uuid4().hex[:8]}:"

    def factory() -> Coordinator:
        if request.param == "sqlite":
            return SqliteCoordinator(tmp_path / "state.db")
        return RedisCoordinator(request.getfixturevalue("redis_url"), prefix=prefix)

    return factory


@pytest.mark.anyio
async def test_one_leader_at_a_time_and_a_takeover_when_it_stops(connect) -> None:  # type: ignore[no-untyped-def]
    a_conn, b_conn = connect(), connect()
    await a_conn.open()
    await b_conn.open()
    leading: list[str] = []
    a = LeaderLease(a_conn, "a", ttl_s=3.0, renew_s=0.3)
    b = LeaderLease(b_conn, "b", ttl_s=3.0, renew_s=0.3)

    async def work(name: str) -> None:
        leading.append(name)
        await anyio.sleep_forever()

    try:
        async with anyio.create_task_group() as outer:
            a_scope = anyio.CancelScope()

            async def run_a() -> None:
                with a_scope:
                    await a.run(lambda: work("a"))

            outer.start_soon(run_a)
            with anyio.fail_after(2):
                while not a.is_leader:
                    await anyio.sleep(0.01)
            outer.start_soon(b.run, lambda: work("b"))
            await anyio.sleep(0.5)
            assert a.is_leader and not b.is_leader and leading == ["a"]
            a_scope.cancel()  # a stops (and releases): b takes over within one renewal, not a TTL
            started = time.monotonic()
            with anyio.fail_after(3):
                while not b.is_leader:
                    await anyio.sleep(0.01)
            assert time.monotonic() - started < 2.0
            assert leading == ["a", "b"]
            outer.cancel_scope.cancel()
    finally:
        await a_conn.aclose()
        await b_conn.aclose()


@pytest.mark.anyio
async def test_a_leader_cut_off_steps_down_and_its_late_writes_are_rejected(connect) -> None:  # type: ignore[no-untyped-def]
    a_conn, b_conn = connect(), connect()
    await a_conn.open()
    await b_conn.open()
    a = LeaderLease(a_conn, "a", ttl_s=0.6, renew_s=0.15)
    fences = []

    async def remember_fence() -> None:
        fences.append(current_fence.get())
        await anyio.sleep_forever()

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(a.run, remember_fence)
            with anyio.fail_after(2):
                while not fences:
                    await anyio.sleep(0.01)
            old = fences[0]
            assert old is not None
            await a_conn.put("rollout.fraud", {"stage": 1}, fence=old)
            await a_conn.aclose()  # a loses the backend: its renewals fail
            with anyio.fail_after(2):
                while a.is_leader:
                    await anyio.sleep(0.01)
            b = LeaderLease(b_conn, "b", ttl_s=5.0, renew_s=1.0)
            with anyio.fail_after(2):  # a's lease expires in the backend, b takes it
                while not await b._renew():
                    await anyio.sleep(0.05)
            with pytest.raises(FenceRejected):  # a late write of the deposed leader
                await b_conn.put("rollout.fraud", {"stage": 9}, fence=old)
            doc = await b_conn.get("rollout.fraud")
            assert doc is not None and doc.body == {"stage": 1}
            group.cancel_scope.cancel()
    finally:
        await b_conn.aclose()


@pytest.mark.anyio
async def test_a_backend_too_slow_to_answer_one_renewal_does_not_depose_the_leader(tmp_path: Path) -> None:
    """A renewal with no answer within `renew_s` (a paused or busy backend) is not a refusal: the
    leader keeps its term while its last renewal is fresh, instead of stepping down and starting over."""
    import os
    import signal

    from modelserve.testing_processes import RedisServer, free_port

    server = RedisServer(free_port(), data_dir=tmp_path).start()
    conn = RedisCoordinator(server.url, prefix="slow:")
    try:
        await conn.open()
        lease = LeaderLease(conn, "a", ttl_s=4.0, renew_s=0.3)
        terms: list[object] = []

        async def work() -> None:
            terms.append(current_fence.get())
            await anyio.sleep_forever()

        async with anyio.create_task_group() as group:
            group.start_soon(lease.run, work)
            with anyio.fail_after(5):
                while not lease.is_leader:
                    await anyio.sleep(0.01)
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGSTOP)  # every renewal for 1 s gets no answer
            try:
                await anyio.sleep(1.0)
                assert lease.is_leader
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            await anyio.sleep(1.0)  # renewals answer again
            assert lease.is_leader and lease.elections == 1 and len(terms) == 1
            group.cancel_scope.cancel()
    finally:
        await conn.aclose()
        server.stop()
