"""Dynamic batching: concurrent requests to one version run as one onnxruntime call.

Requests whose inputs share everything but the first (batch) dimension are gathered for up to
`max_queue_delay_ms` or until `max_batch_size` rows wait, concatenated along axis 0, run once on one
of the version's worker threads (its `Runner`, one slot per batch), and split back by row counts.
The first request of a group leads it: it waits, runs the batch for everyone, and hands each caller
its rows, so there is no background task to own or leak. The batch run is shielded: a client that
disconnects while its batch runs cannot cancel the other callers' work.

Only versions whose every input has a dynamic first dimension can batch; others run as usual.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import anyio
import numpy as np

from modelserve.serving.runner import Runner

Outputs = dict[str, np.ndarray]
RunBatch = Callable[[Mapping[str, np.ndarray], Sequence[str] | None], Outputs]
GroupKey = tuple[object, ...]


@dataclass(slots=True)
class _Group:
    key: GroupKey
    feeds: list[Mapping[str, np.ndarray]] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    full: anyio.Event = field(default_factory=anyio.Event)
    #: One per caller whose rows ride in the batch (the leader, index 0, runs it and has none).
    waiters: list[asyncio.Future[Outputs]] = field(default_factory=list)
    results: list[Outputs] | None = None
    error: BaseException | None = None

    @property
    def size(self) -> int:
        return sum(self.rows)


class Batcher:
    """Gathers concurrent calls of one version into batches (event loop only)."""

    def __init__(
        self,
        run: RunBatch,
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        runner: Runner,
    ) -> None:
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.runner = runner
        self._open: dict[GroupKey, _Group] = {}
        self.batches = 0
        self.batched_rows = 0

    async def infer(
        self,
        feeds: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None,
        timeout_s: float | None = None,
    ) -> Outputs:
        """This call's rows of a batch; a follower past `timeout_s` gets DeadlineExceeded (the batch runs
        on), the leader answers when its batch does."""
        rows = _rows(feeds)
        if rows is None or rows >= self.max_batch_size:
            return await self.runner.run(partial(self._run, feeds, output_names), timeout_s)
        key = _key(feeds, output_names)
        group = self._open.get(key)
        if group is not None and group.size + rows <= self.max_batch_size:
            group.feeds.append(feeds)
            group.rows.append(rows)
            waiter: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
            group.waiters.append(waiter)
            if group.size >= self.max_batch_size:
                self._close(group)
            return await self.runner.wait(waiter, timeout_s)
        group = _Group(key, [feeds], [rows])
        self._open[key] = group  # a full group that was replaced keeps running on its own leader
        try:
            with anyio.move_on_after(self.max_queue_delay_s):
                await group.full.wait()
        finally:  # even a cancelled leader runs the batch: the followers are waiting on it
            self._close(group)
            with anyio.CancelScope(shield=True):
                try:
                    group.results = await self.runner.run(partial(self._run_group, group, output_names))
                except Exception as exc:
                    group.error = exc
                finally:
                    _answer(group)
        if group.error is not None:
            raise group.error
        assert group.results is not None
        return group.results[0]

    def _close(self, group: _Group) -> None:
        if self._open.get(group.key) is group:
            del self._open[group.key]
        group.full.set()

    def _run_group(self, group: _Group, output_names: Sequence[str] | None) -> list[Outputs]:
        if len(group.feeds) == 1:
            return [self._run(group.feeds[0], output_names)]
        names = list(group.feeds[0])
        joined = {name: np.concatenate([feeds[name] for feeds in group.feeds], axis=0) for name in names}
        outputs = self._run(joined, output_names)
        self.batches += 1
        self.batched_rows += group.size
        bounds = np.cumsum(group.rows)[:-1]
        split = {name: np.split(value, bounds, axis=0) for name, value in outputs.items()}
        return [{name: parts[i] for name, parts in split.items()} for i in range(len(group.rows))]


def _answer(group: _Group) -> None:
    """Hand each waiting follower its rows, or the batch's error (those that left are skipped)."""
    for index, waiter in enumerate(group.waiters, start=1):
        if waiter.done():
            continue
        if group.results is not None:
            waiter.set_result(group.results[index])
        else:
            waiter.set_exception(group.error or RuntimeError("the batch was not run"))


def _rows(feeds: Mapping[str, np.ndarray]) -> int | None:
    rows = None
    for value in feeds.values():
        if value.ndim == 0:
            return None
        if rows is None:
            rows = value.shape[0]
        elif value.shape[0] != rows:
            return None
    return rows


def _key(feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None) -> GroupKey:
    parts: list[object] = [tuple(output_names) if output_names else None]
    for name in sorted(feeds):
        value = feeds[name]
        parts.append((name, value.dtype.str, value.shape[1:]))
    return tuple(parts)
