"""The in-process coordinator: the default for one process, file-backed exactly as before.

Documents are `<state-dir>/<key>.json` (the body alone, so existing state dirs keep working; the
revision lives in memory and starts at 1 for a document found on disk), event logs are
`<log>.jsonl`, counters `<key>.counters.json`. Snapshots, decisions and the lease live in memory:
one process has nobody to share them with.

Every file write is temp file + fsync + rename, done on a worker thread through this coordinator's
own limiter (one thread at a time, so writes of one key land in order and the newest always wins);
the event loop never waits on the disk except by awaiting its own write.

`open()` takes an exclusive `flock` on `<state-dir>/.lock`: a second process on the same folder
would silently overwrite the first one's state, so it gets `StateDirInUse` naming the way out.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import orjson

from modelserve.errors import ConfigError
from modelserve.state.coordinator import (
    ONCE_TTL_S,
    Document,
    Fence,
    FenceRejected,
    Lease,
    StaleRevision,
    StateDirInUse,
    Taken,
    check_key,
)
from modelserve.state.notify import ChangeHub
from modelserve.state.store import write_atomically

LOCK_FILE = ".lock"


def lock_state_dir(directory: Path) -> int:
    """Take the folder's exclusive lock for this process; returns the lock file's descriptor."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StateDirInUse(
            f"state dir {directory} is in use by pid {holder}; run several processes with "
            "`modelserve serve --workers N` (one machine) or `--coordinator redis://HOST:PORT` "
            "(many machines), or give each process its own --state-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


