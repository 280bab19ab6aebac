"""Webhooks: POST every rollout event as JSON to configured URLs, off the hot path.

`notify()` only appends to a bounded per-URL queue and returns; when a queue is full the payload is
dropped and counted, so a slow or dead receiver never blocks the controller or serving. `run()` (a
task in the app's task group) delivers each queue in order, retrying failures (connection errors,
non-2xx answers) with exponential backoff, and counts what it finally could not deliver. A payload
may carry `on_done(url, delivered)`, awaited once its delivery to a URL is over (sent, or given up):
how the fleet's outbox advances its shared delivery cursor (`rollout/outbox.py`).
Call `notify()` from the event loop only.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import orjson

logger = logging.getLogger("modelserve.rollout.webhooks")

#: Awaited when a payload's delivery to one URL is over: `(url, delivered)`.
OnDone = Callable[[str, bool], Awaitable[None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookStats:
    """Delivery counters summed over every URL; a payload sent to two URLs counts twice."""

    queued: int
    sent: int
    failed: int
    dropped: int
    retries: int


class WebhookNotifier:
    """Bounded, retrying, never-blocking JSON webhook delivery (see the module docstring)."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        max_queue: int = 1000,
        max_attempts: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        timeout_s: float = 5.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if max_queue < 1 or max_attempts < 1:
            raise ValueError("max_queue and max_attempts must be >= 1")
        self.urls = tuple(urls)
        self.max_queue = max_queue
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self._client = client
        self._queues: dict[str, deque[tuple[bytes, OnDone | None]]] = {url: deque() for url in self.urls}
        self._wakeups: dict[str, anyio.Event] = {}
        self._drained: anyio.Event | None = None
        self._sent = self._failed = self._dropped = self._retries = 0

    def notify(
        self, payload: dict[str, Any], *, urls: Sequence[str] | None = None, on_done: OnDone | None = None
    ) -> None:
        """Queue `payload` for every URL (or those of `urls`); drops (and counts) it for a URL whose
        queue is full. `on_done(url, delivered)` is awaited when a URL's delivery is over."""
        if not self.urls:
            return
        body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
        for url, queue in self._queues.items():
            if urls is not None and url not in urls:
                continue
            if len(queue) >= self.max_queue:
                self._dropped += 1
                continue
            queue.append((body, on_done))
            wakeup = self._wakeups.get(url)
            if wakeup is not None:
                wakeup.set()

    def stats(self) -> WebhookStats:
        """Current delivery counters."""
        return WebhookStats(
            queued=sum(len(q) for q in self._queues.values()),
            sent=self._sent,
            failed=self._failed,
            dropped=self._dropped,
            retries=self._retries,
        )

    async def drain(self) -> None:
        """Wait until every queued payload was delivered or given up on (needs `run()` running).

        For a graceful shutdown, bound it: `with anyio.move_on_after(5): await notifier.drain()`.
        """
        while any(self._queues.values()):
            self._drained = anyio.Event()
            await self._drained.wait()

    async def run(self) -> None:
        """Deliver queued payloads until cancelled; one worker per URL so one dead URL delays no other."""
        if not self.urls:
            await anyio.sleep_forever()
        if self._client is not None:
            await self._run_workers(self._client)
            return
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            await self._run_workers(client)

    async def _run_workers(self, client: httpx.AsyncClient) -> None:
        async with anyio.create_task_group() as group:
            for url in self.urls:
                group.start_soon(self._worker, client, url)

    async def _worker(self, client: httpx.AsyncClient, url: str) -> None:
        queue = self._queues[url]
        while True:
            while not queue:
                wakeup = self._wakeups[url] = anyio.Event()
                await wakeup.wait()
            body, on_done = queue[0]
            delivered = await self._deliver(client, url, body)
            if on_done is not None:
                try:
                    await on_done(url, delivered)
                except Exception:
                    logger.exception("webhook %s: delivery callback failed", url)
            queue.popleft()  # only after delivery, so `queued` counts the one in flight
            if self._drained is not None and not any(self._queues.values()):
                self._drained.set()

    async def _deliver(self, client: httpx.AsyncClient, url: str, body: bytes) -> bool:
        headers = {"content-type": "application/json"}
        for attempt in range(self.max_attempts):
            if attempt:
                self._retries += 1
                await anyio.sleep(min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s))
            try:
                response = await client.post(url, content=body, headers=headers, timeout=self.timeout_s)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.is_success:
                    self._sent += 1
                    return True
                problem = f"HTTP {response.status_code}"
            logger.debug("webhook %s attempt %d failed: %s", url, attempt + 1, problem)
        self._failed += 1
        logger.warning("webhook %s: gave up after %d attempts (%s)", url, self.max_attempts, problem)
        return False
