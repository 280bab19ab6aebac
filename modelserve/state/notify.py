"""Change hints inside one process: every `watch()` iterator gets the set of keys written since it last
woke up. Bounded by the number of distinct keys; a slow watcher coalesces, never queues."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import anyio


class Watcher:
    """One consumer's pending keys; `event` is set while some are pending."""

    __slots__ = ("event", "keys")

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.event = anyio.Event()

    def take(self) -> set[str]:
        """The pending keys, and a fresh event for the next ones."""
        self.event = anyio.Event()
        keys, self.keys = self.keys, set()
        return keys


class ChangeHub:
    """Fan-out of changed document keys to every local watcher (event loop only)."""

    def __init__(self) -> None:
        self._watchers: set[Watcher] = set()

    def publish(self, keys: Iterable[str]) -> None:
        keys = set(keys)
        if not keys:
            return
        for watcher in self._watchers:
            watcher.keys |= keys
            watcher.event.set()

    def subscribe(self) -> Watcher:
        watcher = Watcher()
        self._watchers.add(watcher)
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    async def watch(self) -> AsyncIterator[set[str]]:
        """Yield sets of changed keys until the consumer stops iterating or is cancelled."""
        watcher = self.subscribe()
        try:
            while True:
                await watcher.event.wait()
                yield watcher.take()
        finally:
            self.unsubscribe(watcher)
