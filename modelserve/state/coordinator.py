"""The coordination interface every replica shares: one async API, three backends.

    Coordinator                what every backend implements (this module)
    ├── InProcessCoordinator   one process; documents are today's JSON files (`state/inprocess.py`)
    ├── SqliteCoordinator      `serve --workers N` on one machine, stdlib sqlite3 in WAL mode
    └── RedisCoordinator       many machines; `redis.asyncio`, Lua for atomic check-and-set

What it holds, and the guarantee each part gives:

- **documents** `key -> (rev, body)`: `put(expect_rev=...)` is compare-and-set (0 = create only if
  absent); every successful put bumps `rev` by one and wakes `watch()`ers in every process.
- **counters** `key -> {field: number}`: atomic increments, never read-modify-write; an increment
  carrying a `once` token is applied at most once per token (a retry after an unclear failure never
  double-counts).
- **snapshots** `kind -> {replica: body}` with a TTL: each replica overwrites its own (idempotent);
  a replica that stopped writing disappears after the TTL.
- **event log** `log -> [record]`, idempotent by `event_id` and optionally fenced.
- **decisions** `request id -> body` with a TTL, taken exactly once (`take_decision`); a second take
  answers "duplicate", an unknown id "unknown". `put_decisions` / `take_decisions` do many in one
  round-trip, each one still atomic.
- **lease** `name -> (holder, token)`: at most one holder; the token grows with every new holder, and
  writes carrying a `Fence` with an older token are rejected (`FenceRejected`).

Notifications are hints; revisions are truth: a watcher re-reads what it was told about, and also
polls now and then. Every backend keeps blocking I/O off the event loop.

Errors (all `ModelServeError`):

    StaleRevision(Conflict)          compare-and-set lost: someone else wrote first  -> 409
    FenceRejected(Conflict)          the writer's lease was taken over              -> 409
    CoordinatorUnavailable(NotReady) the backend cannot be reached                  -> 503
    StateDirInUse(ConfigError)       a second process on one in-process state dir
"""

from __future__ import annotations

import os
import random
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio

from modelserve.errors import ConfigError, Conflict, NotReady


class StaleRevision(Conflict):
    """A compare-and-set saw another revision than the one expected."""

    def __init__(self, key: str, expected: int, actual: int) -> None:
        super().__init__(f"state {key!r} is at revision {actual}, not {expected}: re-read and retry")
        self.key, self.expected, self.actual = key, expected, actual


class FenceRejected(Conflict):
    """A fenced write carried a token older than the lease's current one (a deposed leader)."""


class CoordinatorUnavailable(NotReady):
    """The shared state backend cannot be reached; callers fail static and retry later."""

    retry_after_s = 1


class StateDirInUse(ConfigError):
    """Another process holds the in-process coordinator's state directory."""


@dataclass(frozen=True, slots=True)
class Document:
    """One revisioned document; `rev` starts at 1 and grows by one with every write."""

    key: str
    rev: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Lease:
    """A held lease: `token` fences every write the holder makes while it leads."""

    name: str
    holder: str
    token: int
    ttl_s: float


@dataclass(frozen=True, slots=True)
class Fence:
    """Attach to a write so the backend rejects it unless `token` is still the lease's token."""

    lease: str
    token: int


#: The fence of the leader task running in this context: writes made under it carry it, so the
#: backend rejects them once another replica took the lease over (set by `fleet.leader`).
current_fence: ContextVar[Fence | None] = ContextVar("modelserve_current_fence", default=None)


@dataclass(frozen=True, slots=True)
class Taken:
    """The outcome of taking a stored decision: joined (first take), duplicate, or unknown/expired."""

    outcome: Literal["joined", "duplicate", "unknown"]
    body: dict[str, Any] | None = None