class InProcessCoordinator:
    """`Coordinator` for one process (see the module docstring); `directory=None` keeps all in memory."""

    backend = "inprocess"
    shared = False

    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._docs: dict[str, Document] = {}
        self._missing: set[str] = set()
        self._counters: dict[str, dict[str, float]] = {}
        self._once: dict[str, float] = {}  # incr tokens already applied -> when they may be forgotten
        self._snapshots: dict[str, dict[str, tuple[float, dict[str, Any]]]] = {}
        self._logs: dict[str, list[dict[str, Any]]] = {}
        self._event_ids: dict[str, set[str]] = {}
        self._decisions: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._leases: dict[str, tuple[str, int, float]] = {}
        self._tokens: dict[str, int] = {}
        self._hub = ChangeHub()
        self._limiter = anyio.CapacityLimiter(1)
        self._pending: dict[Path, bytes] = {}
        self._pending_lock = threading.Lock()
        self._lock_fd: int | None = None

    async def open(self) -> None:
        if self.directory is not None and self._lock_fd is None:
            self._lock_fd = lock_state_dir(self.directory)

    async def aclose(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    # -- documents ---------------------------------------------------------------------------------

    async def get(self, key: str) -> Document | None:
        doc = self._docs.get(key)
        if doc is not None or key in self._missing:
            return doc
        check_key(key)
        body = await self._read_json(f"{key}.json")
        if key in self._docs or key in self._missing:  # someone else loaded or wrote it meanwhile
            return self._docs.get(key)
        if body is None:
            self._missing.add(key)
            return None
        doc = self._docs[key] = Document(key, 1, body)
        return doc

    async def put(
        self, key: str, body: dict[str, Any], *, expect_rev: int | None = None, fence: Fence | None = None
    ) -> Document:
        current = await self.get(check_key(key))
        actual = current.rev if current is not None else 0
        if expect_rev is not None and expect_rev != actual:
            raise StaleRevision(key, expect_rev, actual)
        self._check_fence(fence)
        clean = orjson.loads(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY))
        doc = self._docs[key] = Document(key, actual + 1, clean)
        self._missing.discard(key)
        self._hub.publish((key,))
        await self._write(f"{key}.json", orjson.dumps(clean, option=orjson.OPT_INDENT_2))
        return doc

    async def revisions(self, prefix: str) -> dict[str, int]:
        return {key: doc.rev for key, doc in self._docs.items() if key.startswith(prefix)}

    def watch(self) -> AsyncIterator[set[str]]:
        return self._hub.watch()

    # -- counters and snapshots --------------------------------------------------------------------

    async def incr(self, key: str, amounts: dict[str, float], *, once: str | None = None) -> bool:
        counters = await self._load_counters(check_key(key))
        if once is not None:
            now = time.monotonic()
            if self._once.get(once, 0.0) > now:
                return False
            self._once[once] = now + ONCE_TTL_S
            if len(self._once) > 4096 and len(self._once) % 1024 == 0:
                self._once = {token: exp for token, exp in self._once.items() if exp > now}
        for name, amount in amounts.items():
            counters[name] = counters.get(name, 0) + amount
        await self._write(f"{key}.counters.json", orjson.dumps(counters))
        return True

    async def counters(self, key: str) -> dict[str, float]:
        return dict(await self._load_counters(check_key(key)))

    async def _load_counters(self, key: str) -> dict[str, float]:
        counters = self._counters.get(key)
        if counters is None:
            saved = await self._read_json(f"{key}.counters.json")
            counters = self._counters.setdefault(key, {str(k): float(v) for k, v in (saved or {}).items()})
        return counters

    async def put_snapshot(self, kind: str, replica: str, body: dict[str, Any], ttl_s: float) -> None:
        self._snapshots.setdefault(kind, {})[replica] = (time.monotonic() + ttl_s, body)

    async def snapshots(self, kind: str) -> dict[str, dict[str, Any]]:
        now = time.monotonic()
        live = {r: (exp, body) for r, (exp, body) in self._snapshots.get(kind, {}).items() if exp > now}
        self._snapshots[kind] = live
        return {replica: body for replica, (_, body) in live.items()}

    # -- event log ---------------------------------------------------------------------------------

    async def append_event(
        self, log: str, event_id: str, record: dict[str, Any], *, fence: Fence | None = None
    ) -> bool:
        records = await self._load_log(check_key(log))
        seen = self._event_ids[log]
        if event_id in seen:
            return False
        self._check_fence(fence)
        record = {**record, "event_id": event_id}
        seen.add(event_id)
        records.append(record)
        line = orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        await self._append(f"{log}.jsonl", line)
        return True

    async def events(self, log: str, limit: int = 1000) -> list[dict[str, Any]]:
        return list((await self._load_log(check_key(log)))[-limit:])

    async def _load_log(self, log: str) -> list[dict[str, Any]]:
        records = self._logs.get(log)
        if records is None:
            loaded = await self._read_log(f"{log}.jsonl")
            records = self._logs.setdefault(log, loaded)
            self._event_ids[log] = {str(r["event_id"]) for r in records if "event_id" in r}
        return records

    # -- decisions ---------------------------------------------------------------------------------

    async def put_decision(self, request_id: str, body: dict[str, Any], ttl_s: float) -> None:
        self._decisions[request_id] = (time.monotonic() + ttl_s, body)
        if len(self._decisions) > 4096 and len(self._decisions) % 1024 == 0:
            self._expire_decisions()

    async def take_decision(self, request_id: str) -> Taken:
        entry = self._decisions.get(request_id)
        if entry is None or entry[0] <= time.monotonic():
            return Taken("unknown")
        expires, body = entry
        if body is None:
            return Taken("duplicate")
        self._decisions[request_id] = (expires, None)  # the tombstone lives as long as the decision would
        return Taken("joined", body)

    async def put_decisions(self, items: list[tuple[str, dict[str, Any]]], ttl_s: float) -> None:
        now = time.monotonic()
        for request_id, body in items:
            held = self._decisions.get(request_id)
            if held is None or held[0] <= now:  # a live id is left as it is (Redis' SET NX)
                await self.put_decision(request_id, body, ttl_s)

    async def take_decisions(self, request_ids: list[str]) -> list[Taken]:
        return [await self.take_decision(request_id) for request_id in request_ids]

    def _expire_decisions(self) -> None:
        now = time.monotonic()
        self._decisions = {rid: entry for rid, entry in self._decisions.items() if entry[0] > now}

    # -- lease -------------------------------------------------------------------------------------

    async def acquire_lease(self, name: str, holder: str, ttl_s: float) -> Lease | None:
        now = time.monotonic()
        current = self._leases.get(name)
        if current is not None and current[0] != holder and current[2] > now:
            return None
        if current is not None and current[0] == holder and current[2] > now:
            token = current[1]
        else:
            token = self._tokens[name] = self._tokens.get(name, 0) + 1
        self._leases[name] = (holder, token, now + ttl_s)
        return Lease(name, holder, token, ttl_s)

    async def release_lease(self, name: str, holder: str) -> None:
        current = self._leases.get(name)
        if current is not None and current[0] == holder:
            del self._leases[name]

    def _check_fence(self, fence: Fence | None) -> None:
        if fence is not None and self._tokens.get(fence.lease, 0) != fence.token:
            raise FenceRejected(f"lease {fence.lease!r} has moved on from token {fence.token}")

    # -- files (worker thread, one at a time) ------------------------------------------------------

    async def _read_json(self, name: str) -> dict[str, Any] | None:
        if self.directory is None:
            return None
        path = self.directory / name
        data = await anyio.to_thread.run_sync(_read_bytes, path, limiter=self._limiter)
        if data is None:
            return None
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"state file {path} is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise ConfigError(f"state file {path} does not hold a JSON object")
        return value

    async def _read_log(self, name: str) -> list[dict[str, Any]]:
        if self.directory is None:
            return []
        data = await anyio.to_thread.run_sync(_read_bytes, self.directory / name, limiter=self._limiter)
        records = []
        for line in (data or b"").splitlines():
            try:
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue  # a torn last line after a crash; everything before it is intact
        return records

    async def _write(self, name: str, data: bytes) -> None:
        if self.directory is None:
            return
        path = self.directory / name
        with self._pending_lock:
            self._pending[path] = data  # a write still queued for this file is superseded
        await anyio.to_thread.run_sync(self._flush, path, limiter=self._limiter)

    def _flush(self, path: Path) -> None:
        with self._pending_lock:
            data = self._pending.pop(path, None)
        if data is not None:  # None: an earlier flush already wrote this or newer data
            write_atomically(path, data)

    async def _append(self, name: str, line: bytes) -> None:
        if self.directory is not None:
            await anyio.to_thread.run_sync(_append_line, self.directory / name, line, limiter=self._limiter)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:  # a directory, unreadable: this key is broken, not the whole store
        raise ConfigError(f"state file {path} cannot be read: {exc.strerror or exc}") from exc


def _append_line(path: Path, line: bytes) -> None:
    with open(path, "ab") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())
