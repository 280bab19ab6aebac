"""The SQLite coordinator: several processes on one machine (`serve --workers N`), stdlib `sqlite3`.

One database file in WAL mode (readers never block the writer), `synchronous=NORMAL` (a committed
transaction survives a killed process; WAL makes it atomic), `busy_timeout` for writers that meet.
Compare-and-set is `UPDATE ... WHERE rev = ?` (or `INSERT` for "absent") inside `BEGIN IMMEDIATE`;
the lease is a row `(holder, token, expires)` changed in the same kind of transaction, and a fenced
write checks the lease's token in the transaction that writes.

Change detection: `PRAGMA data_version` changes when another connection commits; a poll every
`poll_s` notices it and compares document revisions, so watchers learn which keys moved. Writes of
this process wake local watchers at once.

Every call runs on a worker thread through this coordinator's own limiter (one connection, one
thread at a time); the event loop never blocks on the database. Never put the file on NFS or any
network volume: SQLite's locking is only as good as the file system's.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import orjson

from modelserve.state.coordinator import (
    ONCE_TTL_S,
    CoordinatorUnavailable,
    Document,
    Fence,
    FenceRejected,
    Lease,
    StaleRevision,
    Taken,
    check_key,
)
from modelserve.state.notify import ChangeHub

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (key TEXT PRIMARY KEY, rev INTEGER NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (
    key TEXT NOT NULL, field TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (key, field));
CREATE TABLE IF NOT EXISTS snapshots (
    kind TEXT NOT NULL, replica TEXT NOT NULL, body TEXT NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (kind, replica));
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, log TEXT NOT NULL, event_id TEXT NOT NULL,
    body TEXT NOT NULL, UNIQUE (log, event_id));
CREATE TABLE IF NOT EXISTS decisions (
    id TEXT PRIMARY KEY, body TEXT, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS once_tokens (token TEXT PRIMARY KEY, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY, holder TEXT, token INTEGER NOT NULL, expires REAL NOT NULL);
"""


