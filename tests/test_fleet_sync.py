"""Policy sync and fleet commands: replicas sharing a real backend converge on the desired state.

Each replica here is a full registry + policy table + coordinator connection in this process; the
same code runs in separate processes in `test_multiprocess.py`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from modelserve import testing
from modelserve.errors import Conflict, NotReady
from modelserve.fleet.commands import FleetCommands
from modelserve.fleet.sync import PolicySync
from modelserve.serving.registry import ModelRegistry
from modelserve.serving.repository import ModelRepository
from modelserve.state.coordinator import Coordinator, StaleRevision
from modelserve.state.policies import PolicyTable
from modelserve.state.redis_backend import RedisCoordinator
from modelserve.state.sqlite_backend import SqliteCoordinator
from modelserve.state.store import MemoryStateStore


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Replica:
    name: str
    coordinator: Coordinator
    registry: ModelRegistry
    policies: PolicyTable
    sync: PolicySync
    commands: FleetCommands


async def start_replica(name: str, coordinator: Coordinator, repo: Path) -> Replica:
    await coordinator.open()
    local = MemoryStateStore()
    registry = ModelRegistry(ModelRepository(repo), local)
    policies = PolicyTable(local)
    registry.listeners.append(policies.on_switch)
    sync = PolicySync(
        coordinator=coordinator, registry=registry, policies=policies, replica_id=name, poll_s=0.2,
        heartbeat_s=0.1, replica_ttl_s=1.0,
    )  # fmt: skip
    await sync.prepare(["fraud"], local)
    slots = await registry.load_model("fraud")
    assert slots.live is not None
    policies.ensure("fraud", slots.config, slots.live.version)
    await sync.apply("fraud")
    await sync.publish()
    return Replica(name, coordinator, registry, policies, sync, FleetCommands(sync=sync, registry=registry))


@pytest.fixture(params=["sqlite", "redis"])
async def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[list[Replica]]:
    repo = testing.repository(tmp_path / "models", {"fraud": {"1": 1, "2": 2, "3": 3}})
    (repo / "fraud" / "config.toml").write_text('live = "1"\n')
    prefix = f"f{uuid.uuid4().hex[:8]}:"

    def connect() -> Coordinator:
        if request.param == "sqlite":
            return SqliteCoordinator(tmp_path / "state.db", poll_s=0.02)
        return RedisCoordinator(request.getfixturevalue("redis_url"), prefix=prefix)

    replicas = [await start_replica(name, connect(), repo) for name in ("a", "b", "c")]
    async with anyio.create_task_group() as group:
        for replica in replicas:
            group.start_soon(replica.sync.run)
        yield replicas
        group.cancel_scope.cancel()
    for replica in replicas:
        await replica.coordinator.aclose()


def live(replica: Replica) -> str:
    slots = replica.registry.slots("fraud")
    assert slots.live is not None
    return slots.live.version


async def eventually(check: object, timeout_s: float = 1.0) -> None:
    """Wait (bounded) until `check()` is true; the bound is the guarantee under test."""
    with anyio.fail_after(timeout_s):
        while not check():  # type: ignore[operator]
            await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_every_replica_starts_on_the_one_desired_live_version(fleet: list[Replica]) -> None:
    assert [live(r) for r in fleet] == ["1", "1", "1"]
    desired = await fleet[0].sync.desired.get("fraud")
    assert desired is not None and desired.rev == 1


@pytest.mark.anyio
async def test_stage_then_canary_on_one_replica_applies_on_every_replica(fleet: list[Replica]) -> None:
    a, b, c = fleet
    await a.commands.stage("fraud", "2")
    await a.commands.update_policy("fraud", {"candidate": "2", "canary_weight": 30.0})
    for other in (b, c):
        await eventually(lambda o=other: "2" in o.registry.slots("fraud").ready_versions, 10.0)
        await eventually(lambda o=other: o.policies.get("fraud").canary_weight == 30.0)  # type: ignore[union-attr]
        assert other.policies.get("fraud").candidate == "2"  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_promote_waits_for_every_replica_then_switches_all_within_a_second(
    fleet: list[Replica],
) -> None:
    a, b, c = fleet
    await a.commands.stage("fraud", "2")
    applied = await a.commands.promote("fraud")  # the barrier: 2 is READY on b and c before the switch
    assert applied.switch is not None and applied.switch.to_version == "2"
    assert live(a) == "2"
    for other in (b, c):
        await eventually(lambda o=other: live(o) == "2")
        assert other.policies.get("fraud").live == "2"  # type: ignore[union-attr]
    rolled = await c.commands.rollback("fraud")
    assert rolled.desired.live == "1" and live(c) == "1"
    for other in (a, b):
        await eventually(lambda o=other: live(o) == "1")


@pytest.mark.anyio
async def test_canary_on_one_replica_and_shadow_on_another_both_survive(fleet: list[Replica]) -> None:
    a, b, c = fleet
    await a.commands.stage("fraud", "2")
    # c loads 2 first: a load holds c's apply lock, and its time is not the 1 s bound under test.
    await eventually(lambda: "2" in c.registry.slots("fraud").ready_versions, 30.0)
    async with anyio.create_task_group() as group:
        group.start_soon(a.commands.update_policy, "fraud", {"candidate": "2", "canary_weight": 30.0})
        group.start_soon(b.commands.update_policy, "fraud", {"shadow_versions": ["2"]})
    desired = await c.sync.desired.get("fraud")
    assert desired is not None and desired.canary_weight == 30.0 and desired.shadow_versions == ("2",)
    # Wait for the final revision, not for one field: c may first apply the revision in between,
    # which has only one of the two changes.
    await eventually(lambda: c.sync.applied["fraud"].rev >= desired.rev)
    policy = c.policies.get("fraud")
    assert policy is not None and policy.canary_weight == 30.0 and policy.shadow_versions == ("2",)


@pytest.mark.anyio
async def test_if_match_on_a_stale_revision_is_refused(fleet: list[Replica]) -> None:
    a, b, _ = fleet
    desired = await a.sync.desired.get("fraud")
    assert desired is not None
    await b.commands.update_policy("fraud", {"flag": "f1"})
    with pytest.raises(StaleRevision):
        await a.commands.update_policy("fraud", {"flag": "f2"}, expect_rev=desired.rev)
    fresh = await a.commands.update_policy("fraud", {"flag": "f2"}, expect_rev=desired.rev + 1)
    assert fresh.flag == "f2"


@pytest.mark.anyio
async def test_promote_without_a_candidate_is_a_conflict_and_a_dead_replica_blocks_no_one(
    fleet: list[Replica],
) -> None:
    a, b, _ = fleet
    with pytest.raises(Conflict):
        await a.commands.promote("fraud")
    await b.commands.update_policy("fraud", {"candidate": "3"})  # named, but loaded nowhere yet
    await eventually(lambda: "3" in a.registry.slots("fraud").ready_versions, 10.0)
    await a.commands.promote("fraud")
    assert live(a) == "3"


@pytest.mark.anyio
async def test_barrier_names_the_replicas_that_lack_the_candidate(tmp_path: Path) -> None:
    repo = testing.repository(tmp_path / "models", {"fraud": {"1": 1, "2": 2}})
    (repo / "fraud" / "config.toml").write_text('live = "1"\n')
    coordinator = SqliteCoordinator(tmp_path / "state.db")
    replica = await start_replica("a", coordinator, repo)
    await coordinator.put_snapshot(
        "replicas", "ghost", {"models": {"fraud": {"rev": 1, "ready": ["1"]}}}, ttl_s=30
    )
    await replica.commands.stage("fraud", "2")
    with pytest.raises(NotReady, match="ghost"):
        await replica.sync.wait_ready("fraud", "2", timeout_s=0.2)
    await coordinator.aclose()


@pytest.mark.anyio
async def test_the_warm_set_follows_the_document_but_never_unloads_an_arm_in_use_or_a_role(
    fleet: list[Replica],
) -> None:
    a, b, c = fleet
    b.registry.in_use.append(lambda model: frozenset({"3"}))  # an experiment on b uses version 3
    await a.commands.load("fraud", "3")
    await a.commands.stage("fraud", "2")
    for other in (b, c):
        await eventually(lambda o=other: o.registry.slots("fraud").ready_versions == {"1", "2", "3"}, 10.0)
    desired = await c.commands.sync.desired.get("fraud")
    assert desired is not None and desired.warm == ("1", "3", "2") and desired.pinned == ("3",)
    with pytest.raises(Conflict, match="is live"):
        await c.commands.unload("fraud", "1")
    await c.commands.unload("fraud", "3")  # not in use on c; on b it is: b keeps it warm
    await eventually(lambda: a.registry.slots("fraud").ready_versions == {"1", "2"})
    assert c.registry.slots("fraud").ready_versions == {"1", "2"}
    assert b.registry.slots("fraud").ready_versions == {"1", "2", "3"}
    await c.commands.unload("fraud", "2")  # the staged candidate: its role goes with it
    for replica in fleet:
        await eventually(lambda r=replica: "2" not in r.registry.slots("fraud").ready_versions)
        assert replica.registry.slots("fraud").candidate is None
