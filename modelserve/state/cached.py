"""`StateStore` over a `Coordinator`: synchronous reads from memory, writes done behind the caller.

The services that keep small durable documents (rollout state, experiments) call `read`/`write`
from the event loop. Here a read is a dict lookup in what `preload` fetched (or what was written
since), and a write updates that memory and queues the document for `run()`, a lifespan task that
hands it to the coordinator, whose I/O runs off the event loop. Writes of one key coalesce (only the
newest is written) and keep their order; when the backend is down they wait and are retried, so the
event loop never blocks on the disk or the network.

`flush()` waits until everything queued is written (graceful shutdown). A write made under a
leader's fence (`current_fence`) carries it: once the lease moved on, the backend rejects it and it is
dropped, never retried.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from typing import Any

import anyio
import orjson

from modelserve.errors import ConfigError
from modelserve.state.coordinator import (
    Coordinator,
    CoordinatorUnavailable,
    FenceRejected,
    check_key,
    current_fence,
)

log = logging.getLogger("modelserve.state")

RETRY_S = 0.5
#: How soon a write made from a worker thread (which cannot wake the writer) is picked up.
THREAD_POLL_S = 0.05


def _copy(value: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))
    return result


class CoordinatorStore:
    """A write-behind `StateStore` (see the module docstring)."""

    def __init__(self, coordinator: Coordinator, *, max_log: int = 1000) -> None:
        self.coordinator = coordinator
        self.max_log = max_log
        self._docs: dict[str, dict[str, Any] | None] = {}
        self._broken: dict[str, str] = {}  # key -> why its document could not be read
        self._logs: dict[str, list[dict[str, Any]]] = {}
        # key -> ("doc", body) or ("log", [records...]); ordered by first enqueue
        self._queue: OrderedDict[str, tuple[str, Any]] = OrderedDict()
        self._wakeup = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()
        self._lock = threading.Lock()  # `write` may come from a worker thread
        self._loop_thread: int | None = None

    async def preload(self, keys: list[str] = [], logs: list[str] = []) -> None:  # noqa: B006
        """Fetch documents and logs into memory (call before the services read them)."""
        for key in keys:
            if key not in self._docs:
                try:
                    doc = await self.coordinator.get(check_key(key))
                except ConfigError as exc:  # one corrupt document: its reader says so, the rest load
                    self._broken[key] = str(exc)
                    continue
                self._docs.setdefault(key, None if doc is None else doc.body)
        for name in logs:
            if name not in self._logs:
                self._logs[name] = await self.coordinator.events(check_key(name), self.max_log)

    async def reload(self, keys: list[str] = [], logs: list[str] = []) -> None:  # noqa: B006
        """Re-fetch documents and logs other replicas may have changed (not those with a write queued)."""
        for key in keys:
            if f"doc:{key}" not in self._queue:
                doc = await self.coordinator.get(check_key(key))
                if f"doc:{key}" not in self._queue:
                    self._docs[key] = None if doc is None else doc.body
        for name in logs:
            if f"log:{name}" not in self._queue:
                records = await self.coordinator.events(check_key(name), self.max_log)
                if f"log:{name}" not in self._queue:
                    self._logs[name] = records

    def writing(self, key: str) -> bool:
        """Whether a write of document `key` is still queued."""
        return f"doc:{key}" in self._queue

    def read(self, key: str) -> dict[str, Any] | None:
        broken = self._broken.get(key)
        if broken is not None:
            raise ConfigError(broken)
        value = self._docs.get(check_key(key))
        return None if value is None else _copy(value)

    def write(self, key: str, value: dict[str, Any]) -> None:
        body = _copy(value)
        with self._lock:
            self._broken.pop(key, None)  # a good document replaces the corrupt one
            self._docs[check_key(key)] = body
            self._queue[f"doc:{key}"] = ("doc", (key, body, current_fence.get()))
        self._kick()

    def append(self, key: str, record: dict[str, Any]) -> None:
        record = _copy(record)
        record.setdefault("event_id", uuid.uuid4().hex)
        with self._lock:
            records = self._logs.setdefault(check_key(key), [])
            records.append(record)
            del records[: -self.max_log]
            kind, pending = self._queue.get(f"log:{key}", ("log", (key, [])))
            pending[1].append((record, current_fence.get()))
            self._queue[f"log:{key}"] = (kind, pending)
        self._kick()

    def read_log(self, key: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self._logs.get(check_key(key), [])]

    def _kick(self) -> None:
        # anyio events belong to the event loop: from another thread the writer's poll picks it up.
        if threading.get_ident() == self._loop_thread:
            self._idle = anyio.Event() if self._idle.is_set() else self._idle
            self._wakeup.set()

    async def flush(self) -> None:
        """Wait until every queued write reached the coordinator (needs `run()` running)."""
        while self._queue:
            self._idle = anyio.Event() if self._idle.is_set() else self._idle
            self._wakeup.set()
            await self._idle.wait()

    @property
    def pending(self) -> int:
        """Documents and logs waiting to be written."""
        return len(self._queue)

    async def run(self) -> None:
        """Write queued documents and log records until cancelled (a lifespan task)."""
        self._loop_thread = threading.get_ident()
        while True:
            with self._lock:
                item = self._queue.popitem(last=False) if self._queue else None
            if item is None:
                self._idle.set()
                self._wakeup = anyio.Event()
                with anyio.move_on_after(THREAD_POLL_S):
                    await self._wakeup.wait()
                continue
            slot, (kind, payload) = item
            try:
                if kind == "doc":
                    key, body, fence = payload
                    await self.coordinator.put(key, body, fence=fence)
                else:
                    key, records = payload
                    while records:
                        record, fence = records[0]
                        await self.coordinator.append_event(key, str(record["event_id"]), record, fence=fence)
                        records.pop(0)  # written (appends are idempotent by id: a retry is harmless)
            except CoordinatorUnavailable as exc:
                self._requeue(slot, kind, payload)
                log.warning("state write of %s postponed: %s", slot, exc)
                await anyio.sleep(RETRY_S)
            except FenceRejected as exc:  # written by a leader that was deposed meanwhile: never lands
                log.warning("state write of %s rejected: %s", slot, exc)
            except Exception:
                log.exception("state write of %s failed; dropped", slot)

    def _requeue(self, slot: str, kind: str, payload: Any) -> None:
        """Put a write that failed back at the front, unless a newer one of the same document is queued."""
        with self._lock:
            newer = self._queue.pop(slot, None)
            if kind == "doc":
                self._queue[slot] = newer if newer is not None else (kind, payload)
            else:
                key, records = payload
                later = newer[1][1] if newer is not None else []
                self._queue[slot] = (kind, (key, records + later))
            self._queue.move_to_end(slot, last=False)
