"""`Replica`: this process's part of the shared state, wired into the server's lifecycle.

    open()    before the models load: connect (or lock the state dir), preload the documents the
              services read synchronously, read or seed every model's desired state
    start()   after they loaded: apply the desired revisions, publish what this replica serves
    tasks     policy sync (watch + poll + heartbeat) and the write-behind store's writer
    close()   at shutdown: flush pending writes (bounded), disconnect / unlock

One process alone uses the in-process coordinator (files in the state dir, exactly as before); the
same code paths run there, so single-process servers exercise what a fleet runs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import anyio

from modelserve.fleet.commands import FleetCommands
from modelserve.fleet.sync import PolicySync
from modelserve.serving.registry import ModelRegistry
from modelserve.state.cached import CoordinatorStore
from modelserve.state.coordinator import Coordinator, CoordinatorUnavailable
from modelserve.state.policies import PolicyTable
from modelserve.state.store import StateStore

log = logging.getLogger("modelserve.fleet")

#: How long shutdown waits for queued state writes.
FLUSH_TIMEOUT_S = 5.0


class Replica:
    """See the module docstring."""

    def __init__(
        self,
        *,
        coordinator: Coordinator,
        store: StateStore,
        local: StateStore,
        registry: ModelRegistry,
        policies: PolicyTable,
        replica_id: str,
        model_names: Callable[[], list[str]],
        exposure_ttl_s: float = 60.0,
    ) -> None:
        self.coordinator = coordinator
        self.store = store
        self.local = local
        self.registry = registry
        self.replica_id = replica_id
        self.model_names = model_names
        self.sync = PolicySync(
            coordinator=coordinator, registry=registry, policies=policies, replica_id=replica_id,
            exposure_ttl_s=exposure_ttl_s,
        )  # fmt: skip
        self.commands = FleetCommands(sync=self.sync, registry=registry)
        policies.writer = self.write_policy

    @property
    def shared(self) -> bool:
        """Whether other processes share this state (SQLite or Redis)."""
        return self.coordinator.shared

    async def open(self) -> None:
        await self.coordinator.open()
        models = self.model_names()
        if isinstance(self.store, CoordinatorStore):
            await self.store.preload(
                [key for m in models for key in (f"rollout.{m}", f"experiment.{m}")],
                [f"rollout-events.{m}" for m in models],
            )
        await self.sync.prepare(models, self.local)

    async def start(self) -> None:
        await self.sync.apply_all()
        with contextlib.suppress(CoordinatorUnavailable):
            await self.sync.publish()

    def tasks(self) -> list[Callable[[], Any]]:
        tasks: list[Callable[[], Any]] = [self.sync.run]
        if isinstance(self.store, CoordinatorStore):
            tasks.append(self.store.run)
        return tasks

    async def write_policy(self, model: str, changes: dict[str, Any]) -> None:
        await self.commands.update_policy(model, changes)

    async def close(self) -> None:
        if isinstance(self.store, CoordinatorStore) and self.store.pending:
            async with anyio.create_task_group() as group:  # the lifespan's writer is cancelled by now
                group.start_soon(self.store.run)
                with anyio.move_on_after(FLUSH_TIMEOUT_S):
                    await self.store.flush()
                if self.store.pending:
                    log.warning("%d state writes not flushed at shutdown", self.store.pending)
                group.cancel_scope.cancel()
        await self.coordinator.aclose()

    def status(self, model: str) -> dict[str, Any]:
        """The model's desired revision as applied here, for its status."""
        applied = self.sync.applied.get(model)
        return {
            "fleet": {
                "replica": self.replica_id,
                "backend": self.coordinator.backend,
                "revision": applied.rev if applied is not None else None,
                "error": self.sync.errors.get(model) or self.sync.backend_error,
                "exposure_cut": self.sync.exposure_cut,
            }
        }
