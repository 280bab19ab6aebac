"""Leader election: one replica at a time runs the automation (the rollout controller).

The leader holds a lease in the coordinator (TTL `ttl_s`, renewed every `renew_s`). Its work runs in
a task whose context carries the lease's `Fence`, so every state write that work makes is fenced:
once another replica took the lease over (a new, higher token) the backend rejects the old leader's
writes even if it does not know yet that it lost.

A leader also stops on its own, by its local monotonic clock, `ttl_s - renew_s` after its last
successful renewal: a replica cut off from the backend (or paused by SIGSTOP) never keeps acting
past the point where another may have taken over. Taking over happens within TTL + one renewal.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import anyio

from modelserve.state.coordinator import Coordinator, CoordinatorUnavailable, Fence, Lease, current_fence

log = logging.getLogger("modelserve.fleet")


class LeaderLease:
    """Runs `while_leader` while this replica holds the lease (see the module docstring)."""

    def __init__(
        self,
        coordinator: Coordinator,
        holder: str,
        *,
        name: str = "leader",
        ttl_s: float = 10.0,
        renew_s: float = 2.0,
    ) -> None:
        if not 0 < renew_s < ttl_s:
            raise ValueError("renew_s must be positive and shorter than ttl_s")
        self.coordinator = coordinator
        self.holder = holder
        self.name = name
        self.ttl_s = ttl_s
        self.renew_s = renew_s
        self.lease: Lease | None = None
        self.elections = 0
        self.term_started_at: float | None = None  # wall clock, for status: when this term began
        self._valid_until = 0.0

    @property
    def is_leader(self) -> bool:
        """True while this replica holds a lease it renewed recently enough to act on."""
        return self.lease is not None and time.monotonic() < self._valid_until

    @property
    def fence(self) -> Fence | None:
        return Fence(self.name, self.lease.token) if self.lease is not None else None

    async def _renew(self) -> bool:
        started = time.monotonic()
        lease = None
        try:
            with anyio.move_on_after(self.renew_s) as slow:
                lease = await self.coordinator.acquire_lease(self.name, self.holder, self.ttl_s)
        except CoordinatorUnavailable as exc:
            log.warning("leader lease %s: cannot renew: %s", self.name, exc)
            return self.is_leader  # keep acting only while the last renewal is fresh enough
        if slow.cancelled_caught:  # no answer is not a refusal: a busy host or backend is slow
            log.warning("leader lease %s: no answer within %g s", self.name, self.renew_s)
            return self.is_leader
        if lease is None:
            self.lease = None
            return False
        if self.lease is not None and lease.token != self.lease.token:
            self.lease = None  # it expired and we got it again: a new term, a new fence
            return False
        self.lease = lease
        self._valid_until = started + self.ttl_s - self.renew_s
        return True

    async def run(self, while_leader: Callable[[], Awaitable[None]]) -> None:
        """Campaign for the lease until cancelled; run `while_leader` during each term."""
        try:
            while True:
                if await self._renew():
                    self.elections += 1
                    self.term_started_at = time.time()
                    log.info("%s is the leader (%s, token %s)", self.holder, self.name, self.fence)
                    async with anyio.create_task_group() as group:
                        group.start_soon(self._lead, while_leader)
                        while True:
                            left = self._valid_until - time.monotonic()
                            await anyio.sleep(max(0.0, min(self.renew_s, left)))
                            if not await self._renew():
                                group.cancel_scope.cancel()
                                break
                    self.lease = None
                    self.term_started_at = None
                    log.warning("%s stepped down as the leader (%s)", self.holder, self.name)
                await anyio.sleep(self.renew_s)
        finally:
            if self.lease is not None:
                shielded = anyio.CancelScope(shield=True)
                with shielded, anyio.move_on_after(1.0), contextlib.suppress(CoordinatorUnavailable):
                    await self.coordinator.release_lease(self.name, self.holder)
                self.lease = None

    async def _lead(self, while_leader: Callable[[], Awaitable[None]]) -> None:
        current_fence.set(self.fence)  # this task's context: every write below carries the fence
        await while_leader()
        await anyio.sleep_forever()  # the term lasts as long as the lease, not as long as the work
