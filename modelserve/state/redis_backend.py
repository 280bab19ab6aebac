"""The Redis coordinator: replicas on many machines (Kubernetes), through `redis.asyncio`.

Install with `pip install 'modelserve[redis]'`. Every check-and-write is one Lua script, so Redis runs
it atomically:

    document    hash `<p>doc:<key>` {rev, body}; CAS + fence check + PUBLISH `<p>changes` in one script
    counters    hash `<p>cnt:<key>`, HINCRBYFLOAT in a script; with a token, only if SET NX `<p>once:<t>`
    snapshots   `<p>snap:<kind>:<replica>` with PX ttl, members listed in set `<p>snaps:<kind>`
    events      list `<p>log:<log>`, ids in hash `<p>eids:<log>` (HSETNX: once per id), fenced
    decisions   `<p>dec:<id>` with PX ttl, stored unless already there or taken (a retried store never
                brings a taken decision back); take = GET + DEL + tombstone `<p>took:<id>` in one script
    lease       hash `<p>lease:<name>` {holder, token} with PX ttl; tokens from INCR `<p>fence:<name>`

Watchers subscribe to `<p>changes` (a hint carrying the key); callers also poll, so a message lost
while the connection was down only delays a change. Calls share a bounded pool of connections
(`max_connections`): a burst waits for a free one rather than opening a socket per call.
Connection errors become `CoordinatorUnavailable`, which callers treat as "fail static, retry later".
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import anyio
import orjson

from modelserve.errors import ConfigError
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

T = TypeVar("T")

_PUT = """
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[3] then return {-2, 0} end
local rev = tonumber(redis.call('HGET', KEYS[1], 'rev') or '0')
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= rev then return {-1, rev} end
rev = rev + 1
redis.call('HSET', KEYS[1], 'rev', rev, 'body', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[5])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return {rev, 0}
"""

_APPEND = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
if ARGV[2] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[2] then return -2 end
redis.call('HSET', KEYS[1], ARGV[1], '1')
redis.call('RPUSH', KEYS[2], ARGV[3])
return 1
"""

_TAKE = """
local body = redis.call('GET', KEYS[1])
if body then
  local ttl = redis.call('PTTL', KEYS[1])
  redis.call('DEL', KEYS[1])
  if ttl > 0 then redis.call('SET', KEYS[2], '1', 'PX', ttl) end
  return {1, body}
end
if redis.call('EXISTS', KEYS[2]) == 1 then return {2, ''} end
return {0, ''}
"""

_INCR = """
if #KEYS > 1 and not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return 0 end
for i = 2, #ARGV, 2 do redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

_STORE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""

_ACQUIRE = """
local holder = redis.call('HGET', KEYS[1], 'holder')
local token
if holder and holder ~= ARGV[1] then return 0 end
if holder == ARGV[1] then
  token = tonumber(redis.call('HGET', KEYS[1], 'token'))
else
  token = redis.call('INCR', KEYS[2])
  redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'token', token)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return token
"""

_RELEASE = """
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


def _taken(result: list[Any]) -> Taken:
    found, body = result
    if found == 1:
        return Taken("joined", orjson.loads(body))
    return Taken("duplicate" if found == 2 else "unknown")