class SqliteCoordinator:
    """`Coordinator` over one SQLite file shared by the processes of one machine."""

    backend = "sqlite"
    shared = True

    def __init__(self, path: str | Path, *, poll_s: float = 0.05, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.poll_s = poll_s
        self.busy_timeout_s = busy_timeout_s
        self._conn: sqlite3.Connection | None = None
        self._limiter = anyio.CapacityLimiter(1)
        self._hub = ChangeHub()
        self._known_revs: dict[str, int] = {}
        self._data_version = -1
        self._polled_at = 0.0

    async def open(self) -> None:
        if self._conn is None:
            self._conn = await self._run_raw(self._connect)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        # Processes that start together on a new file race to switch it to WAL; SQLite answers the
        # losers "database is locked" at once, without its busy handler: retry within the timeout.
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(SCHEMA)
                return conn
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    conn.close()
                    raise
                time.sleep(0.02)

    async def aclose(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await self._run_raw(conn.close)

    async def _run_raw(self, fn: Callable[[], T]) -> T:
        try:
            return await anyio.to_thread.run_sync(fn, limiter=self._limiter)
        except sqlite3.OperationalError as exc:
            raise CoordinatorUnavailable(f"SQLite state {self.path}: {exc}") from exc

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise CoordinatorUnavailable("the SQLite coordinator is not open")
        return await self._run_raw(lambda: fn(conn))

    # -- documents ---------------------------------------------------------------------------------

    async def get(self, key: str) -> Document | None:
        row = await self._run(
            lambda c: c.execute("SELECT rev, body FROM docs WHERE key = ?", (key,)).fetchone()
        )
        return None if row is None else Document(key, row[0], orjson.loads(row[1]))

    async def put(
        self, key: str, body: dict[str, Any], *, expect_rev: int | None = None, fence: Fence | None = None
    ) -> Document:
        check_key(key)
        data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)

        def write(c: sqlite3.Connection) -> int:
            with _transaction(c):
                _check_fence(c, fence)
                row = c.execute("SELECT rev FROM docs WHERE key = ?", (key,)).fetchone()
                actual = row[0] if row is not None else 0
                if expect_rev is not None and expect_rev != actual:
                    raise StaleRevision(key, expect_rev, actual)
                c.execute(
                    "INSERT INTO docs (key, rev, body) VALUES (?, ?, ?) ON CONFLICT (key) "
                    "DO UPDATE SET rev = excluded.rev, body = excluded.body",
                    (key, actual + 1, data.decode()),
                )
                return actual + 1

        rev = await self._run(write)
        self._known_revs[key] = rev
        self._hub.publish((key,))
        return Document(key, rev, orjson.loads(data))

    async def revisions(self, prefix: str) -> dict[str, int]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT key, rev FROM docs WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)
            ).fetchall()
        )
        return {key: rev for key, rev in rows}

    async def watch(self) -> AsyncIterator[set[str]]:
        """Local writes at once; other processes' writes within one `poll_s` (data_version poll)."""
        watcher = self._hub.subscribe()
        try:
            while True:
                with anyio.move_on_after(self.poll_s):
                    await watcher.event.wait()
                # One poll per interval however many watchers this process has: what one finds is
                # published to all of them.
                if not watcher.event.is_set() and time.monotonic() - self._polled_at >= self.poll_s * 0.9:
                    self._polled_at = time.monotonic()
                    # Unavailable: fail static, keep what we know, try again next poll.
                    with contextlib.suppress(CoordinatorUnavailable):
                        self._hub.publish(await self._run(self._changed_keys))
                if watcher.event.is_set():
                    yield watcher.take()
        finally:
            self._hub.unsubscribe(watcher)

    def _changed_keys(self, c: sqlite3.Connection) -> set[str]:
        version = c.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return set()
        self._data_version = version
        revs = dict(c.execute("SELECT key, rev FROM docs").fetchall())
        changed = {key for key, rev in revs.items() if self._known_revs.get(key) != rev}
        self._known_revs = revs
        return changed

    # -- counters and snapshots --------------------------------------------------------------------

    async def incr(self, key: str, amounts: dict[str, float], *, once: str | None = None) -> bool:
        rows = [(check_key(key), name, float(amount)) for name, amount in amounts.items()]

        def add(c: sqlite3.Connection) -> bool:
            with _transaction(c):
                if once is not None:
                    now = time.time()
                    fresh = c.execute(
                        "INSERT INTO once_tokens (token, expires) VALUES (?, ?) ON CONFLICT (token) "
                        "DO UPDATE SET expires = excluded.expires WHERE once_tokens.expires < ?",
                        (once, now + ONCE_TTL_S, now),
                    ).rowcount
                    if not fresh:
                        return False
                    if c.total_changes % 512 == 0:  # now and then, drop the tokens that expired
                        c.execute("DELETE FROM once_tokens WHERE expires < ?", (now,))
                c.executemany(
                    "INSERT INTO counters (key, field, value) VALUES (?, ?, ?) "
                    "ON CONFLICT (key, field) DO UPDATE SET value = value + excluded.value",
                    rows,
                )
                return True

        return await self._run(add)

    async def counters(self, key: str) -> dict[str, float]:
        rows = await self._run(
            lambda c: c.execute("SELECT field, value FROM counters WHERE key = ?", (key,)).fetchall()
        )
        return {name: value for name, value in rows}

    async def put_snapshot(self, kind: str, replica: str, body: dict[str, Any], ttl_s: float) -> None:
        data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY).decode()
        expires = time.time() + ttl_s

        def write(c: sqlite3.Connection) -> None:
            with _transaction(c):
                c.execute(
                    "INSERT INTO snapshots (kind, replica, body, expires) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (kind, replica) DO UPDATE SET body = excluded.body, "
                    "expires = excluded.expires",
                    (kind, replica, data, expires),
                )
                c.execute("DELETE FROM snapshots WHERE kind = ? AND expires < ?", (kind, time.time()))

        await self._run(write)

    async def snapshots(self, kind: str) -> dict[str, dict[str, Any]]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT replica, body FROM snapshots WHERE kind = ? AND expires > ?", (kind, time.time())
            ).fetchall()
        )
        return {replica: orjson.loads(body) for replica, body in rows}

    # -- event log ---------------------------------------------------------------------------------

    async def append_event(
        self, log: str, event_id: str, record: dict[str, Any], *, fence: Fence | None = None
    ) -> bool:
        data = orjson.dumps({**record, "event_id": event_id}, option=orjson.OPT_SERIALIZE_NUMPY).decode()
        check_key(log)

        def append(c: sqlite3.Connection) -> bool:
            with _transaction(c):
                if c.execute(
                    "SELECT 1 FROM events WHERE log = ? AND event_id = ?", (log, event_id)
                ).fetchone():
                    return False
                _check_fence(c, fence)
                c.execute("INSERT INTO events (log, event_id, body) VALUES (?, ?, ?)", (log, event_id, data))
                return True

        return await self._run(append)

    async def events(self, log: str, limit: int = 1000) -> list[dict[str, Any]]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT body FROM (SELECT seq, body FROM events WHERE log = ? ORDER BY seq DESC LIMIT ?) "
                "ORDER BY seq",
                (log, limit),
            ).fetchall()
        )
        return [orjson.loads(body) for (body,) in rows]

    # -- decisions ---------------------------------------------------------------------------------

    async def put_decision(self, request_id: str, body: dict[str, Any], ttl_s: float) -> None:
        data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY).decode()
        await self._run(lambda c: _put_decision(c, request_id, data, time.time() + ttl_s))

    async def take_decision(self, request_id: str) -> Taken:
        return (await self.take_decisions([request_id]))[0]

    async def put_decisions(self, items: list[tuple[str, dict[str, Any]]], ttl_s: float) -> None:
        rows = [(rid, orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY).decode()) for rid, body in items]
        await self._run(lambda c: _put_decisions(c, rows, time.time() + ttl_s))

    async def take_decisions(self, request_ids: list[str]) -> list[Taken]:
        def take(c: sqlite3.Connection) -> list[Taken]:
            now, taken = time.time(), []
            with _transaction(c):
                for request_id in request_ids:
                    row = c.execute(
                        "SELECT body FROM decisions WHERE id = ? AND expires > ?", (request_id, now)
                    ).fetchone()
                    if row is None:
                        taken.append(Taken("unknown"))
                    elif row[0] is None:
                        taken.append(Taken("duplicate"))
                    else:
                        c.execute("UPDATE decisions SET body = NULL WHERE id = ?", (request_id,))  # tombstone
                        taken.append(Taken("joined", orjson.loads(row[0])))
            return taken

        return await self._run(take)

    # -- lease -------------------------------------------------------------------------------------

    async def acquire_lease(self, name: str, holder: str, ttl_s: float) -> Lease | None:
        def acquire(c: sqlite3.Connection) -> Lease | None:
            now = time.time()
            with _transaction(c):
                row = c.execute(
                    "SELECT holder, token, expires FROM leases WHERE name = ?", (name,)
                ).fetchone()
                if row is not None and row[0] != holder and row[0] is not None and row[2] > now:
                    return None
                if row is not None and row[0] == holder and row[2] > now:
                    token = row[1]
                else:
                    token = (row[1] if row is not None else 0) + 1
                c.execute(
                    "INSERT INTO leases (name, holder, token, expires) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, token = excluded.token, "
                    "expires = excluded.expires",
                    (name, holder, token, now + ttl_s),
                )
                return Lease(name, holder, token, ttl_s)

        return await self._run(acquire)

    async def release_lease(self, name: str, holder: str) -> None:
        def release(c: sqlite3.Connection) -> None:
            with _transaction(c):
                c.execute(
                    "UPDATE leases SET holder = NULL, expires = 0 WHERE name = ? AND holder = ?",
                    (name, holder),
                )

        await self._run(release)


