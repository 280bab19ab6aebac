"""Unconfirmed exposure decays: a replica that cannot read the shared state cuts its canary to 0.

Two replicas (registry, policy table and policy sync each, in this process) share a real
`redis-server`, which is then stopped by its PID: after the bound, both send no traffic to the
candidate any more (a warning, the reason in the status) while the live version serves on; once the
server is back, the weight the document says is restored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from modelserve import testing
from modelserve.fleet.commands import FleetCommands
from modelserve.fleet.sync import PolicySync
from modelserve.serving.registry import ModelRegistry
from modelserve.serving.repository import ModelRepository
from modelserve.state.policies import PolicyTable
from modelserve.state.redis_backend import RedisCoordinator
from modelserve.state.store import MemoryStateStore
from modelserve.testing_processes import RedisServer, free_port

TTL_S = 1.5


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    (tmp_path / "redis").mkdir()
    server = RedisServer(free_port(), data_dir=tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


async def replica(name: str, url: str, repo: Path) -> tuple[PolicySync, FleetCommands, RedisCoordinator]:
    coordinator = RedisCoordinator(url)
    await coordinator.open()
    local = MemoryStateStore()
    registry = ModelRegistry(ModelRepository(repo), local)
    policies = PolicyTable(local)
    registry.listeners.append(policies.on_switch)
    sync = PolicySync(
        coordinator=coordinator, registry=registry, policies=policies, replica_id=name, poll_s=0.2,
        heartbeat_s=0.1, exposure_ttl_s=TTL_S,
    )  # fmt: skip
    await sync.prepare(["fraud"], local)
    slots = await registry.load_model("fraud")
    assert slots.live is not None
    policies.ensure("fraud", slots.config, slots.live.version)
    await sync.apply("fraud")
    return sync, FleetCommands(sync=sync, registry=registry), coordinator


def weight(sync: PolicySync) -> float:
    policy = sync.policies.get("fraud")
    assert policy is not None
    return policy.canary_weight


async def eventually(check: object, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    with anyio.fail_after(timeout_s):
        while not check():  # type: ignore[operator]
            await anyio.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.anyio
async def test_a_stopped_backend_cuts_canary_traffic_after_the_bound_and_restores_it(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    repo = testing.repository(tmp_path / "models", {"fraud": {"1": 1, "2": 2}})
    (repo / "fraud" / "config.toml").write_text('live = "1"\n')
    replicas = [await replica(name, redis_server.url, repo) for name in ("a", "b")]
    (a, a_commands, _), (b, _, _) = replicas
    async with anyio.create_task_group() as group:
        for sync, _, _ in replicas:
            group.start_soon(sync.run)
        await a_commands.stage("fraud", "2")
        await a_commands.update_policy("fraud", {"candidate": "2", "canary_weight": 30.0})
        await eventually(lambda: weight(b) == 30.0 and "2" in b.registry.slots("fraud").ready_versions,
                         30, "canary on b")  # fmt: skip

        caplog.set_level(logging.WARNING, logger="modelserve.fleet")
        redis_server.stop()  # by PID
        stopped = time.monotonic()
        await anyio.sleep(TTL_S / 3)
        assert weight(a) == weight(b) == 30.0  # not at once: a blip of the backend changes nothing
        for sync in (a, b):
            await eventually(lambda s=sync: weight(s) == 0.0, TTL_S + 5, "cut to 0")
        assert time.monotonic() - stopped >= TTL_S - 0.3  # last read at most one poll before the stop
        for sync in (a, b):
            assert sync.exposure_cut is not None and "not read" in sync.exposure_cut
            policy = sync.policies.get("fraud")
            assert policy is not None and policy.candidate == "2" and policy.live == "1"
        assert any("candidate traffic cut to 0" in r.getMessage() for r in caplog.records)

        redis_server.start()  # same port, same data
        for sync in (a, b):
            await eventually(lambda s=sync: weight(s) == 30.0 and s.exposure_cut is None, 30, "restored")
        assert any("back to 30 %" in r.getMessage() for r in caplog.records)
        group.cancel_scope.cancel()
    for _, _, coordinator in replicas:
        await coordinator.aclose()
