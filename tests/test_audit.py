"""The audit log: every change recorded with actor, reason, before/after; durable, bounded, sent on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from modelserve.state.audit import Actor, AuditLog, changes
from modelserve.state.store import FileStateStore


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_entries_survive_a_restart_in_order_with_actor_reason_and_before_after(tmp_path: Path) -> None:
    sent: list[dict[str, Any]] = []
    audit = AuditLog(FileStateStore(tmp_path), notify=sent.append, clock=lambda: 1_800_000_000.0)
    audit.record(
        "credit", "promote", actor=Actor(scope="admin", reason="v2 won the A/B test"),
        before={"live": "1"}, after={"live": "2"},
    )  # fmt: skip
    audit.record("credit", "canary", actor=Actor(scope="admin"), before={"canary": 0}, after={"canary": 5})
    audit.record("iris", "unload", actor=Actor(scope="admin"))
    await audit.flush()

    again = AuditLog(FileStateStore(tmp_path))
    assert again.load() == 3
    [first, second] = again.history("credit")
    assert (first.action, first.actor.scope) == ("promote", "admin")
    assert first.actor.reason == "v2 won the A/B test"
    assert changes(first.before, first.after) == {"live": ("1", "2")}
    assert second.seq > first.seq and second.after == {"canary": 5}
    assert again.record("credit", "rollback", actor=Actor(scope="admin")).seq == 4  # numbering goes on
    assert [p["action"] for p in sent] == ["promote", "canary", "unload"]
    assert sent[0]["kind"] == "audit" and sent[0]["actor"] == "admin" and sent[0]["after"] == {"live": "2"}


@pytest.mark.anyio
async def test_the_log_is_bounded_on_disk_and_in_memory(tmp_path: Path) -> None:
    audit = AuditLog(FileStateStore(tmp_path), segments=3, segment_size=4)
    for i in range(50):
        audit.record("credit", "policy", actor=Actor(scope="admin"), after={"i": i})
        if i % 7 == 0:
            await audit.flush()
    await audit.flush()
    assert len(audit.history(limit=1000)) == 12
    assert len(list(tmp_path.glob("audit.*.json"))) == 3
    again = AuditLog(FileStateStore(tmp_path), segments=3, segment_size=4)
    kept = [e.after["i"] for e in (again.history(limit=1000) if again.load() else [])]
    assert kept[-1] == 49 and len(kept) <= 12 and kept == sorted(kept)


@pytest.mark.anyio
async def test_run_writes_changes_in_the_background(tmp_path: Path) -> None:
    audit = AuditLog(FileStateStore(tmp_path))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(audit.run)
        audit.record("credit", "stage", actor=Actor(scope="admin"), after={"idle": "2"})
        with anyio.fail_after(10):
            while not (tmp_path / "audit.0.json").exists():
                await anyio.sleep(0.01)
        tasks.cancel_scope.cancel()
    assert AuditLog(FileStateStore(tmp_path)).load() == 1