class _transaction:
    """`BEGIN IMMEDIATE` ... `COMMIT` (or `ROLLBACK` on any exception): writers queue up front."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        self.conn.execute("COMMIT" if kind is None else "ROLLBACK")


def _check_fence(c: sqlite3.Connection, fence: Fence | None) -> None:
    if fence is None:
        return
    row = c.execute("SELECT token FROM leases WHERE name = ?", (fence.lease,)).fetchone()
    if row is None or row[0] != fence.token:
        raise FenceRejected(f"lease {fence.lease!r} has moved on from token {fence.token}")


def _put_decision(c: sqlite3.Connection, request_id: str, data: str, expires: float) -> None:
    _put_decisions(c, [(request_id, data)], expires)


def _put_decisions(c: sqlite3.Connection, rows: list[tuple[str, str]], expires: float) -> None:
    now = time.time()
    with _transaction(c):
        # A live id is left as it is; an expired one (not yet deleted) is stored afresh.
        c.executemany(
            "INSERT INTO decisions (id, body, expires) VALUES (?, ?, ?) ON CONFLICT (id) "
            "DO UPDATE SET body = excluded.body, expires = excluded.expires WHERE decisions.expires < ?",
            [(rid, data, expires, now) for rid, data in rows],
        )
        if c.total_changes % 512 < len(rows):  # now and then, drop what expired
            c.execute("DELETE FROM decisions WHERE expires < ?", (now,))
