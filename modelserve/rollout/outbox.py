"""The fleet's webhook outbox: the rollout leader sends every logged event, from a shared cursor.

Any replica may log a rollout event (the leader's stage changes, an operator's command taken
elsewhere) to the shared log `rollout-events.<model>`; only the leader sends events to the webhooks.
Its delivery cursor is shared too: the document `webhooks.<model>` holds, per URL, the ids of the
events whose delivery is over (the newest `REMEMBERED`), written right after each delivery and
fenced (a deposed leader cannot move it). A new leader, after a hand-over or a `kill -9`, sends each
URL every event of the log that its cursor does not list, in log order:

- **no event lost**: what the old leader logged but had not delivered is sent by the next one, and
  a delivery that failed is tried again until it succeeds;
- **each event once per URL**, except one whose delivery finished but whose cursor write had not
  landed when the old leader died (at-least-once: receivers dedupe by `event_id`).

The cursor lists ids rather than a position because replicas append concurrently: an event another
replica logged may land in the log before one the leader already sent. Events older than the oldest
listed id count as delivered. A cursor absent when a term starts is created listing the log as it
is, so a deployment upgraded from a release without it does not re-send its history (a new fleet's
log is empty then). A delivery the notifier gave up on (after its retries with backoff) is queued
again on the next round, so a receiver that is down for a while gets everything once it is back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import anyio

from modelserve.errors import ModelServeError
from modelserve.state.coordinator import Coordinator, Fence, current_fence

log = logging.getLogger("modelserve.rollout")

#: How many delivered ids a cursor keeps per URL (far more than are ever in flight at once).
REMEMBERED = 200
POLL_S = 0.2


class Notifier(Protocol):
    """What the outbox needs of `rollout.webhooks.WebhookNotifier`."""

    urls: tuple[str, ...]

    def notify(
        self, payload: dict[str, Any], *, urls: Sequence[str] | None = ..., on_done: Any = ...
    ) -> None: ...


def cursor_key(model: str) -> str:
    """The state key of a model's delivery cursor."""
    return f"webhooks.{model}"


class WebhookOutbox:
    """Sends logged events from the shared cursor while this replica leads (module docstring)."""

    def __init__(
        self,
        *,
        coordinator: Coordinator,
        notifier: Notifier,
        read_log: Callable[[str], list[dict[str, Any]]],
        poll_s: float = POLL_S,
    ) -> None:
        self.coordinator = coordinator
        self.notifier = notifier
        self.read_log = read_log
        self.poll_s = poll_s
        self._delivered: dict[str, dict[str, list[str]]] = {}  # model -> url -> ids, oldest first
        self._queued: dict[tuple[str, str], set[str]] = {}
        self._lock = anyio.Lock()

    async def run(self, models: list[str]) -> None:
        """The leader's term (its context carries the fence): load the cursors, then send what they
        do not list until cancelled. Call after the shared logs were reloaded."""
        fence = current_fence.get()
        self._queued = {}
        for model in models:
            while True:
                try:
                    self._delivered[model] = await self._load(model, fence)
                    break
                except ModelServeError as exc:  # backend away: nothing is sent until the cursor is read
                    log.warning("webhook cursor of %s cannot be read yet: %s", model, exc)
                    await anyio.sleep(self.poll_s * 5)
        while True:
            for model in models:
                self._send_new(model, fence)
            await anyio.sleep(self.poll_s)

    async def _load(self, model: str, fence: Fence | None) -> dict[str, list[str]]:
        doc = await self.coordinator.get(cursor_key(model))
        cursor = {url: list(ids) for url, ids in (doc.body if doc is not None else {}).items()}
        missing = [url for url in self.notifier.urls if url not in cursor]
        if missing:  # a new cursor (or a new URL) starts at the log's end: history is not re-sent
            logged = [str(r.get("event_id")) for r in self.read_log(f"rollout-events.{model}")]
            cursor.update({url: logged[-REMEMBERED:] for url in missing})
            await self.coordinator.put(cursor_key(model), cursor, fence=fence)
        return cursor

    def _send_new(self, model: str, fence: Fence | None) -> None:
        records = self.read_log(f"rollout-events.{model}")
        ids = [str(r.get("event_id")) for r in records]
        position = {event_id: index for index, event_id in enumerate(ids)}
        for url in self.notifier.urls:
            delivered = self._delivered[model].setdefault(url, [])
            queued = self._queued.setdefault((model, url), set())
            done = set(delivered)
            start = min((position[i] for i in delivered if i in position), default=0)
            for record, event_id in zip(records[start:], ids[start:], strict=True):
                if event_id in done or event_id in queued:
                    continue
                queued.add(event_id)
                self.notifier.notify(record, urls=(url,), on_done=self._on_done(model, event_id, fence))
            queued.intersection_update(position)  # bounded by the log

    def _on_done(self, model: str, event_id: str, fence: Fence | None) -> Any:
        async def done(url: str, sent: bool) -> None:
            if not sent:  # the notifier gave up for now: queue it again on the next round
                self._queued.get((model, url), set()).discard(event_id)
                return
            delivered = self._delivered[model].setdefault(url, [])
            delivered.append(event_id)
            del delivered[:-REMEMBERED]
            async with self._lock:  # one write at a time: the last one carries every URL's progress
                try:
                    await self.coordinator.put(cursor_key(model), self._delivered[model], fence=fence)
                except ModelServeError as exc:  # unavailable or deposed: the next leader re-sends
                    log.warning("webhook cursor of %s not saved after %s: %s", model, event_id, exc)

        return done