class RedisCoordinator:
    """`Coordinator` over one Redis server (see the module docstring)."""

    backend = "redis"
    shared = True

    def __init__(
        self, url: str, *, prefix: str = "modelserve:", timeout_s: float = 5.0, max_connections: int = 16
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_s
        #: Connections this process keeps to Redis at most (each watcher holds one for its subscription).
        self.max_connections = max_connections
        self._client: Any = None
        self._scripts: dict[str, Any] = {}

    async def open(self) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError:  # pragma: no cover - depends on the installed extras
            raise ConfigError("the Redis coordinator needs `pip install 'modelserve[redis]'`") from None
        if self._client is None:
            # A bounded pool: a burst of calls queues for a few connections instead of opening one
            # socket each (a hundred connects at once on a busy host time out before Redis answers).
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=self.max_connections,
                timeout=self.timeout_s * 4,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
            )
            self._client = aioredis.Redis.from_pool(pool)
            self._scripts = {
                name: self._client.register_script(source)
                for name, source in (
                    ("put", _PUT), ("append", _APPEND), ("take", _TAKE), ("incr", _INCR), ("store", _STORE),
                    ("acquire", _ACQUIRE), ("release", _RELEASE),
                )
            }  # fmt: skip
            await self._call(self._client.ping())

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def _call(self, awaitable: Awaitable[T]) -> T:
        import redis.exceptions

        if self._client is None:  # closed: nothing reaches Redis any more
            close = getattr(awaitable, "close", None)
            if close is not None:
                close()
            raise CoordinatorUnavailable(f"the Redis coordinator for {self.url} is closed")
        try:
            return await awaitable
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            raise CoordinatorUnavailable(f"Redis at {self.url}: {exc}") from exc

    def _pipeline(self) -> Any:
        if self._client is None:
            raise CoordinatorUnavailable(f"the Redis coordinator for {self.url} is closed")
        return self._client.pipeline(transaction=False)

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    # -- documents ---------------------------------------------------------------------------------

    async def get(self, key: str) -> Document | None:
        rev, body = await self._call(self._client.hmget(self._k("doc", key), "rev", "body"))
        return None if rev is None else Document(key, int(rev), orjson.loads(body))

    async def put(
        self, key: str, body: dict[str, Any], *, expect_rev: int | None = None, fence: Fence | None = None
    ) -> Document:
        data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        fence_key = self._k("fence", fence.lease) if fence else self._k("doc", check_key(key))
        rev, actual = await self._call(
            self._scripts["put"](
                keys=[self._k("doc", key), fence_key, self._k("docs")],
                args=[
                    "" if expect_rev is None else expect_rev, data, str(fence.token) if fence else "",
                    self._k("changes"), key,
                ],
            )
        )  # fmt: skip
        if rev == -2:
            raise FenceRejected(f"lease {fence.lease if fence else ''!r} has moved on from this token")
        if rev == -1:
            raise StaleRevision(key, int(expect_rev or 0), int(actual))
        return Document(key, int(rev), orjson.loads(data))

    async def revisions(self, prefix: str) -> dict[str, int]:
        keys = sorted(k.decode() for k in await self._call(self._client.smembers(self._k("docs"))))
        keys = [k for k in keys if k.startswith(prefix)]
        if not keys:
            return {}
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(self._k("doc", key), "rev")
            revs = await self._call(pipe.execute())
        return {key: int(rev) for key, rev in zip(keys, revs, strict=True) if rev is not None}

    async def watch(self) -> AsyncIterator[set[str]]:
        """Keys named by `<p>changes` messages; reconnects (after a pause) when the connection drops."""
        import redis.exceptions

        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self._k("changes"))
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None:
                        continue
                    keys = {message["data"].decode()}
                    while (more := await pubsub.get_message(ignore_subscribe_messages=True)) is not None:
                        keys.add(more["data"].decode())
                    yield keys
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                await anyio.sleep(0.5)
            finally:
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await pubsub.aclose()

    # -- counters and snapshots --------------------------------------------------------------------

    async def incr(self, key: str, amounts: dict[str, float], *, once: str | None = None) -> bool:
        keys = [self._k("cnt", check_key(key))] + ([self._k("once", once)] if once is not None else [])
        args: list[Any] = [int(ONCE_TTL_S * 1000)]
        for name, amount in amounts.items():
            args += [name, repr(float(amount))]
        return bool(await self._call(self._scripts["incr"](keys=keys, args=args)))

    async def counters(self, key: str) -> dict[str, float]:
        raw = await self._call(self._client.hgetall(self._k("cnt", key)))
        return {name.decode(): float(value) for name, value in raw.items()}

    async def put_snapshot(self, kind: str, replica: str, body: dict[str, Any], ttl_s: float) -> None:
        data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(self._k("snap", kind, replica), data, px=max(1, int(ttl_s * 1000)))
            pipe.sadd(self._k("snaps", kind), replica)
            await self._call(pipe.execute())

    async def snapshots(self, kind: str) -> dict[str, dict[str, Any]]:
        replicas = sorted(r.decode() for r in await self._call(self._client.smembers(self._k("snaps", kind))))
        if not replicas:
            return {}
        bodies = await self._call(self._client.mget([self._k("snap", kind, r) for r in replicas]))
        gone = [r for r, body in zip(replicas, bodies, strict=True) if body is None]
        if gone:
            await self._call(self._client.srem(self._k("snaps", kind), *gone))
        return {r: orjson.loads(body) for r, body in zip(replicas, bodies, strict=True) if body is not None}

    # -- event log ---------------------------------------------------------------------------------

    async def append_event(
        self, log: str, event_id: str, record: dict[str, Any], *, fence: Fence | None = None
    ) -> bool:
        data = orjson.dumps({**record, "event_id": event_id}, option=orjson.OPT_SERIALIZE_NUMPY)
        fence_key = self._k("fence", fence.lease) if fence else self._k("eids", check_key(log))
        result = await self._call(
            self._scripts["append"](
                keys=[self._k("eids", log), self._k("log", log), fence_key],
                args=[event_id, str(fence.token) if fence else "", data],
            )
        )
        if result == -2:
            raise FenceRejected(f"lease {fence.lease if fence else ''!r} has moved on from this token")
        return bool(result)

    async def events(self, log: str, limit: int = 1000) -> list[dict[str, Any]]:
        raw = await self._call(self._client.lrange(self._k("log", log), -limit, -1))
        return [orjson.loads(item) for item in raw]

    # -- decisions ---------------------------------------------------------------------------------

    async def put_decision(self, request_id: str, body: dict[str, Any], ttl_s: float) -> None:
        await self.put_decisions([(request_id, body)], ttl_s)

    async def take_decision(self, request_id: str) -> Taken:
        return _taken(
            await self._call(
                self._scripts["take"](keys=[self._k("dec", request_id), self._k("took", request_id)])
            )
        )

    async def put_decisions(self, items: list[tuple[str, dict[str, Any]]], ttl_s: float) -> None:
        async with self._pipeline() as pipe:
            for request_id, body in items:
                data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
                await self._scripts["store"](
                    keys=[self._k("dec", request_id), self._k("took", request_id)],
                    args=[data, max(1, int(ttl_s * 1000))],
                    client=pipe,
                )
            await self._call(pipe.execute())

    async def take_decisions(self, request_ids: list[str]) -> list[Taken]:
        async with self._pipeline() as pipe:
            for request_id in request_ids:  # each script runs atomically; the pipeline saves round-trips
                await self._scripts["take"](  # queues the call on the pipeline
                    keys=[self._k("dec", request_id), self._k("took", request_id)], client=pipe
                )
            return [_taken(result) for result in await self._call(pipe.execute())]

    # -- lease -------------------------------------------------------------------------------------

    async def acquire_lease(self, name: str, holder: str, ttl_s: float) -> Lease | None:
        token = await self._call(
            self._scripts["acquire"](
                keys=[self._k("lease", name), self._k("fence", name)],
                args=[holder, max(1, int(ttl_s * 1000))],
            )
        )
        return Lease(name, holder, int(token), ttl_s) if token else None

    async def release_lease(self, name: str, holder: str) -> None:
        await self._call(self._scripts["release"](keys=[self._k("lease", name)], args=[holder]))
