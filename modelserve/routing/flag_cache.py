"""An LRU of flag evaluations, invalidated when the FlagSet is swapped.

**Event-loop only**: `cachetools` caches are not thread-safe, so one `EvaluationCache` is touched
only from the event loop (the middleware), never from worker threads.

Bounded in bytes, not only in entries: contexts come from request headers, so a context whose
strings add up to more than `MAX_KEY_CHARS` characters is evaluated without being cached (at most
`maxsize` x `MAX_KEY_CHARS` characters are ever kept, whatever clients send).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cachetools import LRUCache

from modelserve.routing.flagd import Evaluation, FlagSet

#: Contexts larger than this (keys and string values, in characters) are not cached.
MAX_KEY_CHARS = 512


def _key_chars(context: Mapping[str, Any]) -> int:
    total = 0
    for name, value in context.items():
        total += len(name) + (len(value) if isinstance(value, str) else 8)
    return total


class EvaluationCache:
    """Evaluations keyed by (flag key, targeting key, frozen context).

    Passing a different `FlagSet` than last time (a reload swapped it) clears the cache first.
    Contexts with unhashable values (nested objects) and flags whose rules read
    ``$flagd.timestamp`` are evaluated without caching.
    """

    __slots__ = ("_cache", "_flagset", "hits", "misses")

    def __init__(self, maxsize: int = 10_000) -> None:
        self._cache: LRUCache[tuple[Any, ...], Evaluation] = LRUCache(maxsize=maxsize)
        self._flagset: FlagSet | None = None
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        """Drop every cached evaluation."""
        self._cache.clear()

    def evaluate(self, flagset: FlagSet, flag_key: str, context: Mapping[str, Any]) -> Evaluation:
        """`flagset.evaluate(flag_key, context)`, from the cache when possible."""
        if flagset is not self._flagset:
            self._cache.clear()
            self._flagset = flagset
        try:
            key = (flag_key, context.get("targetingKey"), frozenset(context.items()))
            hit = self._cache.get(key)
        except TypeError:  # an unhashable context value
            self.misses += 1
            return flagset.evaluate(flag_key, context)
        if hit is not None:
            self.hits += 1
            return hit
        self.misses += 1
        evaluation = flagset.evaluate(flag_key, context)
        # Sized on insertion only: a hit adds nothing, and a context too big to keep is never stored.
        if flagset.cacheable(flag_key) and _key_chars(context) <= MAX_KEY_CHARS:
            self._cache[key] = evaluation
        return evaluation