class Coordinator(Protocol):
    """Shared state for every replica of one deployment (see the module docstring)."""

    #: Short name of the backend: "inprocess", "sqlite" or "redis".
    backend: str
    #: Whether more than one process can share this coordinator.
    shared: bool

    async def open(self) -> None:
        """Connect / lock / create tables; call once before any other method."""

    async def aclose(self) -> None:
        """Release the connection and locks; pending writes are finished first."""

    # documents
    async def get(self, key: str) -> Document | None: ...

    async def put(
        self, key: str, body: dict[str, Any], *, expect_rev: int | None = None, fence: Fence | None = None
    ) -> Document:
        """Write `body`; with `expect_rev` only if the current revision is that (0: absent)."""
        ...

    async def revisions(self, prefix: str) -> dict[str, int]:
        """Current revision of every document whose key starts with `prefix`."""
        ...

    def watch(self) -> AsyncIterator[set[str]]:
        """Sets of document keys that may have changed (hints), until cancelled."""
        ...

    # counters
    async def incr(self, key: str, amounts: dict[str, float], *, once: str | None = None) -> bool:
        """Add `amounts` atomically; with `once`, only if that token was not used before (False then)."""
        ...

    async def counters(self, key: str) -> dict[str, float]: ...

    # per-replica snapshots
    async def put_snapshot(self, kind: str, replica: str, body: dict[str, Any], ttl_s: float) -> None: ...

    async def snapshots(self, kind: str) -> dict[str, dict[str, Any]]: ...

    # event log
    async def append_event(
        self, log: str, event_id: str, record: dict[str, Any], *, fence: Fence | None = None
    ) -> bool:
        """Append once per `event_id`; False when that id was appended before."""
        ...

    async def events(self, log: str, limit: int = 1000) -> list[dict[str, Any]]:
        """The last `limit` records of `log`, oldest first."""
        ...

    # decisions (feedback join)
    async def put_decision(self, request_id: str, body: dict[str, Any], ttl_s: float) -> None: ...

    async def take_decision(self, request_id: str) -> Taken: ...

    async def put_decisions(self, items: list[tuple[str, dict[str, Any]]], ttl_s: float) -> None:
        """`put_decision` for many ids in one round-trip (an id stored before is left as it is)."""
        ...

    async def take_decisions(self, request_ids: list[str]) -> list[Taken]:
        """`take_decision` for many ids in one round-trip, in order; each take is atomic."""
        ...

    # lease
    async def acquire_lease(self, name: str, holder: str, ttl_s: float) -> Lease | None:
        """Take the lease, or renew it when `holder` has it; None while someone else holds it."""
        ...

    async def release_lease(self, name: str, holder: str) -> None: ...


_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,199}$")


#: How long a `once` token of `incr` is remembered (retries happen within seconds to minutes).
ONCE_TTL_S = 3600.0


def check_key(key: str) -> str:
    """A state key: letters, digits and `_ . : -`, at most 200 characters, no `..`."""
    if not _KEY.match(key) or ".." in key:
        raise ConfigError(f"invalid state key {key!r}")
    return key


def replica_id(environ: dict[str, str] | os._Environ[str] | None = None) -> str:
    """This process's name among the replicas: `POD_NAME` when set (Kubernetes), else `host:pid`."""
    pod = (environ or {}).get("POD_NAME")
    return pod or f"{socket.gethostname()}:{os.getpid()}"


async def cas_update(
    coordinator: Coordinator,
    key: str,
    change: Callable[[dict[str, Any]], dict[str, Any] | Awaitable[dict[str, Any]]],
    *,
    attempts: int = 200,
    fence: Fence | None = None,
) -> Document:
    """Read, apply `change` to a copy of the body, compare-and-set; retry when another writer won.

    `change` gets `{}` for an absent document and returns the new body (or raises to give up).
    """
    for attempt in range(attempts):
        if attempt:  # lost a race: back off a little, with jitter, so the writers spread out
            await anyio.sleep(random.uniform(0, 0.001 * min(attempt, 20)))
        current = await coordinator.get(key)
        body = dict(current.body) if current is not None else {}
        new = change(body)
        if not isinstance(new, dict):
            new = await new
        try:
            return await coordinator.put(
                key, new, expect_rev=current.rev if current is not None else 0, fence=fence
            )
        except StaleRevision:
            continue
    raise Conflict(f"state {key!r} kept changing under {attempts} attempts to update it; retry")


def open_coordinator(url: str | None, *, state_dir: Path | None, replica: str) -> Coordinator:
    """The coordinator a URL names (not yet opened).

    None: in-process (files under `state_dir`, or memory when it is None); `sqlite:///path/to/db` or
    a path ending in `.db`: SQLite; `redis://host:port/db`: Redis.
    """
    if url is None or url in ("", "inprocess", "memory"):
        from modelserve.state.inprocess import InProcessCoordinator

        return InProcessCoordinator(None if url == "memory" else state_dir)
    if url.startswith("sqlite://"):
        from modelserve.state.sqlite_backend import SqliteCoordinator

        return SqliteCoordinator(Path(url.removeprefix("sqlite://")))
    if url.startswith(("redis://", "rediss://", "unix://")):
        from modelserve.state.redis_backend import RedisCoordinator

        return RedisCoordinator(url)
    raise ConfigError(f"unknown coordinator {url!r}: use sqlite:///PATH or redis://HOST:PORT")
